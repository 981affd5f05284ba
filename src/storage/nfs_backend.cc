// NfsBackend: a StorageBackend on one NFSv3 export, reached through userspace libnfs (no kernel
// mount). This file has the URL checks, NfsFile and NfsBackend. The private nfs_client.h declares
// the Client (contexts, the loop thread, reconnects) and the asynchronous calls, defined in
// nfs_client.cc and nfs_call.cc. These four files are the only ones that include <nfsc/libnfs.h>
// (through nfs_client.h). The notes below cover all of them.
//
// Contexts and the loop. libnfs 4.0 (Debian 12) is not thread-safe per nfs_context, so each of the
// backend's `NfsOptions::contexts` contexts (each its own TCP connection and mount) has a mutex,
// held for every libnfs call on it, and any number of calls are in flight on one context, as in
// qemu's nfs:// driver. A caller (a ChunkFile or backend method) describes its call (a Call on its
// stack), starts it itself on the context with the fewest calls in flight (encodes it and sends
// it, under that context's mutex) and sleeps on the call's futex. One thread per backend, the
// loop, polls every context's socket in one poll(), runs libnfs' callbacks for the replies
// (nfs_service, under the context's mutex) and wakes each caller as its reply arrives; it also
// fails calls that timed out and destroys contexts whose connection failed. Why, measured on
// 2 cores (one nfs-ganesha on 127.0.0.1, fio through qbd-master): lending each context to one
// caller per call cost 45-60 us of qbd-master CPU and 4 context switches per 4 KiB write (callers
// waiting for a free context, all woken at each release, each polling its own socket twice),
// against 17-22 us and 0.3 switches for qemu-nbd on nfs://; now 30-40 us and 2 switches.
// Handing the calls to the loop to send as well cost 1 MiB writes a fifth of their throughput:
// the loop then did every WRITE's encoding and its copy into the socket alone (68% of
// qbd-master's CPU on that one thread), which callers do side by side.
//
// Calls. Every call is one of libnfs' asynchronous functions (nfs_*_async, or a raw NFSv3 RPC)
// whose callback fills in the Call. Every started call completes: with the server's answer, with
// a timeout (libnfs checks them in nfs_service, which the loop runs at least every 100 ms on every
// context with calls in flight), or cancelled when its context is destroyed (libnfs calls back
// every pending request then). So a Call can live on its caller's stack. A context is created and
// mounted (nfs_mount, synchronous) on the thread of the caller that needs it and published to the
// others only once it works; the first mount also finds the export (see Connect).
//
// File handles. An NFSv3 file handle is the server's name for the file, valid on any connection to
// that server and across reconnects (libnfs' struct nfsfh holds the handle bytes and no pointer to
// the context that opened it; nfs_destroy_context does not free handles). So a ChunkFile is not
// pinned to a context: each call goes to any connected one, and a reconnect never makes a handle
// stale (a handle is stale only when the server dropped the file: ESTALE). The calls used on a
// handle (fstat, ftruncate, raw READ, WRITE and COMMIT) do not modify struct nfsfh, so the calls
// of one NfsFile run concurrently.
//
// Reads and writes. READ, WRITE and COMMIT go out as raw NFSv3 RPCs (rpc_nfs3_*_async) on the
// context's RPC layer. READ: libnfs' nfs_pread copies a read larger than the server's maximum
// (a 1 MiB read of qbd's 4112-byte records is 1 MiB + 4 KiB) into a fresh reassembly buffer, then
// into ours; here each RPC's reply is copied once, from libnfs' receive buffer straight into the
// caller's buffers (ReadAtV: data and record metadata apart), which halved qbd-master's CPU per
// 1 MiB read. A read or write larger than the server's maximum is split into RPCs sent together,
// on several contexts (see NfsFile::Transfer). WRITE and COMMIT are raw because
// nfs_pwrite/nfs_fsync drop the write verifier. WRITEs are UNSTABLE; the server returns its
// verifier, which changes when it restarts. An NfsFile remembers the verifier of its first WRITE
// since the last COMMIT; a later WRITE or the COMMIT that returns another one means the server
// restarted in between and may have dropped those writes (RFC 1813 §3.3.21): Sync() then fails, so
// that the caller treats the writes since the previous Sync as lost (qbd resyncs those chunks from
// the other parts) instead of trusting them. libnfs 6 (LIBNFS_API_V2) renamed the raw calls
// rpc_nfs3_*_task; this file is written for libnfs 4 and 5.
//
// Failures and reconnects. Every context is set up with nfs_set_timeout(timeout_ms) and
// nfs_set_autoreconnect(0) before nfs_mount, so a call to a dead or hung server fails (libnfs:
// -EINTR "Command timed out") instead of blocking forever, and TCP_SYNCNT is lowered so that a
// connect to an unreachable host also gives up after about the timeout. An error that means the
// connection is gone (a failed socket, a timeout, reset, refused, EPIPE, ENOTCONN) makes the loop
// destroy that context, which fails its other calls at once; a new context is connected when a
// caller next needs one. A context the server closed while it had no calls in flight (ganesha does
// after RPC_Idle_Timeout_S, 5 min by default) is dropped quietly: nothing was lost. The backend as
// a whole then behaves as a circuit breaker, because one broken connection almost always means a
// dead or hung server and the other contexts share its fate:
//   - the failure drops every context without calls in flight too and opens the breaker for the
//     backoff period (1 s, doubled after each failed retry, capped at 10 s); while it is open every
//     call fails at once with IOError "nfs://... unreachable (reconnect in N s)", so a dead server
//     costs one timeout, not one per context or per call;
//   - after the period one call (the trial) goes through, reconnecting if no context is left; the
//     others keep failing fast until it ends. Any call that gets an answer from the server closes
//     the breaker and resets the backoff; a failed trial doubles it. Calls still in flight when the
//     breaker opened do not extend it.
// Reconnects therefore happen at most once per second. No lock is held while waiting for a reply,
// a connect or a sleep (there are no sleeps: callers fail fast or wait for their own calls).
//
// Thread-safety: NfsBackend is safe for concurrent use; so is an NfsFile (its COMMITs are
// serialized). Lock order: NfsFile::commit_mu_, then Client::Slot::mu (a context's), then
// Client::mu_; NfsFile::state_mu_ is taken alone. NfsFile and NfsBackend share the Client
// (shared_ptr), so a file may outlive its backend; the loop thread ends with the Client.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "qbd/backend.h"
#include "qbd/log.h"
#include "storage/nfs_client.h"

