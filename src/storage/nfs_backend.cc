// NfsBackend: a StorageBackend on one NFSv3 export, reached through userspace libnfs (no kernel
// mount). The only file that includes <nfsc/libnfs.h>.
//
// Context pool. libnfs 4.0 (Debian 12) is not thread-safe per nfs_context, so the backend keeps
// `NfsOptions::contexts` contexts, each its own TCP connection and mount, and lends each to one
// thread at a time (a Lease; `busy` under the pool mutex is the per-context lock). A caller takes
// any free context, preferring a connected one, and waits on a condition variable while all are
// lent. Each call is synchronous for its caller; parallelism comes from several contexts.
//
// Calls. The calls are libnfs' asynchronous functions (nfs_*_async) served by a small poll loop
// (Await), not its synchronous wrappers: a synchronous wrapper whose socket fails returns while
// its requests are still queued, pointing at the wrapper's stack frame, and destroying the context
// later cancels them by writing into that dead frame. Here each call's reply lives on the heap and
// is abandoned, not freed, when the socket fails; libnfs frees it when the context is destroyed.
// nfs_mount stays synchronous: on failure it cancels its own requests before it returns.
//
// File handles. An NFSv3 file handle is the server's name for the file, valid on any connection to
// that server and across reconnects (libnfs' struct nfsfh holds the handle bytes and no pointer to
// the context that opened it; nfs_destroy_context does not free handles). So a ChunkFile is not
// pinned to the context that opened it: each call takes any free context, and a reconnect never
// makes a handle stale (a handle is stale only when the server dropped the file: ESTALE). The
// calls used on a handle (pread without read-ahead or page cache, fstat, ftruncate, raw WRITE and
// COMMIT) do not modify struct nfsfh, so the calls of one NfsFile run concurrently, each on its
// own context.
//
// Failures and reconnects. Every context is set up with nfs_set_timeout(timeout_ms) and
// nfs_set_autoreconnect(0) before nfs_mount, so a call to a dead or hung server fails (libnfs:
// -EINTR "Command timed out") instead of blocking forever, and TCP_SYNCNT is lowered so that a
// connect to an unreachable host also gives up after about the timeout. An error that means the
// connection is gone (a failed socket, a timeout, reset, refused, EPIPE, ENOTCONN) destroys that
// context; a new one is created and mounted lazily at its next use (as is one the server closed
// while it was idle, found with a poll before the context is lent). The backend as a whole then
// behaves as a circuit breaker, because one broken connection almost always means a dead or hung
// server and the other contexts share its fate:
//   - the failure destroys every idle context too and opens the breaker for the backoff period
//     (1 s, doubled after each failed retry, capped at 10 s); while it is open every call fails at
//     once with IOError "nfs://... unreachable (reconnect in N s)", so a dead server costs one
//     timeout, not one per context or per call;
//   - after the period one call (the trial) reconnects; the others keep failing fast until it
//     ends. Any call that gets an answer from the server closes the breaker and resets the
//     backoff; a failed trial doubles it. Calls still in flight when the breaker opened do not
//     extend it.
// Reconnects of any one context therefore happen at most once per second. No lock is held across
// an RPC or a sleep (there are no sleeps: waiting callers fail fast or wait for a lent context).
//
// Writes and COMMIT. WRITE and COMMIT go out as raw NFSv3 RPCs (rpc_nfs3_write_async,
// rpc_nfs3_commit_async) on the context's RPC layer, because libnfs' nfs_pwrite/nfs_fsync drop
// the write verifier. WRITEs are UNSTABLE; the server returns its verifier, which changes when it
// restarts. An NfsFile remembers the verifier of its first WRITE since the last COMMIT; a later
// WRITE or the COMMIT that returns another one means the server restarted in between and may have
// dropped those writes (RFC 1813 §3.3.21): Sync() then fails, so that the caller treats the writes
// since the previous Sync as lost (qbd resyncs those chunks from the other parts) instead of
// trusting them.
//
// Thread-safety: NfsBackend is safe for concurrent use; so is an NfsFile (its COMMITs are
// serialized). Lock order: NfsFile::commit_mu_, then Pool::mu_ or NfsFile::state_mu_. NfsFile and NfsBackend
// share the pool (shared_ptr), so a file may outlive its backend.
#include <fcntl.h>
#include <fmt/format.h>
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nfs.h>
#include <poll.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "qbd/backend.h"
#include "qbd/log.h"

