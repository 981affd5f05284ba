#include "qbd/volume.h"

#include <fmt/format.h>

#include <charconv>

#include "qbd/catalog.h"
#include "qbd/chain.h"
#include "qbd/config.h"
#include "qbd/lease.h"
#include "qbd/log.h"
#include "qbd/metrics.h"
#include "qbd/qos.h"
#include "qbd/stats.h"
#include "qbd/volume_files.h"

namespace qbd {
namespace {

std::string RunningPath(uint32_t volnr) { return std::to_string(volnr) + "/.running"; }

}  // namespace

Status CheckServableFormat(const VolumeMeta& meta) {
  if (meta.geometry.format == kFormat2) return Status::OK();
  // A format-1 volume is converted offline, whole (layout-spec.md §9).
  return Status::InvalidArgument(fmt::format(
      "volume {}: its chunk files are in format {}, which qbd-master no longer serves: stop qbd-master and "
      "run `qbdctl convert {}` (offline, resumable), then start it again",
      meta.name, meta.geometry.format, meta.name));
}

Result<std::unique_ptr<Volume>> Volume::Open(const VolumeMeta& meta, std::vector<StorageBackend*> backends,
                                             const VolumeOpenOptions& options) {
  QBD_RETURN_IF_ERROR(CheckServableFormat(meta));
  if (backends.size() != meta.replicas) {
    return Status::InvalidArgument(fmt::format("volume {}: {} backends for {} replicas", meta.name, backends.size(),
                                               meta.replicas));
  }
  if (options.lease && !options.lease->held()) {
    return Status::Unavailable(fmt::format("volume {}: its lease is not held: not opened", meta.name));
  }
  // The epoch, dirty maps and chunk map: every copy checked before anything is written.
  QBD_ASSIGN_OR_RETURN(auto files, VolumeFiles::Load(meta, backends));
  QBD_ASSIGN_OR_RETURN(uint64_t epoch, files->Commit(options.no_writes));
  const std::vector<Status> down = files->down();
  // "<volnr>/.running" is on the parts while qbd-master has the volume open (layout-spec.md
  // §4.5): found at open, it says the last run did not close the volume.
  const std::string running = RunningPath(meta.number);
  bool unclean = false;
  for (size_t i = 0; i < backends.size(); ++i) {
    if (down[i].ok() && backends[i]->Stat(running).ok()) unclean = true;
  }
  if (!options.no_writes) {
    for (size_t i = 0; i < backends.size(); ++i) {
      if (!down[i].ok()) continue;
      Status s = WriteFileAtomic(*backends[i], running, "# qbd-master has this volume open (layout-spec.md 4.5)\n");
      if (!s.ok()) QBD_LOG_WARN("volume {}: cannot write {} on {}: {}", meta.name, running, backends[i]->Describe(), s.ToString());
    }
  }
  const uint32_t rs = DirtyRegionSize(meta.geometry);
  std::vector<std::unique_ptr<PartStore>> parts;
  for (size_t i = 0; i < backends.size(); ++i) {
    parts.push_back(std::make_unique<PartStore>(*backends[i], meta.number, static_cast<char>('a' + i), meta.geometry,
                                                options.max_open_files_per_part));
  }
  std::vector<std::unique_ptr<DirtyMap>> dirty = files->TakeDirtyMaps();
  QuorumOptions q;
  q.volume = meta.name;
  q.volnr = meta.number;
  q.geometry = meta.geometry;
  q.write_quorum = meta.EffectiveWriteQuorum();
  q.epoch = epoch;
  q.append_only = meta.append_only;
  q.region_size = rs;
  q.start_resync_thread = options.start_resync_thread;
  q.resync_bytes_per_sec = options.resync_bytes_per_sec;
  q.compare_bytes_per_sec = options.compare_bytes_per_sec;
  if (options.lease) {
    // A fenced master (its lease not known valid) leaves the parts alone in the background too.
    q.background_writes_allowed = [lease = options.lease] {
      return lease->clock().NowMs() < lease->valid_until().load(std::memory_order_acquire);
    };
  }
  // After every start, each written chunk's copies are compared at its first access (quorum.h).
  q.compare_on_first_access = !options.no_writes;
  std::shared_ptr<VolumeMetrics> metrics = options.metrics != nullptr
                                               ? options.metrics->ForVolume(meta.name, backends.size())
                                               : VolumeMetrics::Standalone(meta.name, backends.size());
  q.metrics = metrics;
  q.after_crash = unclean;
  if (unclean && !options.no_writes) {
    QBD_LOG_WARN("volume {}: it was not closed cleanly (a crash?): writes in flight may have reached only some "
                 "parts; the first-access comparison of each written chunk makes its copies agree", meta.name);
  } else if (files->dirty_copy_lost() && !options.no_writes) {
    // A region only the damaged copy marked dirty may be stale on its part: the comparisons find it.
    QBD_LOG_WARN("volume {}: a dirty map copy was damaged: the first-access comparison of each written chunk "
                 "finds what it may have marked", meta.name);
  }
  for (StorageBackend* b : backends) q.parallel_io = q.parallel_io || b->IsRemote();
  std::unique_ptr<DirtyMap> chunk_map = files->TakeChunkMap();
  auto quorum = std::make_unique<QuorumSet>(std::move(q), std::move(parts), std::move(dirty), std::move(chunk_map));
  for (size_t i = 0; i < down.size(); ++i) {
    if (!down[i].ok()) quorum->MarkPartDown(i, down[i]);
  }
  QuorumSet* quorum_ptr = quorum.get();
  ChainOptions c;
  c.volume = meta.name;
  c.volnr = meta.number;
  c.block_size = meta.geometry.block_size;
  if (options.lease) {
    c.lease_valid_until = &options.lease->valid_until();
    c.clock = &options.lease->clock();
  }
  c.cache = options.cache;
  if (!options.no_writes) c.ssd_dir = options.ssd_dir;  // its replay writes to the parts
  c.ssd = options.ssd;
  c.metrics = metrics;
  auto qos = ParseQosText(meta.qos);  // checked when .meta was read
  if (!qos.ok()) return qos.status().WithContext(fmt::format("volume {}", meta.name));
  c.qos = *qos;
  c.qos_scheduler = options.qos_scheduler;
  QBD_ASSIGN_OR_RETURN(Chain chain, BuildChain(std::move(quorum), c));
  std::unique_ptr<Volume> v(new Volume());
  v->meta_ = meta;
  if (!options.no_writes) v->backends_ = backends;
  v->quorum_ = quorum_ptr;
  v->stats_ = chain.stats;
  v->ssd_ = chain.ssd_cache;
  v->qos_ = chain.qos;
  v->handler_ = std::move(chain.top);
  v->lease_ = options.lease;
  if (options.metrics != nullptr) {
    // The gauges that describe a state are read when the series are: part states, dirty bytes,
    // and whether the lease is known valid. Removed at Close, before the engine goes.
    v->metrics_ = options.metrics;
    v->collector_ = options.metrics->AddCollector([quorum_ptr, metrics, lease = options.lease.get()] {
      quorum_ptr->UpdatePartGauges();
      const bool held =
          lease == nullptr || lease->clock().NowMs() < lease->valid_until().load(std::memory_order_acquire);
      metrics->lease_held->Set(held ? 1 : 0);
    });
  }
  if (c.qos != QosSettings{}) QBD_LOG_INFO("volume {}: qos {}", meta.name, DescribeQos(c.qos));
  QBD_LOG_INFO("volume {} (number {}): {} bytes, {} replicas, write quorum {}, block {} chunk {}, epoch {}", meta.name,
               meta.number, meta.geometry.size, meta.replicas, meta.EffectiveWriteQuorum(), meta.geometry.block_size,
               meta.geometry.chunk_size, epoch);
  return v;
}

Volume::~Volume() { Close().IgnoreError(); }

void Volume::ApplyMeta(const VolumeMeta& meta) {
  if (meta.geometry.size > meta_.geometry.size) {
    QBD_LOG_INFO("volume {}: grown from {} to {} bytes", meta.name, meta_.geometry.size, meta.geometry.size);
    quorum_->SetSize(meta.geometry.size);
  }
  if (meta.append_only != meta_.append_only) quorum_->SetAppendOnly(meta.append_only);
  if (meta.qos != meta_.qos) {
    auto qos = ParseQosText(meta.qos);  // checked when .meta was read
    if (qos.ok()) {
      qos_->SetSettings(*qos);
      QBD_LOG_INFO("volume {}: qos {}", meta.name, DescribeQos(*qos));
    } else {
      QBD_LOG_ERROR("volume {}: qos unchanged: {}", meta.name, qos.status().ToString());
    }
  }
  meta_ = meta;
}

Status Volume::Close() {
  if (!quorum_) return Status::OK();
  if (collector_ != 0) {
    metrics_->RemoveCollector(collector_);
    collector_ = 0;
    // The last word of a closed volume: it no longer holds its lease here.
    quorum_->metrics().lease_held->Set(0);
  }
  if (lease_ && lease_->lost()) {
    // Another master serves the volume now: nothing more goes to the parts from here.
    QBD_LOG_WARN("volume {}: closed without flushing: its lease went to {}", meta_.name, lease_->lost_to());
    quorum_->StopResync();
    lease_->StopRenewing();
    quorum_ = nullptr;
    return Status::OK();
  }
  Status s = ssd_ != nullptr ? ssd_->Drain() : Status::OK();
  if (ssd_ != nullptr) QBD_LOG_INFO("volume {}: {}", meta_.name, ssd_->Summary());
  quorum_->StopResync();
  if (s.ok()) s = quorum_->Flush();
  // With a lease, only parts whose `.owner` still names us are ours to mark closed.
  std::vector<bool> ours(backends_.size(), true);
  if (lease_) {
    lease_->StopRenewing();  // flushed: nothing more to acknowledge (and its reads would compete)
    ours = lease_->PartsNamingUs();
  }
  if (s.ok()) {
    // Closed cleanly: the next open has nothing to reconcile.
    for (size_t i = 0; i < backends_.size(); ++i) {
      StorageBackend* b = backends_[i];
      if (!ours[i]) continue;
      Status r = b->Remove(RunningPath(meta_.number));
      if (r.ok()) r = b->SyncDir(std::to_string(meta_.number));
      if (!r.ok() && !r.IsNotFound()) QBD_LOG_WARN("volume {}: {}: {}", meta_.name, b->Describe(), r.ToString());
    }
  }
  if (lease_) {
    Status r = lease_->Release();
    if (!r.ok()) QBD_LOG_WARN("volume {}: releasing its lease: {}", meta_.name, r.ToString());
  }
  QBD_LOG_INFO("volume {}: closed: {}", meta_.name, stats_->Summary());
  quorum_ = nullptr;
  return s;
}

}  // namespace qbd