namespace qbd {
namespace {

using nfs_client::Call;
using nfs_client::Client;
using nfs_client::Clock;
using nfs_client::ConnectionBroken;
using nfs_client::NfsUrl;
using nfs_client::OnReply;
using nfs_client::OnRpcReply;
using nfs_client::ReadTarget;
using nfs_client::WriteVerdict;

// How often NfsFile::Detached() really asks the server.
constexpr std::chrono::nanoseconds kDetachCheckInterval = std::chrono::seconds(1);
// One ReadAtV/WriteAt round sends at most this much at once; a longer call takes several rounds.
constexpr uint64_t kMaxIoPerRound = 16u << 20;

// nfs://HOST/EXPORT[/SUBDIR][?key=value&...], checked before libnfs sees it (libnfs ignores
// unknown arguments, which would hide a typo such as "nfs_port").
Result<NfsUrl> ParseNfsUrl(const std::string& url) {
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument(fmt::format("nfs url '{}': {}", url, why));
  };
  if (url.rfind("nfs://", 0) != 0) return bad("does not start with nfs://");
  std::string_view rest = std::string_view(url).substr(6);
  const size_t q = rest.find('?');
  std::string_view query = q == std::string_view::npos ? std::string_view() : rest.substr(q + 1);
  rest = rest.substr(0, q);
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return bad("no export path (nfs://HOST/EXPORT)");
  NfsUrl u;
  u.host = std::string(rest.substr(0, slash));
  if (u.host.empty()) return bad("no server");
  if (u.host.find(':') != std::string::npos)
    return bad("a port goes in ?nfsport=N&mountport=M, not in the host");
  std::string_view path = rest.substr(slash);
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (path == "/") return bad("no export path (nfs://HOST/EXPORT)");
  size_t pos = 1;
  while (pos <= path.size()) {
    size_t end = path.find('/', pos);
    if (end == std::string_view::npos) end = path.size();
    std::string_view comp = path.substr(pos, end - pos);
    if (comp.empty() || comp == "." || comp == "..")
      return bad("empty, '.' or '..' path component");
    pos = end + 1;
  }
  u.path = std::string(path);
  while (!query.empty()) {
    const size_t amp = query.find('&');
    std::string_view arg = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (arg.empty()) continue;
    const size_t eq = arg.find('=');
    if (eq == std::string_view::npos)
      return bad(fmt::format("argument '{}' is not key=value", arg));
    std::string_view key = arg.substr(0, eq), value = arg.substr(eq + 1);
    if (key == "nfsport" || key == "mountport" || key == "uid" || key == "gid" ||
        key == "tcp-syncnt") {
      int n = 0;
      for (char c : value) {
        if (c < '0' || c > '9' || n > 100000000)
          return bad(fmt::format("{}={} is not a number", key, value));
        n = n * 10 + (c - '0');
      }
      if (value.empty()) return bad(fmt::format("{}= has no value", key));
      if ((key == "nfsport" || key == "mountport") && (n < 1 || n > 65535)) {
        return bad(fmt::format("{}={} is not a port", key, value));
      }
      if (key == "nfsport") u.nfsport = n;
    } else if (key == "version") {
      if (value != "3")
        return bad("only NFS version 3 is supported (libnfs 4.0's NFSv4 cannot write)");
    } else {
      // readahead, pagecache, dircache and autoreconnect would break the consistency and
      // reconnect rules of this file; the rest are not needed.
      return bad(fmt::format(
          "unsupported argument '{}' (nfsport, mountport, uid, gid, tcp-syncnt, version=3)", key));
    }
  }
  return u;
}

// Backend paths are relative and never contain "..".
Status CheckPath(std::string_view path) {
  if (!path.empty() && path.front() == '/')
    return Status::InvalidArgument(fmt::format("path '{}' is absolute", path));
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t end = path.find('/', pos);
    if (end == std::string_view::npos) end = path.size();
    if (path.substr(pos, end - pos) == "..") {
      return Status::InvalidArgument(fmt::format("path '{}' has a '..' component", path));
    }
    pos = end + 1;
  }
  return Status::OK();
}

