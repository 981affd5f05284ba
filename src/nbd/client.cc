// Implements include/qbd/nbd_client.h.
#include "qbd/nbd_client.h"

#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/coding.h"
#include "qbd/config.h"
#include "qbd/nbd_wire.h"

namespace qbd {

namespace {

// ---- sockets ------------------------------------------------------------

Status SendAllFd(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("nbd handshake: send", errno);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::OK();
}

Status RecvAllFd(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("nbd handshake: recv", errno);
    }
    if (r == 0) return Status::IOError("nbd handshake: the server closed the connection");
    p += r;
    n -= static_cast<size_t>(r);
  }
  return Status::OK();
}

Status SetTimeouts(int fd, int timeout_ms) {
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
    return Status::FromErrno("setsockopt SO_RCVTIMEO", errno);
  }
  return Status::OK();
}

Result<UniqueFd> Dial(const std::string& listen) {
  QBD_ASSIGN_OR_RETURN(ListenAddress a, ParseListenAddress(listen));
  if (a.kind == ListenAddress::Kind::kUnix) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) return Status::FromErrno("socket", errno);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", a.path.c_str());
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      return Status::FromErrno("connect " + a.path, errno);
    }
    return fd;
  }
  std::string host = a.host;
  if (a.kind == ListenAddress::Kind::kAny || host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(a.port);
  int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) return Status::IOError(fmt::format("resolve {}: {}", host, ::gai_strerror(rc)));
  Status last = Status::IOError("no address for " + host);
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (fd.get() < 0) {
      last = Status::FromErrno("socket", errno);
      continue;
    }
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      last = Status::FromErrno(fmt::format("connect {}:{}", host, port), errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::freeaddrinfo(res);
    return fd;
  }
  ::freeaddrinfo(res);
  return last;
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

Result<UniqueFd> NbdClientConnect(const std::string& listen, const std::string& export_name,
                                  NbdExportInfo* info, int timeout_ms) {
  QBD_ASSIGN_OR_RETURN(UniqueFd fd, Dial(listen));
  const int s = fd.get();
  QBD_RETURN_IF_ERROR(SetTimeouts(s, timeout_ms));
  std::byte hello[18];
  QBD_RETURN_IF_ERROR(RecvAllFd(s, hello, sizeof hello));
  if (DecodeBE64(hello) != nbd::kNbdMagic || DecodeBE64(hello + 8) != nbd::kOptMagic) {
    return Status::InvalidArgument("nbd handshake: " + listen + " is not a newstyle NBD server");
  }
  const uint16_t hflags = DecodeBE16(hello + 16);
  if (!(hflags & nbd::kFlagFixedNewstyle)) {
    return Status::InvalidArgument("nbd handshake: the server is not fixed newstyle");
  }
  std::byte cflags[4];
  EncodeBE32(cflags, nbd::kClientFlagFixedNewstyle |
                         ((hflags & nbd::kFlagNoZeroes) ? nbd::kClientFlagNoZeroes : 0));
  QBD_RETURN_IF_ERROR(SendAllFd(s, cflags, sizeof cflags));
  // NBD_OPT_GO: the export name, no information requests (the server sends NBD_INFO_EXPORT).
  std::vector<std::byte> opt(16 + 4 + export_name.size() + 2);
  EncodeBE64(opt.data(), nbd::kOptMagic);
  EncodeBE32(opt.data() + 8, nbd::kOptGo);
  EncodeBE32(opt.data() + 12, static_cast<uint32_t>(4 + export_name.size() + 2));
  EncodeBE32(opt.data() + 16, static_cast<uint32_t>(export_name.size()));
  std::memcpy(opt.data() + 20, export_name.data(), export_name.size());
  EncodeBE16(opt.data() + 20 + export_name.size(), 0);
  QBD_RETURN_IF_ERROR(SendAllFd(s, opt.data(), opt.size()));
  bool have_export = false;
  for (;;) {
    std::byte h[20];
    QBD_RETURN_IF_ERROR(RecvAllFd(s, h, sizeof h));
    const uint32_t type = DecodeBE32(h + 12);
    const uint32_t len = DecodeBE32(h + 16);
    if (DecodeBE64(h) != nbd::kOptReplyMagic || DecodeBE32(h + 8) != nbd::kOptGo || len > 65536) {
      return Status::InvalidArgument("nbd handshake: malformed option reply");
    }
    std::vector<std::byte> data(len);
    if (len > 0) QBD_RETURN_IF_ERROR(RecvAllFd(s, data.data(), len));
    if (type == nbd::kRepAck) break;
    if (type & nbd::kRepErrBit) {
      std::string msg(reinterpret_cast<const char*>(data.data()), data.size());
      if (type == nbd::kRepErrUnknown) {
        return Status::NotFound(fmt::format("export {} is not served by {}{}", export_name, listen,
                                            msg.empty() ? "" : ": " + msg));
      }
      return Status::InvalidArgument(
          fmt::format("nbd handshake: the server refused export {} (error {:#x}){}", export_name,
                      type, msg.empty() ? "" : ": " + msg));
    }
    if (type == nbd::kRepInfo && len >= 12 && DecodeBE16(data.data()) == nbd::kInfoExport) {
      info->size = DecodeBE64(data.data() + 2);
      info->flags = DecodeBE16(data.data() + 10);
      have_export = true;
    }
  }
  if (!have_export)
    return Status::InvalidArgument("nbd handshake: no NBD_INFO_EXPORT from the server");
  // The kernel reads and writes this socket itself from now on: no timeouts of ours.
  QBD_RETURN_IF_ERROR(SetTimeouts(s, 0));
  return fd;
}

}  // namespace qbd
