// NfsBackend: a StorageBackend on one NFSv3 export, reached through userspace libnfs (no kernel
// mount). The only file that includes <nfsc/libnfs.h>.
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
#include <linux/futex.h>
// libnfs-raw.h needs the definitions of libnfs.h first.
// clang-format off
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nfs.h>
// clang-format on
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "qbd/backend.h"
#include "qbd/log.h"

#ifdef LIBNFS_API_V2
#error "libnfs 6 renamed the raw NFSv3 calls (rpc_nfs3_*_task); port StartRead/StartWrite/Commit"
#endif

namespace qbd {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxBackoffSeconds = 10;
// How often NfsFile::Detached() really asks the server.
constexpr std::chrono::nanoseconds kDetachCheckInterval = std::chrono::seconds(1);
// How often the loop lets libnfs look for timed-out calls, and the longest it sleeps in poll().
constexpr int kScanIntervalMs = 100;
// One ReadAtV/WriteAt round sends at most this much at once; a longer call takes several rounds.
constexpr uint64_t kMaxIoPerRound = 16u << 20;

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

// A one-shot event one thread sleeps on (a futex) until another signals it.
class Completion {
 public:
  void Reset() { state_.store(kPending, std::memory_order_relaxed); }
  bool Done() const { return state_.load(std::memory_order_acquire) == kDone; }

  void Wait() {
    uint32_t s = kPending;
    if (state_.compare_exchange_strong(s, kWaiting, std::memory_order_acquire)) s = kWaiting;
    while (s != kDone) {
      syscall(SYS_futex, Word(), FUTEX_WAIT_PRIVATE, kWaiting, nullptr, nullptr, 0);
      s = state_.load(std::memory_order_acquire);
    }
  }

  // The waiter may return, and *this end, as soon as the exchange is done. The futex wake after it
  // only names an address: the kernel wakes whoever sleeps there, nobody if the waiter is gone, and
  // a thread that reused the address for another Completion checks its own state and sleeps again.
  void Signal() {
    if (state_.exchange(kDone, std::memory_order_acq_rel) == kWaiting) {
      syscall(SYS_futex, Word(), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    }
  }

 private:
  static constexpr uint32_t kPending = 0, kWaiting = 1, kDone = 2;
  uint32_t* Word() { return reinterpret_cast<uint32_t*>(&state_); }
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t) &&
                std::atomic<uint32_t>::is_always_lock_free);
  std::atomic<uint32_t> state_{kPending};
};

// What a raw WRITE or COMMIT reply says besides its status.
struct WriteVerdict {
  bool stable = false;  // WRITE: the server committed the data already (FILE_SYNC or DATA_SYNC)
  std::array<char, NFS3_WRITEVERFSIZE> verf{};
};

// Where READ data goes: file offset `offset` is byte 0 of spans[0], and the spans follow each
// other (ReadAtV).
struct ReadTarget {
  std::span<const std::span<std::byte>> spans;
  uint64_t offset = 0;
};

// Copies `n` bytes that belong at file offset `at` into `t`'s spans.
void Scatter(const ReadTarget& t, uint64_t at, const char* data, uint64_t n) {
  uint64_t pos = at - t.offset;
  size_t i = 0;
  while (i < t.spans.size() && pos >= t.spans[i].size()) pos -= t.spans[i++].size();
  for (; n > 0 && i < t.spans.size(); ++i, pos = 0) {
    const uint64_t k = std::min<uint64_t>(n, t.spans[i].size() - pos);
    std::memcpy(t.spans[i].data() + pos, data, k);
    data += k;
    n -= k;
  }
}

// The file handle bytes behind nfs_get_fh(): libnfs declares struct nfs_fh only in its private
// header; this is its layout, unchanged from libnfs 1.x through 6 ({int len; char *val;}).
struct LibnfsFh {
  int len;
  char* val;
};

class Client;

// One libnfs call, started by its caller (Client::Start), which then waits on `done`. The caller
// fills in the request fields and keeps the Call alive until `done` fires; the libnfs callback
// (OnReply, OnRpcReply), run by whichever thread holds the context's lock, fills in the result.
struct Call {
  enum class Kind { kNone, kFh, kStat, kDir, kRead3, kWrite3, kCommit3 };

