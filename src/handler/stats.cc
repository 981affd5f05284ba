#include "qbd/stats.h"

#include <fmt/format.h>

#include <chrono>

#include "qbd/config.h"

namespace qbd {
namespace {

// Counts one call into `m` when it goes out of scope: a few atomic additions on series resolved
// when the volume opened.
class Timed {
 public:
  Timed(const OpMetrics& m, uint64_t bytes)
      : m_(m), bytes_(bytes), start_(std::chrono::steady_clock::now()) {}
  ~Timed() {
    const std::chrono::duration<double> d = std::chrono::steady_clock::now() - start_;
    m_.requests->Increment();
    m_.duration->Observe(d.count());
    if (!ok_) {
      m_.errors->Increment();
    } else if (bytes_ > 0) {
      m_.bytes->Increment(static_cast<double>(bytes_));
    }
  }
  template <typename S>
  S Done(S s) {
    ok_ = s.ok();
    return s;
  }

 private:
  const OpMetrics& m_;
  const uint64_t bytes_;
  const std::chrono::steady_clock::time_point start_;
  bool ok_ = true;
};

std::string Line(const char* name, const OpMetrics& m) {
  const auto h = m.duration->Collect().histogram;
  const uint64_t ops = static_cast<uint64_t>(m.requests->Value());
  const uint64_t avg_us =
      h.sample_count ? static_cast<uint64_t>(h.sample_sum / h.sample_count * 1e6) : 0;
  return fmt::format("{} {} ({}, {} errors, avg {} us)", name, ops,
                     FormatSize(static_cast<uint64_t>(m.bytes->Value())),
                     static_cast<uint64_t>(m.errors->Value()), avg_us);
}

}  // namespace

Status StatsLayer::Read(uint64_t off, std::span<std::byte> out) {
  Timed t(m_->read, out.size());
  return t.Done(next().Read(off, out));
}

Status StatsLayer::Write(uint64_t off, std::span<const std::byte> in, bool fua) {
  Timed t(m_->write, in.size());
  return t.Done(next().Write(off, in, fua));
}

Status StatsLayer::Flush() {
  Timed t(m_->flush, 0);
  return t.Done(next().Flush());
}

Status StatsLayer::Trim(uint64_t off, uint64_t len, bool fua) {
  Timed t(m_->trim, len);
  return t.Done(next().Trim(off, len, fua));
}

Status StatsLayer::WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) {
  Timed t(m_->zero, len);
  return t.Done(next().WriteZeroes(off, len, may_trim, fua));
}

Result<std::vector<Extent>> StatsLayer::BlockStatus(uint64_t off, uint64_t len) {
  Timed t(m_->block_status, 0);
  return t.Done(next().BlockStatus(off, len));
}

std::string StatsLayer::Summary() const {
  return fmt::format("{}, {}, {}, {}, {}", Line("reads", m_->read), Line("writes", m_->write),
                     Line("flushes", m_->flush), Line("trims", m_->trim), Line("zeroes", m_->zero));
}

}  // namespace qbd
