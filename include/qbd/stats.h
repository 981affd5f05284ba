// StatsLayer: the outermost layer of a volume's request chain; counts what the client sees
// (requests, bytes, errors, time spent, by operation) into the volume's series of the metrics
// registry (qbd/metrics.h), for the `stats` request and GET /metrics, and for the log line at
// close (Summary()).
//
// Thread-safety: the series are prometheus-cpp atomics; safe from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "qbd/handler.h"
#include "qbd/metrics.h"

namespace qbd {

class StatsLayer : public Layer {
 public:
  // `metrics`: the volume's series (their registry must outlive the layer).
  StatsLayer(std::unique_ptr<BlockHandler> next, std::shared_ptr<const VolumeMetrics> metrics)
      : Layer(std::move(next)), m_(std::move(metrics)) {}

  Status Read(uint64_t off, std::span<std::byte> out) override;
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override;
  Status Flush() override;
  Status Trim(uint64_t off, uint64_t len, bool fua) override;
  Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) override;
  Result<std::vector<Extent>> BlockStatus(uint64_t off, uint64_t len) override;

  const VolumeMetrics& metrics() const { return *m_; }
  // "reads 12 (48 KiB, 0 errors, avg 35 us), writes ...": one line for the log, from the series.
  std::string Summary() const;

 private:
  const std::shared_ptr<const VolumeMetrics> m_;
};

}  // namespace qbd