namespace qbd {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxBackoffSeconds = 10;
// How often NfsFile::Detached() really asks the server.
constexpr std::chrono::nanoseconds kDetachCheckInterval = std::chrono::seconds(1);
// One nfs_pread call moves at most this much (libnfs returns the count as an int and splits a
// call into READ RPCs of the server's maximum size, sent in parallel).
constexpr uint64_t kMaxIoPerCall = 16u << 20;

// True when libnfs error `err` (positive errno) of a completed call means the context's
// connection is unusable, as opposed to an answer from the server (ENOENT, EACCES, EIO, ESTALE...).
// libnfs reports a timeout or a cancelled request as EINTR and a failed RPC layer as EFAULT.
bool ConnectionBroken(int err) {
  switch (err) {
    case EINTR:
    case EFAULT:
    case ENOMEM:
    case ETIMEDOUT:
    case ECONNRESET:
    case ECONNREFUSED:
    case ECONNABORTED:
    case EPIPE:
    case ENOTCONN:
    case EHOSTUNREACH:
    case EHOSTDOWN:
    case ENETUNREACH:
    case ENETDOWN:
      return true;
    default:
      return false;
  }
}

// The reply of one asynchronous libnfs call, filled in by OnReply. Heap-allocated: when the
// waiter gives up on a context whose socket failed, libnfs still calls back once the context is
// destroyed (it cancels every pending request), and OnReply then frees it.
struct Reply {
  enum class Kind { kNone, kRead, kFh, kStat, kDir, kWrite3, kCommit3 };
  Kind kind = Kind::kNone;
  // kRead: the caller's buffer; kFh: nfsfh**; kStat: nfs_stat_64*; kDir: nfsdir**;
  // kWrite3, kCommit3: WriteVerdict*
  void* out = nullptr;
  bool done = false;
  bool abandoned = false;
  int status = 0;  // libnfs: >= 0 (bytes for pread/pwrite) or -errno
  std::string error;
};

void OnReply(int status, nfs_context* nfs, void* data, void* private_data) {
  auto* r = static_cast<Reply*>(private_data);
  if (r->abandoned) {
    delete r;
    return;
  }
  r->done = true;
  r->status = status;
  if (status < 0) {
    const char* text = nfs_get_error(nfs);
    if (text != nullptr) r->error = text;
    return;
  }
  switch (r->kind) {
    case Reply::Kind::kRead:
      if (status > 0 && data != r->out) std::memcpy(r->out, data, static_cast<size_t>(status));
      break;
    case Reply::Kind::kFh:
      *static_cast<nfsfh**>(r->out) = static_cast<nfsfh*>(data);
      break;
    case Reply::Kind::kStat:
      *static_cast<struct nfs_stat_64*>(r->out) = *static_cast<struct nfs_stat_64*>(data);
      break;
    case Reply::Kind::kDir:
      *static_cast<struct nfsdir**>(r->out) = static_cast<struct nfsdir*>(data);
      break;
    case Reply::Kind::kNone:
    case Reply::Kind::kWrite3:   // raw RPCs: OnRpcReply
    case Reply::Kind::kCommit3:
      break;
  }
}

// What a raw WRITE or COMMIT reply says besides its status.
struct WriteVerdict {
  bool stable = false;  // WRITE: the server committed the data already (FILE_SYNC or DATA_SYNC)
  std::array<char, NFS3_WRITEVERFSIZE> verf{};
};

// The callback of a raw NFSv3 WRITE or COMMIT (rpc_nfs3_*_async). Fills `Reply` as OnReply does:
// status is the byte count (WRITE), 0 (COMMIT) or -errno, with libnfs' convention for RPC-level
// failures (EFAULT for a failed RPC, EINTR for a timeout or a cancelled call).
void OnRpcReply(rpc_context* rpc, int status, void* data, void* private_data) {
  auto* r = static_cast<Reply*>(private_data);
  if (r->abandoned) {
    delete r;
    return;
  }
  r->done = true;
  switch (status) {
    case RPC_STATUS_SUCCESS:
      break;
    case RPC_STATUS_ERROR: {
      r->status = -EFAULT;
      const char* text = data != nullptr ? static_cast<const char*>(data) : rpc_get_error(rpc);
      if (text != nullptr) r->error = text;
      return;
    }
    case RPC_STATUS_TIMEOUT:
      r->status = -EINTR;
      r->error = "Command timed out";
      return;
    default:
      r->status = -EINTR;
      r->error = "Command was cancelled";
      return;
  }
  auto* verdict = static_cast<WriteVerdict*>(r->out);
  int nfs_status = NFS3_OK;
  if (r->kind == Reply::Kind::kWrite3) {
    const auto* res = static_cast<const WRITE3res*>(data);
    nfs_status = res->status;
    if (nfs_status == NFS3_OK) {
      const WRITE3resok& ok = res->WRITE3res_u.resok;
      r->status = static_cast<int>(ok.count);
      verdict->stable = ok.committed != UNSTABLE;
      std::memcpy(verdict->verf.data(), ok.verf, verdict->verf.size());
    }
  } else {
    const auto* res = static_cast<const COMMIT3res*>(data);
    nfs_status = res->status;
    if (nfs_status == NFS3_OK) {
      r->status = 0;
      std::memcpy(verdict->verf.data(), res->COMMIT3res_u.resok.verf, verdict->verf.size());
    }
  }
  if (nfs_status != NFS3_OK) {
    r->status = nfsstat3_to_errno(nfs_status);
    if (r->status >= 0) r->status = -EIO;
    const char* text = nfsstat3_to_str(nfs_status);
    if (text != nullptr) r->error = text;
  }
}

// Serves `nfs` until `r` completes; timeouts fire inside nfs_service, which runs at least every
// 100 ms. False when the socket failed first: the context must then be destroyed, and `r` is
// abandoned to libnfs (see Reply).
bool Await(nfs_context* nfs, Reply* r) {
  while (!r->done) {
    struct pollfd pfd = {nfs_get_fd(nfs), static_cast<short>(nfs_which_events(nfs)), 0};
    const int n = ::poll(&pfd, 1, 100);
    if (n < 0 && errno == EINTR) continue;  // a signal, not a socket error
    if (nfs_service(nfs, n < 0 ? -1 : pfd.revents) < 0 && !r->done) {
      r->abandoned = true;
      return false;
    }
  }
  return true;
}

// Runs one asynchronous call, started by `start(nfs, reply)` (0 when queued), to completion on a
// context nobody else uses. Returns its status (-errno on failure); sets *broken when the
// connection failed (the context must then be destroyed) and *text to libnfs' error message.
template <typename Start>
int RunCall(nfs_context* nfs, Reply::Kind kind, void* out, Start&& start, bool* broken,
            std::string* text) {
  auto* r = new Reply;
  r->kind = kind;
  r->out = out;
  if (start(nfs, r) != 0) {  // not queued: no callback will come
    delete r;
    const char* e = nfs_get_error(nfs);
    *text = e != nullptr ? e : "request not queued";
    *broken = true;
    return -ENOMEM;
  }
  if (!Await(nfs, r)) {
    const char* e = nfs_get_error(nfs);
    *text = std::string("connection failed: ") + (e != nullptr ? e : "socket error");
    *broken = true;
    return -ECONNRESET;
  }
  const int status = r->status;
  *text = std::move(r->error);
  delete r;
  if (status < 0 && ConnectionBroken(-status)) *broken = true;
  return status;
}

// TCP SYN retries whose total wait (1 + 2 + 4 ... s) stays within the timeout, at least 1.
int SynCountFor(int timeout_ms) {
  int n = 1;
  while (n < 6 && ((2 << (n + 1)) - 1) * 1000 <= timeout_ms) ++n;
  return n;
}

// nfs://HOST/EXPORT[/SUBDIR][?key=value&...], checked before libnfs sees it (libnfs ignores
// unknown arguments, which would hide a typo such as "nfs_port").
struct NfsUrl {
  std::string host;
  std::string path;  // "/export/subdir", without the query
  int nfsport = 2049;
};

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

// Starts a READ of `count` bytes at `offset` into `buf`; the libnfs 6 API (LIBNFS_API_V2) takes
// the buffer (and reads into it), libnfs 4 hands the data to the callback (see OnReply).
int StartPread(nfs_context* nfs, nfsfh* fh, uint64_t offset, uint64_t count, void* buf, Reply* r) {
#ifdef LIBNFS_API_V2
  return nfs_pread_async(nfs, fh, buf, count, offset, OnReply, r);
#else
  (void)buf;
  return nfs_pread_async(nfs, fh, offset, count, OnReply, r);
#endif
}


class Pool;

// One context lent to one caller. The destructor gives it back. Move-only.
class Lease {
 public:
  Lease(Pool* pool, size_t slot, nfs_context* nfs, bool trial)
      : pool_(pool), slot_(slot), nfs_(nfs), trial_(trial) {}
  Lease(Lease&& o) noexcept
      : pool_(std::exchange(o.pool_, nullptr)),
        slot_(o.slot_),
        nfs_(o.nfs_),
        trial_(o.trial_),
        answered_(o.answered_),
        broken_(o.broken_),
        why_(std::move(o.why_)) {}
  Lease& operator=(Lease&&) = delete;
  ~Lease();

