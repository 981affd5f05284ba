// RepairWorker: everything that makes a volume's copies agree again, apart from the request path.
//
//  - read-repair's bookkeeping: a bad copy a read found is marked dirty for resync (MarkForRepair);
//  - resync (ResyncOnce): every dirty region of a reachable part is copied from a clean part, in
//    batches that share one sync; a region dirty on every part is reconciled by the judge
//    (ReconcileRegion, ReconcileRange); a part that is down is probed and brought back;
//  - the first-access comparisons (layout-spec.md §4.6): a written chunk's first access after a
//    start queues it (QueueCompare); CompareQueued/CompareChunk compare its copies on every part in
//    reach and repair them; until then its reads are judged (ReadJudged);
//  - chunk repair (RepairChunk: qbd-repair's, and the comparisons'), in chunk_repair.cc;
//  - the background thread running resync and the comparisons.
//
// It works on the engine's pieces through references: the Sequencer (generations, region locks),
// PartHealth, ReplicatedMaps, the PartStores (the chunk files' one writer) and the Redundancy (read
// plan, judge). The engine (quorum.h) owns them all and this worker; they must outlive it.
//
// Thread-safety: all public methods are safe for concurrent use. Lock order: the engine's resize
// lock (shared) -> compare lock of a chunk -> region locks -> PartStore internals; lost_mu_,
// compare_mu_ and resync_mu_ are taken alone.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <span>
#include <string_view>
#include <thread>
#include <vector>

#include "qbd/quorum.h"

namespace qbd {

class PartHealth;
class Redundancy;
class ReplicatedMaps;
class Sequencer;
class ThreadPool;

class RepairWorker {
 public:
  // Reads verified blocks [first, first + metas.size()) of `chunk` from the parts of `order` in
  // turn (the engine's read path), the region locks held by the caller.
  using ReadFn = std::function<Status(const std::vector<int>& order, uint64_t chunk, uint64_t first,
                                      std::span<std::byte> data, std::span<BlockMeta> metas)>;

  // What the worker works on; every reference is borrowed and must outlive the worker.
  struct Pieces {
    const QuorumOptions& options;       // volume, geometry (block and chunk size), throttles
    uint32_t region_size;               // the dirty maps' region size
    const std::atomic<uint64_t>& size;  // the volume's size (grows under resize_mu)
    std::shared_mutex& resize_mu;       // the engine's resize lock
    Sequencer& seq;
    PartHealth& health;
    ReplicatedMaps& maps;
    std::vector<PartStore*> stores;  // stores[p] is part 'a' + p
    const Redundancy& redundancy;
    ThreadPool& request_pool;  // the request path's fan-out (ReadJudged)
    QuorumCounters& counters;
    const VolumeMetrics& metrics;  // one PartMetrics per part
    ReadFn read_blocks;  // resync's source reads
  };

  explicit RepairWorker(Pieces pieces);
  ~RepairWorker();  // stops the thread

  // Starts the background thread (every options.resync_interval_ms, and when woken: ResyncOnce,
  // then CompareQueued, while options.background_writes_allowed says so).
  void Start();
  // Stops the thread and makes running resyncs and comparisons return early (idempotent).
  void Stop();
  // Makes the thread run a round now.
  void Wake();

  // See QuorumSet::ResyncOnce. Takes the resize lock (shared).
  uint64_t ResyncOnce();
  // See QuorumSet::RepairChunk. Takes the resize lock (shared); probes the parts that are down.
  Result<ChunkRepairReport> RepairChunk(uint64_t chunk, const RepairOptions& options);
  // See QuorumSet::ChunksToReconcile and CompareQueued.
  uint64_t ChunksToReconcile() const { return to_reconcile_.load(); }
  uint64_t CompareQueued();

