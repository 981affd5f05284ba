// Implements the listen addresses of include/qbd/config.h: ParseListenAddress, IsLoopbackListener
// and CheckListenerOnHost (whether this machine can bind an address).
#include <arpa/inet.h>
#include <fmt/format.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cctype>
#include <charconv>
#include <cstring>
#include <fstream>
#include <set>

#include "common/path_checks.h"
#include "qbd/config.h"

namespace qbd {
namespace {

// RFC 1123 host name: dot-separated labels of 1-63 letters, digits and '-', not starting or
// ending with '-', 253 characters at most; a trailing dot is allowed.
bool ValidHostName(std::string_view h) {
  if (!h.empty() && h.back() == '.') h.remove_suffix(1);
  if (h.empty() || h.size() > 253) return false;
  size_t start = 0;
  while (start <= h.size()) {
    size_t dot = h.find('.', start);
    if (dot == std::string_view::npos) dot = h.size();
    std::string_view label = h.substr(start, dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
    }
    start = dot + 1;
  }
  return true;
}

// The addresses of this machine's interfaces, as inet_ntop prints them.
std::set<std::string> LocalAddresses() {
  std::set<std::string> out;
  ifaddrs* ifs = nullptr;
  if (::getifaddrs(&ifs) != 0) return out;
  for (ifaddrs* i = ifs; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr) continue;
    char buf[INET6_ADDRSTRLEN] = {};
    if (i->ifa_addr->sa_family == AF_INET) {
      ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof(buf));
    } else if (i->ifa_addr->sa_family == AF_INET6) {
      ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(i->ifa_addr)->sin6_addr, buf, sizeof(buf));
    } else {
      continue;
    }
    out.insert(buf);
  }
  ::freeifaddrs(ifs);
  return out;
}

// The kernel lets a socket bind an address no interface has (net.ipv4.ip_nonlocal_bind).
bool NonLocalBindAllowed(int family) {
  std::ifstream in(family == AF_INET ? "/proc/sys/net/ipv4/ip_nonlocal_bind"
                                     : "/proc/sys/net/ipv6/ip_nonlocal_bind");
  int v = 0;
  return in >> v && v != 0;
}

// True when a socket can bind `sa` on this machine without IP_FREEBIND: the loopback network,
// an interface's address, or any address when the kernel allows non-local binds.
bool IsLocalAddress(const sockaddr* sa, const std::set<std::string>& local) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET) {
    const in_addr a = reinterpret_cast<const sockaddr_in*>(sa)->sin_addr;
    if ((ntohl(a.s_addr) >> 24) == 127 || a.s_addr == htonl(INADDR_ANY)) return true;
    ::inet_ntop(AF_INET, &a, buf, sizeof(buf));
  } else if (sa->sa_family == AF_INET6) {
    const in6_addr& a = reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr;
    if (IN6_IS_ADDR_UNSPECIFIED(&a) || IN6_IS_ADDR_LOOPBACK(&a)) return true;
    ::inet_ntop(AF_INET6, &a, buf, sizeof(buf));
  } else {
    return false;
  }
  return local.count(buf) > 0 || NonLocalBindAllowed(sa->sa_family);
}

}  // namespace

Status CheckListenerOnHost(const ListenAddress& a, bool local_addresses) {
  if (a.kind == ListenAddress::Kind::kUnix) {
    QBD_RETURN_IF_ERROR(CheckDir(Parent(a.path)).WithContext(fmt::format("unix:{}: its directory", a.path)));
    std::error_code ec;
    auto st = std::filesystem::symlink_status(a.path, ec);
    if (std::filesystem::exists(st) && st.type() != std::filesystem::file_type::socket) {
      return Status::InvalidArgument(
          fmt::format("unix:{}: a file that is not a socket is in the way", a.path));
    }
    return Status::OK();
  }
  if (a.kind == ListenAddress::Kind::kAny) return Status::OK();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (a.kind == ListenAddress::Kind::kHostName ? 0 : AI_NUMERICHOST);
  addrinfo* res = nullptr;
  const std::string port = std::to_string(a.port);
  const int rc = ::getaddrinfo(a.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    return Status::InvalidArgument(
        fmt::format("host '{}' does not resolve: {}", a.host, ::gai_strerror(rc)));
  }
  bool local = !local_addresses;
  if (!local) {
    const std::set<std::string> mine = LocalAddresses();
    for (addrinfo* ai = res; ai != nullptr && !local; ai = ai->ai_next) local = IsLocalAddress(ai->ai_addr, mine);
  }
  ::freeaddrinfo(res);
  if (!local) {
    return Status::InvalidArgument(fmt::format(
        "{} is not an address of this machine (no interface has it): qbd-master could not bind it", a.host));
  }
  return Status::OK();
}