  // For calls that send nothing (nfs_readdir, nfs_closedir).
  nfs_context* nfs() const { return nfs_; }

  // Runs one asynchronous call (see RunCall) named `what` on `object` ("pwrite", "nfs://h/e/1/a/5")
  // and turns its outcome into a Status: OK (and *result = its non-negative status), NotFound for
  // ENOENT, else IOError with the errno and libnfs' message (EIO when the connection failed).
  // Records whether the server answered or the connection broke (the context is then destroyed
  // when the lease ends).
  template <typename Start>
  Status Run(std::string_view what, std::string_view object, Reply::Kind kind, void* out,
             Start&& start, int* result = nullptr) {
    bool broken = false;
    std::string text;
    const int status = RunCall(nfs_, kind, out, std::forward<Start>(start), &broken, &text);
    if (status >= 0) {
      answered_ = true;
      if (result != nullptr) *result = status;
      return Status::OK();
    }
    const int err = -status;
    std::string msg =
        fmt::format("{} {}: {}", what, object, text.empty() ? std::strerror(err) : text);
    if (broken) {
      broken_ = true;
      why_ = Status::IOError(msg, EIO);
      return why_;  // the NBD reply says EIO, whatever libnfs used internally
    }
    answered_ = true;
    if (err == ENOENT) return Status::NotFound(std::move(msg));
    return Status::IOError(std::move(msg), err);
  }

 private:
  Pool* pool_;
  size_t slot_;
  nfs_context* nfs_;
  bool trial_;
  bool answered_ = false;  // the server answered at least one call
  bool broken_ = false;    // the connection is gone
  Status why_;             // what broke it
};

// The contexts of one backend and its reconnect policy (see the top of this file).
class Pool {
 public:
  Pool(std::string url, NfsUrl parsed, NfsOptions options)
      : url_(std::move(url)),
        parsed_(std::move(parsed)),
        options_(options),
        slots_(static_cast<size_t>(options.contexts)),
        export_(parsed_.path) {}

  ~Pool() {
    // Handles whose close was deferred are closed with a live context if one is left (closing a
    // handle with unsynced writes sends a COMMIT). Without one their few bytes are leaked on
    // purpose: freeing them takes libnfs (nfs_close), which would talk to a dead server.
    for (Slot& s : slots_) {
      if (s.nfs == nullptr || pending_close_.empty() || !healthy_) continue;
      CloseHandles(s.nfs, &pending_close_);
    }
    for (Slot& s : slots_) {
      if (s.nfs != nullptr) nfs_destroy_context(s.nfs);
    }
  }

  const std::string& url() const { return url_; }

