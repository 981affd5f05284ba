#include "engine/redundancy.h"

#include "engine/part_health.h"
#include "engine/replicated_maps.h"

namespace qbd {

Replicate::Replicate(const PartHealth& health, const ReplicatedMaps& maps)
    : health_(health), maps_(maps) {}

uint32_t Replicate::PartsHolding(uint64_t /*chunk*/) const {
  return health_.size() >= 32 ? ~0u : (1u << health_.size()) - 1;
}

std::vector<int> Replicate::PlanRead(uint64_t r0, uint64_t r1, int exclude) const {
  std::vector<int> order;
  order.reserve(health_.size());
  for (size_t i = 0; i < health_.size(); ++i) {
    if (static_cast<int>(i) == exclude || !health_.Reachable(i)) continue;
    if (maps_.dirty(i).AnyIn(r0, r1)) continue;
    order.push_back(static_cast<int>(i));
  }
  return health_.LeastLoadedFirst(std::move(order));
}

SliceVerdict Replicate::Judge(const std::vector<PartCopy>& copies, bool chunk_written,
                              uint64_t max_generation) const {
  return JudgeCopies(copies, chunk_written, max_generation);
}

}  // namespace qbd
