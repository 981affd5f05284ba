// StatsLayer: the outermost layer of a volume's request chain; counts what the client sees
// (operations, bytes, errors, time spent) for the log and the admin socket's `stats` request.
//
// Thread-safety: counters are atomics; safe from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "qbd/handler.h"

namespace qbd {

struct OpCounters {
  std::atomic<uint64_t> ops{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> nanos{0};  // total time inside the layers below
};

struct VolumeStats {
  OpCounters read, write, flush, trim, zero, block_status;
};

class StatsLayer : public Layer {
 public:
  explicit StatsLayer(std::unique_ptr<BlockHandler> next) : Layer(std::move(next)) {}

  Status Read(uint64_t off, std::span<std::byte> out) override;
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override;
  Status Flush() override;
  Status Trim(uint64_t off, uint64_t len, bool fua) override;
  Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) override;
  Result<std::vector<Extent>> BlockStatus(uint64_t off, uint64_t len) override;

  const VolumeStats& stats() const { return stats_; }
  // "reads 12 (48 KiB, 0 errors, avg 35 us), writes ...": one line for the log.
  std::string Summary() const;

 private:
  VolumeStats stats_;
};

}  // namespace qbd