// The file handle bytes behind nfs_get_fh(): libnfs declares struct nfs_fh only in its private
// header; this is its layout, unchanged from libnfs 1.x through 6 ({int len; char *val;}).
struct LibnfsFh {
  int len;
  char* val;
};

class NfsFile final : public ChunkFile {
 public:
  NfsFile(std::shared_ptr<Client> client, nfsfh* fh, std::string path, uint64_t ino)
      : client_(std::move(client)),
        fh_(fh),
        path_(std::move(path)),
        name_(client_->Name(path_)),
        ino_(ino) {}

  ~NfsFile() override {
    if (written_ != committed_) {
      // Whoever dropped the file without a Sync gets no answer; the writes still get their COMMIT.
      Status s = Commit();
      if (!s.ok()) QBD_LOG_WARN("closing {}: {}", name_, s.ToString());
    }
    client_->Close(fh_);
  }

  Status ReadAt(uint64_t offset, std::span<std::byte> out) override {
    const std::span<std::byte> one[] = {out};
    return ReadAtV(offset, one);
  }

  // Raw READs whose replies land in `out` directly; see "Reads and writes" above.
  Status ReadAtV(uint64_t offset, std::span<const std::span<std::byte>> out) override {
    uint64_t total = 0;
    for (const auto& o : out) total += o.size();
    ReadTarget target{out, offset};
    const auto start = [this](nfs_context* n, Call* c) {
      READ3args args{};
      args.file.data.data_len = static_cast<u_int>(handle_->len);
      args.file.data.data_val = handle_->val;
      args.offset = c->at;
      args.count = static_cast<count3>(c->count);
      return rpc_nfs3_read_async(nfs_get_rpc_context(n), OnRpcReply, &args, c);
    };
    return Transfer(
        "read", Call::Kind::kRead3, &target, offset, total, client_->ReadMax(), start,
        [this](const Part& p) {
          const Call& c = p.call;
          const auto got = static_cast<uint64_t>(c.status);
          if (got < c.count && c.eof) {
            return Status::Corruption(fmt::format("short read {} at {}", name_, c.at + got));
          }
          if (got == 0) {
            return Status::IOError(
                fmt::format("read {} at {}: no data and no end of file", name_, c.at));
          }
          return Status::OK();
        });
  }

