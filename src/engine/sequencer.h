// Sequencer: the order of a volume's writes. It hands out generations (layout-spec.md §4.2:
// (epoch << 40) + k, k counting from 1 within the epoch) and the region locks that make
// overlapping writes, resync copies and repairs of the same regions land in one order on every
// part.
//
// Region locks are kStripes mutexes; region r maps to stripe r % kStripes. A RegionGuard takes
// the stripes of a range of regions in ascending stripe order (all of them for a range of
// kStripes regions or more), so two guards never deadlock, whatever their ranges.
//
// Lock order (the engine's): VolumeEngine's resize lock (shared) -> region stripes (ascending)
// -> PartStore internals. A thread holds at most one RegionGuard.
// Thread-safety: all methods are safe for concurrent use.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "qbd/status.h"

namespace qbd {

class Sequencer {
 public:
  static constexpr size_t kStripes = 1024;

  // REQUIRES: 0 < epoch < 2^(64 - kGenerationBits).
  Sequencer(std::string volume, uint64_t epoch);

  uint64_t epoch() const { return epoch_; }
  // The next generation. Aborts (QBD_CHECK) when the epoch's 2^40 - 1 generations are used up:
  // a larger one would belong to a later epoch.
  uint64_t NextGeneration();
  // NextGeneration, or Unavailable once the epoch's generations are used up (none is consumed).
  Result<uint64_t> TryNextGeneration();
  // The largest generation handed out so far (any write of the volume may carry it): larger ones
  // are suspect (scrub.h).
  uint64_t MaxGeneration() const { return next_.load(std::memory_order_acquire) - 1; }

  // The stripes a guard of regions [r0, r1] takes, in the order it takes them.
  static std::vector<size_t> StripesOf(uint64_t r0, uint64_t r1);

  // Holds the region locks of regions [r0, r1] for its lifetime. REQUIRES: r0 <= r1.
  class RegionGuard {
   public:
    RegionGuard(Sequencer& s, uint64_t r0, uint64_t r1);
    ~RegionGuard();
    RegionGuard(const RegionGuard&) = delete;
    RegionGuard& operator=(const RegionGuard&) = delete;

   private:
    Sequencer& s_;
    std::vector<size_t> stripes_;
  };

  // Starts the epoch's counter at `next` (tests of exhaustion).
  void TEST_SetNextGeneration(uint64_t next) { next_.store(next); }

 private:
  const std::string volume_;
  const uint64_t epoch_;
  std::atomic<uint64_t> next_;
  std::array<std::mutex, kStripes> locks_;
};

}  // namespace qbd