  // "nfs://HOST/EXPORT/SUBDIR/path" for `full_path` ("/SUBDIR/path" on the export), for messages.
  std::string Name(std::string_view full_path) const {
    std::lock_guard<std::mutex> l(mu_);
    return fmt::format("nfs://{}{}{}", parsed_.host, export_, full_path == "/" ? "" : full_path);
  }

  std::string FailureDomain() const {
    std::lock_guard<std::mutex> l(mu_);
    return fmt::format("nfs://{}:{}{}", parsed_.host, parsed_.nfsport, export_);
  }

  // The path of backend path `rel` (checked by CheckPath) on the mounted export: "/sub/rel".
  std::string Full(std::string_view rel) const {
    std::string s;
    {
      std::lock_guard<std::mutex> l(mu_);
      s = root_;
    }
    if (!rel.empty()) {
      s += '/';
      s += rel;
    }
    return s.empty() ? "/" : s;
  }

  // A connected context for the caller, connected and mounted first if needed. IOError
  // "unreachable" at once while the breaker is open; the mount's error when connecting fails.
  Result<Lease> Acquire() {
    std::unique_lock<std::mutex> l(mu_);
    bool trial = false;
    for (;;) {
      const Clock::time_point now = Clock::now();
      if (!healthy_ && !trial) {
        if (trial_running_) return Unreachable("reconnect in progress");
        if (now < down_until_) {
          auto ms =
              std::chrono::duration_cast<std::chrono::milliseconds>(down_until_ - now).count();
          return Unreachable(fmt::format("reconnect in {} s", (ms + 999) / 1000));
        }
        trial = true;
        trial_running_ = true;
      }
      // Prefer a connected context; else connect a free one.
      size_t pick = slots_.size();
      for (size_t i = 0; i < slots_.size(); ++i) {
        if (slots_[i].busy) continue;
        if (slots_[i].nfs != nullptr) {
          pick = i;
          break;
        }
        if (pick == slots_.size()) pick = i;
      }
      if (pick == slots_.size()) {
        cv_.wait(l);
        continue;
      }
      Slot& s = slots_[pick];
      s.busy = true;
      nfs_context* old = s.nfs;
      if (old != nullptr && IdleConnectionAlive(old)) return Lease(this, pick, old, trial);
      // Not connected, or the server closed the connection while it was idle (ganesha does after
      // RPC_Idle_Timeout_S, 5 min by default): connect afresh, without the lock (the slot is ours
      // while busy). Found before any request was sent, so nothing is retried.
      s.nfs = nullptr;
      l.unlock();
      if (old != nullptr) nfs_destroy_context(old);
      Result<nfs_context*> c = Connect();
      if (!c.ok()) {
        Release(pick, nullptr, trial, /*answered=*/false, /*broken=*/true, c.status());
        return c.status();
      }
      l.lock();
      s.nfs = *c;
      return Lease(this, pick, *c, trial);
    }
  }

  // Gives a slot back (~Lease; Acquire when connecting failed) and applies the breaker rules.
  void Release(size_t slot, nfs_context* nfs, bool trial, bool answered, bool broken,
               const Status& why) {
    std::vector<nfs_context*> doomed;
    std::vector<nfsfh*> to_close;
    {
      std::lock_guard<std::mutex> l(mu_);
      Slot& s = slots_[slot];
      if (broken) {
        if (s.nfs != nullptr) doomed.push_back(s.nfs);
        s.nfs = nullptr;
        // A new outage opens the breaker and a failed trial doubles the backoff; a call that was
        // in flight when the breaker opened changes nothing.
        if (healthy_ || trial) {
          backoff_s_ = healthy_ ? 1 : std::min(backoff_s_ * 2, kMaxBackoffSeconds);
          down_until_ = Clock::now() + std::chrono::seconds(backoff_s_);
          if (healthy_)
            QBD_LOG_WARN("{} unreachable: {}; retrying in {} s", url_, why.message(), backoff_s_);
          healthy_ = false;
          // Idle connections share the failed one's fate: drop them, so that the trial reconnects
          // instead of timing out on an old connection to a server that may have restarted.
          for (Slot& o : slots_) {
            if (!o.busy && o.nfs != nullptr) {
              doomed.push_back(o.nfs);
              o.nfs = nullptr;
            }
          }
        }
      } else if (answered) {
        if (!healthy_) QBD_LOG_INFO("{} reachable again", url_);
        healthy_ = true;
        backoff_s_ = 1;
        to_close.swap(pending_close_);
      }
      if (trial) trial_running_ = false;
      if (to_close.empty()) s.busy = false;
    }
    if (!to_close.empty()) {
      // The slot is still ours: close the deferred handles on it, then give it back.
      const bool ok = CloseHandles(nfs, &to_close);
      std::lock_guard<std::mutex> l(mu_);
      if (!ok) {
        doomed.push_back(nfs);
        slots_[slot].nfs = nullptr;
      }
      slots_[slot].busy = false;
    }
    cv_.notify_all();
    for (nfs_context* c : doomed) nfs_destroy_context(c);
  }

  // Closes `fh` later with a live context (its owner could not get one).
  void DeferClose(nfsfh* fh) {
    std::lock_guard<std::mutex> l(mu_);
    pending_close_.push_back(fh);
  }

 private:
  struct Slot {
    nfs_context* nfs = nullptr;  // nullptr: not connected
    bool busy = false;           // lent to a Lease, or being connected
  };