  // UNSTABLE WRITEs of at most the server's write size each; see "Reads and writes" above.
  Status WriteAt(uint64_t offset, std::span<const std::byte> in) override {
    const auto start = [this, in, offset](nfs_context* n, Call* c) {
      WRITE3args args{};
      args.file.data.data_len = static_cast<u_int>(handle_->len);
      args.file.data.data_val = handle_->val;
      args.offset = c->at;
      args.count = static_cast<count3>(c->count);
      args.stable = UNSTABLE;
      args.data.data_len = static_cast<u_int>(c->count);
      args.data.data_val =
          reinterpret_cast<char*>(const_cast<std::byte*>(in.data())) + (c->at - offset);
      return rpc_nfs3_write_async(nfs_get_rpc_context(n), OnRpcReply, &args, c);
    };
    return Transfer("write", Call::Kind::kWrite3, nullptr, offset, in.size(), client_->WriteMax(),
                    start, [this](const Part& p) {
                      if (p.call.status == 0) {
                        return Status::IOError(
                            fmt::format("write {} at {}: nothing written", name_, p.call.at));
                      }
                      if (!p.verdict.stable) NoteUnstable(p.verdict.verf);
                      return Status::OK();
                    });
  }

  // NFS COMMIT. Fails when the server restarted since the first WRITE it covers (its verifier
  // changed): those writes may be gone, and the caller must treat them as lost.
  Status Sync() override {
    {
      std::lock_guard<std::mutex> s(state_mu_);
      if (written_ == committed_) return Status::OK();
    }
    return Commit();
  }

  Status Truncate(uint64_t size) override {
    return Call1("ftruncate", Call::Kind::kNone, nullptr, [&](nfs_context* n, Call* c) {
      return nfs_ftruncate_async(n, fh_, size, OnReply, c);
    });
  }

  Result<uint64_t> Size() override {
    struct nfs_stat_64 st = {};
    QBD_RETURN_IF_ERROR(Call1("fstat", Call::Kind::kStat, &st, [this](nfs_context* n, Call* c) {
      return nfs_fstat64_async(n, fh_, OnReply, c);
    }));
    return static_cast<uint64_t>(st.nfs_size);
  }

  // NFSv3 cannot punch holes (DEALLOCATE is NFSv4.2): the caller writes zeros instead.
  Status PunchHole(uint64_t /*offset*/, uint64_t len) override {
    if (len == 0) return Status::OK();
    return Status::NotSupported("punch hole " + name_ + ": not possible over NFSv3");
  }

