// Tests of NfsBackend (src/storage/nfs_backend.cc) against a fake NFSv3 server in this process.
//
// The fake is the smallest server libnfs 4 mounts and qbd uses: ONC RPC over TCP on 127.0.0.1
// (one port for MOUNT and NFS), MOUNT MNT and EXPORT, NFS FSINFO, GETATTR, LOOKUP, ACCESS, READ,
// WRITE and COMMIT, one export holding one file "f". Its knobs make the failures that a real
// server only shows under load or by chance: replies held back (a hung server), WRITE replies
// held until several are pending (proof that many calls share one connection), short READs, a
// new write verifier (a restart), ESTALE, and connections closed while idle. The real server
// (nfs-ganesha killed, stopped and restarted under load) is tests/integration/test_nfs.sh.
// Timeouts are 200 ms, so that each case ends well within a second.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "qbd/backend.h"
#include "testutil/tagged_blocks.h"

namespace qbd::test {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kMountProgram = 100005, kNfsProgram = 100003;
constexpr uint32_t kNfsOk = 0, kNfsErrNoEnt = 2, kNfsErrIo = 5, kNfsErrStale = 70;
constexpr uint32_t kMaxIo = 65536;  // FSINFO rtmax and wtmax

// XDR encoding and decoding (RFC 4506), big-endian.
class XdrOut {
 public:
  XdrOut& U32(uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b_.push_back(static_cast<char>(v >> s));
    return *this;
  }
  XdrOut& U64(uint64_t v) {
    return U32(static_cast<uint32_t>(v >> 32)).U32(static_cast<uint32_t>(v));
  }
  XdrOut& Opaque(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    return Fixed(s);
  }
  XdrOut& Fixed(std::string_view s) {
    b_.insert(b_.end(), s.begin(), s.end());
    while (b_.size() % 4 != 0) b_.push_back(0);
    return *this;
  }
  const std::string& bytes() const { return b_; }

 private:
  std::string b_;
};

class XdrIn {
 public:
  explicit XdrIn(std::string_view b) : b_(b) {}
  uint32_t U32() {
    if (pos_ + 4 > b_.size()) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = v << 8 | static_cast<uint8_t>(b_[pos_ + i]);
    pos_ += 4;
    return v;
  }
  uint64_t U64() {
    const uint64_t hi = U32();
    return hi << 32 | U32();
  }
  std::string Opaque() {
    const uint32_t n = U32();
    std::string s(b_.substr(std::min(pos_, b_.size()), n));
    pos_ += (n + 3) / 4 * 4;
    return s;
  }

 private:
  std::string_view b_;
  size_t pos_ = 0;
};

// fattr3 of the root directory (fileid 1) or of the file (fileid 7).
void Attrs(XdrOut& x, bool dir, uint64_t size) {
  x.U32(dir ? 2 : 1).U32(dir ? 0755 : 0644).U32(1).U32(0).U32(0).U64(size).U64(size);
  x.U32(0).U32(0).U64(1).U64(dir ? 1 : 7);
  for (int i = 0; i < 6; ++i) x.U32(0);  // atime, mtime, ctime
}

class FakeNfsServer {
 public:
  FakeNfsServer() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(::listen(listen_fd_, 64) == 0);
    socklen_t len = sizeof(a);
    REQUIRE(::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { Accept(); });
  }

  ~FakeNfsServer() {
    ::shutdown(listen_fd_, SHUT_RDWR);
    acceptor_.join();
    ::close(listen_fd_);
    std::unique_lock<std::mutex> l(mu_);
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
    cv_.wait(l, [&] { return open_ == 0; });
    l.unlock();
    for (std::thread& t : threads_) t.join();
  }

  std::string Url() const {
    return fmt::format("nfs://127.0.0.1/export?nfsport={}&mountport={}", port_, port_);
  }

  // Knobs and counters, safe to use while clients run.
  void HoldReplies(bool on) {
    Set([&] { hold_ = on; });
  }
  void BatchWrites(int n) {
    Set([&] { batch_ = n; });
  }
  void SetVerifier(char v) {
    Set([&] { verf_ = std::string(8, v); });
  }
  void LimitReads(uint32_t max_bytes) {
    Set([&] { read_limit_ = max_bytes; });
  }
  void StaleWrites() {
    Set([&] { stale_ = true; });
  }
  void FailWritesBelow(uint64_t offset) {
    Set([&] { fail_below_ = offset; });
  }
  int commits() const {
    return Get([&] { return commits_; });
  }
  int max_pending_writes() const {
    return Get([&] { return max_pending_; });
  }
  int nfs_connections() const {
    return Get([&] { return nfs_connections_; });
  }

