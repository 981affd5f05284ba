// PartHealth: the state of each part of a volume, as the engine sees it, and its load.
//
//   up         in sync: takes reads (where clean) and writes, counts for the write quorum
//   resyncing  back after an outage: takes reads where clean and writes, does not count for the
//              quorum until resync has copied its dirty regions back
//   full       out of space (a write failed with ENOSPC): still takes reads where clean, but no
//              writes (its missed writes are recorded in its dirty map) and does not count for
//              the quorum
//   down       skipped by reads and writes (its missed writes are recorded in its dirty map)
//
// Transitions: any -> down (MarkDown, an I/O error), or -> full when the error is ENOSPC;
// down -> resyncing (ProbePart finds the volume's directory on its backend again); full ->
// resyncing (ProbePart, once the back-off has passed, finds room on its backend again);
// resyncing -> up (MarkInSync, resync done). A part opens up, or resyncing when it has dirty
// regions. Every transition is logged once, by the call that made it.
//
// Back-off of a part out of space: it is not brought back before kInitialBackoff has passed
// since it filled up; each time it fills up again before it was back in sync, the wait doubles
// (up to kMaxBackoff), so a disk that has a little room now and then costs a few transitions, not
// one per write. Room means FreeBytes() of at least `min_free_bytes` where the backend can tell,
// else a trial file of that size written, synced and removed (checked at most once per back-off).
//
// Thread-safety: all methods are safe for concurrent use (atomics; no locks).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "qbd/backend.h"
#include "qbd/clock.h"
#include "qbd/status.h"

namespace qbd {

class PartHealth {
 public:
  enum class State : int { kUp = 0, kResyncing = 1, kDown = 2, kFull = 3 };
  static constexpr uint64_t kInitialBackoffMs = 1000;
  static constexpr uint64_t kMaxBackoffMs = 30000;

  // Part i is named `names[i]` ('a' + i) and lives on `*backends[i]` (null: never probed; it
  // stays down once marked down). Backends and `clock` must outlive this (null clock:
  // SteadyClock()). A part out of space comes back once `min_free_bytes` are free on its backend.
  // Every part starts up.
  PartHealth(std::string volume, uint32_t volnr, std::vector<char> names, std::vector<StorageBackend*> backends,
             uint64_t min_free_bytes = 1 << 20, const Clock* clock = nullptr);

  size_t size() const { return parts_.size(); }
  char name(size_t i) const { return parts_[i].name; }
  State state(size_t i) const { return static_cast<State>(parts_[i].state.load(std::memory_order_acquire)); }
  // Up or resyncing: the part takes reads (where clean) and writes.
  bool Reachable(size_t i) const {
    const State s = state(i);
    return s == State::kUp || s == State::kResyncing;
  }
  // Up, resyncing or full: the part's clean regions can be read.
  bool Readable(size_t i) const { return state(i) != State::kDown; }
  // Up: the part counts for the write quorum.
  bool InSync(size_t i) const { return state(i) == State::kUp; }
  // The parts that are reachable now, as a bit mask (bit i: part i).
  uint32_t ReachableMask() const;
  // The errno of the error that brought part i down or full (0 when it is neither).
  int DownErrno(size_t i) const { return Reachable(i) ? 0 : parts_[i].down_errno.load(std::memory_order_relaxed); }
  // "up", "resyncing", "down: <error>" or "full: No space left on device", for messages.
  std::string Describe(size_t i) const;

  // Sets the state at open (no transition rules, no log line).
  void SetInitial(size_t i, State s) { parts_[i].state.store(static_cast<int>(s)); }
  // Marks part i down, or full when `why` carries ENOSPC; logs once per transition. True when
  // this call changed its state.
  bool MarkDown(size_t i, const Status& why);
  // Down -> resyncing when the volume's directory is on the part's backend again (a replaced
  // disk or server comes back once qbd-repair has recreated it, never by writes into a bare mount
  // point); full -> resyncing when its back-off has passed and its backend has room again (see
  // above). `on_back` runs once, after the transition. True when the part is reachable.
  bool ProbePart(size_t i, const std::function<void()>& on_back = {});
  // Resyncing -> up; true when this call made the transition. Ends a full part's back-off.
  bool MarkInSync(size_t i);

  // Requests in flight on part i (for the read order).
  void BeginIo(size_t i) { parts_[i].inflight.fetch_add(1, std::memory_order_relaxed); }
  void EndIo(size_t i) { parts_[i].inflight.fetch_sub(1, std::memory_order_relaxed); }
  int Inflight(size_t i) const { return parts_[i].inflight.load(std::memory_order_relaxed); }
  // `parts` sorted least loaded first (stable: equal loads keep their order), on one snapshot of
  // the counters.
  std::vector<int> LeastLoadedFirst(std::vector<int> parts) const;

 private:
  struct Part {
    char name = 0;
    StorageBackend* backend = nullptr;
    std::atomic<int> state{0};
    std::atomic<int> inflight{0};
    std::atomic<int> down_errno{0};
    // Out of space: not brought back before this time (clock_ ms); the current back-off.
    std::atomic<uint64_t> retry_at_ms{0};
    std::atomic<uint64_t> backoff_ms{0};
  };
  // True when part p's backend has room for `min_free_bytes_` (see the header comment).
  bool HasRoom(Part& p);

  const std::string volume_;
  const uint32_t volnr_;
  const uint64_t min_free_bytes_;
  const Clock& clock_;
  std::vector<Part> parts_;
};

}  // namespace qbd
