// NbdServer: sockets and threads around the pure protocol code of wire.cc.
//
// Threads:
//  - one listener thread per Listen(): poll()s its socket and the server's wake eventfd, accepts,
//    and starts the connection's main thread. It never reads from a client.
//  - per connection, a main thread runs the handshake (with a receive timeout, so a silent client
//    cannot pin it), then becomes the connection's first worker. A worker that has read a request
//    while no other worker of the connection waits to read starts another one (up to
//    threads_per_connection); a worker other than the first that waits kIdleWorkerMs for its
//    turn to read ends. When the first worker returns and the others have ended, the main thread
//    shuts the socket down and queues itself for the reaper.
//  - one reaper thread joins finished connection threads and closes their sockets, so finished
//    connections never accumulate.
//
// A worker loop: take the connection's read mutex, read one whole request (header and WRITE
// payload) into the worker's own buffer, release it, run the request through the export's
// BlockHandler, and send the reply (SendReply). Replies may thus leave out of order, which the
// protocol allows.
//
// Memory: a WRITE payload is received piece by piece, each piece's bytes taken from the server's
// PayloadBudget before they are read (64 KiB first, then as much as has arrived so far); a READ
// reply takes its length before the read. A worker's buffer is allocated without being written,
// so the pages of a payload become memory only as its bytes land. When the budget is spent the reader waits, and stops reading its socket meanwhile.
// Once a request's first byte has arrived, the rest of its header and each piece of its payload
// must arrive within client_timeout_ms, or the connection is closed.
//
// Replies are combined: one worker at a time sends, and a worker that finds another one sending
// copies a small reply (a header, a write's acknowledgement, a read of up to kCoalesceMax bytes)
// into the connection's outbox and goes back to reading; the sending worker sends the outbox with
// its own reply in one sendmsg() before it stops sending. At queue depth 32 one syscall then
// carries several replies (each sendmsg on TCP also runs the receiver's softirq work).
//
// Lock order: Impl::mu_ before nothing (never held while calling into a connection); a
// connection's read_mu and write_mu are never held together; write_mu before log_mu.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/coding.h"
#include "qbd/log.h"
#include "qbd/nbd_server.h"
#include "qbd/nbd_wire.h"
#include "nbd/budget.h"
#include "nbd/socket_io.h"

namespace qbd {
namespace {

constexpr int kHandshakeTimeoutSec = 30;
// A worker gives its buffer (socket_io.h) back when its connection has sent nothing for this
// long, or when it ends: idle connections hold no buffer.
constexpr int kQuietReleaseMs = 100;
// The first piece of a WRITE payload taken from the budget before its bytes arrive; later pieces
// are as large as what has arrived so far, so a client that stalls holds little it did not send.
constexpr uint64_t kFirstPiece = 64 * 1024;
// A worker other than a connection's first ends after waiting this long for its turn to read.
constexpr int kIdleWorkerMs = 5000;
// Replies up to this size are copied into the outbox when another worker is sending (see the top
// of the file); larger ones wait for their turn rather than be copied.
constexpr size_t kCoalesceMax = 64 * 1024;
// Rejected-request warnings per connection and second; the rest are counted and summarized.
constexpr int kWarningsPerSecond = 5;
// The meta context id of base:allocation after NBD_OPT_SET_META_CONTEXT.
constexpr uint32_t kBaseAllocationId = 1;

// A client-supplied string made safe for one log line: at most 64 bytes, non-printable bytes
// as \xNN.
std::string Printable(std::string_view s) {
  constexpr size_t kMax = 64;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const auto ch = static_cast<unsigned char>(s[i]);
    if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
      out += static_cast<char>(ch);
    } else {
      out += fmt::format("\\x{:02x}", ch);
    }
  }
  if (s.size() > kMax) out += "...";
  return out;
}

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

struct NbdServer::Impl {
  struct Listener {
    int fd = -1;
    std::string address;      // BoundAddresses() form
    std::string unix_path;    // removed on Stop
    std::string only_export;  // "" serves the registry by name
    std::thread thread;
  };

  struct Conn {
    ~Conn() { CloseFd(fd); }

    uint64_t id = 0;
    int fd = -1;
    std::string peer;  // for log lines
    std::string peer_address;  // "HOST:PORT" ("unix" for a unix socket)
    std::string only_export;
    std::thread thread;  // the main thread (handshake, then worker 0)

