// Implements include/qbd/admin.h.
#include "qbd/admin.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "qbd/chunk_format.h"
#include "qbd/log.h"
#include "qbd/scrub.h"

namespace qbd {
namespace {

Result<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path)) {
    return Status::InvalidArgument(
        fmt::format("admin socket {}: path longer than {} bytes (set admin_socket)", path,
                    sizeof(a.sun_path) - 1));
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

bool SendAll(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    s.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads up to and including the next '\n' into *line (without it). False at EOF or error.
bool ReadLine(int fd, std::string& buf, std::string* line) {
  for (;;) {
    size_t nl = buf.find('\n');
    if (nl != std::string::npos) {
      *line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      return true;
    }
    char tmp[4096];
    ssize_t n = ::recv(fd, tmp, sizeof(tmp), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf.append(tmp, static_cast<size_t>(n));
    if (buf.size() > (1u << 20)) return false;  // no request is that long
  }
}

std::string WireRanges(const std::vector<uint64_t>& blocks) {
  std::string s = FormatRanges(blocks);
  std::erase(s, ' ');
  return s.empty() ? "-" : s;
}

Result<std::vector<uint64_t>> ParseRanges(std::string_view s) {
  std::vector<uint64_t> out;
  if (s == "-") return out;
  while (!s.empty()) {
    size_t comma = s.find(',');
    std::string_view item = s.substr(0, comma);
    s = comma == std::string_view::npos ? std::string_view() : s.substr(comma + 1);
    size_t dash = item.find('-');
    uint64_t a = 0, b = 0;
    auto num = [](std::string_view t, uint64_t* v) {
      auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), *v);
      return ec == std::errc() && end == t.data() + t.size();
    };
    if (!num(item.substr(0, dash), &a))
      return Status::Corruption(fmt::format("bad block range '{}'", item));
    b = a;
    if (dash != std::string_view::npos && !num(item.substr(dash + 1), &b)) {
      return Status::Corruption(fmt::format("bad block range '{}'", item));
    }
    // A chunk has at most 2^21 blocks (1 GiB of 512-byte blocks): no reply names a block past
    // that or lists more. Bounding b also keeps the sum below and the loop after it from wrapping.
    constexpr uint64_t kMaxChunkBlocks = kMaxChunkSize / kMinBlockSize;
    if (b < a || b >= kMaxChunkBlocks || b - a + out.size() >= kMaxChunkBlocks) {
      return Status::Corruption(fmt::format("bad block range '{}'", item));
    }
    for (uint64_t x = a; x <= b; ++x) out.push_back(x);
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ProcessLock

Result<std::unique_ptr<ProcessLock>> ProcessLock::Acquire(const std::string& path,
                                                          const std::string& who) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno("open " + path, errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[256] = {};
    ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
    ::close(fd);
    std::string holder =
        n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("another process");
    while (!holder.empty() && holder.back() == '\n') holder.pop_back();
    if (err == EWOULDBLOCK)
      return Status::Unavailable(fmt::format("{} is held by {}", path, holder));
    return Status::FromErrno("flock " + path, err);
  }
  std::string text = fmt::format("{} (pid {})\n", who, ::getpid());
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, text.data(), text.size(), 0) < 0) {
    QBD_LOG_WARN("{}: cannot record the pid: {}", path, std::strerror(errno));
  }
  std::unique_ptr<ProcessLock> l(new ProcessLock());
  l->fd_ = fd;
  return l;
}

ProcessLock::~ProcessLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

// ---------------------------------------------------------------------------------------------
// AdminServer

Result<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& path, Handler handler) {
  QBD_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno("socket", errno);
  ::unlink(path.c_str());  // a stale socket of a daemon that died; the lock says none runs
  const mode_t old = ::umask(077);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::umask(old);
  if (rc != 0 || ::listen(fd, 16) != 0) {
    Status s = Status::FromErrno("admin socket " + path, errno);
    ::close(fd);
    return s;
  }
  std::unique_ptr<AdminServer> srv(new AdminServer());
  srv->path_ = path;
  srv->handler_ = std::move(handler);
  srv->listen_fd_ = fd;
  srv->accept_thread_ = std::thread([s = srv.get()] { s->AcceptLoop(); });
  return srv;
}

AdminServer::~AdminServer() {
  stop_.store(true);
  ::shutdown(listen_fd_, SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  ::close(listen_fd_);
  std::vector<std::thread> conns;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (int fd : conn_fds_) ::shutdown(fd, SHUT_RDWR);
    conns.swap(conns_);
  }
  for (auto& t : conns) t.join();
  ::unlink(path_.c_str());
}

void AdminServer::AcceptLoop() {
  while (!stop_.load()) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::lock_guard<std::mutex> l(mu_);
    if (stop_.load()) {
      ::close(fd);
      break;
    }
    conn_fds_.push_back(fd);
    conns_.emplace_back([this, fd] { Serve(fd); });
  }
}

void AdminServer::Serve(int fd) {
  std::string buf, line;
  while (!stop_.load() && ReadLine(fd, buf, &line)) {
    std::vector<std::string> words = SplitAdminRequest(line);
    if (words.empty()) continue;
    Result<std::string> r = handler_(words);
    std::string reply;
    if (r.ok()) {
      reply = *r;
      if (!reply.empty() && reply.back() != '\n') reply += '\n';
      reply += "end\n";
    } else {
      std::string msg = r.status().ToString();
      std::replace(msg.begin(), msg.end(), '\n', ' ');
      reply = "error " + msg + "\n";
    }
    if (!SendAll(fd, reply)) break;
  }
  std::lock_guard<std::mutex> l(mu_);
  std::erase(conn_fds_, fd);
  ::close(fd);
}

