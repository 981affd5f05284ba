// FenceLayer: self-fencing on the request path. A stateless layer (above the caches, below Stats)
// that lets a request through only while the volume's lease is known valid (qbd/lease.h): it
// compares the clock with the lease's `valid_until` deadline before passing a request on and
// again before returning its success, so nothing is acknowledged once the lease may have run out
// and another master may serve the volume. It never waits on I/O itself: one atomic load and one
// clock read per check.
//
// A refused request fails with Unavailable and errno ESHUTDOWN (sent to the client as
// NBD_ESHUTDOWN). A write refused after it was passed on may have reached the parts; it was not
// acknowledged, so the client must not count on it (as after any write error).
//
// Thread-safety: safe for concurrent calls, like every BlockHandler.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "qbd/clock.h"
#include "qbd/handler.h"

namespace qbd {

class FenceLayer : public Layer {
 public:
  // `valid_until` (a time of `clock`, 0: never valid) and `clock` must outlive the layer.
  FenceLayer(std::unique_ptr<BlockHandler> next, std::string volume,
             const std::atomic<uint64_t>& valid_until, const Clock& clock);

  Status Read(uint64_t off, std::span<std::byte> out) override;
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override;
  Status Flush() override;
  Status Trim(uint64_t off, uint64_t len, bool fua) override;
  Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) override;
  Result<std::vector<Extent>> BlockStatus(uint64_t off, uint64_t len) override;

  // Requests refused so far.
  uint64_t refused() const { return refused_.load(std::memory_order_relaxed); }

 private:
  // OK while the lease is valid, else the Unavailable(ESHUTDOWN) to return for `op`.
  Status Check(const char* op);
  // Check() after the layer below answered `s`: an OK answer is only returned while still valid.
  Status After(const char* op, Status s);

  const std::string volume_;
  const std::atomic<uint64_t>& valid_until_;
  const Clock& clock_;
  std::atomic<uint64_t> refused_{0};
};

}  // namespace qbd
