#include "qbd/stats.h"

#include <fmt/format.h>

#include <chrono>

#include "qbd/config.h"

namespace qbd {
namespace {

// Counts one call into `c` when it goes out of scope.
class Timed {
 public:
  Timed(OpCounters& c, uint64_t bytes) : c_(c), bytes_(bytes), start_(std::chrono::steady_clock::now()) {}
  ~Timed() {
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count();
    c_.ops.fetch_add(1, std::memory_order_relaxed);
    c_.nanos.fetch_add(static_cast<uint64_t>(ns), std::memory_order_relaxed);
    if (ok_) {
      c_.bytes.fetch_add(bytes_, std::memory_order_relaxed);
    } else {
      c_.errors.fetch_add(1, std::memory_order_relaxed);
    }
  }
  template <typename S>
  S Done(S s) {
    ok_ = s.ok();
    return s;
  }

 private:
  OpCounters& c_;
  const uint64_t bytes_;
  const std::chrono::steady_clock::time_point start_;
  bool ok_ = true;
};

std::string Line(const char* name, const OpCounters& c) {
  uint64_t ops = c.ops.load();
  uint64_t avg_us = ops ? c.nanos.load() / ops / 1000 : 0;
  return fmt::format("{} {} ({}, {} errors, avg {} us)", name, ops, FormatSize(c.bytes.load()), c.errors.load(), avg_us);
}

}  // namespace

Status StatsLayer::Read(uint64_t off, std::span<std::byte> out) {
  Timed t(stats_.read, out.size());
  return t.Done(next().Read(off, out));
}

Status StatsLayer::Write(uint64_t off, std::span<const std::byte> in, bool fua) {
  Timed t(stats_.write, in.size());
  return t.Done(next().Write(off, in, fua));
}

Status StatsLayer::Flush() {
  Timed t(stats_.flush, 0);
  return t.Done(next().Flush());
}

Status StatsLayer::Trim(uint64_t off, uint64_t len, bool fua) {
  Timed t(stats_.trim, len);
  return t.Done(next().Trim(off, len, fua));
}

Status StatsLayer::WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) {
  Timed t(stats_.zero, len);
  return t.Done(next().WriteZeroes(off, len, may_trim, fua));
}

Result<std::vector<Extent>> StatsLayer::BlockStatus(uint64_t off, uint64_t len) {
  Timed t(stats_.block_status, 0);
  return t.Done(next().BlockStatus(off, len));
}

std::string StatsLayer::Summary() const {
  return fmt::format("{}, {}, {}, {}, {}", Line("reads", stats_.read), Line("writes", stats_.write),
                     Line("flushes", stats_.flush), Line("trims", stats_.trim), Line("zeroes", stats_.zero));
}

}  // namespace qbd