  // Looks at most once per kDetachCheckInterval: a check is a path lookup, 3 to 4 RPCs, and doing
  // it before every I/O (as PartStore asks) costs two thirds of the IOPS. So a file removed or
  // replaced by hand is noticed within that interval, or at once when a call returns ESTALE.
  bool Detached() override {
    if (detached_.load()) return true;
    const int64_t now = NowNs();
    int64_t last = last_check_ns_.load();
    if (now - last < kDetachCheckInterval.count()) return false;
    if (!last_check_ns_.compare_exchange_strong(last, now)) return false;  // another thread looks
    // The name must still lead to the inode this handle has open (rm, rename-over and
    // rename-aside-then-replace alike). When the server cannot be asked, the handle is kept: the
    // caller's next call on it fails with the real error instead of a false "replaced" report.
    struct nfs_stat_64 st = {};
    Status s = client_->Run("stat", name_, Call::Kind::kStat, &st, [this](nfs_context* n, Call* c) {
      return nfs_stat64_async(n, path_.c_str(), OnReply, c);
    });
    const bool gone = s.IsNotFound() || s.Errno() == ESTALE || s.Errno() == ENOTDIR ||
                      (s.ok() && st.nfs_ino != ino_);
    if (gone) detached_.store(true);
    return gone;
  }

 private:
  // One RPC of a Transfer.
  struct Part {
    Call call;
    WriteVerdict verdict;  // kWrite3
  };

