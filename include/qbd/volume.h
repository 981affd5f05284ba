// Volume: one open volume of qbd-master — its metadata, its parts and the request chain that
// serves it (assembled by BuildChain, qbd/chain.h).
//
// With a lease (qbd-master), Open requires that it is held: nothing is written to the parts before
// (layout-spec.md §8). The chain then fails requests whenever the lease is not known valid
// (FenceLayer), and Close removes `.running` and `.owner` only from parts whose `.owner` still
// names this master.
//
// Open bumps the volume's epoch on every part (so generations keep growing across restarts),
// loads the dirty maps (the union of the copies on every part) and starts resync.
//
// Thread-safety: handler() is safe for concurrent use; ApplyMeta and Close are for the one
// thread that manages volumes.
#pragma once

#include <memory>
#include <vector>

#include "qbd/backend.h"
#include "qbd/handler.h"
#include "qbd/quorum.h"
#include "qbd/ssd_cache.h"
#include "qbd/volume_meta.h"

namespace qbd {

class BlockCache;
class Metrics;
class QosScheduler;
class QosLayer;
class VolumeLease;

struct VolumeOpenOptions {
  size_t max_open_files_per_part = 256;
  bool start_resync_thread = true;
  uint64_t resync_bytes_per_sec = 0;  // 0: no limit
  uint64_t compare_bytes_per_sec = 0;  // first-access comparisons (QuorumOptions); 0: no limit
  // Opens without writing anything (qbd-repair --dry-run): the epoch is not bumped on disk, and
  // missing dirty map and chunk map copies are not created.
  bool no_writes = false;
  // The memory cache shared by the volumes (nullptr: none); must outlive the volume.
  BlockCache* cache = nullptr;
  // The SSD cache directory (nullptr: none); must outlive the volume. Its log is replayed onto the
  // parts at open (a crash in write-back mode); Open fails if that fails.
  StorageBackend* ssd_dir = nullptr;
  SsdCacheOptions ssd;
  // The volume's lease, held (qbd-master); nullptr: no fencing (offline tools, tests). The volume
  // shares it and releases it at Close.
  std::shared_ptr<VolumeLease> lease;
  // The daemon's metrics registry (nullptr: one of the volume's own); must outlive the volume.
  // The volume's series go there, and a collector of its part states, dirty bytes and lease until
  // Close.
  Metrics* metrics = nullptr;
  // The daemon's scheduler of QoS reservations (qbd/qos.h; nullptr: none); must outlive the volume.
  QosScheduler* qos_scheduler = nullptr;
};

class StatsLayer;

// OK when qbd-master can serve the volume's chunk files (format 2, layout-spec.md §4);
// InvalidArgument naming `qbdctl convert` for a volume still in format 1 (§9). Checked before
// anything of the volume is written (its lease, its epoch).
Status CheckServableFormat(const VolumeMeta& meta);

class Volume {
 public:
  // `backends[i]` holds part 'a' + i and must outlive the volume.
  static Result<std::unique_ptr<Volume>> Open(const VolumeMeta& meta, std::vector<StorageBackend*> backends,
                                              const VolumeOpenOptions& options);
  ~Volume();

  const VolumeMeta& meta() const { return meta_; }
  // The head of the request chain.
  std::shared_ptr<BlockHandler> handler() const { return handler_; }
  QuorumSet& quorum() { return *quorum_; }
  const StatsLayer& stats() const { return *stats_; }
  // The SSD cache layer; nullptr without one.
  const SsdCacheLayer* ssd_cache() const { return ssd_; }
  // Applies a changed .meta: growth, append-only and QoS take effect at once; read-only applies to
  // new connections (the caller re-advertises the export).
  void ApplyMeta(const VolumeMeta& meta);
  // Destages the SSD cache, stops resync and flushes every part; then, with a lease, removes
  // `.running` where `.owner` still names us and releases the lease.
  Status Close();
  // The lease given to Open (nullptr without one).
  VolumeLease* lease() const { return lease_.get(); }

 private:
  Volume() = default;
  VolumeMeta meta_;
  std::vector<StorageBackend*> backends_;  // where "<volnr>/.running" was written (none: no_writes)
  QuorumSet* quorum_ = nullptr;   // owned through handler_
  StatsLayer* stats_ = nullptr;  // owned through handler_; the head of the chain
  SsdCacheLayer* ssd_ = nullptr;  // owned through handler_
  QosLayer* qos_ = nullptr;       // owned through handler_
  std::shared_ptr<BlockHandler> handler_;
  std::shared_ptr<VolumeLease> lease_;
  Metrics* metrics_ = nullptr;  // options.metrics
  uint64_t collector_ = 0;      // in metrics_ until Close (0: none)
};

}  // namespace qbd