bool IsLoopbackListener(std::string_view spec) {
  auto a = ParseListenAddress(spec);
  if (!a.ok() || a->kind == ListenAddress::Kind::kUnix || a->kind == ListenAddress::Kind::kAny) {
    return false;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = a->kind == ListenAddress::Kind::kHostName ? 0 : AI_NUMERICHOST;
  addrinfo* res = nullptr;
  if (::getaddrinfo(a->host.c_str(), nullptr, &hints, &res) != 0) return false;
  bool loopback = res != nullptr;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    if (ai->ai_family == AF_INET) {
      const in_addr ip = reinterpret_cast<const sockaddr_in*>(ai->ai_addr)->sin_addr;
      loopback = loopback && (ntohl(ip.s_addr) >> 24) == 127;
    } else if (ai->ai_family == AF_INET6) {
      loopback = loopback && IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6*>(ai->ai_addr)->sin6_addr);
    } else {
      loopback = false;
    }
  }
  ::freeaddrinfo(res);
  return loopback;
}

Result<ListenAddress> ParseListenAddress(std::string_view spec) {
  ListenAddress a;
  if (spec.starts_with("unix:")) {
    a.kind = ListenAddress::Kind::kUnix;
    a.path = std::string(spec.substr(5));
    if (a.path.empty()) return Status::InvalidArgument("'unix:' needs a socket path: unix:/run/qbd/v.sock");
    if (a.path.find('\0') != std::string::npos) return Status::InvalidArgument("the unix socket path holds a NUL");
    // The path and its terminating NUL must fit sun_path.
    if (a.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return Status::InvalidArgument(fmt::format("unix socket path '{}' is {} characters; at most {} fit",
                                                 a.path, a.path.size(), sizeof(sockaddr_un{}.sun_path) - 1));
    }
    return a;
  }
  if (spec.empty()) return Status::InvalidArgument("empty address (HOST:PORT or unix:/PATH)");
  std::string_view host, port;
  if (spec.front() == '[') {
    const size_t close = spec.find(']');
    if (close == std::string_view::npos) {
      return Status::InvalidArgument(fmt::format("'{}': '[' without ']' (write [IPV6]:PORT)", spec));
    }
    host = spec.substr(1, close - 1);
    std::string_view rest = spec.substr(close + 1);
    if (rest.empty() || rest.front() != ':') {
      return Status::InvalidArgument(fmt::format("'{}' is not [IPV6]:PORT", spec));
    }
    port = rest.substr(1);
    a.kind = ListenAddress::Kind::kIPv6;
  } else {
    const size_t colon = spec.find(':');
    if (colon == std::string_view::npos) {
      return Status::InvalidArgument(fmt::format("'{}' is not HOST:PORT or unix:/PATH", spec));
    }
    if (spec.find(':', colon + 1) != std::string_view::npos) {
      return Status::InvalidArgument(
          fmt::format("'{}': an IPv6 address is written in brackets: [IPV6]:PORT", spec));
    }
    host = spec.substr(0, colon);
    port = spec.substr(colon + 1);
    if (host.empty() || host == "*") {
      a.kind = ListenAddress::Kind::kAny;
      host = "";
    } else if (host.find_first_not_of("0123456789.") == std::string_view::npos) {
      a.kind = ListenAddress::Kind::kIPv4;
    } else {
      a.kind = ListenAddress::Kind::kHostName;
    }
  }
  uint64_t p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec == std::errc::invalid_argument) {
    return Status::InvalidArgument(fmt::format("'{}': the port is missing or not a number", spec));
  }
  if (ec == std::errc::result_out_of_range || (end == port.data() + port.size() && (p < 1 || p > 65535))) {
    return Status::InvalidArgument(fmt::format("'{}': port {} is not 1..65535", spec, port));
  }
  if (end != port.data() + port.size()) {
    return Status::InvalidArgument(
        fmt::format("'{}': '{}' follows the port", spec, port.substr(static_cast<size_t>(end - port.data()))));
  }
  a.port = static_cast<uint16_t>(p);
  a.host = std::string(host);
  unsigned char buf[sizeof(in6_addr)];
  if (a.kind == ListenAddress::Kind::kIPv4 && ::inet_pton(AF_INET, a.host.c_str(), buf) != 1) {
    return Status::InvalidArgument(fmt::format("'{}': {} is not an IPv4 address", spec, a.host));
  }
  if (a.kind == ListenAddress::Kind::kIPv6 && ::inet_pton(AF_INET6, a.host.c_str(), buf) != 1) {
    return Status::InvalidArgument(fmt::format("'{}': {} is not an IPv6 address", spec, a.host));
  }
  if (a.kind == ListenAddress::Kind::kHostName && !ValidHostName(a.host)) {
    return Status::InvalidArgument(fmt::format("'{}': '{}' is not a host name", spec, a.host));
  }
  return a;
}

}  // namespace qbd