  // Request.
  Kind kind = Kind::kNone;
  // kFh: nfsfh**; kStat: nfs_stat_64*; kDir: std::vector<DirEntry>*; kRead3: ReadTarget*;
  // kWrite3, kCommit3: WriteVerdict*.
  void* out = nullptr;
  uint64_t at = 0;  // kRead3, kWrite3: the file range
  uint64_t count = 0;
  // Starts the call on `nfs` with this Call as libnfs' private data; 0 when queued (libnfs then
  // calls back exactly once, maybe before it returns), else nothing was queued.
  int (*start)(const void* fn, nfs_context* nfs, Call* call) = nullptr;
  const void* start_fn = nullptr;
  std::string_view what;     // "write", for messages
  std::string_view object;   // "nfs://host/export/1/a/5"
  bool trial = false;        // the breaker's trial call (Client::Admit)
  bool local = false;        // sends nothing (closing a handle): not an answer from the server
  Client* client = nullptr;  // whose context runs it; nullptr for RunPrivate

  // Result.
  int slot = -1;        // the context it ran on
  int status = 0;       // >= 0 (bytes for READ and WRITE) or -errno
  bool eof = false;     // kRead3: the server said the file ends after the data
  bool broken = false;  // the connection failed: the context is gone
  bool unsent = false;  // no context was connected: nothing was sent
  std::string error;    // libnfs' message
  Completion done;

  template <typename Start>
  void SetStart(const Start& fn) {
    start_fn = &fn;
    start = [](const void* f, nfs_context* nfs, Call* c) {
      return (*static_cast<const Start*>(f))(nfs, c);
    };
  }
};

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

void Finish(Call* c);  // Client::Finished, or a private call's signal (below Client)

// The callback of the nfs_*_async calls.
void OnReply(int status, nfs_context* nfs, void* data, void* private_data) {
  auto* c = static_cast<Call*>(private_data);
  c->status = status;
  if (status < 0) {
    const char* text = nfs_get_error(nfs);  // `data` is not always the message
    if (text != nullptr) c->error = text;
  } else {
    switch (c->kind) {
      case Call::Kind::kFh:
        *static_cast<nfsfh**>(c->out) = static_cast<nfsfh*>(data);
        break;
      case Call::Kind::kStat:
        *static_cast<struct nfs_stat_64*>(c->out) = *static_cast<struct nfs_stat_64*>(data);
        break;
      case Call::Kind::kDir: {
        // READDIRPLUS brought every entry's attributes along: no call per file. Read here, under
        // the context's lock, because nfs_readdir and nfs_closedir take the context.
        auto* d = static_cast<struct nfsdir*>(data);
        auto* out = static_cast<std::vector<DirEntry>*>(c->out);
        while (struct nfsdirent* e = nfs_readdir(nfs, d)) {
          std::string_view n = e->name;
          if (n == "." || n == "..") continue;
          out->push_back(
              DirEntry{std::string(n), FileInfo{static_cast<uint64_t>(e->size), S_ISDIR(e->mode)}});
        }
        nfs_closedir(nfs, d);
        break;
      }
      case Call::Kind::kNone:
      case Call::Kind::kRead3:  // raw RPCs: OnRpcReply
      case Call::Kind::kWrite3:
      case Call::Kind::kCommit3:
        break;
    }
  }
  Finish(c);
}

// The callback of the raw NFSv3 READ, WRITE and COMMIT (rpc_nfs3_*_async). Fills the Call as
// OnReply does: status is the byte count (READ, WRITE), 0 (COMMIT) or -errno, with libnfs'
// convention for RPC-level failures (EFAULT for a failed RPC, EINTR for a timeout or a cancel).
void OnRpcReply(rpc_context* rpc, int status, void* data, void* private_data) {
  auto* c = static_cast<Call*>(private_data);
  switch (status) {
    case RPC_STATUS_SUCCESS:
      break;
    case RPC_STATUS_ERROR: {
      c->status = -EFAULT;
      const char* text = data != nullptr ? static_cast<const char*>(data) : rpc_get_error(rpc);
      if (text != nullptr) c->error = text;
      return Finish(c);
    }
    case RPC_STATUS_TIMEOUT:
      c->status = -EINTR;
      c->error = "Command timed out";
      return Finish(c);
    default:
      c->status = -EINTR;
      c->error = "Command was cancelled";
      return Finish(c);
  }
  int nfs_status = NFS3_OK;
  switch (c->kind) {
    case Call::Kind::kRead3: {
      const auto* res = static_cast<const READ3res*>(data);
      nfs_status = res->status;
      if (nfs_status != NFS3_OK) break;
      const READ3resok& ok = res->READ3res_u.resok;
      const auto* t = static_cast<const ReadTarget*>(c->out);
      const uint64_t got = std::min<uint64_t>(ok.count, ok.data.data_len);
      if (got > c->count) {
        c->status = -EIO;
        c->error = fmt::format("the server sent {} bytes for a READ of {}", got, c->count);
        return Finish(c);
      }
      Scatter(*t, c->at, ok.data.data_val, got);  // the one copy of the data
      c->status = static_cast<int>(got);
      c->eof = ok.eof != 0;
      break;
    }
    case Call::Kind::kWrite3: {
      const auto* res = static_cast<const WRITE3res*>(data);
      nfs_status = res->status;
      if (nfs_status != NFS3_OK) break;
      const WRITE3resok& ok = res->WRITE3res_u.resok;
      auto* verdict = static_cast<WriteVerdict*>(c->out);
      c->status = static_cast<int>(ok.count);
      verdict->stable = ok.committed != UNSTABLE;
      std::memcpy(verdict->verf.data(), ok.verf, verdict->verf.size());
      break;
    }
    case Call::Kind::kCommit3: {
      const auto* res = static_cast<const COMMIT3res*>(data);
      nfs_status = res->status;
      if (nfs_status != NFS3_OK) break;
      c->status = 0;
      std::memcpy(static_cast<WriteVerdict*>(c->out)->verf.data(), res->COMMIT3res_u.resok.verf,
                  NFS3_WRITEVERFSIZE);
      break;
    }
    default:
      break;
  }
  if (nfs_status != NFS3_OK) {
    c->status = nfsstat3_to_errno(nfs_status);
    if (c->status >= 0) c->status = -EIO;
    const char* text = nfsstat3_to_str(nfs_status);
    if (text != nullptr) c->error = text;
  }
  Finish(c);
}

