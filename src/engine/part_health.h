// PartHealth: the state of each part of a volume, as the engine sees it, and its load.
//
//   up         in sync: takes reads (where clean) and writes, counts for the write quorum
//   resyncing  back after an outage: takes reads where clean and writes, does not count for the
//              quorum until resync has copied its dirty regions back
//   down       skipped by reads and writes (its missed writes are recorded in its dirty map)
//
// Transitions: any -> down (MarkDown, an I/O error); down -> resyncing (ProbePart finds the
// volume's directory on its backend again); resyncing -> up (MarkInSync, resync done). A part
// opens up, or resyncing when it has dirty regions.
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
#include "qbd/status.h"

namespace qbd {

class PartHealth {
 public:
  enum class State : int { kUp = 0, kResyncing = 1, kDown = 2 };

  // Part i is named `names[i]` ('a' + i) and lives on `*backends[i]` (null: never probed; it
  // stays down once marked down). Backends must outlive this. Every part starts up.
  PartHealth(std::string volume, uint32_t volnr, std::vector<char> names, std::vector<StorageBackend*> backends);

  size_t size() const { return parts_.size(); }
  char name(size_t i) const { return parts_[i].name; }
  State state(size_t i) const { return static_cast<State>(parts_[i].state.load(std::memory_order_acquire)); }
  // Up or resyncing: the part takes reads (where clean) and writes.
  bool Reachable(size_t i) const { return state(i) != State::kDown; }
  // Up: the part counts for the write quorum.
  bool InSync(size_t i) const { return state(i) == State::kUp; }
  // The parts that are reachable now, as a bit mask (bit i: part i).
  uint32_t ReachableMask() const;

  // Sets the state at open (no transition rules, no log line).
  void SetInitial(size_t i, State s) { parts_[i].state.store(static_cast<int>(s)); }
  // Marks part i down; logs once per outage. True when it was not down before.
  bool MarkDown(size_t i, const Status& why);
  // Down -> resyncing when the volume's directory is on the part's backend again (a replaced
  // disk or server comes back once qbd-repair has recreated it, never by writes into a bare mount
  // point); `on_back` runs once, after the transition. True when the part is reachable.
  bool ProbePart(size_t i, const std::function<void()>& on_back = {});
  // Resyncing -> up; true when this call made the transition.
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
  };
  const std::string volume_;
  const uint32_t volnr_;
  std::vector<Part> parts_;
};

}  // namespace qbd