  static int64_t NowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
        .count();
  }

  // Moves the bytes [offset, offset + total) with calls of `kind` (kRead3 with `out` a ReadTarget,
  // or kWrite3) that `start` starts for the range in call.at and call.count: in rounds of at most
  // kMaxIoPerRound bytes, each cut into RPCs of at most `max` bytes that go out together. READs are
  // cut into equal parts, which the server reads side by side (a 1 MiB + 4 KiB read is two of
  // 516 KiB, not 1 MiB and 4 KiB); WRITEs into parts of `max` and the rest, because two WRITEs
  // into neighbouring halves of a file cost ganesha a fifth more CPU than one large and one small
  // (measured with 1 MiB writes). `check` judges each successful reply; one with fewer bytes than
  // asked (NFSv3 allows it) leaves the rest for the next round. The first failure, in file order,
  // is the result.
  template <typename Start, typename Check>
  Status Transfer(std::string_view what, Call::Kind kind, void* out, uint64_t offset,
                  uint64_t total, uint64_t max, const Start& start, const Check& check) {
    std::vector<std::pair<uint64_t, uint64_t>> todo;  // (at, count): short replies' rest
    uint64_t next = offset;
    const uint64_t end = offset + total;
    while (next < end || !todo.empty()) {
      if (next < end) {
        const uint64_t round = std::min(end - next, kMaxIoPerRound);
        const uint64_t n = (round + max - 1) / max;
        const uint64_t size = kind == Call::Kind::kRead3
                                  ? std::min(max, ((round + n - 1) / n + 4095) / 4096 * 4096)
                                  : max;
        for (uint64_t at = next; at < next + round; at += size) {
          todo.emplace_back(at, std::min(size, next + round - at));
        }
        next += round;
      }
      std::vector<Part> parts(todo.size());
      std::vector<Call*> calls(todo.size());
      for (size_t i = 0; i < todo.size(); ++i) {
        Call& c = parts[i].call;
        c.kind = kind;
        c.out = kind == Call::Kind::kWrite3 ? &parts[i].verdict : out;
        c.at = todo[i].first;
        c.count = todo[i].second;
        c.what = what;
        c.object = name_;
        c.SetStart(start);
        calls[i] = &c;
      }
      todo.clear();
      QBD_RETURN_IF_ERROR(client_->RunAll(calls));
      Status first;
      for (const Part& p : parts) {  // each one checked: a WRITE that succeeded is recorded
        Status s = NoteStale(Client::StatusOf(p.call));
        if (s.ok()) s = check(p);
        if (!s.ok()) {
          if (first.ok()) first = std::move(s);
          continue;
        }
        const auto got = static_cast<uint64_t>(p.call.status);
        if (got < p.call.count) todo.emplace_back(p.call.at + got, p.call.count - got);
      }
      QBD_RETURN_IF_ERROR(first);
    }
    return Status::OK();
  }

  // Records a completed UNSTABLE WRITE and its verifier.
  void NoteUnstable(const std::array<char, NFS3_WRITEVERFSIZE>& verf) {
    std::lock_guard<std::mutex> l(state_mu_);
    if (written_ == committed_) {
      verf_ = verf;
    } else if (verf != verf_) {
      restarted_ = true;  // the earlier uncommitted writes went to a server instance now gone
    }
    ++written_;
  }

  // COMMIT of the whole file, checked against the verifier of the writes it covers: those
  // completed before it was sent. One at a time.
  Status Commit() {
    std::lock_guard<std::mutex> one(commit_mu_);
    uint64_t covers = 0;
    {
      std::lock_guard<std::mutex> l(state_mu_);
      covers = written_;
    }
    WriteVerdict verdict;
    QBD_RETURN_IF_ERROR(
        Call1("commit", Call::Kind::kCommit3, &verdict, [&](nfs_context* n, Call* c) {
          COMMIT3args args{};
          args.file.data.data_len = static_cast<u_int>(handle_->len);
          args.file.data.data_val = handle_->val;
          return rpc_nfs3_commit_async(nfs_get_rpc_context(n), OnRpcReply, &args, c);
        }));
    std::lock_guard<std::mutex> l(state_mu_);
    const bool lost = restarted_ || verdict.verf != verf_;
    committed_ = std::max(committed_, covers);
    if (lost) {
      // Writes completed while the COMMIT was out may carry either verifier: the next Sync fails
      // too when there are any, so that none is trusted by mistake.
      restarted_ = written_ > covers;
      verf_ = verdict.verf;
      return Status::IOError(
          fmt::format(
              "commit {}: the server restarted since the last COMMIT (write verifier changed); "
              "writes since then may be lost",
              name_),
          EIO);
    }
    return Status::OK();
  }

  // ESTALE means the server dropped the file: detached at once.
  Status NoteStale(Status s) {
    if (s.Errno() == ESTALE) detached_.store(true);
    return s;
  }

  // client_->Run on this file, through NoteStale.
  template <typename Start>
  Status Call1(std::string_view what, Call::Kind kind, void* out, const Start& start) {
    return NoteStale(client_->Run(what, name_, kind, out, start));
  }

  const std::shared_ptr<Client> client_;
  // Calls on fh_ run concurrently: fstat, ftruncate and the raw READ/WRITE/COMMIT leave struct
  // nfsfh as it is.
  nfsfh* const fh_;  // owned: closed by the destructor
  const LibnfsFh* const handle_ = reinterpret_cast<const LibnfsFh*>(nfs_get_fh(fh_));
  const std::string path_;  // on the mounted export: "/sub/1/a/5"
  const std::string name_;  // "nfs://host/export/sub/1/a/5", for messages
  const uint64_t ino_;      // the inode seen at open
  std::atomic<bool> detached_{false};
  std::atomic<int64_t> last_check_ns_{NowNs()};  // of Detached(); opening counts as one
  std::mutex commit_mu_;                         // one COMMIT at a time
  std::mutex state_mu_;                          // guards the four below (never held across an RPC)
  uint64_t written_ = 0;                         // UNSTABLE WRITEs completed
  uint64_t committed_ = 0;                       // how many of them the last good COMMIT covered
  std::array<char, NFS3_WRITEVERFSIZE> verf_{};  // the verifier of the uncommitted ones
  bool restarted_ = false;  // an uncommitted WRITE saw another verifier than verf_
};

class NfsBackend final : public StorageBackend {
 public:
  explicit NfsBackend(std::shared_ptr<Client> client) : client_(std::move(client)) {}

  std::string Describe() const override { return client_->url(); }
  std::string FailureDomain() const override { return client_->FailureDomain(); }
  bool IsRemote() const override { return true; }

