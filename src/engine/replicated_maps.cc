// Implements replicated_maps.h (layout-spec.md §5, §6).
#include "engine/replicated_maps.h"

#include <fmt/format.h>

#include <algorithm>

#include "engine/part_health.h"
#include "qbd/log.h"

namespace qbd {

ReplicatedMaps::ReplicatedMaps(std::string volume, uint32_t volnr, std::vector<PartStore*> stores,
                               const PartHealth& health, uint32_t region_size, uint64_t regions,
                               std::vector<std::unique_ptr<DirtyMap>> dirty, uint64_t chunk_size, uint64_t chunks,
                               std::unique_ptr<DirtyMap> chunk_map, std::function<void()> on_marked)
    : volume_(std::move(volume)),
      volnr_(volnr),
      stores_(std::move(stores)),
      health_(health),
      on_marked_(std::move(on_marked)) {
  for (size_t i = 0; i < stores_.size(); ++i) {
    auto p = std::make_unique<Part>();
    if (i < dirty.size() && dirty[i] && dirty[i]->region_size() == region_size && dirty[i]->regions() >= regions) {
      p->dirty = std::move(dirty[i]);
    } else {
      p->dirty = std::make_unique<DirtyMap>(region_size, regions);
      if (i < dirty.size() && dirty[i]) p->dirty->Merge(*dirty[i]);
    }
    // Bits loaded from disk are durable by definition.
    p->synced = std::make_unique<DirtyMap>(region_size, regions);
    p->synced->Merge(*p->dirty);
    p->files.resize(stores_.size());
    parts_.push_back(std::move(p));
  }
  chunk_map_ = std::make_unique<DirtyMap>(static_cast<uint32_t>(chunk_size), chunks);
  if (chunk_map) chunk_map_->Merge(*chunk_map);
  durable_ = std::make_unique<DirtyMap>(chunk_map_->region_size(), chunk_map_->regions());
  durable_->Merge(*chunk_map_);
  chunk_map_files_.resize(stores_.size());
}

ReplicatedMaps::~ReplicatedMaps() = default;

Status ReplicatedMaps::MarkDirty(size_t p, uint64_t r0, uint64_t r1, bool durable, std::string_view why) {
  Part& part = *parts_[p];
  part.marks.fetch_add(1);
  std::vector<uint64_t> changed = part.dirty->Set(r0, r1);
  if (on_marked_) on_marked_();
  if (!changed.empty()) {
    QBD_LOG_DEBUG("volume {} part {}: regions {}-{} dirty ({})", volume_, stores_[p]->part(), r0, r1, why);
  }
  if (!durable) {
    if (!changed.empty()) PersistDirtyBytes(p, changed, /*sync=*/false).IgnoreError();  // best effort: a hint
    return Status::OK();
  }
  // A bit may already be set in memory by a read-repair without being durable: `synced` tells
  // which bits are, and the write's acknowledgement waits for the rest.
  std::vector<uint64_t> unsynced = part.synced->Set(r0, r1);
  if (unsynced.empty()) return Status::OK();
  Status result = PersistDirtyBytes(p, unsynced, /*sync=*/true);
  if (!result.ok()) {
    for (uint64_t r = r0; r <= r1; ++r) part.synced->Clear(r);  // not durable after all
  }
  return result;
}

void ReplicatedMaps::ClearDirty(size_t p, uint64_t region) {
  Part& part = *parts_[p];
  part.synced->Clear(region);
  if (part.dirty->Clear(region)) {
    PersistDirtyBytes(p, {region / 8}, /*sync=*/false).IgnoreError();  // a stale set bit only costs a recopy
  }
}

Status ReplicatedMaps::PersistDirtyBytes(size_t p, const std::vector<uint64_t>& bytes, bool sync) {
  const char part = stores_[p]->part();
  const std::string path = DirtyMap::PathFor(volnr_, part);
  int durable = 0;
  Status last;
  const DirtyMap& map = *parts_[p]->dirty;
  std::vector<uint64_t> all;  // every byte of the map, for a rewrite through a new handle
  for (size_t h = 0; h < parts_.size(); ++h) {
    if (h == p) continue;
    Part& holder = *parts_[h];
    if (!health_.Reachable(h)) {
      holder.dirty_copies_behind.store(true, std::memory_order_release);  // rewritten when it is back
      continue;
    }
    std::lock_guard<std::mutex> l(holder.files_mu);
    auto& file = holder.files[p];
    if (file && file->Detached()) file.reset();
    // Writes the map bytes `which` (contiguous ones in one write) through `file`, then syncs.
    auto put = [&](const std::vector<uint64_t>& which) {
      Status s;
      for (size_t i = 0; i < which.size() && s.ok();) {
        size_t j = i + 1;
        while (j < which.size() && which[j] == which[j - 1] + 1) ++j;
        std::vector<std::byte> run(j - i);
        for (size_t k = i; k < j; ++k) run[k - i] = std::byte{map.Byte(which[k])};
        s = file->WriteAt(kDirtyHeaderSize + which[i], run);
        i = j;
      }
      if (s.ok() && sync) s = file->Sync();
      return s;
    };
    auto open = [&] {
      auto opened = stores_[h]->backend().Open(path);
      if (opened.ok()) file = std::move(opened).value();
      return opened.status();
    };
    const bool cached = file != nullptr;
    Status s = cached ? Status::OK() : open();
    if (s.ok()) s = put(bytes);
    if (!s.ok() && cached) {
      // A cached handle can fail where a new one works: an NFS server that restarted changed its
      // write verifier, and the writes made through the old handle since its last sync may be
      // gone. A new handle gets the whole map, so nothing lost there is missed.
      file.reset();
      if (all.empty()) {
        for (uint64_t i = 0; i < (map.regions() + 7) / 8; ++i) all.push_back(i);
      }
      s = open();
      if (s.ok()) s = put(all);
    }
    if (s.ok()) {
      ++durable;
    } else {
      last = s;
      file.reset();
      holder.dirty_copies_behind.store(true, std::memory_order_release);
    }
  }
  if (sync && durable == 0) {
    return Status::Unavailable(fmt::format("volume {} part {}: dirty map could not be persisted on any part: {}",
                                           volume_, part, last.ToString()));
  }
  return Status::OK();
}

Status ReplicatedMaps::RecordChunkWritten(uint64_t chunk, bool durable) {
  {
    std::lock_guard<std::mutex> l(chunk_map_mu_);
    if (!chunk_map_->Test(chunk)) {
      chunk_map_->Set(chunk, chunk);
      pending_.push_back(chunk);
      any_pending_.store(true, std::memory_order_release);
    }
  }
  return durable ? PersistChunkMap() : Status::OK();
}

void ReplicatedMaps::CatchUp() {
  for (size_t h = 0; h < parts_.size(); ++h) {
    Part& holder = *parts_[h];
    if (!holder.dirty_copies_behind.load(std::memory_order_acquire) || !health_.Reachable(h)) continue;
    holder.dirty_copies_behind.store(false, std::memory_order_release);
    StorageBackend& b = stores_[h]->backend();
    Status s;
    for (size_t p = 0; p < parts_.size() && s.ok(); ++p) {
      if (p == h) continue;
      // Under the holder's file lock, so that no byte written after the encoding lands in the old
      // file: a later writer opens the new one.
      std::lock_guard<std::mutex> l(holder.files_mu);
      holder.files[p].reset();
      s = WriteFileAtomic(b, DirtyMap::PathFor(volnr_, stores_[p]->part()), parts_[p]->dirty->Encode());
    }
    if (s.ok()) {
      QBD_LOG_INFO("volume {} part {}: the dirty map copies it holds are up to date again", volume_,
                   stores_[h]->part());
    } else {
      holder.dirty_copies_behind.store(true, std::memory_order_release);
      QBD_LOG_WARN("volume {} part {}: dirty map copies not brought up to date: {}", volume_, stores_[h]->part(),
                   s.ToString());
    }
  }
  bool any = false;
  for (size_t i = 0; i < parts_.size(); ++i) {
    any = any || (parts_[i]->chunk_map_behind.load(std::memory_order_acquire) && health_.Reachable(i));
  }
  if (!any) return;
  std::lock_guard<std::mutex> pl(persist_mu_);
  for (size_t i = 0; i < parts_.size(); ++i) {
    Part& part = *parts_[i];
    if (!part.chunk_map_behind.load(std::memory_order_acquire) || !health_.Reachable(i)) continue;
    part.chunk_map_behind.store(false, std::memory_order_release);
    // The bits durable on the other parts: each names a chunk whose files' names were synced.
    chunk_map_files_[i].reset();
    Status s = WriteFileAtomic(stores_[i]->backend(), DirtyMap::ChunkMapPath(volnr_), durable_->Encode(kChunkMapMagic));
    if (s.ok()) {
      QBD_LOG_INFO("volume {} part {}: its chunk map copy is up to date again", volume_, stores_[i]->part());
    } else {
      part.chunk_map_behind.store(true, std::memory_order_release);
      QBD_LOG_WARN("volume {} part {}: chunk map copy not brought up to date: {}", volume_, stores_[i]->part(),
                   s.ToString());
    }
  }
}

Status ReplicatedMaps::PersistChunkMap() {
  CatchUp();
  if (!any_pending_.load(std::memory_order_acquire)) return Status::OK();
  std::lock_guard<std::mutex> pl(persist_mu_);
  std::vector<uint64_t> todo;
  {
    std::lock_guard<std::mutex> l(chunk_map_mu_);
    todo.swap(pending_);
    any_pending_.store(false, std::memory_order_release);
  }
  if (todo.empty()) return Status::OK();
  // Every chunk in `todo` was queued after its files were renamed into place: the syncs below
  // make those names durable before any bit naming them is.
  std::vector<char> names_ok(stores_.size(), 0);
  Status last;
  for (size_t i = 0; i < stores_.size(); ++i) {
    if (!health_.Reachable(i)) {
      parts_[i]->chunk_map_behind.store(true, std::memory_order_release);  // rewritten when it is back
      continue;
    }
    Status s = stores_[i]->SyncCreated();
    if (s.ok()) {
      names_ok[i] = 1;
    } else {
      last = s;
      QBD_LOG_WARN("volume {} part {}: new chunk files not synced, chunk map not written there: {}", volume_,
                   stores_[i]->part(), s.ToString());
    }
  }
  DirtyMap next(durable_->region_size(), durable_->regions());
  next.Merge(*durable_);
  uint64_t lo = UINT64_MAX, hi = 0;
  for (uint64_t c : todo) {
    next.Set(c, c);
    lo = std::min(lo, c / 8);
    hi = std::max(hi, c / 8);
  }
  std::vector<std::byte> bytes(hi - lo + 1);
  for (uint64_t i = lo; i <= hi; ++i) bytes[i - lo] = std::byte{next.Byte(i)};
  const std::string path = DirtyMap::ChunkMapPath(volnr_);
  int durable = 0;
  for (size_t i = 0; i < stores_.size(); ++i) {
    if (!names_ok[i]) {
      parts_[i]->chunk_map_behind.store(true, std::memory_order_release);
      continue;
    }
    StorageBackend& b = stores_[i]->backend();
    auto& file = chunk_map_files_[i];
    if (file && file->Detached()) file.reset();
    Status s;
    bool whole = false;
    if (!file) {
      auto opened = b.Open(path);
      if (opened.status().IsNotFound()) {
        // No copy here (a replaced disk): a whole one.
        s = WriteFileAtomic(b, path, next.Encode(kChunkMapMagic));
        whole = s.ok();
        if (s.ok()) opened = b.Open(path);
      }
      if (s.ok() && opened.ok()) file = std::move(opened).value();
      if (s.ok() && !opened.ok()) s = opened.status();
    }
    if (s.ok() && !whole) s = file->WriteAt(kDirtyHeaderSize + lo, bytes);
    if (s.ok() && !whole) s = file->Sync();
    if (s.ok()) {
      ++durable;
    } else {
      file.reset();
      parts_[i]->chunk_map_behind.store(true, std::memory_order_release);
      last = s;
      QBD_LOG_WARN("volume {} part {}: chunk map not written: {}", volume_, stores_[i]->part(), s.ToString());
    }
  }
  if (durable == 0) {
    std::lock_guard<std::mutex> l(chunk_map_mu_);
    pending_.insert(pending_.end(), todo.begin(), todo.end());
    any_pending_.store(true, std::memory_order_release);
    return Status::Unavailable(
        fmt::format("volume {}: the chunk map could not be written on any part: {}", volume_, last.ToString()));
  }
  durable_->Merge(next);
  return Status::OK();
}

void ReplicatedMaps::Grow(uint64_t regions, uint64_t chunks) {
  for (auto& p : parts_) {
    const uint32_t rs = p->dirty->region_size();
    auto grown = std::make_unique<DirtyMap>(rs, regions);
    grown->Merge(*p->dirty);
    p->dirty = std::move(grown);
    auto grown_synced = std::make_unique<DirtyMap>(rs, regions);
    grown_synced->Merge(*p->synced);
    p->synced = std::move(grown_synced);
  }
  std::lock_guard<std::mutex> pl(persist_mu_);
  std::lock_guard<std::mutex> l(chunk_map_mu_);
  const uint32_t cs = chunk_map_->region_size();
  auto grown = std::make_unique<DirtyMap>(cs, chunks);
  grown->Merge(*chunk_map_);
  chunk_map_ = std::move(grown);
  auto grown_durable = std::make_unique<DirtyMap>(cs, chunks);
  grown_durable->Merge(*durable_);
  durable_ = std::move(grown_durable);
}

}  // namespace qbd