    // Set by the handshake, then read-only while workers run.
    std::shared_ptr<const Export> exp;
    std::string serving;  // guarded by Impl::mu: exp's name once the handshake chose it
    bool structured = false;
    bool base_allocation = false;

    std::timed_mutex read_mu;
    InBuffer in;           // guarded by read_mu (only the handshake thread before workers start)
    bool closing = false;  // guarded by read_mu: no further request is read

    std::mutex workers_mu;
    int workers = 0;  // guarded by workers_mu: running workers (the main thread is the first)
    int idle = 0;     // guarded by workers_mu: workers waiting to read (or reading) a request

    std::mutex write_mu;
    bool send_failed = false;         // guarded by write_mu
    bool sending = false;             // guarded by write_mu: a worker is in SendReply's send loop
    std::vector<std::byte> outbox;    // guarded by write_mu: replies for the sending worker to send
    std::vector<std::byte> sendbuf;   // owned by the sending worker: the outbox being sent
    std::condition_variable send_cv;  // signalled when `sending` ends
    int big_waiters = 0;  // guarded by write_mu: workers waiting in SendReply with a large reply

    std::mutex log_mu;
    int64_t log_second = 0;   // guarded by log_mu
    int logged = 0;           // guarded by log_mu
    uint64_t suppressed = 0;  // guarded by log_mu
  };

  Impl(const ExportRegistry& r, NbdServerOptions o)
      : registry(r),
        options(o),
        budget(std::max<uint64_t>(o.memory_budget, uint64_t{2} * kMaxPayload), kMaxPayload) {}

  // ---- listeners and lifetime ----
  Status Listen(std::string_view spec, std::string only_export);
  void ListenerLoop(Listener* l);
  // Records the export the handshake chose (for Disconnect).
  void Serving(Conn* c);
  size_t Disconnect(std::string_view export_name);
  void StartConnection(int fd, const sockaddr_storage& peer, const std::string& only_export);
  void ReaperLoop();
  void Stop();

  // ---- one connection ----
  void ConnectionMain(Conn* c);
  // Returns true when the client entered transmission.
  bool Handshake(Conn* c);
  // Serves requests until the connection closes, or until it waited kIdleWorkerMs for its turn
  // to read while another worker held it.
  void Worker(Conn* c);
  // Worker(), then the connection's end if it was the last worker.
  void RunWorker(Conn* c);
  // Shuts the socket down and hands the connection to the reaper.
  void FinishConnection(Conn* c);
  // Starts one more worker when none waits to read and there is room; REQUIRES: a request was
  // just read (the caller is busy).
  void MaybeAddWorker(Conn* c);
  // Sends the reply made of `a` then `b`, or leaves it in the outbox for the worker that is
  // sending (see the top of this file).
  void SendReply(Conn* c, std::span<const std::byte> a, std::span<const std::byte> b);
  void Warn(Conn* c, std::string_view what);

  const ExportRegistry& registry;
  const NbdServerOptions options;
  PayloadBudget budget;

  std::mutex stop_mu;  // serializes Stop()
  mutable std::mutex mu;
  std::condition_variable cv;
  std::vector<std::unique_ptr<Listener>> listeners;  // guarded by mu
  std::map<uint64_t, std::unique_ptr<Conn>> conns;   // guarded by mu
  std::vector<uint64_t> finished;                    // guarded by mu: conns whose threads ended
  uint64_t next_conn_id = 1;                         // guarded by mu
  uint32_t live = 0;          // guarded by mu: connections whose main thread has not ended
  int64_t refused_second = 0;  // guarded by mu: when the last refusal was logged
  uint64_t refused = 0;        // guarded by mu: refusals since then, not logged
  bool stopping = false;                             // guarded by mu
  bool reaper_exit = false;                          // guarded by mu
  std::thread reaper;                                // started by the first Listen
  int wake_fd = -1;  // eventfd; written once by Stop, wakes every listener's poll
};

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