// ---------------------------------------------------------------------------------------------
// Requests

std::vector<std::string> SplitAdminRequest(std::string_view line) {
  std::istringstream in{std::string(line)};
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

Result<AdminRepairRequest> ParseRepairRequest(const std::vector<std::string>& words) {
  if (words.size() < 3) {
    return Status::InvalidArgument("usage: repair VOLUME CHUNK [dry-run] [targets=MASK] [accept-loss]");
  }
  AdminRepairRequest r;
  r.volume = words[1];
  auto [end, ec] = std::from_chars(words[2].data(), words[2].data() + words[2].size(), r.chunk);
  if (ec != std::errc() || end != words[2].data() + words[2].size()) {
    return Status::InvalidArgument("repair: CHUNK is not a number");
  }
  for (size_t i = 3; i < words.size(); ++i) {
    if (words[i] == "dry-run") {
      r.options.dry_run = true;
    } else if (words[i] == "accept-loss") {
      r.options.accept_loss = true;
    } else if (words[i].rfind("targets=", 0) == 0) {
      r.options.targets = static_cast<uint32_t>(std::strtoul(words[i].c_str() + 8, nullptr, 10));
    } else {
      return Status::InvalidArgument(fmt::format("repair: unknown option '{}'", words[i]));
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// AdminClient

Result<std::unique_ptr<AdminClient>> AdminClient::Connect(const std::string& path) {
  QBD_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno("socket", errno);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    Status s = Status::Unavailable(
        fmt::format("no qbd-master answers on {}: {}", path, std::strerror(errno)));
    ::close(fd);
    return s;
  }
  std::unique_ptr<AdminClient> c(new AdminClient());
  c->fd_ = fd;
  return c;
}

AdminClient::~AdminClient() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::string> AdminClient::Call(const std::string& request) {
  if (!SendAll(fd_, request + "\n"))
    return Status::Unavailable("qbd-master closed the admin connection");
  std::string out, line;
  for (;;) {
    if (!ReadLine(fd_, buf_, &line))
      return Status::Unavailable("qbd-master closed the admin connection");
    if (line == "end") return out;
    if (out.empty() && line.rfind("error ", 0) == 0)
      return Status::IOError("qbd-master: " + line.substr(6));
    out += line + "\n";
  }
}

// ---------------------------------------------------------------------------------------------
// Repair reports on the wire:
//   chunk N read=R written=W
//   action TARGET SOURCES WHOLE REASON BLOCKS [ERROR...]
//   lost BLOCKS / unknown BLOCKS / accepted BLOCKS / note TEXT

std::string EncodeRepairReport(const ChunkRepairReport& r) {
  std::string out =
      fmt::format("chunk {} read={} written={}\n", r.chunk, r.bytes_read, r.bytes_written);
  for (const RepairAction& a : r.actions) {
    std::string err = a.error;
    std::replace(err.begin(), err.end(), '\n', ' ');
    out += fmt::format("action {} {} {} {} {}{}{}\n", a.target, a.sources.empty() ? "-" : a.sources,
                       a.whole_file ? 1 : 0, a.reason, WireRanges(a.blocks), err.empty() ? "" : " ",
                       err);
  }
  if (!r.lost.empty()) out += "lost " + WireRanges(r.lost) + "\n";
  if (!r.unknown.empty()) out += "unknown " + WireRanges(r.unknown) + "\n";
  if (!r.accepted.empty()) out += "accepted " + WireRanges(r.accepted) + "\n";
  for (const std::string& n : r.notes) out += "note " + n + "\n";
  return out;
}

Result<ChunkRepairReport> DecodeRepairReport(const std::string& text) {
  ChunkRepairReport r;
  std::istringstream in(text);
  std::string line;
  auto bad = [&] {
    return Status::Corruption(fmt::format("malformed repair reply line '{}'", line));
  };
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string kind;
    ls >> kind;
    if (kind == "chunk") {
      std::string rd, wr;
      auto num = [](const std::string& t, size_t skip, uint64_t* v) {
        auto [end, ec] = std::from_chars(t.data() + skip, t.data() + t.size(), *v);
        return ec == std::errc() && end == t.data() + t.size();
      };
      if (!(ls >> r.chunk >> rd >> wr) || rd.rfind("read=", 0) != 0 ||
          wr.rfind("written=", 0) != 0 || !num(rd, 5, &r.bytes_read) ||
          !num(wr, 8, &r.bytes_written)) {
        return bad();
      }
    } else if (kind == "action") {
      RepairAction a;
      std::string target, sources, blocks;
      int whole = 0;
      if (!(ls >> target >> sources >> whole >> a.reason >> blocks) || target.size() != 1)
        return bad();
      a.target = target[0];
      a.sources = sources == "-" ? "" : sources;
      a.whole_file = whole != 0;
      QBD_ASSIGN_OR_RETURN(a.blocks, ParseRanges(blocks));
      std::getline(ls >> std::ws, a.error);
      r.actions.push_back(std::move(a));
    } else if (kind == "lost" || kind == "unknown" || kind == "accepted") {
      std::string blocks;
      if (!(ls >> blocks)) return bad();
      QBD_ASSIGN_OR_RETURN(auto v, ParseRanges(blocks));
      (kind == "lost" ? r.lost : kind == "unknown" ? r.unknown : r.accepted) = std::move(v);
    } else if (kind == "note") {
      std::string note;
      std::getline(ls >> std::ws, note);
      r.notes.push_back(note);
    } else if (!kind.empty()) {
      return bad();
    }
  }
  return r;
}

}  // namespace qbd
