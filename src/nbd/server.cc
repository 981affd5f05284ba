// The NBD server's listeners, its connections' lifetime and its public methods (the design is at
// the top of server_impl.h).
#include "nbd/server_impl.h"

namespace qbd {
namespace {

// Rejected-request warnings per connection and second; the rest are counted and summarized.
constexpr int kWarningsPerSecond = 5;

std::string SockaddrToString(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
    return fmt::format("{}:{}", host, ntohs(sin->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
    return fmt::format("[{}]:{}", host, ntohs(sin6->sin6_port));
  }
  return "unix";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Listening

namespace {

struct ParsedSpec {
  bool is_unix = false;
  std::string path;  // unix
  std::string host;  // tcp, without brackets; "" or "*" = any
  std::string port;
};

Result<ParsedSpec> ParseSpec(std::string_view spec) {
  ParsedSpec p;
  if (spec.starts_with("unix:")) {
    p.is_unix = true;
    p.path = std::string(spec.substr(5));
    if (p.path.empty()) return Status::InvalidArgument("nbd listen: empty unix socket path");
    if (p.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return Status::InvalidArgument(fmt::format("nbd listen: unix path too long: {}", p.path));
    }
    return p;
  }
  size_t colon = spec.rfind(':');
  if (colon == std::string_view::npos) {
    return Status::InvalidArgument(fmt::format("nbd listen: '{}' is not HOST:PORT", spec));
  }
  std::string_view host = spec.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  p.host = std::string(host);
  p.port = std::string(spec.substr(colon + 1));
  if (p.port.empty() || p.port.find_first_not_of("0123456789") != std::string::npos ||
      p.port.size() > 5 || std::stoul(p.port) > 65535) {
    return Status::InvalidArgument(fmt::format("nbd listen: bad port in '{}'", spec));
  }
  return p;
}

// Returns a listening socket and its BoundAddresses() form.
Result<std::pair<int, std::string>> OpenListener(const ParsedSpec& p) {
  if (p.is_unix) {
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::memcpy(sun.sun_path, p.path.data(), p.path.size());
    struct stat st {};
    if (::lstat(p.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
      // A socket file nobody accepts on is left over from an earlier run: remove it. One that
      // accepts belongs to a live server, which must not lose its address.
      int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      const bool live =
          probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) == 0;
      CloseFd(probe);
      if (live) {
        return Status::IOError(fmt::format("nbd listen: unix:{} is in use", p.path), EADDRINUSE);
      }
      ::unlink(p.path.c_str());
    }
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status::FromErrno("nbd listen: socket", errno);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0 ||
        ::listen(fd, SOMAXCONN) != 0) {
      int err = errno;
      CloseFd(fd);
      return Status::FromErrno(fmt::format("nbd listen: bind unix:{}", p.path), err);
    }
    return std::make_pair(fd, "unix:" + p.path);
  }

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const bool any = p.host.empty() || p.host == "*";
  int rc = ::getaddrinfo(any ? nullptr : p.host.c_str(), p.port.c_str(), &hints, &res);
  if (rc != 0) {
    return Status::IOError(
        fmt::format("nbd listen: resolve {}:{}: {}", p.host, p.port, ::gai_strerror(rc)));
  }
  Status last = Status::IOError(fmt::format("nbd listen: no address for {}", p.host));
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last = Status::FromErrno("nbd listen: socket", errno);
      continue;
    }
    int one = 1;
    (void)::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // best effort
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, SOMAXCONN) != 0) {
      last = Status::FromErrno(fmt::format("nbd listen: bind {}:{}", p.host, p.port), errno);
      CloseFd(fd);
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
      last = Status::FromErrno("nbd listen: getsockname", errno);
      CloseFd(fd);
      continue;
    }
    ::freeaddrinfo(res);
    return std::make_pair(fd, SockaddrToString(ss));
  }
  ::freeaddrinfo(res);
  return last;
}

}  // namespace

Status NbdServer::Impl::Listen(std::string_view spec, std::string only_export) {
  QBD_ASSIGN_OR_RETURN(ParsedSpec p, ParseSpec(spec));
  {
    std::lock_guard lk(mu);
    if (stopping) return Status::Unavailable("nbd listen: server is stopped");
    if (wake_fd < 0) {
      wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (wake_fd < 0) return Status::FromErrno("nbd listen: eventfd", errno);
    }
  }
  QBD_ASSIGN_OR_RETURN(auto opened, OpenListener(p));
  auto l = std::make_unique<Listener>();
  l->fd = opened.first;
  l->address = opened.second;
  l->unix_path = p.is_unix ? p.path : "";
  l->only_export = std::move(only_export);

  std::lock_guard lk(mu);
  if (stopping) {
    CloseFd(l->fd);
    if (!l->unix_path.empty()) ::unlink(l->unix_path.c_str());
    return Status::Unavailable("nbd listen: server is stopped");
  }
  try {
    if (!reaper.joinable()) reaper = std::thread([this] { ReaperLoop(); });
    Listener* raw = l.get();
    l->thread = std::thread([this, raw] { ListenerLoop(raw); });
  } catch (const std::system_error& e) {
    CloseFd(l->fd);
    if (!l->unix_path.empty()) ::unlink(l->unix_path.c_str());
    return Status::IOError(fmt::format("nbd listen {}: cannot start thread: {}", spec, e.what()));
  }
  QBD_LOG_INFO("nbd: listening on {}", l->address);
  listeners.push_back(std::move(l));
  return Status::OK();
}

