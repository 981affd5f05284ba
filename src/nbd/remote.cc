// Implements include/qbd/nbd_remote.h.
#include "qbd/nbd_remote.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <condition_variable>
#include <cstring>

#include "qbd/nbd_wire.h"
#include "common/coding.h"
#include "nbd/socket_io.h"

namespace qbd {

namespace {

constexpr uint32_t kEshutdown = 108;

// "HOST:PORT" of the socket's local end, in the form the server logs its peers.
std::string LocalEndpoint(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
    return fmt::format("{}:{}", host, ntohs(sin->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
    return fmt::format("[{}]:{}", host, ntohs(sin6->sin6_port));
  }
  return "";
}

// A holder whose host died answers nothing: its sockets fail after about 15 s instead of the
// kernel's 15 minutes of retransmissions, and idle ones are probed. Best effort (unix sockets
// have none of it).
void KeepAlive(int fd) {
  int one = 1, idle = 5, intvl = 2, cnt = 3;
  unsigned user_timeout_ms = 15000;
  (void)::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool RecvAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

}  // namespace

struct NbdRemote::Sock {
  UniqueFd fd;
  std::string local;
  std::mutex send_mu;  // one request's header and payload at a time
  bool dead = false;   // GUARDED_BY(NbdRemote::mu_)
  std::thread reader;
};

struct NbdRemote::Pending {
  Sock* sock = nullptr;
  uint16_t type = 0;
  std::span<std::byte> out;  // READ: where the data goes
  bool done = false;         // GUARDED_BY(NbdRemote::mu_)
  Reply reply;               // GUARDED_BY(NbdRemote::mu_)
  std::condition_variable cv;
};

Result<std::unique_ptr<NbdRemote>> NbdRemote::Connect(const std::string& address,
                                                      const std::string& export_name,
                                                      int connections, int timeout_ms) {
  std::unique_ptr<NbdRemote> r(new NbdRemote());
  r->address_ = address;
  r->export_ = export_name;
  for (int i = 0; i < connections; ++i) {
    NbdExportInfo info;
    QBD_ASSIGN_OR_RETURN(UniqueFd fd, NbdClientConnect(address, export_name, &info, timeout_ms));
    if (i == 0) {
      r->info_ = info;
    } else if (info.size != r->info_.size) {
      return Status::Unavailable(fmt::format("{} changed the size of {} while connecting", address, export_name));
    }
    auto s = std::make_unique<Sock>();
    KeepAlive(fd.get());
    s->local = LocalEndpoint(fd.get());
    s->fd = std::move(fd);
    r->socks_.push_back(std::move(s));
  }
  for (auto& s : r->socks_) {
    Sock* raw = s.get();
    NbdRemote* self = r.get();
    s->reader = std::thread([self, raw] { self->ReadLoop(raw); });
  }
  return r;
}

NbdRemote::~NbdRemote() { Close(); }

void NbdRemote::Close() {
  for (auto& s : socks_) Lose(s.get(), "closed");
  for (auto& s : socks_) {
    if (s->reader.joinable()) s->reader.join();
  }
}

void NbdRemote::Lose(Sock* s, const std::string& why) {
  std::lock_guard l(mu_);
  if (!s->dead) {
    s->dead = true;
    ::shutdown(s->fd.get(), SHUT_RDWR);  // wakes the reader
  }
  for (auto it = pending_.begin(); it != pending_.end();) {
    Pending* p = it->second;
    if (p->sock != s) {
      ++it;
      continue;
    }
    p->reply = {Status::Unavailable(fmt::format("nbd {} ({}): {}", address_, export_, why), ESHUTDOWN), true};
    p->done = true;
    p->cv.notify_one();
    it = pending_.erase(it);
  }
}

void NbdRemote::ReadLoop(Sock* s) {
  const int fd = s->fd.get();
  for (;;) {
    std::byte h[16];
    if (!RecvAll(fd, h, sizeof h)) {
      Lose(s, "the connection ended");
      return;
    }
    if (DecodeBE32(h) != nbd::kSimpleReplyMagic) {
      Lose(s, "a reply that is not a simple reply");
      return;
    }
    const uint32_t error = DecodeBE32(h + 4);
    const uint64_t cookie = DecodeBE64(h + 8);
    Pending* p = nullptr;
    {
      std::lock_guard l(mu_);
      auto it = pending_.find(cookie);
      if (it != pending_.end() && it->second->sock == s) {
        p = it->second;
        pending_.erase(it);  // ours now: Lose no longer completes it
      }
    }
    if (p == nullptr) {
      Lose(s, fmt::format("a reply to unknown request {}", cookie));
      return;
    }
    Reply reply;
    bool data_ok = true;
    if (error == 0 && p->type == nbd::kCmdRead) data_ok = RecvAll(fd, p->out.data(), p->out.size());
    if (!data_ok) {
      reply = {Status::Unavailable(fmt::format("nbd {} ({}): the connection ended in a reply", address_, export_),
                                   ESHUTDOWN),
               true};
    } else if (error == kEshutdown) {
      // The holder stops serving (fenced, or stopping): the request is for whoever takes over.
      reply = {Status::Unavailable(fmt::format("nbd {} ({}): the server is shutting down", address_, export_),
                                   ESHUTDOWN),
               true};
    } else if (error != 0) {
      reply.status = Status::IOError(
          fmt::format("nbd {} ({}): error {} ({})", address_, export_, error, std::strerror(static_cast<int>(error))),
          static_cast<int>(error));
    }
    {
      std::lock_guard l(mu_);
      p->reply = std::move(reply);
      p->done = true;
      p->cv.notify_one();
    }
    if (!data_ok) {
      Lose(s, "the connection ended in a reply");
      return;
    }
  }
}

NbdRemote::Reply NbdRemote::Request(uint16_t type, uint16_t flags, uint64_t off, uint32_t len,
                                    std::span<const std::byte> payload, std::span<std::byte> out) {
  Pending p;
  p.type = type;
  p.out = out;
  const uint64_t cookie = next_cookie_.fetch_add(1);
  {
    std::lock_guard l(mu_);
    const size_t n = socks_.size();
    const size_t start = next_sock_.fetch_add(1);
    for (size_t i = 0; i < n && p.sock == nullptr; ++i) {
      Sock* s = socks_[(start + i) % n].get();
      if (!s->dead) p.sock = s;
    }
    if (p.sock == nullptr) {
      return {Status::Unavailable(fmt::format("nbd {} ({}): no connection left", address_, export_), ESHUTDOWN),
              true};
    }
    pending_[cookie] = &p;
  }
  std::byte h[28];
  EncodeBE32(h, nbd::kRequestMagic);
  EncodeBE16(h + 4, flags);
  EncodeBE16(h + 6, type);
  EncodeBE64(h + 8, cookie);
  EncodeBE64(h + 16, off);
  EncodeBE32(h + 24, len);
  bool sent;
  {
    std::lock_guard l(p.sock->send_mu);
    sent = SendAll(p.sock->fd.get(), std::span<const std::byte>(h, sizeof h), payload);
  }
  if (!sent) Lose(p.sock, "a send failed");
  std::unique_lock l(mu_);
  p.cv.wait(l, [&] { return p.done; });
  return std::move(p.reply);
}

NbdRemote::Reply NbdRemote::Read(uint64_t off, std::span<std::byte> out) {
  return Request(nbd::kCmdRead, 0, off, static_cast<uint32_t>(out.size()), {}, out);
}

NbdRemote::Reply NbdRemote::Write(uint64_t off, std::span<const std::byte> in, bool fua) {
  return Request(nbd::kCmdWrite, fua ? nbd::kCmdFlagFua : 0, off, static_cast<uint32_t>(in.size()), in, {});
}

NbdRemote::Reply NbdRemote::Flush() { return Request(nbd::kCmdFlush, 0, 0, 0, {}, {}); }

NbdRemote::Reply NbdRemote::Trim(uint64_t off, uint64_t len, bool fua) {
  if (len > UINT32_MAX) return {Status::InvalidArgument("trim: longer than an NBD request"), false};
  return Request(nbd::kCmdTrim, fua ? nbd::kCmdFlagFua : 0, off, static_cast<uint32_t>(len), {}, {});
}

NbdRemote::Reply NbdRemote::WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) {
  if (len > UINT32_MAX) return {Status::InvalidArgument("write zeroes: longer than an NBD request"), false};
  const uint16_t flags = static_cast<uint16_t>((fua ? nbd::kCmdFlagFua : 0) | (may_trim ? 0 : nbd::kCmdFlagNoHole));
  return Request(nbd::kCmdWriteZeroes, flags, off, static_cast<uint32_t>(len), {}, {});
}

int NbdRemote::Live() const {
  std::lock_guard l(mu_);
  int n = 0;
  for (const auto& s : socks_) n += s->dead ? 0 : 1;
  return n;
}

int NbdRemote::InFlight() const {
  std::lock_guard l(mu_);
  return static_cast<int>(pending_.size());
}

std::vector<std::string> NbdRemote::LocalEndpoints() const {
  std::lock_guard l(mu_);
  std::vector<std::string> out;
  for (const auto& s : socks_) {
    if (!s->dead && !s->local.empty()) out.push_back(s->local);
  }
  return out;
}

}  // namespace qbd
