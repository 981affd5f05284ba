#include "engine/sequencer.h"

#include <fmt/format.h>

#include <algorithm>

#include "qbd/chunk_format.h"
#include "qbd/log.h"

namespace qbd {

Sequencer::Sequencer(std::string volume, uint64_t epoch)
    : volume_(std::move(volume)), epoch_(epoch), next_((epoch << kGenerationBits) + 1) {
  QBD_CHECK(epoch > 0 && epoch < (1ull << (64 - kGenerationBits)), "epoch {}", epoch);
}

uint64_t Sequencer::NextGeneration() {
  uint64_t g = next_.fetch_add(1, std::memory_order_relaxed);
  QBD_CHECK((g >> kGenerationBits) == epoch_, "volume {}: generations of epoch {} exhausted", volume_, epoch_);
  return g;
}

Result<uint64_t> Sequencer::TryNextGeneration() {
  uint64_t g = next_.load(std::memory_order_relaxed);
  do {
    if ((g >> kGenerationBits) != epoch_) {
      return Status::Unavailable(fmt::format("volume {}: generations of epoch {} exhausted", volume_, epoch_));
    }
  } while (!next_.compare_exchange_weak(g, g + 1, std::memory_order_relaxed));
  return g;
}

std::vector<size_t> Sequencer::StripesOf(uint64_t r0, uint64_t r1) {
  std::vector<size_t> stripes;
  const uint64_t n = r1 - r0 + 1;
  if (n >= kStripes) {
    for (size_t s = 0; s < kStripes; ++s) stripes.push_back(s);
    return stripes;
  }
  for (uint64_t r = r0; r <= r1; ++r) stripes.push_back(r % kStripes);
  std::sort(stripes.begin(), stripes.end());
  stripes.erase(std::unique(stripes.begin(), stripes.end()), stripes.end());
  return stripes;
}

Sequencer::RegionGuard::RegionGuard(Sequencer& s, uint64_t r0, uint64_t r1) : s_(s), stripes_(StripesOf(r0, r1)) {
  for (size_t i : stripes_) s_.locks_[i].lock();
}

Sequencer::RegionGuard::~RegionGuard() {
  for (auto it = stripes_.rbegin(); it != stripes_.rend(); ++it) s_.locks_[*it].unlock();
}

}  // namespace qbd
