// Redundancy: how a volume's data is spread over its parts — which parts hold a chunk's blocks,
// which parts a read of them tries and in what order, and how the parts' copies are judged. The
// engine (quorum.h) and the RepairWorker (repair_worker.h) ask it instead of assuming replication,
// so that an erasure code (Reed-Solomon) can be added as a second implementation.
//
// The one implementation today is Replicate: every part holds every block; a read goes to the
// parts that are up and clean for the range, least loaded first; copies are judged by JudgeCopies
// (scrub.h, layout-spec.md §4.6), the one rule every caller shares.
//
// Thread-safety: all methods are const and safe for concurrent use (they read PartHealth's atomics
// and the dirty maps, which are safe for concurrent use).
#pragma once

#include <cstdint>
#include <vector>

#include "qbd/scrub.h"

namespace qbd {

class PartHealth;
class ReplicatedMaps;

class Redundancy {
 public:
  virtual ~Redundancy() = default;

  // For log lines ("replicate").
  virtual const char* Name() const = 0;
  // The parts that hold blocks of 0-based `chunk` (bit p: part 'a' + p).
  virtual uint32_t PartsHolding(uint64_t chunk) const = 0;
  // The parts a read of dirty-map regions [r0, r1] tries, in order, without `exclude` (-1: none).
  // Empty when no part can serve the whole range.
  virtual std::vector<int> PlanRead(uint64_t r0, uint64_t r1, int exclude) const = 0;
  // Judges the parts' copies of one run of blocks (copies[p] is part 'a' + p): for each block the
  // source of the good data, or lost or unknown; for each part its copy's issues.
  virtual SliceVerdict Judge(const std::vector<PartCopy>& copies, bool chunk_written,
                             uint64_t max_generation) const = 0;
};

// Every part holds a full copy of every block.
class Replicate : public Redundancy {
 public:
  // `health` and `maps` must outlive this.
  Replicate(const PartHealth& health, const ReplicatedMaps& maps);

  const char* Name() const override { return "replicate"; }
  uint32_t PartsHolding(uint64_t chunk) const override;
  // The parts that are reachable and clean for every region of [r0, r1], least loaded first.
  std::vector<int> PlanRead(uint64_t r0, uint64_t r1, int exclude) const override;
  // JudgeCopies (scrub.h).
  SliceVerdict Judge(const std::vector<PartCopy>& copies, bool chunk_written,
                     uint64_t max_generation) const override;

 private:
  const PartHealth& health_;
  const ReplicatedMaps& maps_;
};

}  // namespace qbd
