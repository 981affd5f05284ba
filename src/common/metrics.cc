#include "qbd/metrics.h"

#include <prometheus/text_serializer.h>

namespace qbd {

namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

const char* const kOps[] = {"read", "write", "flush", "trim", "zero", "block_status"};
const char* const kStates[] = {"up", "resyncing", "down", "full"};

}  // namespace

struct Metrics::Families {
  explicit Families(prometheus::Registry& r)
      : requests(prometheus::BuildCounter()
                     .Name("qbd_volume_requests_total")
                     .Help("Requests of a volume's clients, by operation")
                     .Register(r)),
        request_bytes(prometheus::BuildCounter()
                          .Name("qbd_volume_request_bytes_total")
                          .Help("Bytes of a volume's successful requests, by operation")
                          .Register(r)),
        request_errors(prometheus::BuildCounter()
                           .Name("qbd_volume_request_errors_total")
                           .Help("A volume's requests that failed, by operation")
                           .Register(r)),
        request_duration(prometheus::BuildHistogram()
                             .Name("qbd_volume_request_duration_seconds")
                             .Help("Time a volume's requests spent in qbd, by operation")
                             .Register(r)),
        cache_hits(prometheus::BuildCounter()
                       .Name("qbd_volume_cache_hits_total")
                       .Help("Blocks a volume's reads found in the memory cache")
                       .Register(r)),
        cache_misses(prometheus::BuildCounter()
                         .Name("qbd_volume_cache_misses_total")
                         .Help("Blocks a volume's reads did not find in the memory cache")
                         .Register(r)),
        ssd_hits(prometheus::BuildCounter()
                     .Name("qbd_volume_ssd_cache_hits_total")
                     .Help("Blocks a volume's reads found in the SSD cache")
                     .Register(r)),
        ssd_misses(prometheus::BuildCounter()
                       .Name("qbd_volume_ssd_cache_misses_total")
                       .Help("Blocks a volume's reads did not find in the SSD cache")
                       .Register(r)),
        qos_throttled(prometheus::BuildCounter()
                          .Name("qbd_volume_qos_throttled_seconds_total")
                          .Help("Time a volume's requests waited for its QoS limits")
                          .Register(r)),
        volume_read_repairs(prometheus::BuildCounter()
                                .Name("qbd_volume_read_repairs_total")
                                .Help("Bad copies a volume's reads found and had repaired")
                                .Register(r)),
        lease_held(prometheus::BuildGauge()
                       .Name("qbd_volume_lease_held")
                       .Help("1 while this daemon's lease on the volume is known valid, else 0")
                       .Register(r)),
        part_state(prometheus::BuildGauge()
                       .Name("qbd_part_state")
                       .Help("1 for the part's state (up, resyncing, down, full), 0 for the others")
                       .Register(r)),
        part_state_code(prometheus::BuildGauge()
                            .Name("qbd_part_state_code")
                            .Help("The part's state: 0 up, 1 resyncing, 2 down, 3 full")
                            .Register(r)),
        part_dirty(prometheus::BuildGauge()
                       .Name("qbd_part_dirty_bytes")
                       .Help("Bytes of the regions the part misses and resync copies back")
                       .Register(r)),
        part_resync(prometheus::BuildCounter()
                        .Name("qbd_part_resync_bytes_total")
                        .Help("Bytes resync copied back to the part")
                        .Register(r)),
        part_errors(prometheus::BuildCounter()
                        .Name("qbd_part_errors_total")
                        .Help("The part's failed reads, writes, trims and flushes")
                        .Register(r)),
        part_checksum(prometheus::BuildCounter()
                          .Name("qbd_part_checksum_failures_total")
                          .Help("The part's blocks that failed their checksum when read")
                          .Register(r)),
        part_read_repairs(prometheus::BuildCounter()
                              .Name("qbd_part_read_repairs_total")
                              .Help("The part's bad copies found by reads and marked for repair")
                              .Register(r)),
        part_io(prometheus::BuildHistogram()
                    .Name("qbd_part_io_duration_seconds")
                    .Help("Time of the part's chunk reads and writes, by operation")
                    .Register(r)),
        nbd_connections(prometheus::BuildGauge()
                            .Name("qbd_nbd_connections")
                            .Help("Open NBD connections")
                            .Register(r)),
        nbd_memory_used(
            prometheus::BuildGauge()
                .Name("qbd_nbd_memory_used_bytes")
                .Help("Bytes of NBD request payloads held now (the payload budget in use)")
                .Register(r)),
        nbd_memory_limit(prometheus::BuildGauge()
                             .Name("qbd_nbd_memory_limit_bytes")
                             .Help("The NBD payload budget (nbd_memory)")
                             .Register(r)) {}

  Family<Counter>& requests;
  Family<Counter>& request_bytes;
  Family<Counter>& request_errors;
  Family<Histogram>& request_duration;
  Family<Counter>& cache_hits;
  Family<Counter>& cache_misses;
  Family<Counter>& ssd_hits;
  Family<Counter>& ssd_misses;
  Family<Counter>& qos_throttled;
  Family<Counter>& volume_read_repairs;
  Family<Gauge>& lease_held;
  Family<Gauge>& part_state;
  Family<Gauge>& part_state_code;
  Family<Gauge>& part_dirty;
  Family<Counter>& part_resync;
  Family<Counter>& part_errors;
  Family<Counter>& part_checksum;
  Family<Counter>& part_read_repairs;
  Family<Histogram>& part_io;
  Family<Gauge>& nbd_connections;
  Family<Gauge>& nbd_memory_used;
  Family<Gauge>& nbd_memory_limit;
};

void PartMetrics::SetState(int s) const {
  for (int i = 0; i < 4; ++i) state[i]->Set(i == s ? 1 : 0);
  state_code->Set(s);
}