// Runs `c` on `*nfs`, a context no other thread uses (Client::Connect sets it up before it is
// published), with a poll loop of its own until `c` completes. When the socket fails first,
// destroys the context, which completes `c` (libnfs cancels it), and sets *nfs to nullptr. Sets
// c->broken when the connection failed.
void RunPrivate(nfs_context** nfs, Call* c) {
  c->client = nullptr;
  c->done.Reset();
  if (c->start(c->start_fn, *nfs, c) != 0) {  // not queued: no callback will come
    const char* e = nfs_get_error(*nfs);
    c->status = -ENOMEM;
    c->error = e != nullptr ? e : "request not queued";
    c->broken = true;
    return;
  }
  while (!c->done.Done()) {
    struct pollfd pfd = {nfs_get_fd(*nfs), static_cast<short>(nfs_which_events(*nfs)), 0};
    const int n = ::poll(&pfd, 1, kScanIntervalMs);
    if (n < 0 && errno == EINTR) continue;  // a signal, not a socket error
    if (nfs_service(*nfs, n < 0 ? -1 : pfd.revents) < 0 && !c->done.Done()) {
      const char* e = nfs_get_error(*nfs);
      std::string text = std::string("connection failed: ") + (e != nullptr ? e : "socket error");
      nfs_destroy_context(*nfs);  // calls back `c`, cancelled
      *nfs = nullptr;
      c->status = -ECONNRESET;
      c->error = std::move(text);
    }
  }
  if (c->status < 0 && ConnectionBroken(-c->status)) c->broken = true;
}

// TCP SYN retries whose total wait (1 + 2 + 4 ... s) stays within the timeout, at least 1.
int SynCountFor(int timeout_ms) {
  int n = 1;
  while (n < 6 && ((2 << (n + 1)) - 1) * 1000 <= timeout_ms) ++n;
  return n;
}

