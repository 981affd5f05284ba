// Private to the NFS backend (src/storage/nfs_*): the libnfs side of NfsBackend. Client is one
// backend's contexts, the loop thread that receives their replies and the reconnect breaker; a
// Call is one asynchronous libnfs call, started and waited for by its caller and completed by
// the callbacks OnReply and OnRpcReply (nfs_call.cc). Client is defined in nfs_client.cc. The
// design (threads, calls, failures and reconnects, lock order) is described at the top of
// nfs_backend.cc. Only the NFS backend's files include this header, and so <nfsc/libnfs.h>.
#pragma once

#include <linux/futex.h>
// libnfs-raw.h needs the definitions of libnfs.h first.
// clang-format off
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nfs.h>
// clang-format on
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "qbd/backend.h"
#include "qbd/status.h"

#ifdef LIBNFS_API_V2
#error "libnfs 6 renamed the raw NFSv3 calls (rpc_nfs3_*_task); port NfsFile::ReadAtV, WriteAt and the commit in nfs_backend.cc"
#endif

namespace qbd {
namespace nfs_client {

using Clock = std::chrono::steady_clock;

// An nfs:// URL as ParseNfsUrl (nfs_backend.cc) checked it.
struct NfsUrl {
  std::string host;
  std::string path;  // "/export/subdir", without the query
  int nfsport = 2049;
};

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
bool ConnectionBroken(int err);

// The callback of the nfs_*_async calls.
void OnReply(int status, nfs_context* nfs, void* data, void* private_data);

// The callback of the raw NFSv3 READ, WRITE and COMMIT (rpc_nfs3_*_async). Fills the Call as
// OnReply does: status is the byte count (READ, WRITE), 0 (COMMIT) or -errno, with libnfs'
// convention for RPC-level failures (EFAULT for a failed RPC, EINTR for a timeout or a cancel).
void OnRpcReply(rpc_context* rpc, int status, void* data, void* private_data);

// The contexts of one backend, the loop thread that receives their replies, and the reconnect
// policy (see the top of nfs_backend.cc).
class Client {
 public:
  // Starts the loop thread; connects nothing (ConnectFirst does).
  static Result<std::shared_ptr<Client>> Create(std::string url, NfsUrl parsed,
                                                const NfsOptions& options);

  ~Client();

  const std::string& url() const { return url_; }

  // "nfs://HOST/EXPORT/SUBDIR/path" for `full_path` ("/SUBDIR/path" on the export), for messages.
  std::string Name(std::string_view full_path) const;

  std::string FailureDomain() const;

  // The path of backend path `rel` (checked by CheckPath) on the mounted export: "/sub/rel".
  std::string Full(std::string_view rel) const;

  // The largest READ and WRITE the server takes (FSINFO, as of the first mount).
  uint64_t ReadMax() const { return read_max_.load(std::memory_order_relaxed); }
  uint64_t WriteMax() const { return write_max_.load(std::memory_order_relaxed); }

  // Runs `calls` together, each on the context with the fewest calls in flight, and returns once
  // all have completed; each call's outcome is in its result fields (StatusOf). Fails at once,
  // starting nothing, with IOError "unreachable" while the breaker is open, or with the mount's
  // error when no context was connected and connecting one failed.
  Status RunAll(std::span<Call* const> calls);

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
  static Status StatusOf(const Call& c);

  // Closes `fh` (libnfs frees it; no RPC, as nothing was written through it). Needs a context:
  // while the server is unreachable the handle waits in pending_close_ until it answers again.
  void Close(nfsfh* fh);

  // Connects the first context: the mount's error, or OK (also when the breaker is open, or a
  // context is connected already).
  Status ConnectFirst();

  // Records `c`'s outcome on its context and the breaker, and wakes its caller; `c` may be gone
  // once this returns. Runs where libnfs calls back: in whichever thread holds the context's lock
  // (the loop, or a caller starting a call), or in Start when a call could not be started.
  void Finished(Call* c);

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

  Status Unreachable(std::string_view when) const;

  // Lets calls through: fails at once while the breaker is open, except for one call (the trial;
  // returns true) once the backoff period is over. Makes sure a context is connected: connects one
  // on this thread when none is, or when every connected one has calls in flight and a slot is
  // free (so the connections grow with the load, up to `contexts`). Handles whose close was
  // deferred go to *to_close once the server answers again.
  Result<bool> Admit(std::vector<nfsfh*>* to_close);

  // A trial that sent nothing (RunAll) ends without a verdict.
  void EndTrial();

  // The breaker's rules for a completed call (see the top of nfs_backend.cc).
  void NoteOutcome(const Call& c, bool broken);

  // A new outage opens the breaker and a failed trial doubles the backoff. The contexts without
  // calls in flight share the failed one's fate: the loop drops them, so that the trial
  // reconnects instead of timing out on an old connection to a server that may have restarted.
  // Callers may hold a Slot::mu.
  void OpenBreakerLocked(std::string_view why);

  // Closes the handles in *fhs (Close); those no context could take go back to pending_close_.
  void CloseNow(std::vector<nfsfh*>* fhs);

  // Starts `c` on the usable context with the fewest calls in flight, on the caller's thread,
  // and sends it at once: encoding and sending a large WRITE costs as much as the copy into the
  // socket, and callers do that side by side (the loop only receives). `c` is unsent when no
  // context is usable.
  void Start(Call* c);

  // Records whether libnfs has bytes to send on `s` (and so whether the loop must poll it for
  // POLLOUT), and returns that. REQUIRES: s.mu held.
  static bool NoteWantOut(Slot& s);

  // Marks `s` for the loop to destroy. REQUIRES: s.mu held.
  void MarkDying(Slot& s);

  // Tells the loop that it has work (slots_, drop_idle_ or stop_ changed, or a context has bytes
  // to send).
  void WakeLocked();

  // The loop thread: polls every connected context, receives their replies (libnfs calls back,
  // completing the calls), fails timed-out calls, and destroys the contexts that failed.
  void Loop();

  // Destroys the contexts marked dying; libnfs cancels their calls, which complete now.
  void DestroyDying();

  // Connects and mounts a new context. The first success also decides which part of the URL's
  // path is the export: the shortest prefix the server mounts (it refuses the others with
  // EACCES/ENOENT/EPERM); the rest is a directory inside it, created if missing, like a local
  // backend's root.
  Result<nfs_context*> Connect();

  Result<nfs_context*> Mount(const std::string& export_path);

  // Checks that directory `sub` ("" or "/a/b") of the mounted `export_path` exists, creating it
  // (and its parents) when it is missing and options_.create_if_missing, else NotFound. Runs on
  // *nfs before it is published; sets *nfs to nullptr when the connection failed.
  Status MakeRoot(nfs_context** nfs, const std::string& export_path, const std::string& sub);

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

}  // namespace nfs_client
}  // namespace qbd
