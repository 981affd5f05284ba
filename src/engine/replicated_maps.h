// ReplicatedMaps: the one writer of a volume's map files while qbd-master serves it — each part's
// dirty map (layout-spec.md §5: regions the part may hold stale, with copies `<volnr>/.dirty-<p>`
// on every *other* part) and the chunk map (§6: chunks ever written, `<volnr>/.chunkmap` on every
// part). ReplicatedBitmap (replicated_bitmap.h) loads and judges the copies at open; this class
// takes the merged maps from there and keeps the copies on disk following the maps in memory.
//
// Durability: a dirty bit set with `durable` is written and synced on at least one other part
// before MarkDirty returns; a cleared bit is written without sync (a stale 1 only costs a recopy).
// A chunk map bit is written after the names of the chunk's files are synced (PartStore::
// SyncCreated), at PersistChunkMap or RecordChunkWritten(durable).
//
// Thread-safety: all methods are safe for concurrent use, except Grow. REQUIRES: the caller holds
// the engine's resize lock shared around every call and the maps it returned, and exclusive
// around Grow (Grow replaces the maps). Lock order: chunk map persist lock -> chunk map lock;
// a holder's file lock is taken alone.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/backend.h"
#include "qbd/dirty_map.h"
#include "qbd/part_store.h"
#include "qbd/status.h"

namespace qbd {

class PartHealth;

class ReplicatedMaps {
 public:
  // stores[i] is part i (its backend holds the other parts' dirty map copies and a chunk map
  // copy). dirty[i]: part i's loaded dirty map (null, or of another geometry: merged into an
  // empty one). chunk_map: the loaded chunk map (null: none written yet). `on_marked` runs after
  // every MarkDirty (wakes resync). Stores and health must outlive this.
  ReplicatedMaps(std::string volume, uint32_t volnr, std::vector<PartStore*> stores, const PartHealth& health,
                 uint32_t region_size, uint64_t regions, std::vector<std::unique_ptr<DirtyMap>> dirty,
                 uint64_t chunk_size, uint64_t chunks, std::unique_ptr<DirtyMap> chunk_map,
                 std::function<void()> on_marked);
  ~ReplicatedMaps();

  // Part p's dirty map in memory.
  const DirtyMap& dirty(size_t p) const { return *parts_[p]->dirty; }
  // MarkDirty calls on part p so far: resync's batches check that none came in between.
  uint64_t marks(size_t p) const { return parts_[p]->marks.load(); }
  // Marks regions [r0, r1] of part p dirty; with `durable`, the bits not known durable yet are
  // synced on another part before it returns (Unavailable when no copy could be written: the
  // write that missed the part must not be acknowledged).
  Status MarkDirty(size_t p, uint64_t r0, uint64_t r1, bool durable, std::string_view why);
  // Clears `region` in part p's map, in memory and (without sync) on disk.
  void ClearDirty(size_t p, uint64_t region);

  bool ChunkWritten(uint64_t chunk) const { return chunk_map_->Test(chunk); }
  // Sets the chunk's bit (once its files exist); on disk at the next PersistChunkMap, with
  // `durable` now. Unavailable when no copy could be written (the bit stays queued).
  Status RecordChunkWritten(uint64_t chunk, bool durable);
  // Writes the bits queued since the last call to the chunk map copy of every reachable part,
  // after syncing the names of its new chunk files. Unavailable when no copy could be written.
  Status PersistChunkMap();
  // Bits are queued for PersistChunkMap.
  bool ChunkMapPending() const { return any_pending_.load(std::memory_order_acquire); }

  // Copies that missed updates (their part was not reachable, or a write to them failed) are
  // rewritten whole on the parts reachable now: every other part's dirty map on such a part, and
  // its chunk map copy (the bits durable on the others). Nothing when none is behind (atomic
  // loads only). Best effort: a copy that fails again stays behind for the next call. Resync
  // rounds and PersistChunkMap call it, so a part back from an outage or from being out of space
  // holds copies that agree with the others by the next flush.
  void CatchUp();

  // A grown volume: every map gets the new length (bits kept). REQUIRES: resize lock exclusive.
  void Grow(uint64_t regions, uint64_t chunks);

 private:
  struct Part {
    std::unique_ptr<DirtyMap> dirty;   // regions this part may hold stale
    std::unique_ptr<DirtyMap> synced;  // the subset of `dirty` known durable on another part
    std::atomic<uint64_t> marks{0};
    // Open handles of "<volnr>/.dirty-<x>" on this part's backend, by x.
    std::mutex files_mu;
    std::vector<std::unique_ptr<ChunkFile>> files;  // GUARDED_BY(files_mu)
    // Some dirty map copy held on this part, or its chunk map copy, lacks updates (CatchUp).
    std::atomic<bool> dirty_copies_behind{false};
    std::atomic<bool> chunk_map_behind{false};
  };
  // Writes the given bitmap bytes of part p's dirty map into its copies on the other parts. With
  // `sync` at least one copy must be durable (else Unavailable).
  Status PersistDirtyBytes(size_t p, const std::vector<uint64_t>& bytes, bool sync);

  const std::string volume_;
  const uint32_t volnr_;
  const std::vector<PartStore*> stores_;
  const PartHealth& health_;
  const std::function<void()> on_marked_;
  std::vector<std::unique_ptr<Part>> parts_;

  // The chunk map: chunk_map_ in memory (bits set under chunk_map_mu_ by RecordChunkWritten),
  // durable_ as written to the copies on disk; the chunks in between are queued in pending_.
  std::unique_ptr<DirtyMap> chunk_map_;
  std::mutex chunk_map_mu_;
  std::unique_ptr<DirtyMap> durable_;                // GUARDED_BY(persist_mu_)
  std::vector<uint64_t> pending_;                    // GUARDED_BY(chunk_map_mu_)
  std::atomic<bool> any_pending_{false};
  std::mutex persist_mu_;                            // serializes PersistChunkMap
  std::vector<std::unique_ptr<ChunkFile>> chunk_map_files_;  // GUARDED_BY(persist_mu_), by part
};

}  // namespace qbd