// The contexts of one backend, the loop thread that receives their replies, and the reconnect
// policy (see the top of this file).
class Client {
 public:
  static Result<std::shared_ptr<Client>> Create(std::string url, NfsUrl parsed,
                                                const NfsOptions& options) {
    const int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) return Status::FromErrno(fmt::format("{}: eventfd", url), errno);
    std::shared_ptr<Client> c(new Client(std::move(url), std::move(parsed), options, efd));
    try {
      c->loop_ = std::thread([raw = c.get()] { raw->Loop(); });
    } catch (const std::system_error& e) {
      return Status::IOError(fmt::format("{}: cannot start its thread: {}", c->url_, e.what()),
                             e.code().value());
    }
    pthread_setname_np(c->loop_.native_handle(), "qbd-nfs");
    return c;
  }

  ~Client() {
    // Handles whose close was deferred are closed now if the server is reachable. Otherwise their
    // few bytes are leaked on purpose (see Close).
    std::vector<nfsfh*> fhs;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (healthy_) fhs.swap(pending_close_);
    }
    if (loop_.joinable()) {
      CloseNow(&fhs);
      {
        std::lock_guard<std::mutex> l(mu_);
        stop_ = true;
        WakeLocked();
      }
      loop_.join();  // destroys the contexts
    }
    ::close(event_fd_);
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

  // The largest READ and WRITE the server takes (FSINFO, as of the first mount).
  uint64_t ReadMax() const { return read_max_.load(std::memory_order_relaxed); }
  uint64_t WriteMax() const { return write_max_.load(std::memory_order_relaxed); }

  // Runs `calls` together, each on the context with the fewest calls in flight, and returns once
  // all have completed; each call's outcome is in its result fields (StatusOf). Fails at once,
  // starting nothing, with IOError "unreachable" while the breaker is open, or with the mount's
  // error when no context was connected and connecting one failed.
  Status RunAll(std::span<Call* const> calls) {
    std::vector<Call*> retry;  // calls that went unsent
    for (int attempt = 1;; ++attempt) {
      std::vector<nfsfh*> to_close;
      QBD_ASSIGN_OR_RETURN(const bool trial, Admit(&to_close));
      if (!to_close.empty()) CloseNow(&to_close);
      for (Call* c : calls) {
        c->trial = trial;
        c->client = this;
        c->slot = -1;
        c->status = 0;
        c->eof = c->broken = c->unsent = false;
        c->error.clear();
        c->done.Reset();
      }
      for (Call* c : calls) Start(c);
      std::vector<Call*> unsent;
      for (Call* c : calls) {
        c->done.Wait();
        if (c->unsent) unsent.push_back(c);
      }
      // Unsent: every context died between Admit and Start. Nothing was sent, so it is safe to
      // try again (the next Admit connects a context).
      if (unsent.empty() || attempt == 3) return Status::OK();
      if (trial && unsent.size() == calls.size()) EndTrial();
      retry.swap(unsent);
      calls = retry;
    }
  }

  // One call (see Call::SetStart for `start`) named `what` on `object` ("fstat",
  // "nfs://h/e/1/a/5"): its StatusOf.
  template <typename Start>
  Status Run(std::string_view what, std::string_view object, Call::Kind kind, void* out,
             const Start& start) {
    Call c;
    c.kind = kind;
    c.out = out;
    c.what = what;
    c.object = object;
    c.SetStart(start);
    Call* p = &c;
    QBD_RETURN_IF_ERROR(RunAll(std::span<Call* const>(&p, 1)));
    return StatusOf(c);
  }

  // A completed call's outcome: OK, NotFound for ENOENT, else IOError with the errno and libnfs'
  // message (EIO when the connection failed, whatever libnfs used internally).
  static Status StatusOf(const Call& c) {
    if (c.status >= 0) return Status::OK();
    const int err = -c.status;
    std::string msg =
        fmt::format("{} {}: {}", c.what, c.object, c.error.empty() ? std::strerror(err) : c.error);
    if (c.broken || c.unsent) return Status::IOError(std::move(msg), EIO);
    if (err == ENOENT) return Status::NotFound(std::move(msg));
    return Status::IOError(std::move(msg), err);
  }

  // Closes `fh` (libnfs frees it; no RPC, as nothing was written through it). Needs a context:
  // while the server is unreachable the handle waits in pending_close_ until it answers again.
  void Close(nfsfh* fh) {
    std::vector<nfsfh*> fhs{fh};
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!healthy_) {
        pending_close_.push_back(fh);
        return;
      }
    }
    CloseNow(&fhs);
  }

  // Connects the first context: the mount's error, or OK (also when the breaker is open, or a
  // context is connected already).
  Status ConnectFirst() {
    std::vector<nfsfh*> none;
    return Admit(&none).status();
  }

  // Records `c`'s outcome on its context and the breaker, and wakes its caller; `c` may be gone
  // once this returns. Runs where libnfs calls back: in whichever thread holds the context's lock
  // (the loop, or a caller starting a call), or in Start when a call could not be started.
  void Finished(Call* c) {
    if (c->slot >= 0) slots_[c->slot].inflight.fetch_sub(1, std::memory_order_relaxed);
    if (c->status < 0 && ConnectionBroken(-c->status)) {
      c->broken = true;
      if (c->slot >= 0) MarkDying(slots_[c->slot]);
      NoteOutcome(*c, /*broken=*/true);
    } else if (!c->local) {
      NoteOutcome(*c, /*broken=*/false);
    }
    c->done.Signal();
  }

 private:
  // One context. Every libnfs call on it, from any thread, holds its `mu`.
  struct Slot {
    enum class State { kEmpty, kConnecting, kLive };
    State state = State::kEmpty;        // GUARDED_BY(Client::mu_)
    std::mutex mu;                      // lock order: Slot::mu, then Client::mu_
    nfs_context* nfs = nullptr;         // GUARDED_BY(mu)
    std::atomic<int> fd{-1};            // its socket while connected, for the loop's poll()
    std::atomic<bool> want_out{false};  // libnfs has bytes to send: poll for POLLOUT too
    std::atomic<bool> usable{false};    // connected and not dying: calls may start on it
    std::atomic<bool> dying{false};     // its connection failed: the loop destroys it
    std::atomic<int> inflight{0};       // calls started on it and not completed
  };

  Client(std::string url, NfsUrl parsed, const NfsOptions& options, int event_fd)
      : url_(std::move(url)),
        parsed_(std::move(parsed)),
        options_(options),
        event_fd_(event_fd),
        slots_(static_cast<size_t>(options.contexts)),
        export_(parsed_.path) {}

  Status Unreachable(std::string_view when) const {
    return Status::IOError(fmt::format("{} unreachable ({})", url_, when));
  }

  // Lets calls through: fails at once while the breaker is open, except for one call (the trial;
  // returns true) once the backoff period is over. Makes sure a context is connected: connects one
  // on this thread when none is, or when every connected one has calls in flight and a slot is
  // free (so the connections grow with the load, up to `contexts`). Handles whose close was
  // deferred go to *to_close once the server answers again.
  Result<bool> Admit(std::vector<nfsfh*>* to_close) {
    std::unique_lock<std::mutex> l(mu_);
    bool trial = false;
    for (;;) {
      if (!healthy_ && !trial) {
        if (trial_running_) return Unreachable("reconnect in progress");
        const Clock::time_point now = Clock::now();
        if (now < down_until_) {
          auto ms =
              std::chrono::duration_cast<std::chrono::milliseconds>(down_until_ - now).count();
          return Unreachable(fmt::format("reconnect in {} s", (ms + 999) / 1000));
        }
        trial = true;
        trial_running_ = true;
      }
      int live = 0, idle = 0, connecting = 0;
      size_t empty = slots_.size();
      for (size_t i = 0; i < slots_.size(); ++i) {
        switch (slots_[i].state) {
          case Slot::State::kLive:  // unless it failed and the loop has yet to destroy it
            if (!slots_[i].usable.load()) break;
            ++live;
            if (slots_[i].inflight.load(std::memory_order_relaxed) == 0) ++idle;
            break;
          case Slot::State::kConnecting:
            ++connecting;
            break;
          case Slot::State::kEmpty:
            if (empty == slots_.size()) empty = i;
            break;
        }
      }
      if (live > 0 && (idle > 0 || connecting > 0 || empty == slots_.size())) {
        if (healthy_ && !pending_close_.empty()) to_close->swap(pending_close_);
        return trial;
      }
      if (empty == slots_.size()) {  // every slot is being connected or destroyed: wait
        cv_.wait(l);
        continue;
      }
      // Connect without the lock (the slot is ours while kConnecting).
      slots_[empty].state = Slot::State::kConnecting;
      l.unlock();
      Result<nfs_context*> c = Connect();
      l.lock();
      cv_.notify_all();
      if (!c.ok()) {
        slots_[empty].state = Slot::State::kEmpty;
        if (healthy_ || trial) OpenBreakerLocked(c.status().message());
        if (trial) trial_running_ = false;
        // As for a call whose connection failed, the errno is EIO whatever libnfs used (a timed
        // out mount is EINTR); an answer from the server (EACCES, ENOENT...) keeps its own.
        if (ConnectionBroken(c.status().Errno())) return Status::IOError(c.status().message(), EIO);
        return c.status();
      }
      // Published: calls may start on it at once, and the loop polls it from its next turn.
      Slot& s = slots_[empty];
      read_max_.store(std::max<uint64_t>(4096, nfs_get_readmax(*c)));
      write_max_.store(std::max<uint64_t>(4096, nfs_get_writemax(*c)));
      l.unlock();  // Slot::mu before Client::mu_
      {
        std::lock_guard<std::mutex> sl(s.mu);
        s.nfs = *c;
        s.fd.store(nfs_get_fd(*c));
        s.usable.store(true);
      }
      l.lock();
      s.state = Slot::State::kLive;
      WakeLocked();
      if (healthy_ && !pending_close_.empty()) to_close->swap(pending_close_);
      return trial;
    }
  }

  // A trial that sent nothing (RunAll) ends without a verdict.
  void EndTrial() {
    std::lock_guard<std::mutex> l(mu_);
    trial_running_ = false;
  }

  // The breaker's rules for a completed call (see the top of this file).
  void NoteOutcome(const Call& c, bool broken) {
    // Fast path, without the lock: nothing changes.
    if (!c.trial && healthy_.load(std::memory_order_relaxed) != broken) return;
    std::lock_guard<std::mutex> l(mu_);
    if (broken) {
      if (healthy_ || c.trial) {
        OpenBreakerLocked(fmt::format("{} {}: {}", c.what, c.object, c.error));
      }
    } else if (!healthy_) {
      QBD_LOG_INFO("{} reachable again", url_);
      healthy_ = true;
      backoff_s_ = 1;
    }
    if (c.trial) trial_running_ = false;
  }

  // A new outage opens the breaker and a failed trial doubles the backoff. The contexts without
  // calls in flight share the failed one's fate: the loop drops them, so that the trial
  // reconnects instead of timing out on an old connection to a server that may have restarted.
  // Callers may hold a Slot::mu.
  void OpenBreakerLocked(std::string_view why) {
    backoff_s_ = healthy_ ? 1 : std::min(backoff_s_ * 2, kMaxBackoffSeconds);
    down_until_ = Clock::now() + std::chrono::seconds(backoff_s_);
    if (healthy_) QBD_LOG_WARN("{} unreachable: {}; retrying in {} s", url_, why, backoff_s_);
    healthy_ = false;
    drop_idle_ = true;
    WakeLocked();
  }

  // Closes the handles in *fhs (Close); those no context could take go back to pending_close_.
  void CloseNow(std::vector<nfsfh*>* fhs) {
    if (fhs->empty()) return;
    const auto start = [](nfs_context* n, Call* c) {
      return nfs_close_async(n, static_cast<nfsfh*>(c->out), OnReply, c);
    };
    std::vector<Call> calls(fhs->size());
    std::vector<Call*> ptrs;
    for (size_t i = 0; i < calls.size(); ++i) {
      calls[i].out = (*fhs)[i];
      calls[i].local = true;
      calls[i].what = "close";
      calls[i].object = url_;
      calls[i].client = this;
      calls[i].SetStart(start);
      ptrs.push_back(&calls[i]);
    }
    for (Call* c : ptrs) Start(c);
    std::vector<nfsfh*> left;
    for (Call& c : calls) {
      c.done.Wait();
      if (c.unsent) left.push_back(static_cast<nfsfh*>(c.out));  // else freed by libnfs
    }
    fhs->clear();
    if (left.empty()) return;
    std::lock_guard<std::mutex> l(mu_);
    pending_close_.insert(pending_close_.end(), left.begin(), left.end());
  }

  // Starts `c` on the usable context with the fewest calls in flight, on the caller's thread,
  // and sends it at once: encoding and sending a large WRITE costs as much as the copy into the
  // socket, and callers do that side by side (the loop only receives). `c` is unsent when no
  // context is usable.
  void Start(Call* c) {
    for (;;) {
      size_t best = slots_.size();
      for (size_t i = 0; i < slots_.size(); ++i) {
        if (!slots_[i].usable.load(std::memory_order_relaxed)) continue;
        if (best == slots_.size() || slots_[i].inflight.load(std::memory_order_relaxed) <
                                         slots_[best].inflight.load(std::memory_order_relaxed)) {
          best = i;
        }
      }
      if (best == slots_.size()) {
        c->unsent = true;
        c->status = -ENOTCONN;
        c->error = "not connected";
        c->done.Signal();
        return;
      }
      Slot& s = slots_[best];
      std::unique_lock<std::mutex> l(s.mu);
      if (!s.usable.load()) continue;  // it failed meanwhile: choose again
      c->slot = static_cast<int>(best);
      const bool was_idle = s.inflight.fetch_add(1, std::memory_order_relaxed) == 0;
      if (c->start(c->start_fn, s.nfs, c) != 0) {  // not queued: no callback will come
        const char* e = nfs_get_error(s.nfs);
        c->status = -ENOMEM;
        c->error = e != nullptr ? e : "request not queued";
        Finished(c);
      } else if ((nfs_which_events(s.nfs) & POLLOUT) && nfs_service(s.nfs, POLLOUT) < 0) {
        MarkDying(s);  // its calls, this one too, fail when the loop destroys it
      }
      // From here on `c` may have completed (nfs_close_async calls back at once): not touched.
      // The loop must wake when this context still has bytes to send (a full socket buffer: it
      // polls for POLLOUT) or was idle (the loop may sleep without a timeout then).
      const bool unsent_bytes = NoteWantOut(s);
      l.unlock();
      if (unsent_bytes || was_idle) {
        std::lock_guard<std::mutex> g(mu_);
        if (unsent_bytes || loop_idle_) WakeLocked();
      }
      return;
    }
  }

  // Records whether libnfs has bytes to send on `s` (and so whether the loop must poll it for
  // POLLOUT), and returns that. REQUIRES: s.mu held.
  static bool NoteWantOut(Slot& s) {
    const bool out = s.usable.load() && (nfs_which_events(s.nfs) & POLLOUT) != 0;
    s.want_out.store(out);
    return out;
  }

  // Marks `s` for the loop to destroy. REQUIRES: s.mu held.
  void MarkDying(Slot& s) {
    s.usable.store(false);
    if (s.dying.exchange(true)) return;
    std::lock_guard<std::mutex> l(mu_);
    WakeLocked();
  }

  // Tells the loop that it has work (slots_, drop_idle_ or stop_ changed, or a context has bytes
  // to send).
  void WakeLocked() {
    dirty_ = true;
    if (sleeping_ && !woken_) {
      woken_ = true;
      const uint64_t one = 1;
      if (::write(event_fd_, &one, sizeof(one)) < 0) {
        // Only EAGAIN is possible (the counter is full), and then the loop is awake anyway.
      }
    }
  }

  // The loop thread: polls every connected context, receives their replies (libnfs calls back,
  // completing the calls), fails timed-out calls, and destroys the contexts that failed.
  void Loop() {
    std::vector<struct pollfd> pfds;
    std::vector<size_t> polled;  // the slot of pfds[k + 1]
    Clock::time_point last_scan = Clock::now();
    for (;;) {
      bool drop_idle = false;
      {
        std::lock_guard<std::mutex> l(mu_);
        sleeping_ = woken_ = dirty_ = loop_idle_ = false;
        if (stop_) break;
        drop_idle = std::exchange(drop_idle_, false);
      }
      if (drop_idle) {
        for (Slot& s : slots_) {
          std::lock_guard<std::mutex> l(s.mu);
          if (s.usable.load() && s.inflight.load() == 0) {
            s.usable.store(false);
            s.dying.store(true);
          }
        }
      }
      DestroyDying();

      // Sleep until a socket or the eventfd has something, or the next timeout scan is due (with
      // no call in flight there is nothing to time out: sleep until woken).
      pfds.assign(1, {event_fd_, POLLIN, 0});
      polled.clear();
      for (size_t i = 0; i < slots_.size(); ++i) {
        // Without the context's lock, which a caller may hold while it sends a large WRITE: the
        // socket stays open until this thread destroys the context.
        const Slot& s = slots_[i];
        const int fd = s.fd.load();
        if (fd < 0) continue;
        pfds.push_back({fd, static_cast<short>(POLLIN | (s.want_out.load() ? POLLOUT : 0)), 0});
        polled.push_back(i);
      }
      const auto since_scan =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - last_scan).count();
      int timeout = 0;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (!dirty_) {
          // Under mu_: a caller that makes a context busy after this look finds loop_idle_ set
          // when it takes mu_ (Start), and wakes the loop.
          bool busy = false;
          for (const Slot& s : slots_) busy = busy || s.inflight.load() > 0;
          timeout =
              busy ? static_cast<int>(std::max<int64_t>(0, kScanIntervalMs - since_scan)) : -1;
          sleeping_ = true;
          loop_idle_ = !busy;
        }
      }
      const int n = ::poll(pfds.data(), pfds.size(), timeout);
      if (n > 0) {
        if (pfds[0].revents & POLLIN) {
          uint64_t count;
          if (::read(event_fd_, &count, sizeof(count)) < 0) {
            // EAGAIN: a wake that another read took already.
          }
        }
        for (size_t k = 0; k < polled.size(); ++k) {
          if (pfds[k + 1].revents == 0) continue;
          Slot& s = slots_[polled[k]];
          std::lock_guard<std::mutex> l(s.mu);
          if (!s.usable.load()) continue;
          if (nfs_service(s.nfs, pfds[k + 1].revents) < 0) {
            MarkDying(s);  // a failed socket; or the server closed an idle connection
          } else {
            NoteWantOut(s);
          }
        }
      }
      if (Clock::now() - last_scan >= std::chrono::milliseconds(kScanIntervalMs)) {
        // nfs_service fails the calls whose timeout has passed.
        last_scan = Clock::now();
        for (Slot& s : slots_) {
          if (s.inflight.load(std::memory_order_relaxed) == 0) continue;
          std::lock_guard<std::mutex> l(s.mu);
          if (s.usable.load() && nfs_service(s.nfs, 0) < 0) MarkDying(s);
        }
      }
      DestroyDying();
    }
    // Stopped by ~Client: no caller is left, so no call is in flight.
    for (Slot& s : slots_) {
      std::lock_guard<std::mutex> l(s.mu);
      if (s.nfs != nullptr) nfs_destroy_context(s.nfs);
      s.nfs = nullptr;
    }
  }

  // Destroys the contexts marked dying; libnfs cancels their calls, which complete now.
  void DestroyDying() {
    for (Slot& s : slots_) {
      if (!s.dying.load()) continue;
      std::lock_guard<std::mutex> l(s.mu);
      s.usable.store(false);
      s.fd.store(-1);
      s.want_out.store(false);
      if (s.nfs != nullptr) nfs_destroy_context(s.nfs);  // Finished() for each call still on it
      s.nfs = nullptr;
      s.dying.store(false);
      std::lock_guard<std::mutex> g(mu_);
      s.state = Slot::State::kEmpty;
      cv_.notify_all();
    }
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
      nfs_context* nfs = *c;
      const std::string sub = longest ? "" : path.substr(end);
      Status s = MakeRoot(&nfs, prefix, sub);
      if (!s.ok()) {
        if (nfs != nullptr) nfs_destroy_context(nfs);
        return s;
      }
      std::lock_guard<std::mutex> l(mu_);
      export_ = prefix;
      root_ = sub;
      export_known_ = true;
      return nfs;
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
  // (and its parents) when it is missing and options_.create_if_missing, else NotFound. Runs on
  // *nfs before it is published; sets *nfs to nullptr when the connection failed.
  Status MakeRoot(nfs_context** nfs, const std::string& export_path, const std::string& sub) {
    if (sub.empty()) return Status::OK();
    auto name = [&](const std::string& p) {
      return fmt::format("nfs://{}{}{}", parsed_.host, export_path, p);
    };
    struct nfs_stat_64 st = {};
    const auto stat = [&sub](nfs_context* n, Call* c) {
      return nfs_stat64_async(n, sub.c_str(), OnReply, c);
    };
    Call c;
    c.kind = Call::Kind::kStat;
    c.out = &st;
    c.SetStart(stat);
    RunPrivate(nfs, &c);
    if (c.status == 0) {
      if (S_ISDIR(st.nfs_mode)) return Status::OK();
      return Status::IOError(fmt::format("{}: not a directory", name(sub)), ENOTDIR);
    }
    if (c.status != -ENOENT)
      return Status::IOError(fmt::format("stat {}: {}", name(sub), c.error), -c.status);
    if (!options_.create_if_missing) {
      return Status::NotFound(fmt::format("{}: no such directory on the server", name(sub)));
    }
    for (size_t end = sub.find('/', 1);; end = sub.find('/', end + 1)) {
      const std::string p = sub.substr(0, end);
      const auto mkdir = [&p](nfs_context* n, Call* m) {
        return nfs_mkdir_async(n, p.c_str(), OnReply, m);
      };
      Call m;
      m.SetStart(mkdir);
      RunPrivate(nfs, &m);
      if (m.status < 0 && m.status != -EEXIST)
        return Status::IOError(fmt::format("mkdir {}: {}", name(p), m.error), -m.status);
      if (end == std::string::npos) return Status::OK();
    }
  }

  const std::string url_;
  const NfsUrl parsed_;
  const NfsOptions options_;
  const int event_fd_;  // wakes the loop
  std::thread loop_;
  std::atomic<uint64_t> read_max_{64 << 10};  // until a context tells
  std::atomic<uint64_t> write_max_{64 << 10};

  mutable std::mutex mu_;
  std::condition_variable cv_;         // a slot stopped connecting or became empty
  std::vector<Slot> slots_;            // (see Slot)
  bool sleeping_ = false;              // GUARDED_BY(mu_): the loop is in (or about to be in) poll
  bool loop_idle_ = false;             // GUARDED_BY(mu_): ... without a timeout (no call in flight)
  bool woken_ = false;                 // GUARDED_BY(mu_): the eventfd was written since
  bool dirty_ = false;                 // GUARDED_BY(mu_): there is work the loop has not seen
  bool stop_ = false;                  // GUARDED_BY(mu_)
  bool drop_idle_ = false;             // GUARDED_BY(mu_): the loop drops contexts without calls
  std::string export_;                 // GUARDED_BY(mu_): the mounted export, "/node1"
  std::string root_;                   // GUARDED_BY(mu_): the URL's directory in it, "/sub" or ""
  bool export_known_ = false;          // GUARDED_BY(mu_)
  std::atomic<bool> healthy_{true};    // written under mu_: false while the breaker is open
  bool trial_running_ = false;         // GUARDED_BY(mu_)
  int backoff_s_ = 1;                  // GUARDED_BY(mu_)
  Clock::time_point down_until_;       // GUARDED_BY(mu_)
  std::vector<nfsfh*> pending_close_;  // GUARDED_BY(mu_)
};

void Finish(Call* c) {
  if (c->client != nullptr) {
    c->client->Finished(c);
  } else {
    c->done.Signal();  // RunPrivate
  }
}

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