void NbdServer::Impl::ListenerLoop(Listener* l) {
  for (;;) {
    pollfd fds[2] = {{l->fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    int n = ::poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      QBD_LOG_ERROR("nbd: poll on {}: {}", l->address, std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;  // Stop()
    if (fds[0].revents == 0) continue;
    sockaddr_storage peer{};
    socklen_t len = sizeof(peer);
    int fd = ::accept4(l->fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) continue;
      QBD_LOG_WARN("nbd: accept on {}: {}", l->address, std::strerror(errno));
      // Out of descriptors or memory: back off instead of spinning, but stay stoppable.
      pollfd wake = {wake_fd, POLLIN, 0};
      if (::poll(&wake, 1, 100) > 0) return;
      continue;
    }
    StartConnection(fd, peer, l->only_export);
  }
}

void NbdServer::Impl::StartConnection(int fd, const sockaddr_storage& peer,
                                      const std::string& only_export) {
  if (peer.ss_family == AF_INET || peer.ss_family == AF_INET6) {
    int one = 1;
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // best effort
  }
  std::lock_guard lk(mu);
  if (stopping) {
    CloseFd(fd);
    return;
  }
  if (live >= options.max_connections) {
    CloseFd(fd);  // the client sees the connection closed before the greeting
    const int64_t now = NowMs() / 1000;
    if (now != refused_second) {
      QBD_LOG_WARN("nbd: refused a connection from {}: {} connections already (max_connections){}",
                   SockaddrToString(peer), live,
                   refused > 0 ? fmt::format("; {} more refused since the last message", refused) : "");
      refused_second = now;
      refused = 0;
    } else {
      ++refused;
    }
    return;
  }
  auto c = std::make_unique<Conn>();
  c->id = next_conn_id++;
  c->fd = fd;
  c->peer_address = SockaddrToString(peer);
  c->peer = fmt::format("conn {} from {}", c->id, c->peer_address);
  c->only_export = only_export;
  Conn* raw = c.get();
  try {
    c->thread = std::thread([this, raw] { ConnectionMain(raw); });
  } catch (const std::system_error& e) {
    QBD_LOG_WARN("nbd: {}: cannot start thread: {}; closing", raw->peer, e.what());
    return;  // ~Conn closes fd
  }
  conns.emplace(raw->id, std::move(c));
  ++live;
}

void NbdServer::Impl::ReaperLoop() {
  std::unique_lock lk(mu);
  for (;;) {
    cv.wait(lk, [this] { return !finished.empty() || reaper_exit; });
    while (!finished.empty()) {
      uint64_t id = finished.back();
      finished.pop_back();
      auto node = conns.extract(id);
      lk.unlock();
      if (!node.empty()) node.mapped()->thread.join();
      node = {};  // closes the socket
      lk.lock();
      cv.notify_all();  // Stop() waits for conns to drain
    }
    if (reaper_exit) return;
  }
}

void NbdServer::Impl::Stop() {
  std::lock_guard stop_lk(stop_mu);
  std::vector<std::unique_ptr<Listener>> ls;
  {
    std::lock_guard lk(mu);
    if (stopping && listeners.empty() && conns.empty() && !reaper.joinable()) return;
    stopping = true;
    ls.swap(listeners);
  }
  if (wake_fd >= 0) {
    uint64_t one = 1;
    (void)!::write(wake_fd, &one, sizeof(one));  // nonblocking eventfd; cannot meaningfully fail
  }
  for (auto& l : ls) {
    if (l->thread.joinable()) l->thread.join();
    CloseFd(l->fd);
    if (!l->unix_path.empty()) ::unlink(l->unix_path.c_str());
  }
  std::unique_lock lk(mu);
  // Readers see EOF and stop taking requests; in-flight requests still get their replies.
  for (auto& [id, c] : conns) ::shutdown(c->fd, SHUT_RD);
  cv.wait(lk, [this] { return conns.empty(); });
  reaper_exit = true;
  cv.notify_all();
  lk.unlock();
  if (reaper.joinable()) reaper.join();
  CloseFd(wake_fd);
  wake_fd = -1;
}

// ---------------------------------------------------------------------------------------------
// One connection

void NbdServer::Impl::Serving(Conn* c) {
  QBD_LOG_DEBUG("nbd: {}: serving export '{}'", c->peer, c->exp->name);
  std::lock_guard lk(mu);
  c->serving = c->exp->name;
}

size_t NbdServer::Impl::Disconnect(std::string_view export_name) {
  std::lock_guard lk(mu);
  size_t n = 0;
  for (auto& kv : conns) {
    Conn* c = kv.second.get();
    if (c->serving != export_name) continue;
    // Both ways: the reader sees EOF at once and replies still owed fail; the peer sees the close.
    ::shutdown(c->fd, SHUT_RDWR);
    ++n;
  }
  return n;
}

void NbdServer::Impl::Warn(Conn* c, std::string_view what) {
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  uint64_t suppressed = 0;
  {
    std::lock_guard lk(c->log_mu);
    if (now != c->log_second) {
      suppressed = c->suppressed;
      c->log_second = now;
      c->logged = 0;
      c->suppressed = 0;
    }
    if (c->logged >= kWarningsPerSecond) {
      ++c->suppressed;
      return;
    }
    ++c->logged;
  }
  if (suppressed > 0) {
    QBD_LOG_WARN("nbd: {}: {} (and {} similar warnings suppressed)", c->peer, what, suppressed);
  } else {
    QBD_LOG_WARN("nbd: {}: {}", c->peer, what);
  }
}

void NbdServer::Impl::ConnectionMain(Conn* c) {
  if (!Handshake(c)) {
    FinishConnection(c);
    return;
  }
  SetTimeout(c->fd, SO_RCVTIMEO, 0);  // idle clients are fine once transmitting
  {
    std::lock_guard lk(c->workers_mu);
    c->workers = 1;
  }
  RunWorker(c);
}

void NbdServer::Impl::RunWorker(Conn* c) {
  Worker(c);
  bool last;
  {
    std::lock_guard lk(c->workers_mu);
    last = --c->workers == 0;
  }
  // Only a worker that sees the connection closing ends while another holds the read turn (an
  // idle one ends only when the turn stayed taken), so the last one to end is one that saw it.
  if (last) FinishConnection(c);
}

void NbdServer::Impl::FinishConnection(Conn* c) {
  ::shutdown(c->fd, SHUT_RDWR);  // the peer sees the close now; the reaper closes the fd
  QBD_LOG_DEBUG("nbd: {}: closed", c->peer);
  std::lock_guard lk(mu);
  finished.push_back(c->id);  // the last touch of the connection: the reaper may free it now
  --live;
  cv.notify_all();
}

void NbdServer::Impl::MaybeAddWorker(Conn* c) {
  {
    std::lock_guard lk(c->workers_mu);
    if (c->idle > 0 || c->workers >= options.threads_per_connection) return;
    ++c->workers;
  }
  try {
    std::thread([this, c] { RunWorker(c); }).detach();
  } catch (const std::system_error& e) {
    std::lock_guard lk(c->workers_mu);
    --c->workers;
    Warn(c, fmt::format("cannot start worker thread: {}; continuing with {}", e.what(), c->workers));
  }
}


// ---------------------------------------------------------------------------------------------

NbdServer::NbdServer(const ExportRegistry& registry, NbdServerOptions options)
    : impl_(std::make_unique<Impl>(registry, options)) {}

NbdServer::~NbdServer() { Stop(); }

Status NbdServer::Listen(std::string_view spec, std::string only_export) {
  return impl_->Listen(spec, std::move(only_export));
}

std::vector<std::string> NbdServer::BoundAddresses() const {
  std::lock_guard lk(impl_->mu);
  std::vector<std::string> out;
  for (const auto& l : impl_->listeners) out.push_back(l->address);
  return out;
}

size_t NbdServer::Connections() const {
  std::lock_guard lk(impl_->mu);
  return impl_->conns.size() - impl_->finished.size();
}

size_t NbdServer::Disconnect(std::string_view export_name) {
  return impl_->Disconnect(export_name);
}

std::vector<std::string> NbdServer::Peers(std::string_view export_name) const {
  std::lock_guard lk(impl_->mu);
  std::vector<std::string> out;
  for (const auto& kv : impl_->conns) {
    if (kv.second->serving == export_name) out.push_back(kv.second->peer_address);
  }
  return out;
}

uint64_t NbdServer::MemoryUsed() const { return impl_->budget.used(); }
uint64_t NbdServer::MemoryLimit() const { return impl_->budget.limit(); }

void NbdServer::Stop() { impl_->Stop(); }

}  // namespace qbd