  // Closes every connection from this side (a FIN, as ganesha's idle timeout sends) and waits until
  // the client has closed its end of each one too.
  bool DropConnections() {
    std::unique_lock<std::mutex> l(mu_);
    for (int fd : fds_) ::shutdown(fd, SHUT_WR);
    return cv_.wait_for(l, std::chrono::seconds(5), [&] { return open_ == 0; });
  }

  std::string data = std::string(256 << 10, '\0');  // the file "f"; set before clients start

 private:
  template <typename F>
  void Set(F f) {
    std::lock_guard<std::mutex> l(mu_);
    f();
  }
  template <typename F>
  int Get(F f) const {
    std::lock_guard<std::mutex> l(mu_);
    return f();
  }

  void Accept() {
    for (;;) {
      const int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      std::lock_guard<std::mutex> l(mu_);
      fds_.push_back(fd);
      ++open_;
      threads_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  static bool ReadFull(int fd, char* p, size_t n) {
    while (n > 0) {
      const ssize_t r = ::read(fd, p, n);
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }

  void Serve(int fd) {
    std::vector<std::string> pending;  // WRITE replies held for a batch
    bool counted = false;
    for (;;) {
      char mark[4];
      if (!ReadFull(fd, mark, 4)) break;
      const uint32_t len = (static_cast<uint32_t>(static_cast<uint8_t>(mark[0]) & 0x7f) << 24) |
                           static_cast<uint32_t>(static_cast<uint8_t>(mark[1])) << 16 |
                           static_cast<uint32_t>(static_cast<uint8_t>(mark[2])) << 8 |
                           static_cast<uint8_t>(mark[3]);
      std::string msg(len, '\0');
      if (!ReadFull(fd, msg.data(), len)) break;
      std::lock_guard<std::mutex> l(mu_);
      XdrIn in(msg);
      const uint32_t xid = in.U32();
      in.U32();  // CALL
      in.U32();  // RPC version 2
      const uint32_t prog = in.U32();
      in.U32();  // program version
      const uint32_t proc = in.U32();
      in.U32();  // credential flavor
      in.Opaque();
      in.U32();  // verifier flavor
      in.Opaque();
      if (prog == kNfsProgram && !counted) {
        counted = true;
        ++nfs_connections_;
      }
      XdrOut out;
      out.U32(0).U32(xid).U32(1).U32(0).U32(0).U32(0).U32(0);  // marker, REPLY, ACCEPTED, SUCCESS
      const bool is_write = prog == kNfsProgram && proc == 7;
      Handle(prog, proc, in, out);
      if (hold_) continue;  // a hung server: never answers
      std::string reply = out.bytes();
      const uint32_t n = static_cast<uint32_t>(reply.size() - 4) | 0x80000000u;
      for (int i = 0; i < 4; ++i) reply[i] = static_cast<char>(n >> (24 - 8 * i));
      if (is_write && batch_ > 1) {
        pending.push_back(std::move(reply));
        max_pending_ = std::max(max_pending_, static_cast<int>(pending.size()));
        if (static_cast<int>(pending.size()) < batch_) continue;
        for (const std::string& r : pending) Send(fd, r);
        pending.clear();
        continue;
      }
      if (is_write) max_pending_ = std::max(max_pending_, 1);
      Send(fd, reply);
    }
    std::lock_guard<std::mutex> l(mu_);
    ::close(fd);
    fds_.erase(std::find(fds_.begin(), fds_.end(), fd));
    --open_;
    cv_.notify_all();
  }

  static void Send(int fd, const std::string& r) {
    if (::send(fd, r.data(), r.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(r.size())) {
      // The client went away; its next read ends this connection.
    }
  }

  // Appends the results of procedure `proc` of `prog` with arguments `in` to `out`.
  void Handle(uint32_t prog, uint32_t proc, XdrIn& in, XdrOut& out) {
    if (proc == 0) return;  // NULL
    if (prog == kMountProgram) {
      if (proc == 1) out.U32(0).Opaque("root").U32(1).U32(1);  // MNT: handle, AUTH_UNIX
      if (proc == 5) out.U32(0);                               // EXPORT: no (nested) exports
      return;
    }
    const std::string fh = in.Opaque();
    const bool dir = fh == "root";
    switch (proc) {
      case 1:  // GETATTR
        out.U32(kNfsOk);
        Attrs(out, dir, dir ? 4096 : data.size());
        break;
      case 3:  // LOOKUP
        if (dir && in.Opaque() == "f") {
          out.U32(kNfsOk).Opaque("file").U32(1);
          Attrs(out, false, data.size());
          out.U32(0);
        } else {
          out.U32(kNfsErrNoEnt).U32(0);
        }
        break;
      case 4:  // ACCESS: everything asked for
        out.U32(kNfsOk).U32(0).U32(in.U32());
        break;
      case 6: {  // READ
        const uint64_t at = in.U64();
        uint32_t count = std::min(in.U32(), read_limit_);
        if (at >= data.size()) count = 0;
        count = static_cast<uint32_t>(
            std::min<uint64_t>(count, data.size() - std::min<uint64_t>(at, data.size())));
        out.U32(kNfsOk).U32(0).U32(count).U32(at + count >= data.size() ? 1 : 0);
        out.Opaque(std::string_view(data).substr(std::min<uint64_t>(at, data.size()), count));
        break;
      }
      case 7: {  // WRITE: UNSTABLE, whatever was asked
        const uint64_t at = in.U64();
        in.U32();
        in.U32();
        const std::string bytes = in.Opaque();
        if (stale_ || at < fail_below_) {
          out.U32(stale_ ? kNfsErrStale : kNfsErrIo).U32(0).U32(0);
          break;
        }
        if (at + bytes.size() > data.size()) data.resize(at + bytes.size());
        data.replace(at, bytes.size(), bytes);
        out.U32(kNfsOk).U32(0).U32(0).U32(static_cast<uint32_t>(bytes.size())).U32(0).Fixed(verf_);
        break;
      }
      case 19:  // FSINFO
        out.U32(kNfsOk).U32(0).U32(kMaxIo).U32(kMaxIo).U32(4096).U32(kMaxIo).U32(kMaxIo);
        out.U32(4096).U32(4096).U64(~0ull).U32(0).U32(1).U32(0x1b);
        break;
      case 21:  // COMMIT
        ++commits_;
        out.U32(kNfsOk).U32(0).U32(0).Fixed(verf_);
        break;
      default:
        out.U32(10004);  // NFS3ERR_NOTSUPP
        break;
    }
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::thread acceptor_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;  // guarded by mu_
  std::vector<int> fds_;              // guarded by mu_: open connections
  int open_ = 0;                      // guarded by mu_
  bool hold_ = false;
  int batch_ = 1;
  bool stale_ = false;
  uint64_t fail_below_ = 0;
  int commits_ = 0;
  uint32_t read_limit_ = kMaxIo;
  std::string verf_ = std::string(8, 'a');
  int max_pending_ = 0;
  int nfs_connections_ = 0;
};

std::unique_ptr<StorageBackend> Connect(const FakeNfsServer& server, int contexts) {
  NfsOptions o;
  o.timeout_ms = 200;
  o.contexts = contexts;
  auto b = NewNfsBackend(server.Url(), o);
  REQUIRE_MESSAGE(b.ok(), b.status().ToString());
  return std::move(*b);
}

std::unique_ptr<ChunkFile> OpenF(StorageBackend& b) {
  auto f = b.Open("f");
  REQUIRE_MESSAGE(f.ok(), f.status().ToString());
  return std::move(*f);
}

std::vector<std::byte> Pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<std::byte>((i * 7 + static_cast<size_t>(seed)) % 251);
  return v;
}

int64_t MsSince(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

TEST_SUITE("nfs_backend") {
TEST_CASE("many writes are in flight at once on one connection") {
  FakeNfsServer server;
  auto backend = Connect(server, /*contexts=*/1);
  auto f = OpenF(*backend);
  server.BatchWrites(8);  // no WRITE is answered until 8 are pending
  std::vector<std::thread> writers;
  std::vector<Status> results(8);
  for (int i = 0; i < 8; ++i) {
    writers.emplace_back([&, i] {
      const auto block = Pattern(4096, i);
      results[i] = f->WriteAt(static_cast<uint64_t>(i) * 4096, block);
    });
  }
  for (std::thread& t : writers) t.join();
  for (const Status& s : results) CHECK_MESSAGE(s.ok(), s.ToString());
  CHECK(server.max_pending_writes() == 8);
  CHECK(server.nfs_connections() == 1);
  CHECK(std::memcmp(server.data.data() + 5 * 4096, Pattern(4096, 5).data(), 4096) == 0);
}

TEST_CASE("a read larger than the server's maximum goes out in parts and lands in every buffer") {
  FakeNfsServer server;
  const auto content = Pattern(server.data.size(), 3);
  std::memcpy(server.data.data(), content.data(), content.size());
  auto backend = Connect(server, 2);
  auto f = OpenF(*backend);
  // 3 x 64 KiB + 16 bytes in two interleaved buffers, as a chunk's records are read.
  std::vector<std::byte> a(100000), b(kMaxIo * 3 + 16 - 100000);
  const std::span<std::byte> spans[] = {a, b};
  SUBCASE("whole replies") { REQUIRE(f->ReadAtV(1000, spans).ok()); }
  SUBCASE("short replies: the rest is asked for again") {
    server.LimitReads(10000);
    REQUIRE(f->ReadAtV(1000, spans).ok());
  }
  CHECK(std::memcmp(a.data(), content.data() + 1000, a.size()) == 0);
  CHECK(std::memcmp(b.data(), content.data() + 1000 + a.size(), b.size()) == 0);
}

TEST_CASE("a read past the end of the file is Corruption") {
  FakeNfsServer server;
  auto backend = Connect(server, 1);
  auto f = OpenF(*backend);
  std::vector<std::byte> out(8192);
  Status s = f->ReadAt(server.data.size() - 4096, out);
  CHECK(s.code() == Status::Code::kCorruption);
  CHECK(s.message().find("short read") != std::string::npos);
}

TEST_CASE("calls to a server that stops answering fail after the timeout, then fail fast") {
  QuietLog quiet;  // "unreachable ... retrying in 1 s"
  FakeNfsServer server;
  auto backend = Connect(server, 2);
  auto f = OpenF(*backend);
  server.HoldReplies(true);
  const auto block = Pattern(4096, 1);
  std::vector<Status> results(4);
  const auto t0 = Clock::now();
  std::vector<std::thread> writers;
  for (int i = 0; i < 4; ++i) {
    writers.emplace_back(
        [&, i] { results[i] = f->WriteAt(static_cast<uint64_t>(i) * 4096, block); });
  }
  for (std::thread& t : writers) t.join();
  const int64_t ms = MsSince(t0);
  for (const Status& s : results) {
    CHECK(s.code() == Status::Code::kIOError);
    CHECK(s.Errno() == EIO);
  }
  CHECK(ms >= 150);
  CHECK(ms < 2000);
  // The breaker is open: the next call fails at once, without waiting for a timeout.
  const auto t1 = Clock::now();
  Status s = f->WriteAt(0, block);
  CHECK(MsSince(t1) < 100);
  CHECK(s.message().find("unreachable (reconnect in 1 s)") != std::string::npos);
}

TEST_CASE("Sync fails when the write verifier changed since the writes it covers") {
  FakeNfsServer server;
  auto backend = Connect(server, 1);
  auto f = OpenF(*backend);
  const auto block = Pattern(4096, 2);
  REQUIRE(f->WriteAt(0, block).ok());
  REQUIRE(f->Sync().ok());
  REQUIRE(f->WriteAt(4096, block).ok());
  server.SetVerifier('b');  // the server restarted before the COMMIT
  Status s = f->Sync();
  CHECK(s.code() == Status::Code::kIOError);
  CHECK(s.message().find("write verifier changed") != std::string::npos);
  SUBCASE("and the next writes and Sync are trusted again") {
    REQUIRE(f->WriteAt(8192, block).ok());
    CHECK(f->Sync().ok());
  }
}

TEST_CASE("a write whose first part fails still has its other parts committed by Sync") {
  FakeNfsServer server;
  auto backend = Connect(server, 2);
  auto f = OpenF(*backend);
  server.FailWritesBelow(kMaxIo);  // of the two 64 KiB WRITEs below, the first fails
  Status s = f->WriteAt(0, Pattern(2 * kMaxIo, 6));
  CHECK(s.code() == Status::Code::kIOError);
  CHECK(s.Errno() == EIO);
  REQUIRE(f->Sync().ok());
  CHECK(server.commits() == 1);  // the second part's UNSTABLE data was counted
}

TEST_CASE("a file the server calls stale is detached") {
  FakeNfsServer server;
  auto backend = Connect(server, 1);
  auto f = OpenF(*backend);
  CHECK_FALSE(f->Detached());
  server.StaleWrites();
  Status s = f->WriteAt(0, Pattern(4096, 4));
  CHECK(s.Errno() == ESTALE);
  CHECK(f->Detached());
}

TEST_CASE("connections the server closed while idle are replaced without an outage") {
  FakeNfsServer server;
  auto backend = Connect(server, 2);
  auto f = OpenF(*backend);
  std::vector<std::byte> out(4096);
  REQUIRE(f->ReadAt(0, out).ok());
  REQUIRE(server.DropConnections());  // the client closed its ends too: it noticed
  Status s = f->ReadAt(4096, out);
  CHECK_MESSAGE(s.ok(), s.ToString());
  CHECK(server.nfs_connections() >= 2);
}
}  // TEST_SUITE("nfs_backend")

}  // namespace
}  // namespace qbd::test
