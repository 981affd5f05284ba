// Metrics: qbd-master's one registry of Prometheus series, which every layer reports into, and
// its exposition in the Prometheus text format (Text(), served by the admin socket's `stats`
// request and by the API's GET /metrics).
//
// Master owns the Metrics and hands each volume a VolumeMetrics (Metrics::ForVolume): the
// Counter and Histogram objects of its series, resolved once, so that a request costs a few
// atomic additions (and one histogram mutex) and never a label lookup. Gauges that describe a
// state (part states, dirty bytes, connections, memory in use, lease) are read when the text is
// made, by the collectors their owners register (AddCollector).
//
// The series (labels `volume`, `part`, `op`, `state`):
//   qbd_volume_requests_total{volume,op}          requests the client sent (op: read, write,
//   qbd_volume_request_bytes_total{volume,op}       flush, trim, zero, block_status); bytes of
//   qbd_volume_request_errors_total{volume,op}      the successful ones; the failed ones
//   qbd_volume_request_duration_seconds{volume,op} histogram of their time in the layers
//   qbd_volume_cache_hits_total / _misses_total{volume}       memory cache, in blocks
//   qbd_volume_ssd_cache_hits_total / _misses_total{volume}   SSD cache, in blocks
//   qbd_volume_qos_throttled_seconds_total{volume}  time requests waited for QoS (qbd/qos.h)
//   qbd_volume_lease_held{volume}                  1 while the volume's lease is known valid
//   qbd_volume_read_repairs_total{volume}          bad copies found by reads
//   qbd_part_state{volume,part,state}              1 for the part's state (up, resyncing, down,
//                                                  full), 0 for the others
//   qbd_part_state_code{volume,part}               the same as a number: 0 up, 1 resyncing,
//                                                  2 down, 3 full
//   qbd_part_dirty_bytes{volume,part}              bytes of the regions the part must resync
//   qbd_part_resync_bytes_total{volume,part}       bytes resync copied back to it
//   qbd_part_errors_total{volume,part}             its failed reads, writes, trims and flushes
//   qbd_part_checksum_failures_total{volume,part}  its blocks that failed their checksum
//   qbd_part_read_repairs_total{volume,part}       its bad copies found by reads
//   qbd_part_io_duration_seconds{volume,part,op}   histogram of its chunk reads and writes
//   qbd_nbd_connections                            open NBD connections
//   qbd_nbd_memory_used_bytes, qbd_nbd_memory_limit_bytes   the NBD payload budget
//   qbd_attached_connections{volume,device,kind}   a volume attached as /dev/nbdX: its connections
//                                                  the kernel uses (live) and wants (configured);
//                                                  registered by Master (master_attach.cc)
//
// Thread-safety: all methods are safe for concurrent use. The pointers in a VolumeMetrics stay
// valid as long as the Metrics that made it (a volume's series outlive its close: a volume that
// is opened again continues them).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace qbd {

class Metrics;

// One operation's series of one volume.
struct OpMetrics {
  prometheus::Counter* requests = nullptr;
  prometheus::Counter* bytes = nullptr;
  prometheus::Counter* errors = nullptr;
  prometheus::Histogram* duration = nullptr;
};

// One part's series.
struct PartMetrics {
  prometheus::Gauge* state[4] = {};  // by PartHealth::State (up, resyncing, down, full)
  prometheus::Gauge* state_code = nullptr;
  prometheus::Gauge* dirty_bytes = nullptr;
  prometheus::Counter* resync_bytes = nullptr;
  prometheus::Counter* errors = nullptr;
  prometheus::Counter* checksum_failures = nullptr;
  prometheus::Counter* read_repairs = nullptr;
  prometheus::Histogram* read_duration = nullptr;
  prometheus::Histogram* write_duration = nullptr;
  // Sets the state gauges to `state` (0 up, 1 resyncing, 2 down, 3 full).
  void SetState(int state) const;
};

// A volume's series, resolved once. Every pointer is set.
struct VolumeMetrics {
  std::string volume;
  OpMetrics read, write, flush, trim, zero, block_status;
  prometheus::Counter* cache_hits = nullptr;
  prometheus::Counter* cache_misses = nullptr;
  prometheus::Counter* ssd_hits = nullptr;
  prometheus::Counter* ssd_misses = nullptr;
  prometheus::Counter* qos_throttled_seconds = nullptr;
  prometheus::Counter* read_repairs = nullptr;
  prometheus::Gauge* lease_held = nullptr;
  std::vector<PartMetrics> parts;  // part 'a' + i

  // The series of a volume with `parts` parts in a registry of its own, for a volume, chain or
  // engine made without a Metrics (tests, offline tools): the result keeps that registry alive.
  static std::shared_ptr<VolumeMetrics> Standalone(const std::string& volume, size_t parts);
  // The registry this came from (Standalone's own one, or the caller's).
  Metrics* metrics = nullptr;

 private:
  std::shared_ptr<Metrics> owned_;
};

class Metrics {
 public:
  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The series of volume `volume` with `parts` parts (made on the first call, the same ones on
  // the next). The result holds pointers into this registry: it must not outlive it.
  std::shared_ptr<VolumeMetrics> ForVolume(const std::string& volume, size_t parts);

  // Removes every series of `volume` (a deleted volume). REQUIRES: nothing uses the pointers
  // ForVolume gave for it any more (its chain is destroyed).
  void RemoveVolume(const std::string& volume);

  // `fn` runs before each Text() (under the registry's collector lock: it must not call Text(),
  // AddCollector or RemoveCollector), to set the gauges that describe a state. Returns an id for
  // RemoveCollector, which the owner must call before what `fn` reads goes away.
  uint64_t AddCollector(std::function<void()> fn);
  // After it returns, `fn` runs no more.
  void RemoveCollector(uint64_t id);

  // The daemon's gauges, set by their owner's collector.
  prometheus::Gauge& nbd_connections() { return *nbd_connections_; }
  prometheus::Gauge& nbd_memory_used() { return *nbd_memory_used_; }
  prometheus::Gauge& nbd_memory_limit() { return *nbd_memory_limit_; }

  // Every series in the Prometheus text exposition format (version 0.0.4).
  std::string Text() const;
  prometheus::Registry& registry() { return *registry_; }

  // The buckets of the latency histograms, in seconds: 25 us to about 3.3 s, doubling.
  static const prometheus::Histogram::BucketBoundaries& LatencyBuckets();

 private:
  struct Families;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> f_;
  prometheus::Gauge* nbd_connections_ = nullptr;
  prometheus::Gauge* nbd_memory_used_ = nullptr;
  prometheus::Gauge* nbd_memory_limit_ = nullptr;
  mutable std::mutex mu_;  // guards volumes_ and collectors_; held while collectors run
  std::map<std::string, std::shared_ptr<VolumeMetrics>> volumes_;  // GUARDED_BY(mu_)
  std::map<uint64_t, std::function<void()>> collectors_;           // GUARDED_BY(mu_)
  uint64_t next_collector_ = 1;                                    // GUARDED_BY(mu_)
};

}  // namespace qbd
