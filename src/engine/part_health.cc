#include "engine/part_health.h"

#include <algorithm>
#include <array>

#include "qbd/log.h"

namespace qbd {

PartHealth::PartHealth(std::string volume, uint32_t volnr, std::vector<char> names,
                       std::vector<StorageBackend*> backends)
    : volume_(std::move(volume)), volnr_(volnr), parts_(names.size()) {
  QBD_CHECK(names.size() <= 26 && backends.size() == names.size(), "volume {}: {} parts", volume_, names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    parts_[i].name = names[i];
    parts_[i].backend = backends[i];
  }
}

uint32_t PartHealth::ReachableMask() const {
  uint32_t m = 0;
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (Reachable(i)) m |= 1u << i;
  }
  return m;
}

bool PartHealth::MarkDown(size_t i, const Status& why) {
  if (parts_[i].state.exchange(static_cast<int>(State::kDown)) == static_cast<int>(State::kDown)) return false;
  QBD_LOG_WARN("volume {} part {}: state down: {}", volume_, parts_[i].name, why.ToString());
  return true;
}

bool PartHealth::ProbePart(size_t i, const std::function<void()>& on_back) {
  Part& p = parts_[i];
  if (Reachable(i)) return true;
  if (p.backend == nullptr || !p.backend->Stat(std::to_string(volnr_)).ok()) return false;
  int expected = static_cast<int>(State::kDown);
  if (p.state.compare_exchange_strong(expected, static_cast<int>(State::kResyncing)) && on_back) on_back();
  return Reachable(i);
}

bool PartHealth::MarkInSync(size_t i) {
  int expected = static_cast<int>(State::kResyncing);
  return parts_[i].state.compare_exchange_strong(expected, static_cast<int>(State::kUp));
}

std::vector<int> PartHealth::LeastLoadedFirst(std::vector<int> parts) const {
  // Sort on a snapshot: the live counters change under the sort, and a comparator that is not
  // consistent makes std::sort read out of bounds.
  std::array<int, 26> load{};
  for (int i : parts) load[i] = Inflight(i);
  std::stable_sort(parts.begin(), parts.end(), [&load](int a, int b) { return load[a] < load[b]; });
  return parts;
}

}  // namespace qbd
