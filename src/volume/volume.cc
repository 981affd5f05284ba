#include "qbd/volume.h"

#include <fmt/format.h>

#include <charconv>

#include "qbd/cache.h"
#include "qbd/catalog.h"
#include "qbd/config.h"
#include "qbd/fence.h"
#include "qbd/lease.h"
#include "qbd/log.h"
#include "qbd/stats.h"

namespace qbd {
namespace {

// Reads the largest epoch among the parts and writes epoch + 1 to all (layout-spec.md §4.2).
// A part whose backend cannot be reached gets its error in (*down)[i] and starts down.
Result<uint64_t> BumpEpoch(uint32_t volnr, const std::vector<StorageBackend*>& backends, std::vector<Status>* down,
                           bool no_writes) {
  const std::string path = Catalog::EpochPath(volnr);
  uint64_t epoch = 0;
  down->assign(backends.size(), Status::OK());
  for (size_t i = 0; i < backends.size(); ++i) {
    StorageBackend* b = backends[i];
    auto text = ReadSmallFile(*b, path);
    if (!text.ok()) {
      if (!text.status().IsNotFound()) (*down)[i] = text.status();
      continue;
    }
    QBD_ASSIGN_OR_RETURN(uint64_t v, Catalog::ParseEpoch(*text, b->Describe() + "/" + path));
    epoch = std::max(epoch, v);
  }
  ++epoch;
  if (no_writes) return epoch;
  std::string text = fmt::format("# generation epoch of this volume (layout-spec.md section 4.2)\nepoch = {}\n", epoch);
  int written = 0;
  for (size_t i = 0; i < backends.size(); ++i) {
    if (!(*down)[i].ok()) continue;
    StorageBackend* b = backends[i];
    // A part whose volume directory is gone (a replaced disk) gets it back; its chunks come
    // back through read-repair and resync.
    Status s = b->MkDirs(std::to_string(volnr));
    if (s.ok()) s = WriteFileAtomic(*b, path, text);
    if (s.ok()) {
      ++written;
    } else {
      QBD_LOG_WARN("volume {}: epoch not written on {}: {}", volnr, b->Describe(), s.ToString());
      (*down)[i] = s;
    }
  }
  if (written == 0) return Status::IOError(fmt::format("volume {}: epoch could not be written on any part", volnr));
  return epoch;
}

// The union of the chunk map copies on the reachable parts (layout-spec.md §6), written back to
// every reachable part whose copy is missing or lacks bits. A volume without any copy (made before
// the chunk map existed) gets one built from the chunk files present on its parts.
Result<std::unique_ptr<DirtyMap>> LoadChunkMap(const VolumeMeta& meta, const std::vector<StorageBackend*>& backends,
                                               const std::vector<Status>& down, bool no_writes) {
  const Geometry& g = meta.geometry;
  const uint32_t cs = static_cast<uint32_t>(g.chunk_size);
  const std::string path = DirtyMap::ChunkMapPath(meta.number);
  auto map = std::make_unique<DirtyMap>(cs, g.ChunkCount());
  std::vector<std::string> texts(backends.size());
  int found = 0;
  for (size_t i = 0; i < backends.size(); ++i) {
    if (!down[i].ok()) continue;
    auto text = ReadSmallFile(*backends[i], path);
    if (!text.ok()) {
      if (!text.status().IsNotFound()) QBD_LOG_WARN("volume {}: cannot read {}: {}", meta.name, path, text.status().ToString());
      continue;
    }
    QBD_ASSIGN_OR_RETURN(auto copy, DirtyMap::Decode(std::as_bytes(std::span(text->data(), text->size())), cs,
                                                     g.ChunkCount(), backends[i]->Describe() + "/" + path,
                                                     kChunkMapMagic));
    map->Merge(*copy);
    texts[i] = std::move(text).value();
    ++found;
  }
  // Chunk files the map lacks: a volume made before the chunk map existed, or a crash between a
  // chunk's first write and its map update (that write was never acknowledged).
  uint64_t added = 0;
  for (size_t i = 0; i < backends.size(); ++i) {
    if (!down[i].ok()) continue;
    auto names = backends[i]->List(PartDir(meta.number, static_cast<char>('a' + i)));
    if (!names.ok()) continue;
    for (const std::string& n : *names) {
      const uint64_t file = ChunkFileNumber(n);
      if (file >= 1 && file <= g.ChunkCount() && !map->Test(file - 1)) {
        map->Set(file - 1, file - 1);
        ++added;
      }
    }
  }
  if (found == 0) {
    QBD_LOG_INFO("volume {}: no chunk map yet: built one from the {} chunks found on the parts", meta.name,
                 map->CountSet());
  } else if (added > 0) {
    QBD_LOG_INFO("volume {}: {} chunk(s) with files were missing from the chunk map (a first write cut short): "
                 "added", meta.name, added);
  }
  const std::string encoded = map->Encode(kChunkMapMagic);
  for (size_t i = 0; i < backends.size(); ++i) {
    if (no_writes || !down[i].ok() || texts[i] == encoded) continue;
    Status s = WriteFileAtomic(*backends[i], path, encoded);
    if (!s.ok()) QBD_LOG_WARN("volume {}: cannot write {} on {}: {}", meta.name, path, backends[i]->Describe(), s.ToString());
  }
  return map;
}

std::string RunningPath(uint32_t volnr) { return std::to_string(volnr) + "/.running"; }

}  // namespace

Result<std::unique_ptr<Volume>> Volume::Open(const VolumeMeta& meta, std::vector<StorageBackend*> backends,
                                             const VolumeOpenOptions& options) {
  if (backends.size() != meta.replicas) {
    return Status::InvalidArgument(fmt::format("volume {}: {} backends for {} replicas", meta.name, backends.size(),
                                               meta.replicas));
  }
  if (options.lease && !options.lease->held()) {
    return Status::Unavailable(fmt::format("volume {}: its lease is not held: not opened", meta.name));
  }
  std::vector<Status> down;
  QBD_ASSIGN_OR_RETURN(uint64_t epoch, BumpEpoch(meta.number, backends, &down, options.no_writes));
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
  const uint64_t regions = (meta.geometry.size + rs - 1) / rs;
  std::vector<std::unique_ptr<PartStore>> parts;
  std::vector<std::unique_ptr<DirtyMap>> dirty;
  for (size_t i = 0; i < backends.size(); ++i) {
    const char part = static_cast<char>('a' + i);
    parts.push_back(std::make_unique<PartStore>(*backends[i], meta.number, part, meta.geometry,
                                                options.max_open_files_per_part));
    // The union of every copy of this part's dirty map; a missing copy is created empty.
    auto map = std::make_unique<DirtyMap>(rs, regions);
    const std::string path = DirtyMap::PathFor(meta.number, part);
    int holders = 0, read = 0;
    for (size_t h = 0; h < backends.size(); ++h) {
      if (h == i) continue;
      ++holders;
      if (!down[h].ok()) continue;  // that copy is out of reach
      auto text = ReadSmallFile(*backends[h], path);
      if (!text.ok()) {
        if (!text.status().IsNotFound()) {
          QBD_LOG_WARN("volume {}: cannot read {} on {}: {}", meta.name, path, backends[h]->Describe(),
                       text.status().ToString());
          continue;
        }
        ++read;
        if (options.no_writes) continue;
        Status s = WriteFileAtomic(*backends[h], path, DirtyMap(rs, regions).Encode());
        if (!s.ok()) QBD_LOG_WARN("volume {}: cannot create {} on {}: {}", meta.name, path, backends[h]->Describe(), s.ToString());
        continue;
      }
      QBD_ASSIGN_OR_RETURN(auto copy, DirtyMap::Decode(std::as_bytes(std::span(text->data(), text->size())), rs,
                                                       regions, backends[h]->Describe() + "/" + path));
      map->Merge(*copy);
      ++read;
    }
    if (holders > 0 && read == 0) {
      // No copy of this part's dirty map is in reach: what it missed is unknown, so all of it
      // is resynced before it counts again.
      QBD_LOG_WARN("volume {} part {}: no copy of its dirty map can be read: the whole part will be resynced",
                   meta.name, part);
      map->Set(0, regions - 1);
    }
    dirty.push_back(std::move(map));
  }
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
  // After every start, each written chunk's copies are compared at its first access (quorum.h).
  q.compare_on_first_access = !options.no_writes;
  q.after_crash = unclean;
  if (unclean && !options.no_writes) {
    QBD_LOG_WARN("volume {}: it was not closed cleanly (a crash?): writes in flight may have reached only some "
                 "parts; the first-access comparison of each written chunk makes its copies agree", meta.name);
  }
  for (StorageBackend* b : backends) q.parallel_io = q.parallel_io || b->IsRemote();
  std::unique_ptr<Volume> v(new Volume());
  v->meta_ = meta;
  if (!options.no_writes) v->backends_ = backends;
  // The request chain (the only place it is assembled):
  //   Stats -> [Fence] -> [Cache] -> [SsdCache] -> QuorumSet -> PartStores.
  QBD_ASSIGN_OR_RETURN(auto chunk_map, LoadChunkMap(meta, backends, down, options.no_writes));
  auto quorum = std::make_unique<QuorumSet>(std::move(q), std::move(parts), std::move(dirty), std::move(chunk_map));
  for (size_t i = 0; i < down.size(); ++i) {
    if (!down[i].ok()) quorum->MarkPartDown(i, down[i]);
  }
  v->quorum_ = quorum.get();
  std::unique_ptr<BlockHandler> below = std::move(quorum);
  if (options.ssd_dir != nullptr && !options.no_writes) {
    // What a crash left in a write-back log goes to the parts before anything is served.
    auto replay = SsdCacheLayer::Recover(*options.ssd_dir, meta.number, meta.geometry.block_size, *below);
    if (!replay.ok()) {
      return replay.status().WithContext(fmt::format("volume {}: replaying its SSD cache log {}/{}/log", meta.name,
                                                     options.ssd_dir->Describe(), meta.number));
    }
    if (replay->blocks > 0 || replay->skipped > 0) {
      QBD_LOG_WARN("volume {}: replayed {} blocks of write-back data from the SSD cache after a crash ({} torn "
                   "copies of unflushed writes skipped)",
                   meta.name, replay->blocks, replay->skipped);
    }
    auto ssd = std::make_unique<SsdCacheLayer>(std::move(below), *options.ssd_dir, meta.number,
                                               meta.geometry.block_size, options.ssd, *replay);
    v->ssd_ = ssd.get();
    below = std::move(ssd);
  }
  if (options.cache != nullptr) {
    // The cache sits above the fan-out: it only ever holds quorum-confirmed data.
    below = std::make_unique<CacheLayer>(std::move(below), *options.cache, meta.number, meta.geometry.block_size);
  }
  if (options.lease) {
    // Above the caches: nothing is answered from them once the lease may have run out.
    below = std::make_unique<FenceLayer>(std::move(below), meta.name, options.lease->valid_until(),
                                         options.lease->clock());
    v->lease_ = options.lease;
  }
  auto stats = std::make_shared<StatsLayer>(std::move(below));
  v->stats_ = stats.get();
  v->handler_ = stats;
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
  meta_ = meta;
}

Status Volume::Close() {
  if (!quorum_) return Status::OK();
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