  Result<std::unique_ptr<ChunkFile>> Open(std::string_view path) override {
    return OpenFile(path, false);
  }
  Result<std::unique_ptr<ChunkFile>> Create(std::string_view path) override {
    return OpenFile(path, true);
  }

  Status Rename(std::string_view from, std::string_view to) override {
    QBD_RETURN_IF_ERROR(CheckPath(from));
    QBD_RETURN_IF_ERROR(CheckPath(to));
    const std::string f = client_->Full(from), t = client_->Full(to);
    return client_->Run("rename", client_->Name(f) + " " + client_->Name(t), Call::Kind::kNone,
                        nullptr, [&](nfs_context* n, Call* c) {
                          return nfs_rename_async(n, f.c_str(), t.c_str(), OnReply, c);
                        });
  }

  Status Remove(std::string_view path) override {
    QBD_RETURN_IF_ERROR(CheckPath(path));
    const std::string full = client_->Full(path);
    return client_->Run(
        "unlink", client_->Name(full), Call::Kind::kNone, nullptr,
        [&](nfs_context* n, Call* c) { return nfs_unlink_async(n, full.c_str(), OnReply, c); });
  }

  Status MkDirs(std::string_view dir) override {
    QBD_RETURN_IF_ERROR(CheckPath(dir));
    const std::string full = client_->Full(dir);
    // Usually it exists: one lookup instead of a mkdir per component.
    struct nfs_stat_64 st = {};
    Status s = StatOn(full, &st);
    if (s.ok()) return IsDir(st, full);
    if (!s.IsNotFound()) return s;
    const std::string root = client_->Full("");
    for (size_t end = full.find('/', root == "/" ? 1 : root.size() + 1);;
         end = full.find('/', end + 1)) {
      const std::string p = full.substr(0, end);
      Status m = client_->Run(
          "mkdir", client_->Name(p), Call::Kind::kNone, nullptr,
          [&p](nfs_context* n, Call* c) { return nfs_mkdir_async(n, p.c_str(), OnReply, c); });
      if (!m.ok() && m.Errno() != EEXIST) return m;
      if (end == std::string::npos) break;
    }
    QBD_RETURN_IF_ERROR(StatOn(full, &st));
    return IsDir(st, full);
  }

  Status RemoveDir(std::string_view dir) override {
    QBD_RETURN_IF_ERROR(CheckPath(dir));
    const std::string full = client_->Full(dir);
    return client_->Run(
        "rmdir", client_->Name(full), Call::Kind::kNone, nullptr,
        [&](nfs_context* n, Call* c) { return nfs_rmdir_async(n, full.c_str(), OnReply, c); });
  }

  // An NFSv3 server performs directory operations (CREATE, MKDIR, RENAME, REMOVE) synchronously:
  // RFC 1813 has them on stable storage before the reply, and there is no COMMIT for a directory.
  // So a rename that returned OK is durable already; this only checks that the directory exists,
  // as opening a local directory for fsync would.
  Status SyncDir(std::string_view dir) override {
    QBD_ASSIGN_OR_RETURN(FileInfo info, Stat(dir));
    if (!info.is_dir) {
      return Status::IOError(
          fmt::format("sync dir {}: not a directory", client_->Name(client_->Full(dir))), ENOTDIR);
    }
    return Status::OK();
  }

  Result<FileInfo> Stat(std::string_view path) override {
    QBD_RETURN_IF_ERROR(CheckPath(path));
    const std::string full = client_->Full(path);
    struct nfs_stat_64 st = {};
    QBD_RETURN_IF_ERROR(StatOn(full, &st));
    return FileInfo{static_cast<uint64_t>(st.nfs_size), S_ISDIR(st.nfs_mode)};
  }

