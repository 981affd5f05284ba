// VolumeLease: one master per volume (fencing), a "delta lease" kept in `<volnr>/.owner` on every
// part of the volume (layout-spec.md §8). No NFS locking and no agreement between the hosts'
// clocks is assumed: each master only ever compares its own monotonic clock (qbd/clock.h) with
// itself.
//
//  - The holder rewrites `.owner` on every part every `renew_ms` with a growing counter. Before it
//    writes a part it reads it: a part that names another owner is never overwritten. A renewal
//    round counts when a majority of the parts took it within renew_ms / 2 of the round's start;
//    then writes may be acknowledged until (round start + lease_ms - renew_ms). Past that
//    deadline the holder is fenced (FenceLayer, qbd/fence.h, fails requests) until a round counts
//    again; a round started while fenced counts only after the verification below. When a
//    majority of the parts names another owner, the lease is lost for good (Lost()).
//  - A contender reads `.owner` on every part at each Acquire() step. It may take the volume when
//    a majority of the parts either has no `.owner`, or has one of this configuration's previous
//    run (same host, boot and admin socket: the caller holds that configuration's ProcessLock, so
//    that run is over), or has the same content it had lease_ms + renew_ms ago (the larger of the
//    holder's and our values) by our own clock. It then writes its own record on those parts
//    (each one only if it still holds what was observed), waits renew_ms / 2 and reads them
//    again: it holds the volume when a majority still names it. Otherwise it keeps observing.
//
// Thread-safety: Acquire, Release and the accessors are for the one thread that manages the
// volume (qbd-master's main thread); Renew runs on the renewal thread (StartRenewing) or, in
// tests, on the caller's. valid_until() is read by request threads (an atomic).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "qbd/backend.h"
#include "qbd/clock.h"
#include "qbd/status.h"

namespace qbd {

// Who a master is. `owner` is random per process; the rest names it for admins and tells a
// restart of the same configuration on the same boot of the same host.
struct LeaseIdentity {
  uint64_t owner = 0;
  std::string host;
  std::string boot_id;  // /proc/sys/kernel/random/boot_id ("" when unknown)
  int64_t pid = 0;
  std::string config;        // the qbd.conf path (informational)
  std::string admin_socket;  // its ProcessLock is "<admin_socket>.lock"
  std::string started;       // ISO 8601 UTC start time (informational)
  // Where other masters reach its NBD listener ("HOST:PORT"; "" when it has none they can use):
  // a master taking the volume over during a live migration forwards to it meanwhile.
  std::string nbd;

  // This process: a random owner id, gethostname, the boot id, getpid and the current time.
  static LeaseIdentity ForThisProcess(const std::string& config, const std::string& admin_socket);
};

// The contents of one `.owner` file (layout-spec.md §8).
struct LeaseRecord {
  LeaseIdentity who;
  uint32_t volnr = 0;
  uint64_t counter = 0;
  uint32_t lease_ms = 0;
  uint32_t renew_ms = 0;

  std::string Encode() const;
  // InvalidArgument naming `file` (and the line) for a malformed record.
  static Result<LeaseRecord> Parse(std::string_view text, std::string_view file);
  // "qbd-master on host H (pid P, config C, started S)".
  std::string Describe() const;
};

// "<volnr>/.owner"
std::string LeasePath(uint32_t volnr);

struct LeaseOptions {
  uint32_t lease_ms = 10000;
  uint32_t renew_ms = 2000;
  // Reads and writes the parts from one thread per part, so that a hung part never holds up a
  // round (qbd-master); false runs them in turn on the caller's thread (unit tests).
  bool parallel = true;
};

class VolumeLease {
 public:
  // `parts[i]` is the backend of part 'a' + i; the backends and `clock` must outlive the lease.
  VolumeLease(uint32_t volnr, std::string volume, std::vector<StorageBackend*> parts,
              LeaseIdentity self, LeaseOptions options, Clock& clock);
  ~VolumeLease();  // stops the renewal thread and the part threads; removes nothing
  VolumeLease(const VolumeLease&) = delete;
  VolumeLease& operator=(const VolumeLease&) = delete;

  enum class Phase {
    kObserving,  // another master holds the volume (or the parts could not be read)
    kVerifying,  // our record is written; Acquire again at retry_at_ms to check it stayed
    kHeld,       // ours: serve it (and StartRenewing)
  };
  struct Progress {
    Phase phase = Phase::kObserving;
    // kObserving: the other holder ("qbd-master on host ..."), or why the parts could not be read.
    std::string holder;
    // kHeld after a takeover: how long the previous holder's record stayed unchanged on the
    // majority we took (our clock; >= its lease_ms + renew_ms); 0 when the parts were free.
    uint64_t waited_ms = 0;
    std::string previous;      // kHeld: the holder we took over from ("" when the parts were free)
    uint64_t retry_at_ms = 0;  // kObserving, kVerifying: when to call Acquire again (clock time)
  };
  // One step of acquisition: reads (and maybe writes) `.owner` on the parts, never sleeps.
  // REQUIRES: the caller holds this configuration's ProcessLock.
  Progress Acquire();