  // True once `chunk`'s copies on every part in reach were compared since the start (or it was
  // not written then, or comparisons are off).
  bool Compared(uint64_t chunk) const;
  // Queues `chunk` for CompareQueued (once); wakes the thread.
  void QueueCompare(uint64_t chunk);
  // Compares the copies of `chunk` on every part in reach not compared yet and repairs them;
  // returns the bytes it read. REQUIRES: resize lock held (shared), none of the chunk's region
  // locks.
  uint64_t CompareChunk(uint64_t chunk);
  // Blocks [first, first + metas.size()) of a chunk not compared yet, every part in reach read and
  // each block's copy picked by the judge. Corruption: a lost block; Unavailable: no good copy in
  // reach; IOError: the chunk is written but its file is on no part in reach.
  Status ReadJudged(uint64_t chunk, uint64_t first, std::span<std::byte> data,
                    std::span<BlockMeta> metas);
  // Reconciles each region of [r0, r1] that no part can serve and that is dirty on every part
  // (ReconcileRegion). REQUIRES: the region locks of [r0, r1] held.
  void ReconcileRange(uint64_t r0, uint64_t r1);

  // A read found part p's copy of regions [r0, r1] bad: marked dirty (not synced) for resync.
  void MarkForRepair(int p, uint64_t r0, uint64_t r1, std::string_view why);
  // Part p failed to sync `chunks` (none known: all of it): marks it down and them dirty, and drops
  // their handles once recorded (resync rewrites them).
  void FlushFailed(int p, const Status& why, const std::vector<uint64_t>& chunks);
  // A part that is down whose backend holds the volume's directory again becomes resyncing (and
  // wakes the thread); true when the part is reachable (now or already).
  bool ProbePart(size_t i);

  // The volume grew to `chunks` chunks (new ones are unwritten). REQUIRES: resize lock exclusive.
  void Grow(uint64_t chunks);

 private:
  friend class ChunkRepair;  // chunk_repair.cc: RepairChunk's steps

  uint64_t Size() const { return p_.size.load(std::memory_order_acquire); }
  uint64_t ChunkCount() const;
  uint64_t RegionOf(uint64_t chunk, uint64_t block_in_chunk) const;
  bool Stopping();
  void Loop();
  // Copies one dirty region of part p from a clean part, unsynced, and appends it to `pending`.
  // True only for a region reconciled and cleared at once (dirty on every part).
  bool ResyncRegion(int p, uint64_t region, std::vector<uint64_t>& pending);
  // Syncs part p and clears the regions in `pending` (and empties it) unless the part was marked
  // dirty since `marks_before`; returns how many it cleared.
  uint64_t SettleResynced(int p, uint64_t marks_before, std::vector<uint64_t>& pending);
  // Region dirty on every part: each block's judged copy written where the parts differ.
  // REQUIRES: the region lock held. True when reconciled and cleared everywhere.
  bool ReconcileRegion(uint64_t region, uint64_t chunk, uint64_t first, uint64_t n);
  // RepairChunk. REQUIRES: resize lock held (shared), none of the chunk's region locks.
  Result<ChunkRepairReport> RepairChunkLocked(uint64_t chunk, const RepairOptions& options);

  Pieces p_;
  std::unique_ptr<ThreadPool> scan_pool_;  // whole-chunk reads of comparisons and repairs

  // Per chunk, the parts whose copies were compared since the start (bit p: part 'a' + p); all
  // bits for a chunk not written at the start. Replaced only under the resize lock (exclusive).
  std::vector<std::atomic<uint32_t>> chunk_compared_;
  std::array<std::mutex, 64> compare_locks_;                // one comparison of a chunk at a time
  std::vector<std::atomic<uint8_t>> chunk_compare_queued_;  // in compare_queue_
  std::mutex compare_mu_;
  std::vector<uint64_t> compare_queue_;  // GUARDED_BY(compare_mu_)
  std::atomic<uint64_t> to_reconcile_{0};
  // Per part, regions resync found without a good source copy: they stay dirty (the loss stays
  // visible) and are not retried until a repair of their chunk. GUARDED_BY(lost_mu_).
  std::mutex lost_mu_;
  std::vector<std::set<uint64_t>> lost_regions_;

  std::mutex resync_mu_;
  std::condition_variable resync_cv_;
  bool stop_ = false;  // GUARDED_BY(resync_mu_)
  bool wake_ = false;  // GUARDED_BY(resync_mu_)
  std::thread thread_;
};

}  // namespace qbd
