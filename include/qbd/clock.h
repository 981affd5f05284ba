// Clock: a monotonic millisecond clock, injected where timing decides correctness (the volume
// lease, include/qbd/lease.h, and the fence layer, include/qbd/fence.h), so that unit tests drive
// time by hand and never sleep.
//
// SteadyClock() reads std::chrono::steady_clock (CLOCK_MONOTONIC): it never jumps with the wall
// clock, and it is only ever compared with itself, never with another host's clock.
// Thread-safety: NowMs() is safe from any thread.
#pragma once

#include <atomic>
#include <cstdint>

namespace qbd {

class Clock {
 public:
  virtual ~Clock() = default;
  // Milliseconds since an arbitrary fixed point; never decreases.
  virtual uint64_t NowMs() const = 0;
};

// The process's monotonic clock; lives for the whole process.
Clock& SteadyClock();

// A clock that moves only when told (tests).
class ManualClock : public Clock {
 public:
  explicit ManualClock(uint64_t start_ms = 1000) : now_(start_ms) {}
  uint64_t NowMs() const override { return now_.load(); }
  void Advance(uint64_t ms) { now_.fetch_add(ms); }

 private:
  std::atomic<uint64_t> now_;
};

}  // namespace qbd
