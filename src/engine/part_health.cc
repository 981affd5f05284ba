#include "engine/part_health.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "qbd/log.h"

namespace qbd {

PartHealth::PartHealth(std::string volume, uint32_t volnr, std::vector<char> names,
                       std::vector<StorageBackend*> backends, uint64_t min_free_bytes, const Clock* clock)
    : volume_(std::move(volume)),
      volnr_(volnr),
      min_free_bytes_(min_free_bytes),
      clock_(clock != nullptr ? *clock : SteadyClock()),
      parts_(names.size()) {
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

std::string PartHealth::Describe(size_t i) const {
  switch (state(i)) {
    case State::kUp: return "up";
    case State::kResyncing: return "resyncing";
    case State::kFull: return fmt::format("out of space: {}", std::strerror(ENOSPC));
    case State::kDown: break;
  }
  const int err = parts_[i].down_errno.load(std::memory_order_relaxed);
  return err != 0 ? fmt::format("down: {}", std::strerror(err)) : "down";
}

bool PartHealth::MarkDown(size_t i, const Status& why) {
  Part& p = parts_[i];
  const bool full = why.Errno() == ENOSPC;
  const int to = static_cast<int>(full ? State::kFull : State::kDown);
  int from = p.state.load(std::memory_order_acquire);
  // A part down for another reason stays down: it is not read, and only its directory brings it
  // back. One that is full and then fails otherwise goes down.
  do {
    if (from == to || (full && from == static_cast<int>(State::kDown))) return false;
  } while (!p.state.compare_exchange_weak(from, to, std::memory_order_acq_rel));
  p.down_errno.store(why.Errno(), std::memory_order_relaxed);
  if (!full) {
    QBD_LOG_WARN("volume {} part {}: state down: {}", volume_, p.name, why.ToString());
    return true;
  }
  // Filled up again before it was back in sync: the wait doubles.
  uint64_t backoff = p.backoff_ms.load(std::memory_order_relaxed);
  backoff = backoff == 0 ? kInitialBackoffMs : std::min(backoff * 2, kMaxBackoffMs);
  p.backoff_ms.store(backoff, std::memory_order_relaxed);
  p.retry_at_ms.store(clock_.NowMs() + backoff, std::memory_order_relaxed);
  QBD_LOG_WARN("volume {} part {}: state full: out of space ({}); reads go on where it is clean, writes skip it "
               "(recorded dirty); back when it has room again, looked at from {} s on",
               volume_, p.name, why.ToString(), backoff / 1000.0);
  return true;
}

bool PartHealth::HasRoom(Part& p) {
  auto free = p.backend->FreeBytes();
  if (free.ok()) return *free >= min_free_bytes_;
  // The backend cannot tell: a trial file, at most once per back-off.
  p.retry_at_ms.store(clock_.NowMs() + p.backoff_ms.load(std::memory_order_relaxed), std::memory_order_relaxed);
  const std::string path = std::to_string(volnr_) + "/.space.tmp.1";
  Status s;
  {
    auto f = p.backend->Create(path);
    s = f.status();
    if (s.ok()) {
      std::vector<std::byte> zeros(std::min<uint64_t>(min_free_bytes_, 1 << 20));
      for (uint64_t done = 0; done < min_free_bytes_ && s.ok(); done += zeros.size()) {
        s = (*f)->WriteAt(done, std::span(zeros.data(), std::min<uint64_t>(zeros.size(), min_free_bytes_ - done)));
      }
      if (s.ok()) s = (*f)->Sync();
    }
  }
  p.backend->Remove(path).IgnoreError();  // a leftover *.tmp.<k> file is never read (layout-spec.md §0)
  if (!s.ok()) QBD_LOG_DEBUG("volume {} part {}: still no room: {}", volume_, p.name, s.ToString());
  return s.ok();
}

bool PartHealth::ProbePart(size_t i, const std::function<void()>& on_back) {
  Part& p = parts_[i];
  if (Reachable(i)) return true;
  if (p.backend == nullptr) return false;
  const int from = p.state.load(std::memory_order_acquire);
  if (from == static_cast<int>(State::kFull)) {
    if (clock_.NowMs() < p.retry_at_ms.load(std::memory_order_relaxed)) return false;
    if (!p.backend->Stat(std::to_string(volnr_)).ok() || !HasRoom(p)) return false;
  } else if (!p.backend->Stat(std::to_string(volnr_)).ok()) {
    return false;
  }
  int expected = from;
  if (p.state.compare_exchange_strong(expected, static_cast<int>(State::kResyncing)) && on_back) on_back();
  return Reachable(i);
}

bool PartHealth::MarkInSync(size_t i) {
  int expected = static_cast<int>(State::kResyncing);
  if (!parts_[i].state.compare_exchange_strong(expected, static_cast<int>(State::kUp))) return false;
  parts_[i].backoff_ms.store(0, std::memory_order_relaxed);
  return true;
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