std::shared_ptr<VolumeMetrics> VolumeMetrics::Standalone(const std::string& volume, size_t parts) {
  auto m = std::make_shared<Metrics>();
  auto v = std::make_shared<VolumeMetrics>(*m->ForVolume(volume, parts));
  v->owned_ = std::move(m);
  return v;
}

const Histogram::BucketBoundaries& Metrics::LatencyBuckets() {
  static const Histogram::BucketBoundaries b = [] {
    Histogram::BucketBoundaries v;
    for (double s = 25e-6; s < 4; s *= 2) v.push_back(s);
    return v;
  }();
  return b;
}

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      f_(std::make_unique<Families>(*registry_)),
      nbd_connections_(&f_->nbd_connections.Add({})),
      nbd_memory_used_(&f_->nbd_memory_used.Add({})),
      nbd_memory_limit_(&f_->nbd_memory_limit.Add({})) {}

Metrics::~Metrics() = default;

std::shared_ptr<VolumeMetrics> Metrics::ForVolume(const std::string& volume, size_t parts) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<VolumeMetrics>& v = volumes_[volume];
  if (!v) {
    v = std::make_shared<VolumeMetrics>();
    v->volume = volume;
    v->metrics = this;
    OpMetrics* ops[] = {&v->read, &v->write, &v->flush, &v->trim, &v->zero, &v->block_status};
    for (size_t i = 0; i < 6; ++i) {
      const prometheus::Labels l2{{"volume", volume}, {"op", kOps[i]}};
      ops[i]->requests = &f_->requests.Add(l2);
      ops[i]->bytes = &f_->request_bytes.Add(l2);
      ops[i]->errors = &f_->request_errors.Add(l2);
      ops[i]->duration = &f_->request_duration.Add(l2, LatencyBuckets());
    }
    const prometheus::Labels l1{{"volume", volume}};
    v->cache_hits = &f_->cache_hits.Add(l1);
    v->cache_misses = &f_->cache_misses.Add(l1);
    v->ssd_hits = &f_->ssd_hits.Add(l1);
    v->ssd_misses = &f_->ssd_misses.Add(l1);
    v->qos_throttled_seconds = &f_->qos_throttled.Add(l1);
    v->read_repairs = &f_->volume_read_repairs.Add(l1);
    v->lease_held = &f_->lease_held.Add(l1);
  }
  while (v->parts.size() < parts) {
    const std::string part(1, static_cast<char>('a' + v->parts.size()));
    const prometheus::Labels l{{"volume", volume}, {"part", part}};
    PartMetrics p;
    for (int s = 0; s < 4; ++s) {
      p.state[s] = &f_->part_state.Add({{"volume", volume}, {"part", part}, {"state", kStates[s]}});
    }
    p.state_code = &f_->part_state_code.Add(l);
    p.dirty_bytes = &f_->part_dirty.Add(l);
    p.resync_bytes = &f_->part_resync.Add(l);
    p.errors = &f_->part_errors.Add(l);
    p.checksum_failures = &f_->part_checksum.Add(l);
    p.read_repairs = &f_->part_read_repairs.Add(l);
    p.read_duration =
        &f_->part_io.Add({{"volume", volume}, {"part", part}, {"op", "read"}}, LatencyBuckets());
    p.write_duration =
        &f_->part_io.Add({{"volume", volume}, {"part", part}, {"op", "write"}}, LatencyBuckets());
    p.SetState(0);
    v->parts.push_back(p);
  }
  // A copy: a later call with more parts grows the registry's own one, not the caller's.
  return std::make_shared<VolumeMetrics>(*v);
}

void Metrics::RemoveVolume(const std::string& volume) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = volumes_.find(volume);
  if (it == volumes_.end()) return;
  const VolumeMetrics& v = *it->second;
  const OpMetrics* ops[] = {&v.read, &v.write, &v.flush, &v.trim, &v.zero, &v.block_status};
  for (const OpMetrics* o : ops) {
    f_->requests.Remove(o->requests);
    f_->request_bytes.Remove(o->bytes);
    f_->request_errors.Remove(o->errors);
    f_->request_duration.Remove(o->duration);
  }
  f_->cache_hits.Remove(v.cache_hits);
  f_->cache_misses.Remove(v.cache_misses);
  f_->ssd_hits.Remove(v.ssd_hits);
  f_->ssd_misses.Remove(v.ssd_misses);
  f_->qos_throttled.Remove(v.qos_throttled_seconds);
  f_->volume_read_repairs.Remove(v.read_repairs);
  f_->lease_held.Remove(v.lease_held);
  for (const PartMetrics& p : v.parts) {
    for (prometheus::Gauge* g : p.state) f_->part_state.Remove(g);
    f_->part_state_code.Remove(p.state_code);
    f_->part_dirty.Remove(p.dirty_bytes);
    f_->part_resync.Remove(p.resync_bytes);
    f_->part_errors.Remove(p.errors);
    f_->part_checksum.Remove(p.checksum_failures);
    f_->part_read_repairs.Remove(p.read_repairs);
    f_->part_io.Remove(p.read_duration);
    f_->part_io.Remove(p.write_duration);
  }
  volumes_.erase(it);
}

uint64_t Metrics::AddCollector(std::function<void()> fn) {
  std::lock_guard<std::mutex> l(mu_);
  const uint64_t id = next_collector_++;
  collectors_[id] = std::move(fn);
  return id;
}

void Metrics::RemoveCollector(uint64_t id) {
  std::lock_guard<std::mutex> l(mu_);
  collectors_.erase(id);
}

std::string Metrics::Text() const {
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [id, fn] : collectors_) fn();
  }
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace qbd