  // One renewal step (the renewal thread calls it; tests call it by hand). Returns the clock time
  // of the next step. Logs when the volume becomes fenced, unfenced or lost.
  uint64_t Renew();
  // Runs Renew on its own thread until StopRenewing (or destruction). REQUIRES: held().
  void StartRenewing();
  void StopRenewing();

  // Writes may be acknowledged while clock.NowMs() < valid_until() (0: never). The FenceLayer
  // reads it on every request.
  const std::atomic<uint64_t>& valid_until() const { return valid_until_; }
  bool held() const { return phase_ == Phase::kHeld; }
  // True once a majority of the parts named another owner while we held the volume: the caller
  // stops serving it (Reset() starts acquisition over).
  bool lost() const { return lost_.load(); }
  std::string lost_to() const;
  // Back to observing from scratch (after a loss or a failed open). REQUIRES: not renewing.
  void Reset();

  // For each part: true when its `.owner` names us now (read now; false when unreadable).
  std::vector<bool> PartsNamingUs();
  // Stops renewing and removes `.owner` from every part where it still names us (never another
  // master's record). OK when nothing failed.
  Status Release();

  const LeaseOptions& options() const { return options_; }
  const LeaseIdentity& self() const { return self_; }
  // The clock valid_until() is a time of.
  const Clock& clock() const { return clock_; }

 private:
  class PartThreads;
  // What one part held when read: nullopt when it could not be read, "" when absent.
  using Content = std::optional<std::string>;
  struct Observation {
    std::string content;    // "" = no `.owner`
    uint64_t since_ms = 0;  // when a read that ended saw it first (clock)
    bool valid = false;
  };

  struct Round;
  // Runs `fn(i, round)` for every part with which[i] (on the part threads, or in turn without
  // them) and waits until each ended, `enough` parts wrote, or renew_ms / 2 passed.
  void RunRound(const std::vector<bool>& which, const std::function<void(size_t, Round&)>& fn,
                const std::shared_ptr<Round>& round, size_t enough);
  // Reads `.owner` on every part (at most renew_ms / 2 for the slow ones).
  std::vector<Content> ReadAll();
  // For each part with want[i], reads `.owner` and writes `text` when `allowed(i, current)` holds;
  // true where it was written. Waits for all, or a majority written, or renew_ms / 2.
  struct Written {
    std::vector<bool> wrote;
    std::vector<Content> found;  // what each part held before (nullopt: unread or not tried)
  };
  Written WriteWhere(const std::vector<bool>& want, const std::string& text,
                     std::function<bool(size_t, const std::string&)> allowed);
  // True when `content` is free for us: absent, ours, or our configuration's previous run.
  bool FreeForUs(const std::string& content) const;
  std::string MyRecord(uint64_t counter) const;
  size_t Majority() const { return parts_.size() / 2 + 1; }
  uint64_t RoundLimitMs() const { return options_.renew_ms / 2; }
  void RemoveWhereOurs(const std::vector<bool>& where);
  void RenewLoop();

  const uint32_t volnr_;
  const std::string volume_;
  const std::string path_;
  std::vector<StorageBackend*> parts_;
  const LeaseIdentity self_;
  const LeaseOptions options_;
  Clock& clock_;
  std::unique_ptr<PartThreads> threads_;  // options_.parallel only

  // Acquisition (the managing thread).
  Phase phase_ = Phase::kObserving;
  std::vector<Observation> seen_;
  uint64_t verify_at_ms_ = 0;   // kVerifying
  uint64_t take_start_ms_ = 0;  // kVerifying: when our takeover write round started
  std::vector<bool> taken_;     // kVerifying: where our record was written
  uint64_t take_waited_ms_ = 0;
  std::string take_previous_;

  // Holding (the renewal thread, or the managing thread before StartRenewing).
  std::atomic<uint64_t> valid_until_{0};
  uint64_t counter_ = 0;
  std::string text_;                // our record as last written
  uint64_t recover_verify_at_ = 0;  // a round started while fenced is checked at this time
  uint64_t recover_start_ms_ = 0;
  bool fenced_logged_ = false;
  std::atomic<bool> lost_{false};
  mutable std::mutex lost_mu_;
  std::string lost_to_;  // GUARDED_BY(lost_mu_)

  std::mutex run_mu_;
  std::condition_variable run_cv_;
  bool stop_ = false;  // GUARDED_BY(run_mu_)
  std::thread renewer_;
};

// For offline tools (qbd-repair), and for a master looking for the holder it forwards to during
// a live migration (master_handoff.cc): the record of a master other than this configuration's
// previous run found in `.owner` on any of `parts`, or nullopt when there is none. A record is
// left behind only by a master that is running or did not stop cleanly.
std::optional<LeaseRecord> ForeignLease(uint32_t volnr, const std::vector<StorageBackend*>& parts,
                                        const LeaseIdentity& self);

}  // namespace qbd