  // False when the server closed the idle connection of `nfs` (end of file or an error waits on
  // its socket, where no reply is due).
  static bool IdleConnectionAlive(nfs_context* nfs) {
    struct pollfd pfd = {nfs_get_fd(nfs), POLLIN, 0};
    if (pfd.fd < 0) return false;
    int n;
    do {
      n = ::poll(&pfd, 1, 0);
    } while (n < 0 && errno == EINTR);
    return n == 0;
  }

  Status Unreachable(std::string_view when) const {
    return Status::IOError(fmt::format("{} unreachable ({})", url_, when));
  }

  // Closes the handles in *fhs on `nfs` (libnfs frees each, after a COMMIT if it has unsynced
  // writes). False when the connection failed: the rest stay in *fhs.
  static bool CloseHandles(nfs_context* nfs, std::vector<nfsfh*>* fhs) {
    while (!fhs->empty()) {
      bool broken = false;
      std::string text;
      nfsfh* fh = fhs->back();
      RunCall(
          nfs, Reply::Kind::kNone, nullptr,
          [fh](nfs_context* n, Reply* r) { return nfs_close_async(n, fh, OnReply, r); }, &broken,
          &text);
      fhs->pop_back();  // freed by libnfs once the call ended, whatever its status
      if (broken) return false;
    }
    return true;
  }

  // Connects and mounts a new context. The first success also decides which part of the URL's
  // path is the export: the shortest prefix the server mounts (it refuses the others with
  // EACCES/ENOENT/EPERM); the rest is a directory inside it, created if missing, like a local
  // backend's root.
  Result<nfs_context*> Connect() {
    std::string known;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (export_known_) known = export_;
    }
    if (!known.empty()) return Mount(known);
    const std::string& path = parsed_.path;
    for (size_t end = path.find('/', 1);; end = path.find('/', end + 1)) {
      const bool longest = end == std::string::npos;
      const std::string prefix = path.substr(0, end);
      Result<nfs_context*> c = Mount(prefix);
      if (!c.ok()) {
        const int err = c.status().Errno();
        if (longest || (err != EACCES && err != ENOENT && err != EPERM && err != ENOTDIR))
          return c.status();
        continue;
      }
      const std::string sub = longest ? "" : path.substr(end);
      Status s = MakeRoot(*c, prefix, sub);
      if (!s.ok()) {
        nfs_destroy_context(*c);
        return s;
      }
      std::lock_guard<std::mutex> l(mu_);
      export_ = prefix;
      root_ = sub;
      export_known_ = true;
      return c;
    }
  }

  Result<nfs_context*> Mount(const std::string& export_path) {
    nfs_context* nfs = nfs_init_context();
    if (nfs == nullptr)
      return Status::IOError(fmt::format("{}: nfs_init_context failed", url_), ENOMEM);
    nfs_set_tcp_syncnt(nfs,
                       SynCountFor(options_.timeout_ms));  // a tcp-syncnt in the URL overrides it
    nfs_url* u = nfs_parse_url_dir(nfs, url_.c_str());     // applies nfsport, mountport...
    if (u == nullptr) {
      Status s = Status::InvalidArgument(fmt::format("{}: {}", url_, nfs_get_error(nfs)));
      nfs_destroy_context(nfs);
      return s;
    }
    nfs_destroy_url(u);
    // Before nfs_mount, and after the URL so that it cannot override them.
    nfs_set_timeout(nfs, options_.timeout_ms);
    nfs_set_autoreconnect(nfs, 0);
    nfs_set_dircache(nfs, 0);  // another context may change a directory this one has cached
    // Synchronous, unlike every other call: on failure nfs_mount cancels its own requests.
    const int rc = nfs_mount(nfs, parsed_.host.c_str(), export_path.c_str());
    if (rc != 0) {
      const int err = rc < -1 ? -rc : EIO;
      const char* text = nfs_get_error(nfs);
      Status s = Status::IOError(fmt::format("mount nfs://{}{}: {}", parsed_.host, export_path,
                                             text != nullptr ? text : std::strerror(err)),
                                 err);
      nfs_destroy_context(nfs);
      return s;
    }
    return nfs;
  }

  // Checks that directory `sub` ("" or "/a/b") of the mounted `export_path` exists, creating it
  // (and its parents) when it is missing and options_.create_if_missing, else NotFound.
  Status MakeRoot(nfs_context* nfs, const std::string& export_path, const std::string& sub) {
    if (sub.empty()) return Status::OK();
    auto name = [&](const std::string& p) {
      return fmt::format("nfs://{}{}{}", parsed_.host, export_path, p);
    };
    bool broken = false;
    std::string text;
    struct nfs_stat_64 st = {};
    int rc = RunCall(
        nfs, Reply::Kind::kStat, &st,
        [&sub](nfs_context* n, Reply* r) { return nfs_stat64_async(n, sub.c_str(), OnReply, r); },
        &broken, &text);
    if (rc == 0) {
      if (S_ISDIR(st.nfs_mode)) return Status::OK();
      return Status::IOError(fmt::format("{}: not a directory", name(sub)), ENOTDIR);
    }
    if (rc != -ENOENT) return Status::IOError(fmt::format("stat {}: {}", name(sub), text), -rc);
    if (!options_.create_if_missing) {
      return Status::NotFound(fmt::format("{}: no such directory on the server", name(sub)));
    }
    for (size_t end = sub.find('/', 1);; end = sub.find('/', end + 1)) {
      const std::string p = sub.substr(0, end);
      rc = RunCall(
          nfs, Reply::Kind::kNone, nullptr,
          [&p](nfs_context* n, Reply* r) { return nfs_mkdir_async(n, p.c_str(), OnReply, r); },
          &broken, &text);
      if (rc < 0 && rc != -EEXIST)
        return Status::IOError(fmt::format("mkdir {}: {}", name(p), text), -rc);
      if (end == std::string::npos) return Status::OK();
    }
  }