  Result<std::vector<std::string>> List(std::string_view dir) override {
    // One READDIRPLUS either way: the names of ListInfo.
    QBD_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, ListInfo(dir));
    std::vector<std::string> names;
    names.reserve(entries.size());
    for (DirEntry& e : entries) names.push_back(std::move(e.name));
    return names;
  }

  Result<std::vector<DirEntry>> ListInfo(std::string_view dir) override {
    QBD_RETURN_IF_ERROR(CheckPath(dir));
    const std::string full = client_->Full(dir);
    std::vector<DirEntry> out;  // filled by OnReply
    QBD_RETURN_IF_ERROR(client_->Run(
        "opendir", client_->Name(full), Call::Kind::kDir, &out,
        [&](nfs_context* n, Call* c) { return nfs_opendir_async(n, full.c_str(), OnReply, c); }));
    return out;
  }

 private:
  Result<std::unique_ptr<ChunkFile>> OpenFile(std::string_view path, bool create) {
    QBD_RETURN_IF_ERROR(CheckPath(path));
    if (path.empty()) return Status::InvalidArgument("open: empty path");
    const std::string full = client_->Full(path);
    const std::string name = client_->Name(full);
    nfsfh* fh = nullptr;
    if (create) {
      QBD_RETURN_IF_ERROR(
          client_->Run("create", name, Call::Kind::kFh, &fh, [&](nfs_context* n, Call* c) {
            return nfs_create_async(n, full.c_str(), O_RDWR | O_TRUNC, 0644, OnReply, c);
          }));
    } else {
      QBD_RETURN_IF_ERROR(
          client_->Run("open", name, Call::Kind::kFh, &fh, [&](nfs_context* n, Call* c) {
            return nfs_open_async(n, full.c_str(), O_RDWR, OnReply, c);
          }));
    }
    struct nfs_stat_64 st = {};
    Status s = client_->Run("fstat", name, Call::Kind::kStat, &st, [fh](nfs_context* n, Call* c) {
      return nfs_fstat64_async(n, fh, OnReply, c);
    });
    if (!s.ok()) {
      client_->Close(fh);  // nothing was written through it: closing only frees it
      return s;
    }
    return std::unique_ptr<ChunkFile>(new NfsFile(client_, fh, full, st.nfs_ino));
  }

  Status StatOn(const std::string& full, struct nfs_stat_64* st) const {
    return client_->Run(
        "stat", client_->Name(full), Call::Kind::kStat, st,
        [&full](nfs_context* n, Call* c) { return nfs_stat64_async(n, full.c_str(), OnReply, c); });
  }

  Status IsDir(const struct nfs_stat_64& st, const std::string& full) const {
    if (S_ISDIR(st.nfs_mode)) return Status::OK();
    return Status::IOError(
        fmt::format("mkdir {}: exists and is not a directory", client_->Name(full)), ENOTDIR);
  }

  const std::shared_ptr<Client> client_;
};

}  // namespace

Result<std::unique_ptr<StorageBackend>> NewNfsBackend(const std::string& url,
                                                      const NfsOptions& options) {
  QBD_ASSIGN_OR_RETURN(NfsUrl parsed, ParseNfsUrl(url));
  if (options.timeout_ms < 100 || options.timeout_ms > 600000) {
    return Status::InvalidArgument(
        fmt::format("{}: timeout {} ms is not 100..600000", url, options.timeout_ms));
  }
  if (options.contexts < 1 || options.contexts > 256) {
    return Status::InvalidArgument(
        fmt::format("{}: {} contexts is not 1..256", url, options.contexts));
  }
  QBD_ASSIGN_OR_RETURN(std::shared_ptr<Client> client,
                       Client::Create(url, std::move(parsed), options));
  // Connect one context now: a mount the server refuses (wrong export, no access) is a
  // configuration error for start-up. An unreachable server is not: the backend starts with its
  // breaker open and connects once the server answers; callers see "unreachable" until then.
  Status s = client->ConnectFirst();
  if (!s.ok() && !ConnectionBroken(s.Errno()) && s.Errno() != EIO) return s;
  return std::unique_ptr<StorageBackend>(new NfsBackend(std::move(client)));
}

}  // namespace qbd