namespace {

// Reads one message: the handshake (main thread only) and workers (under read_mu) use it.
enum class Read { kOk, kEof, kError };

Read ReadMsg(int fd, InBuffer& in, std::span<std::byte> out, std::string* why, int timeout_ms = 0,
             bool from_first_byte = false) {
  why->clear();
  bool partial = false;
  int err = 0;
  switch (in.ReadExact(fd, out, &partial, &err, timeout_ms, from_first_byte)) {
    case InBuffer::Outcome::kOk:
      return Read::kOk;
    case InBuffer::Outcome::kEof:
      if (partial) *why = "connection closed in the middle of a message";
      return partial ? Read::kError : Read::kEof;
    case InBuffer::Outcome::kError:
      *why = (err == EAGAIN || err == EWOULDBLOCK || err == ETIMEDOUT) ? std::string("timed out")
                                                                        : std::string(std::strerror(err));
      return Read::kError;
  }
  return Read::kError;
}

uint16_t TransmissionFlags(const Export& e, bool structured) {
  uint16_t f = nbd::kFlagHasFlags | nbd::kFlagSendFlush | nbd::kFlagSendFua | nbd::kFlagSendTrim |
               nbd::kFlagSendWriteZeroes | nbd::kFlagCanMultiConn | nbd::kFlagSendCache;
  if (structured) f |= nbd::kFlagSendDf;
  if (e.read_only) f |= nbd::kFlagReadOnly;
  return f;
}

}  // namespace