  const std::string url_;
  const NfsUrl parsed_;
  const NfsOptions options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;         // a slot was given back
  std::vector<Slot> slots_;            // GUARDED_BY(mu_)
  std::string export_;                 // GUARDED_BY(mu_): the mounted export, "/node1"
  std::string root_;                   // GUARDED_BY(mu_): the URL's directory in it, "/sub" or ""
  bool export_known_ = false;          // GUARDED_BY(mu_)
  bool healthy_ = true;                // GUARDED_BY(mu_): false while the breaker is open
  bool trial_running_ = false;         // GUARDED_BY(mu_)
  int backoff_s_ = 1;                  // GUARDED_BY(mu_)
  Clock::time_point down_until_;       // GUARDED_BY(mu_)
  std::vector<nfsfh*> pending_close_;  // GUARDED_BY(mu_)
};

Lease::~Lease() {
  if (pool_ != nullptr) pool_->Release(slot_, nfs_, trial_, answered_, broken_, why_);
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
  NfsFile(std::shared_ptr<Pool> pool, nfsfh* fh, std::string path, uint64_t ino)
      : pool_(std::move(pool)),
        fh_(fh),
        path_(std::move(path)),
        name_(pool_->Name(path_)),
        ino_(ino) {}

  ~NfsFile() override {
    auto lease = pool_->Acquire();
    if (!lease.ok()) {
      pool_->DeferClose(fh_);
      return;
    }
    if (written_ != committed_) {
      // Whoever dropped the file without a Sync gets no answer; the writes still get their COMMIT.
      Status s = Commit(*lease);
      if (!s.ok()) QBD_LOG_WARN("closing {}: {}", name_, s.ToString());
    }
    lease
        ->Run("close", name_, Reply::Kind::kNone, nullptr,
              [this](nfs_context* n, Reply* r) { return nfs_close_async(n, fh_, OnReply, r); })
        .IgnoreError();  // the handle is gone either way
  }

  Status ReadAt(uint64_t offset, std::span<std::byte> out) override {
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    uint64_t done = 0;
    while (done < out.size()) {
      const uint64_t n = std::min<uint64_t>(out.size() - done, kMaxIoPerCall);
      std::byte* buf = out.data() + done;
      const uint64_t at = offset + done;
      int got = 0;
      QBD_RETURN_IF_ERROR(Call(
          lease, "pread", Reply::Kind::kRead, buf,
          [&](nfs_context* c, Reply* r) { return StartPread(c, fh_, at, n, buf, r); }, &got));
      if (got == 0) return Status::Corruption(fmt::format("short read {} at {}", name_, at));
      done += static_cast<uint64_t>(got);
    }
    return Status::OK();
  }

  // UNSTABLE WRITEs of at most the server's write size each; see "Writes and COMMIT" above.
  Status WriteAt(uint64_t offset, std::span<const std::byte> in) override {
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    const uint64_t max = std::max<uint64_t>(4096, nfs_get_writemax(lease.nfs()));
    uint64_t done = 0;
    while (done < in.size()) {
      const uint64_t n = std::min<uint64_t>(in.size() - done, max);
      const std::byte* buf = in.data() + done;
      const uint64_t at = offset + done;
      int put = 0;
      WriteVerdict verdict;
      QBD_RETURN_IF_ERROR(Call(
          lease, "write", Reply::Kind::kWrite3, &verdict,
          [&](nfs_context* c, Reply* r) {
            WRITE3args args{};
            args.file.data.data_len = static_cast<u_int>(handle_->len);
            args.file.data.data_val = handle_->val;
            args.offset = at;
            args.count = static_cast<count3>(n);
            args.stable = UNSTABLE;
            args.data.data_len = static_cast<u_int>(n);
            args.data.data_val = reinterpret_cast<char*>(const_cast<std::byte*>(buf));
            return rpc_nfs3_write_async(nfs_get_rpc_context(c), OnRpcReply, &args, r);
          },
          &put));
      if (put <= 0) return Status::IOError(fmt::format("write {} at {}: nothing written", name_, at));
      if (!verdict.stable) NoteUnstable(verdict.verf);
      done += static_cast<uint64_t>(put);
    }
    return Status::OK();
  }

  // NFS COMMIT. Fails when the server restarted since the first WRITE it covers (its verifier
  // changed): those writes may be gone, and the caller must treat them as lost.
  Status Sync() override {
    std::lock_guard<std::mutex> l(commit_mu_);
    {
      std::lock_guard<std::mutex> s(state_mu_);
      if (written_ == committed_) return Status::OK();
    }
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    return Commit(lease);
  }

  Status Truncate(uint64_t size) override {
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    return Call(lease, "ftruncate", Reply::Kind::kNone, nullptr, [&](nfs_context* c, Reply* r) {
      return nfs_ftruncate_async(c, fh_, size, OnReply, r);
    });
  }

  Result<uint64_t> Size() override {
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    struct nfs_stat_64 st = {};
    QBD_RETURN_IF_ERROR(
        Call(lease, "fstat", Reply::Kind::kStat, &st,
             [this](nfs_context* c, Reply* r) { return nfs_fstat64_async(c, fh_, OnReply, r); }));
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
    auto lease = pool_->Acquire();
    if (!lease.ok()) return false;
    struct nfs_stat_64 st = {};
    Status s = lease->Run("stat", name_, Reply::Kind::kStat, &st, [this](nfs_context* c, Reply* r) {
      return nfs_stat64_async(c, path_.c_str(), OnReply, r);
    });
    const bool gone = s.IsNotFound() || s.Errno() == ESTALE || s.Errno() == ENOTDIR ||
                      (s.ok() && st.nfs_ino != ino_);
    if (gone) detached_.store(true);
    return gone;
  }

 private:
  static int64_t NowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
        .count();
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

  // COMMIT of the whole file (commit_mu_ held, or the destructor), checked against the verifier
  // of the writes it covers: those completed before it was sent.
  Status Commit(Lease& lease) {
    uint64_t covers = 0;
    {
      std::lock_guard<std::mutex> l(state_mu_);
      covers = written_;
    }
    WriteVerdict verdict;
    QBD_RETURN_IF_ERROR(Call(lease, "commit", Reply::Kind::kCommit3, &verdict, [&](nfs_context* c, Reply* r) {
      COMMIT3args args{};
      args.file.data.data_len = static_cast<u_int>(handle_->len);
      args.file.data.data_val = handle_->val;
      return rpc_nfs3_commit_async(nfs_get_rpc_context(c), OnRpcReply, &args, r);
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
          fmt::format("commit {}: the server restarted since the last COMMIT (write verifier changed); "
                      "writes since then may be lost",
                      name_),
          EIO);
    }
    return Status::OK();
  }

  // lease.Run on this file; ESTALE means the server dropped the file: detached at once.
  template <typename Start>
  Status Call(Lease& lease, std::string_view what, Reply::Kind kind, void* out, Start&& start,
              int* result = nullptr) {
    Status s = lease.Run(what, name_, kind, out, std::forward<Start>(start), result);
    if (s.Errno() == ESTALE) detached_.store(true);
    return s;
  }

  const std::shared_ptr<Pool> pool_;
  // Calls on fh_ run concurrently: pread (libnfs' read-ahead and page cache are off), fstat,
  // ftruncate and the raw WRITE/COMMIT leave struct nfsfh as it is.
  nfsfh* const fh_;         // owned: closed by the destructor
  const LibnfsFh* const handle_ = reinterpret_cast<const LibnfsFh*>(nfs_get_fh(fh_));
  const std::string path_;  // on the mounted export: "/sub/1/a/5"
  const std::string name_;  // "nfs://host/export/sub/1/a/5", for messages
  const uint64_t ino_;      // the inode seen at open
  std::atomic<bool> detached_{false};
  std::atomic<int64_t> last_check_ns_{NowNs()};  // of Detached(); opening counts as one
  std::mutex commit_mu_;  // one COMMIT at a time
  std::mutex state_mu_;   // guards the four below (never held across an RPC)
  uint64_t written_ = 0;    // UNSTABLE WRITEs completed
  uint64_t committed_ = 0;  // how many of them the last good COMMIT covered
  std::array<char, NFS3_WRITEVERFSIZE> verf_{};  // the verifier of the uncommitted ones
  bool restarted_ = false;  // an uncommitted WRITE saw another verifier than verf_
};

class NfsBackend final : public StorageBackend {
 public:
  explicit NfsBackend(std::shared_ptr<Pool> pool) : pool_(std::move(pool)) {}

  std::string Describe() const override { return pool_->url(); }
  std::string FailureDomain() const override { return pool_->FailureDomain(); }
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
    const std::string f = pool_->Full(from), t = pool_->Full(to);
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    return lease.Run("rename", pool_->Name(f) + " " + pool_->Name(t), Reply::Kind::kNone, nullptr,
                     [&](nfs_context* c, Reply* r) {
                       return nfs_rename_async(c, f.c_str(), t.c_str(), OnReply, r);
                     });
  }

  Status Remove(std::string_view path) override {
    QBD_RETURN_IF_ERROR(CheckPath(path));
    const std::string full = pool_->Full(path);
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    return lease.Run(
        "unlink", pool_->Name(full), Reply::Kind::kNone, nullptr,
        [&](nfs_context* c, Reply* r) { return nfs_unlink_async(c, full.c_str(), OnReply, r); });
  }

  Status MkDirs(std::string_view dir) override {
    QBD_RETURN_IF_ERROR(CheckPath(dir));
    const std::string full = pool_->Full(dir);
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    // Usually it exists: one lookup instead of a mkdir per component.
    struct nfs_stat_64 st = {};
    Status s = StatOn(lease, full, &st);
    if (s.ok()) return IsDir(st, full);
    if (!s.IsNotFound()) return s;
    const std::string root = pool_->Full("");
    for (size_t end = full.find('/', root == "/" ? 1 : root.size() + 1);;
         end = full.find('/', end + 1)) {
      const std::string p = full.substr(0, end);
      Status m = lease.Run(
          "mkdir", pool_->Name(p), Reply::Kind::kNone, nullptr,
          [&p](nfs_context* c, Reply* r) { return nfs_mkdir_async(c, p.c_str(), OnReply, r); });
      if (!m.ok() && m.Errno() != EEXIST) return m;
      if (end == std::string::npos) break;
    }
    QBD_RETURN_IF_ERROR(StatOn(lease, full, &st));
    return IsDir(st, full);
  }

  Status RemoveDir(std::string_view dir) override {
    QBD_RETURN_IF_ERROR(CheckPath(dir));
    const std::string full = pool_->Full(dir);
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    return lease.Run(
        "rmdir", pool_->Name(full), Reply::Kind::kNone, nullptr,
        [&](nfs_context* c, Reply* r) { return nfs_rmdir_async(c, full.c_str(), OnReply, r); });
  }

  // An NFSv3 server performs directory operations (CREATE, MKDIR, RENAME, REMOVE) synchronously:
  // RFC 1813 has them on stable storage before the reply, and there is no COMMIT for a directory.
  // So a rename that returned OK is durable already; this only checks that the directory exists,
  // as opening a local directory for fsync would.
  Status SyncDir(std::string_view dir) override {
    QBD_ASSIGN_OR_RETURN(FileInfo info, Stat(dir));
    if (!info.is_dir) {
      return Status::IOError(
          fmt::format("sync dir {}: not a directory", pool_->Name(pool_->Full(dir))), ENOTDIR);
    }
    return Status::OK();
  }

  Result<FileInfo> Stat(std::string_view path) override {
    QBD_RETURN_IF_ERROR(CheckPath(path));
    const std::string full = pool_->Full(path);
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    struct nfs_stat_64 st = {};
    QBD_RETURN_IF_ERROR(StatOn(lease, full, &st));
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
    const std::string full = pool_->Full(dir);
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    struct nfsdir* d = nullptr;
    QBD_RETURN_IF_ERROR(lease.Run(
        "opendir", pool_->Name(full), Reply::Kind::kDir, &d,
        [&](nfs_context* c, Reply* r) { return nfs_opendir_async(c, full.c_str(), OnReply, r); }));
    // READDIRPLUS brought every entry's attributes along: no call per file.
    std::vector<DirEntry> out;
    while (struct nfsdirent* e = nfs_readdir(lease.nfs(), d)) {
      std::string_view n = e->name;
      if (n == "." || n == "..") continue;
      out.push_back(DirEntry{std::string(n), FileInfo{static_cast<uint64_t>(e->size), S_ISDIR(e->mode)}});
    }
    nfs_closedir(lease.nfs(), d);
    return out;
  }

 private:
  Result<std::unique_ptr<ChunkFile>> OpenFile(std::string_view path, bool create) {
    QBD_RETURN_IF_ERROR(CheckPath(path));
    if (path.empty()) return Status::InvalidArgument("open: empty path");
    const std::string full = pool_->Full(path);
    const std::string name = pool_->Name(full);
    QBD_ASSIGN_OR_RETURN(Lease lease, pool_->Acquire());
    nfsfh* fh = nullptr;
    if (create) {
      QBD_RETURN_IF_ERROR(
          lease.Run("create", name, Reply::Kind::kFh, &fh, [&](nfs_context* c, Reply* r) {
            return nfs_create_async(c, full.c_str(), O_RDWR | O_TRUNC, 0644, OnReply, r);
          }));
    } else {
      QBD_RETURN_IF_ERROR(
          lease.Run("open", name, Reply::Kind::kFh, &fh, [&](nfs_context* c, Reply* r) {
            return nfs_open_async(c, full.c_str(), O_RDWR, OnReply, r);
          }));
    }
    struct nfs_stat_64 st = {};
    Status s = lease.Run("fstat", name, Reply::Kind::kStat, &st, [fh](nfs_context* c, Reply* r) {
      return nfs_fstat64_async(c, fh, OnReply, r);
    });
    if (!s.ok()) {
      // Nothing was written through the handle, so closing it sends nothing and only frees it,
      // even on a context whose connection just failed.
      bool broken = false;
      std::string text;
      RunCall(
          lease.nfs(), Reply::Kind::kNone, nullptr,
          [fh](nfs_context* c, Reply* r) { return nfs_close_async(c, fh, OnReply, r); }, &broken,
          &text);
      return s;
    }
    return std::unique_ptr<ChunkFile>(new NfsFile(pool_, fh, full, st.nfs_ino));
  }

  Status StatOn(Lease& lease, const std::string& full, struct nfs_stat_64* st) const {
    return lease.Run("stat", pool_->Name(full), Reply::Kind::kStat, st,
                     [&full](nfs_context* c, Reply* r) {
                       return nfs_stat64_async(c, full.c_str(), OnReply, r);
                     });
  }

  Status IsDir(const struct nfs_stat_64& st, const std::string& full) const {
    if (S_ISDIR(st.nfs_mode)) return Status::OK();
    return Status::IOError(
        fmt::format("mkdir {}: exists and is not a directory", pool_->Name(full)), ENOTDIR);
  }

  const std::shared_ptr<Pool> pool_;
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
  auto pool = std::make_shared<Pool>(url, std::move(parsed), options);
  // Connect one context now: a mount the server refuses (wrong export, no access) is a
  // configuration error for start-up. An unreachable server is not: the backend starts with its
  // breaker open and connects once the server answers; callers see "unreachable" until then.
  auto lease = pool->Acquire();
  if (!lease.ok() && !ConnectionBroken(lease.status().Errno()) && lease.status().Errno() != EIO) {
    return lease.status();
  }
  return std::unique_ptr<StorageBackend>(new NfsBackend(std::move(pool)));
}

}  // namespace qbd