bool NbdServer::Impl::Handshake(Conn* c) {
  const int fd = c->fd;
  SetTimeout(fd, SO_RCVTIMEO, std::min(kHandshakeTimeoutSec * 1000, options.client_timeout_ms));
  // A client that takes no reply bytes for this long is dropped (so Stop() cannot hang on it).
  SetTimeout(fd, SO_SNDTIMEO, options.client_timeout_ms);
  if (!SendAll(fd, nbd::EncodeServerGreeting(nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes))) {
    return false;
  }
  std::string why;
  std::array<std::byte, nbd::kClientFlagsSize> flag_bytes;
  Read r = ReadMsg(fd, c->in, flag_bytes, &why);
  if (r != Read::kOk) {
    if (r == Read::kError) Warn(c, fmt::format("handshake: {}", why));
    return false;
  }
  const uint32_t client_flags = nbd::ParseClientFlags(flag_bytes).value();
  if ((client_flags & ~(nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes)) != 0) {
    Warn(c, fmt::format("handshake: unknown client flags {:#x}; closing", client_flags));
    return false;
  }
  const bool no_zeroes = (client_flags & nbd::kClientFlagNoZeroes) != 0;

  auto find = [&](std::string_view name) {
    return registry.Find(c->only_export.empty() ? name : std::string_view(c->only_export));
  };
  auto reply = [&](uint32_t option, uint32_t type, std::span<const std::byte> data = {}) {
    return SendAll(fd, nbd::EncodeOptionReply(option, type, data));
  };
  auto error = [&](uint32_t option, uint32_t type, std::string_view msg) {
    return SendAll(fd, nbd::EncodeOptionError(option, type, msg));
  };

  std::vector<std::byte> data;
  // The export the last SET_META_CONTEXT was for; entering transmission on another one drops the
  // selected contexts (proto.md). Compared by name: a registry may hand out fresh Export objects.
  std::string meta_export;
  for (;;) {
    std::array<std::byte, nbd::kOptionHeaderSize> hb;
    r = ReadMsg(fd, c->in, hb, &why);
    if (r != Read::kOk) {
      if (r == Read::kError) Warn(c, fmt::format("handshake: {}", why));
      return false;
    }
    auto h = nbd::ParseOptionHeader(hb);
    if (!h.ok()) {
      Warn(c, "handshake: bad option magic; closing");
      return false;
    }
    const uint32_t opt = h->option;
    if (h->length > options.max_option_length) {
      Warn(c, fmt::format("handshake: {} of {} bytes exceeds the limit {}; closing",
                          nbd::OptionName(opt), h->length, options.max_option_length));
      return false;
    }
    data.resize(h->length);
    if (ReadMsg(fd, c->in, data, &why) != Read::kOk) {
      Warn(c, fmt::format("handshake: reading {} data: {}", nbd::OptionName(opt),
                          why.empty() ? "connection closed" : why));
      return false;
    }

    switch (opt) {
      case nbd::kOptExportName: {
        std::string name(reinterpret_cast<const char*>(data.data()), data.size());
        auto e = find(name);
        if (e == nullptr || e->handler == nullptr) {
          Warn(c,
               fmt::format("NBD_OPT_EXPORT_NAME: unknown export '{}'; closing", Printable(name)));
          return false;
        }
        if (meta_export != e->name) c->base_allocation = false;
        if (!SendAll(fd,
                     nbd::EncodeExportNameReply(e->handler->Size(),
                                                TransmissionFlags(*e, c->structured), no_zeroes))) {
          return false;
        }
        c->exp = std::move(e);
        Serving(c);
        return true;
      }

      case nbd::kOptAbort:
        (void)reply(opt, nbd::kRepAck);  // the client may already be gone
        return false;

      case nbd::kOptList: {
        if (!data.empty()) {
          if (!error(opt, nbd::kRepErrInvalid, "NBD_OPT_LIST takes no data")) return false;
          break;
        }
        std::vector<std::string> names;
        if (c->only_export.empty()) {
          names = registry.List();
        } else {
          names.push_back(c->only_export);
        }
        bool ok = true;
        for (const std::string& n : names) {
          auto e = registry.Find(n);
          ok = ok && reply(opt, nbd::kRepServer,
                           nbd::EncodeRepServer(n, e != nullptr ? e->description : ""));
        }
        if (!ok || !reply(opt, nbd::kRepAck)) return false;
        break;
      }

      case nbd::kOptInfo:
      case nbd::kOptGo: {
        auto req = nbd::ParseInfoRequest(data);
        if (!req.ok()) {
          if (!error(opt, nbd::kRepErrInvalid, req.status().message())) return false;
          break;
        }
        auto e = find(req->name);
        if (e == nullptr || e->handler == nullptr) {
          const std::string shown = Printable(req->name);
          Warn(c, fmt::format("{}: unknown export '{}'", nbd::OptionName(opt), shown));
          if (!error(opt, nbd::kRepErrUnknown, fmt::format("unknown export '{}'", shown))) {
            return false;
          }
          break;
        }
        bool ok =
            reply(opt, nbd::kRepInfo,
                  nbd::EncodeInfoExport(e->handler->Size(), TransmissionFlags(*e, c->structured)));
        auto asked = [&](uint16_t type) {
          return std::find(req->requests.begin(), req->requests.end(), type) != req->requests.end();
        };
        if (ok && asked(nbd::kInfoName)) {
          ok = reply(opt, nbd::kRepInfo, nbd::EncodeInfoName(e->name));
        }
        if (ok && asked(nbd::kInfoDescription) && !e->description.empty()) {
          ok = reply(opt, nbd::kRepInfo, nbd::EncodeInfoDescription(e->description));
        }
        // Sent even when not asked for: every client we serve honours it.
        if (ok) {
          ok = reply(opt, nbd::kRepInfo,
                     nbd::EncodeInfoBlockSize(e->min_block, e->preferred_block, e->max_payload));
        }
        if (!ok || !reply(opt, nbd::kRepAck)) return false;
        if (opt == nbd::kOptGo) {
          if (meta_export != e->name) c->base_allocation = false;
          c->exp = std::move(e);
          Serving(c);
          return true;
        }
        break;
      }

      case nbd::kOptStructuredReply:
        if (!data.empty()) {
          if (!error(opt, nbd::kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")) {
            return false;
          }
          break;
        }
        c->structured = true;
        if (!reply(opt, nbd::kRepAck)) return false;
        break;

      case nbd::kOptListMetaContext:
      case nbd::kOptSetMetaContext: {
        const bool set = opt == nbd::kOptSetMetaContext;
        if (!c->structured) {
          if (!error(opt, nbd::kRepErrInvalid, "structured replies are not negotiated")) {
            return false;
          }
          break;
        }
        auto req = nbd::ParseMetaContextRequest(data);
        if (!req.ok()) {
          if (!error(opt, nbd::kRepErrInvalid, req.status().message())) return false;
          break;
        }
        auto e = find(req->export_name);
        if (e == nullptr) {
          if (!error(opt, nbd::kRepErrUnknown,
                     fmt::format("unknown export '{}'", Printable(req->export_name)))) {
            return false;
          }
          break;
        }
        bool match = false;
        for (const std::string& q : req->queries) {
          match = match || q == nbd::kBaseAllocation || (!set && q == "base:");
        }
        if (!set && req->queries.empty()) match = true;  // LIST with no query lists all
        bool ok = true;
        if (match) {
          ok =
              reply(opt, nbd::kRepMetaContext,
                    nbd::EncodeMetaContextReply(set ? kBaseAllocationId : 0, nbd::kBaseAllocation));
        }
        if (set) {
          c->base_allocation = match;
          meta_export = e->name;
        }
        if (!ok || !reply(opt, nbd::kRepAck)) return false;
        break;
      }

      default:  // STARTTLS, EXTENDED_HEADERS and anything unknown
        QBD_LOG_DEBUG("nbd: {}: unsupported option {} ({})", c->peer, opt, nbd::OptionName(opt));
        if (!error(opt, nbd::kRepErrUnsup,
                   fmt::format("option {} is not supported", nbd::OptionName(opt)))) {
          return false;
        }
        break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Transmission

namespace {

// What a worker does after reading under the read lock.
enum class Next {
  kRun,            // execute the request
  kStop,           // no request: DISC, EOF or a fatal protocol error
  kRejectAndStop,  // reply EINVAL to the request (payload unread), then stop
};

// The command flags each command accepts (FUA is valid on every command, proto.md).
uint16_t AllowedFlags(uint16_t type, bool structured) {
  switch (type) {
    case nbd::kCmdRead:
      return nbd::kCmdFlagFua | (structured ? nbd::kCmdFlagDf : 0);
    case nbd::kCmdWriteZeroes:
      return nbd::kCmdFlagFua | nbd::kCmdFlagNoHole;
    case nbd::kCmdBlockStatus:
      return nbd::kCmdFlagFua | nbd::kCmdFlagReqOne;
    default:
      return nbd::kCmdFlagFua;
  }
}

}  // namespace

void NbdServer::Impl::Worker(Conn* c) {
  const Export& e = *c->exp;
  BlockHandler& h = *e.handler;
  PayloadBuffer payload;  // this worker's request data (see kKeptBufferSize)
  std::vector<nbd::BlockDescriptor> descs;
  std::string why;
  PayloadBudget::Hold hold;  // the budget the current request holds
  const int timeout = options.client_timeout_ms;

  for (;;) {
    nbd::Request req;
    Next next = Next::kRun;
    std::byte* buf = nullptr;
    {
      {
        std::lock_guard lk(c->workers_mu);
        ++c->idle;
      }
      std::unique_lock<std::timed_mutex> lk(c->read_mu, std::defer_lock);
      while (!lk.try_lock_for(std::chrono::milliseconds(kIdleWorkerMs))) {
        payload.Release();
        std::lock_guard wl(c->workers_mu);
        if (c->workers > 1) {
          --c->idle;
          return;  // another worker holds the turn to read: this one is not needed
        }
      }
      auto busy = [c] {
        std::lock_guard wl(c->workers_mu);
        --c->idle;
      };
      if (c->closing) {
        busy();
        return;
      }
      if (!payload.empty() && !c->in.buffered()) {
        // A quiet connection gives its buffer back before it waits for the next request.
        pollfd p = {c->fd, POLLIN, 0};
        if (::poll(&p, 1, kQuietReleaseMs) == 0) payload.Release();
      }
      std::array<std::byte, nbd::kRequestSize> hb;
      Read r = ReadMsg(c->fd, c->in, hb, &why, timeout, /*from_first_byte=*/true);
      busy();
      if (r != Read::kOk) {
        if (r == Read::kError) Warn(c, fmt::format("reading request: {}", why));
        c->closing = true;
        return;
      }
      auto parsed = nbd::ParseRequest(hb);
      if (!parsed.ok()) {
        Warn(c, fmt::format("bad request magic {:#010x}; closing", DecodeBE32(hb.data())));
        c->closing = true;
        return;
      }
      req = *parsed;
      if (req.type == nbd::kCmdDisc) {
        c->closing = true;
        return;
      }
      if (req.type == nbd::kCmdWrite) {
        if (req.length > e.max_payload) {
          c->closing = true;
          next = Next::kRejectAndStop;
        } else {
          buf = payload.Get(req.length);
          for (uint64_t got = 0; got < req.length;) {
            const uint64_t piece = std::min<uint64_t>(req.length - got, std::max(kFirstPiece, got));
            // Waits while the budget is spent: this connection is not read meanwhile.
            budget.Take(hold, piece, /*continuing=*/got > 0);
            r = ReadMsg(c->fd, c->in, std::span(buf + got, piece), &why, timeout);
            if (r != Read::kOk) {
              budget.Release(hold);
              Warn(c, fmt::format("reading write payload: {}", why.empty() ? "connection closed" : why));
              c->closing = true;
              return;
            }
            got += piece;
          }
        }
      }
    }
    MaybeAddWorker(c);

    uint32_t err = 0;
    std::string msg;
    auto reject = [&](uint32_t code, std::string text) {
      err = code;
      msg = std::move(text);
      Warn(c, fmt::format("{} offset {} length {} flags {:#x}: {}", nbd::CommandName(req.type),
                          req.offset, req.length, req.flags, msg));
    };
    auto fail = [&](const Status& s) {
      err = nbd::ErrnoToNbd(s.Errno());
      msg = s.ToString();
      Warn(c, fmt::format("{} offset {} length {}: {}", nbd::CommandName(req.type), req.offset,
                          req.length, msg));
    };
    size_t data_len = 0;  // READ data in buf
    bool block_status_reply = false;

    const uint16_t type = req.type;
    const bool known = type == nbd::kCmdRead || type == nbd::kCmdWrite || type == nbd::kCmdFlush ||
                       type == nbd::kCmdTrim || type == nbd::kCmdCache ||
                       type == nbd::kCmdWriteZeroes || type == nbd::kCmdBlockStatus;
    const bool writes =
        type == nbd::kCmdWrite || type == nbd::kCmdTrim || type == nbd::kCmdWriteZeroes;
    const uint64_t size = h.Size();
    if (next == Next::kRejectAndStop) {
      reject(nbd::kEinval, fmt::format("payload exceeds the maximum {}; closing", e.max_payload));
    } else if (!known) {
      reject(nbd::kEinval, "unknown command");
    } else if ((req.flags & ~AllowedFlags(type, c->structured)) != 0) {
      reject(nbd::kEinval, "unsupported command flags");
    } else if (writes && e.read_only) {
      reject(nbd::kEperm, "export is read-only");
    } else if (type == nbd::kCmdRead && req.length > e.max_payload) {
      reject(nbd::kEinval, fmt::format("length exceeds the maximum payload {}", e.max_payload));
    } else if (type != nbd::kCmdFlush && (req.offset > size || req.length > size - req.offset)) {
      const bool grows = type == nbd::kCmdWrite || type == nbd::kCmdWriteZeroes;
      const bool wraps = req.offset + req.length < req.offset;
      reject(grows && !wraps ? nbd::kEnospc : nbd::kEinval,
             fmt::format("range is beyond the export size {}", size));
    } else if (type == nbd::kCmdBlockStatus && !c->base_allocation) {
      reject(nbd::kEinval, "no meta context was negotiated");
    } else if (type == nbd::kCmdBlockStatus && req.length == 0) {
      reject(nbd::kEinval, "length 0");
    } else {
      const bool fua = (req.flags & nbd::kCmdFlagFua) != 0;
      Status s;
      switch (type) {
        case nbd::kCmdRead:
          if (req.length > 0) {
            budget.Take(hold, req.length, /*continuing=*/false);  // released after the reply
            buf = payload.Get(req.length);
            s = h.Read(req.offset, std::span(buf, req.length));
            if (s.ok()) data_len = req.length;
          }
          break;
        case nbd::kCmdWrite:
          if (req.length > 0) s = h.Write(req.offset, std::span(buf, req.length), fua);
          budget.Release(hold);
          break;
        case nbd::kCmdFlush:
          s = h.Flush();
          break;
        case nbd::kCmdTrim:
          if (req.length > 0) s = h.Trim(req.offset, req.length, fua);
          break;
        case nbd::kCmdWriteZeroes:
          if (req.length > 0) {
            s = h.WriteZeroes(req.offset, req.length,
                              /*may_trim=*/(req.flags & nbd::kCmdFlagNoHole) == 0, fua);
          }
          break;
        case nbd::kCmdCache:
          break;  // nothing to prefetch into: the range was checked
        case nbd::kCmdBlockStatus: {
          descs.clear();
          auto extents = h.BlockStatus(req.offset, req.length);
          if (extents.ok()) {
            uint64_t covered = 0;
            for (const Extent& x : *extents) {
              const uint64_t len = std::min<uint64_t>(x.length, req.length - covered);
              if (len == 0) continue;
              descs.push_back({static_cast<uint32_t>(len),
                               (x.hole ? nbd::kStateHole : 0u) | (x.zero ? nbd::kStateZero : 0u)});
              covered += len;
              if (covered == req.length || (req.flags & nbd::kCmdFlagReqOne) != 0) break;
            }
          } else if (!extents.status().IsNotSupported()) {
            s = extents.status();
          }
          // The handler cannot tell (or said nothing): all of it is allocated data.
          if (s.ok() && descs.empty()) descs.push_back({req.length, 0});
          block_status_reply = s.ok();
          break;
        }
      }
      if (!s.ok()) fail(s);
    }

    // Reply under the write lock, one sendmsg each.
    std::array<std::byte, nbd::kOffsetDataHeaderSize> head;
    std::vector<std::byte> owned;  // error chunks and block status (rare or small)
    std::span<const std::byte> first, second;
    if (err != 0) {
      if (c->structured) {
        owned = nbd::EncodeErrorChunk(req.cookie, nbd::kReplyFlagDone, err, msg);
        first = owned;
      } else {
        auto r = nbd::EncodeSimpleReply(err, req.cookie);
        std::copy(r.begin(), r.end(), head.begin());
        first = std::span(head.data(), r.size());
      }
    } else if (block_status_reply) {
      owned =
          nbd::EncodeBlockStatusChunk(req.cookie, nbd::kReplyFlagDone, kBaseAllocationId, descs);
      first = owned;
    } else if (type == nbd::kCmdRead && c->structured) {
      if (data_len > 0) {
        head = nbd::EncodeOffsetDataHeader(req.cookie, nbd::kReplyFlagDone, req.offset,
                                           static_cast<uint32_t>(data_len));
        first = head;
        second = std::span(buf, data_len);
      } else {
        auto r = nbd::EncodeNoneChunk(req.cookie, nbd::kReplyFlagDone);
        std::copy(r.begin(), r.end(), head.begin());
        first = std::span(head.data(), r.size());
      }
    } else {
      auto r = nbd::EncodeSimpleReply(0, req.cookie);
      std::copy(r.begin(), r.end(), head.begin());
      first = std::span(head.data(), r.size());
      if (data_len > 0) second = std::span(buf, data_len);
    }
    SendReply(c, first, second);
    budget.Release(hold);  // a READ's data is sent (or copied into the outbox); a rejected WRITE's
    if (next == Next::kRejectAndStop) return;
    payload.Done();
  }
}

void NbdServer::Impl::SendReply(Conn* c, std::span<const std::byte> a,
                                std::span<const std::byte> b) {
  std::unique_lock lk(c->write_mu);
  if (c->sending) {
    if (a.size() + b.size() <= kCoalesceMax) {
      c->outbox.insert(c->outbox.end(), a.begin(), a.end());
      c->outbox.insert(c->outbox.end(), b.begin(), b.end());
      return;  // Invariant: the sending worker sends the outbox before `sending` ends.
    }
    // Too big to copy: wait and send it ourselves. The sending worker stops after its current
    // batch and leaves the outbox to us, so a stream of small replies cannot hold us back.
    ++c->big_waiters;
    c->send_cv.wait(lk, [c] { return !c->sending; });
    --c->big_waiters;
  }
  c->sending = true;
  bool mine = true;  // our own reply still to send
  for (;;) {
    c->sendbuf.clear();
    c->sendbuf.swap(c->outbox);
    if (!mine && (c->sendbuf.empty() || c->big_waiters > 0)) {
      c->outbox.swap(c->sendbuf);  // what is left goes out with the next sender's reply
      break;
    }
    const bool failed = c->send_failed;
    lk.unlock();
    iovec iov[3];
    int n = 0;
    if (!c->sendbuf.empty()) iov[n++] = {c->sendbuf.data(), c->sendbuf.size()};
    if (mine && !a.empty()) iov[n++] = {const_cast<std::byte*>(a.data()), a.size()};
    if (mine && !b.empty()) iov[n++] = {const_cast<std::byte*>(b.data()), b.size()};
    const bool ok = failed || SendAll(c->fd, iov, n);
    const int send_err = errno;
    lk.lock();
    if (!ok && !c->send_failed) {
      c->send_failed = true;
      Warn(c, fmt::format("sending reply: {}; closing", std::strerror(send_err)));
      ::shutdown(c->fd, SHUT_RDWR);  // the reader sees EOF and the connection winds down
    }
    mine = false;
  }
  c->sending = false;
  lk.unlock();
  c->send_cv.notify_all();
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
