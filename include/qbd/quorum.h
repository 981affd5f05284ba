// QuorumSet: replication as one fan-out node of the request path (a BlockHandler over the
// PartStores of one volume).
//
// Writes: the byte range is cut at chunk boundaries; each piece takes the region locks it covers
// (so overlapping writes land in the same order on every part), reads the edge blocks of an
// unaligned write (read-modify-write), stamps every block with one new generation and its XXH3
// checksum, and writes to every part that is up. A part that misses the write (down, or it failed)
// gets the regions set in its dirty map, persisted on the other parts before the reply. The write
// succeeds when `write_quorum` parts have it.
//
// Reads: from the least loaded part that is readable (up, resyncing, or out of space) and clean for
// the range, checksum verified; with no part clean for the whole range, each block from the copy
// the judge picks (a range whose regions are clean on different parts). On a bad
// checksum, a short or missing chunk file or an I/O error, another part serves the data and the
// bad copy is marked for repair; the resync thread rewrites it from a good copy (read-repair),
// logging volume, part, chunk and block. A block with no good copy fails (EIO) and stays as it is.
//
// First access: after every start, the first access to a written chunk compares its copies on
// every part in reach (JudgeCopies, scrub.h) and repairs the stale or damaged ones before it is
// served (RepairChunk), so a copy that changed while the daemon was down is never served. A part
// that was out of reach then is compared when it is back.
//
// Resync: a background thread copies every dirty region from a clean part and clears its bit;
// it also probes parts marked down and brings them back, and parts out of space (ENOSPC) once
// they have room again, with a back-off (engine/part_health.h). A write that misses its quorum
// because parts are out of space fails with ENOSPC, other losses with EIO. A region whose source has no good copy
// of some block stays dirty (the loss stays visible) until an admin acts (qbd-repair).
//
// Judging copies: one rule for every caller (scrub.h JudgeCopies). The read and resync paths use
// its fast form: a good copy on a part that is up and clean there is the newest acknowledged data.
//
// The pieces (src/engine/): Sequencer (generations, region locks), PartHealth (part states, load),
// ReplicatedMaps (dirty maps, chunk map and their copies on the parts), Redundancy (which parts
// hold a chunk, the read plan, the judge), RepairWorker (read-repair's bookkeeping, resync,
// reconcile, the first-access comparisons, chunk repair, the background thread), ChunkPresence
// (the chunks whose files were seen, their create locks), FlushCoalescer.
// This class composes them and serves the requests (volume_engine.cc). Chunk files are written
// only through PartStore.
//
// Lock order: resize_mu_ (shared) -> region locks (ascending stripe) -> PartStore internals.
// Thread-safety: all public methods are safe for concurrent use.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/clock.h"
#include "qbd/dirty_map.h"
#include "qbd/handler.h"
#include "qbd/metrics.h"
#include "qbd/part_store.h"

namespace qbd {

class ChunkPresence;
class FlushCoalescer;
class PartHealth;
class Redundancy;
class RepairWorker;
class ReplicatedMaps;
class Sequencer;
class ThreadPool;

struct QuorumOptions {
  std::string volume;  // name, for log lines
  uint32_t volnr = 0;
  Geometry geometry;
  uint32_t write_quorum = 1;
  // Generations are (epoch << 40) + n, n counting from 1: the epoch grows at every open
  // (layout-spec.md §4.2), so generations grow across restarts.
  uint64_t epoch = 1;
  bool append_only = false;
  uint32_t region_size = kDefaultDirtyRegion;
  bool start_resync_thread = true;
  // Fan writes out to the parts in parallel (remote backends); local ones are written in turn.
  bool parallel_io = false;
  // Resync copies at most this many bytes per second (0: no limit).
  uint64_t resync_bytes_per_sec = 0;
  // The background comparisons of chunks first accessed since the start read at most this many
  // bytes per second (0: no limit): they share the disks with the client, whose reads of chunks
  // not compared yet are judged meanwhile.
  uint64_t compare_bytes_per_sec = 0;
  int resync_interval_ms = 1000;
  // The first access to each written chunk compares the parts' copies and makes them agree
  // (RepairChunk) before it is served: after a crash writes in flight may have reached only some
  // parts, and while the daemon was down a copy may have been damaged, replaced by an older one
  // (a restored backup, an NFS server that lost writes) or removed, none of which a dirty map
  // records. Off only for read-only uses (qbd-verify's own opens).
  bool compare_on_first_access = true;
  // The volume was not closed cleanly (for log lines: the comparisons are the same).
  bool after_crash = false;
  // Background work (resync, comparisons) writes to the parts only while this says so (the
  // volume's lease is valid: a fenced master writes nothing). Null: always.
  std::function<bool()> background_writes_allowed;
  // The clock of the back-off of parts out of space (engine/part_health.h); null: SteadyClock().
  // Must outlive the QuorumSet.
  const Clock* clock = nullptr;
  // The volume's series in the metrics registry (qbd/metrics.h; one PartMetrics per part), which
  // the engine counts part errors, checksum failures, read-repairs, resync bytes and part I/O
  // time into; nullptr (or too few parts): a registry of the engine's own.
  std::shared_ptr<const VolumeMetrics> metrics;
};

struct QuorumCounters {
  std::atomic<uint64_t> read_repairs{0};     // bad copies found by reads
  std::atomic<uint64_t> resynced_regions{0};  // regions copied back by resync
  std::atomic<uint64_t> resynced_bytes{0};
  std::atomic<uint64_t> missed_writes{0};     // part-writes that failed or were skipped
};

// One step of a chunk repair: part `target`'s copy rewritten from `sources`.
struct RepairAction {
  char target = 0;
  std::string sources;  // the parts the good copies came from ("a", "ac")
  bool whole_file = false;  // the chunk file was rebuilt (else blocks rewritten in place)
  std::string reason;       // missing, short, long, unreadable, corrupt, stale, conflict
  std::vector<uint64_t> blocks;  // block numbers inside the chunk
  std::string error;        // empty when done (or planned)
};

struct RepairOptions {
  bool dry_run = false;       // plan only: read and judge, write nothing
  uint32_t targets = ~0u;     // bit p: part 'a' + p may be rewritten
  // The admin's explicit act: blocks with no good copy anywhere (lost, not unknown) become
  // unwritten (read as zeros) on every part in reach, each one logged. Never done otherwise.
  bool accept_loss = false;
};

struct ChunkRepairReport {
  uint64_t chunk = 0;  // file number (chunk index + 1)
  std::vector<RepairAction> actions;
  std::vector<uint64_t> lost;     // blocks without a good copy: data lost, copies left as they are
  std::vector<uint64_t> accepted;  // lost blocks made unwritten by accept_loss
  std::vector<uint64_t> unknown;  // blocks without a good copy in reach (a part is down)
  std::vector<std::string> notes;
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  bool Clean() const { return actions.empty() && lost.empty() && unknown.empty(); }
};

class QuorumSet : public BlockHandler {
 public:
  // parts[i] holds part 'a' + i. dirty[i] is part i's loaded dirty map (nullptr: all clean).
  // `chunk_map`: the chunks ever written (layout-spec.md §6; nullptr: none yet).
  QuorumSet(QuorumOptions options, std::vector<std::unique_ptr<PartStore>> parts,
            std::vector<std::unique_ptr<DirtyMap>> dirty, std::unique_ptr<DirtyMap> chunk_map = nullptr);
  ~QuorumSet() override;  // stops the resync thread; does not flush

  uint64_t Size() const override { return size_.load(std::memory_order_acquire); }
  // Chunks of the volume at its current size.
  uint64_t ChunkCount() const;
  Status Read(uint64_t off, std::span<std::byte> out) override;
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override;
  Status Flush() override;
  Status Trim(uint64_t off, uint64_t len, bool fua) override;
  Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) override;
  Result<std::vector<Extent>> BlockStatus(uint64_t off, uint64_t len) override;

  // Grows the device (never shrinks). Dirty maps grow with it.
  void SetSize(uint64_t size);
  void SetAppendOnly(bool on) { append_only_.store(on); }

  // Copies every dirty region of every up part from a clean copy; returns the regions repaired.
  // The resync thread calls it; tests call it directly.
  uint64_t ResyncOnce();
  // Reads every up part's copy of 0-based `chunk`, judges them (scrub.h) and rewrites the copies
  // that are missing, short, corrupt, stale or conflicting from the newest good copy, under the
  // chunk's region locks (no client write interleaves). A chunk file is rebuilt whole (temp
  // file, sync, rename); single blocks are rewritten in place and synced. Blocks without a good
  // copy are reported and their copies left as they are, unless `options.accept_loss`. Dirty
  // regions whose copy is now good are cleared. InvalidArgument for a chunk past the end.
  Result<ChunkRepairReport> RepairChunk(uint64_t chunk, const RepairOptions& options);
  // Written chunks not yet compared since the start (compare_on_first_access).
  uint64_t ChunksToReconcile() const;
  // Compares the chunks queued by first accesses (their copies on every part, repaired where stale
  // or damaged); returns how many. The resync thread calls it; tests call it directly. Until a
  // chunk is compared, its reads judge every part's copy of the blocks they read.
  uint64_t CompareQueued();
  // The largest generation any write of this volume can have made: larger ones are suspect.
  uint64_t MaxGeneration() const;
  // Stops the resync thread (idempotent). The first call logs each part that is still down or out
  // of space, with its dirty regions (resynced once it is back, at this run or the next).
  void StopResync();

  size_t part_count() const { return parts_.size(); }
  // True when chunk `chunk` (0-based) has ever been written (its chunk map bit is set).
  bool ChunkWritten(uint64_t chunk) const;
  // Writes the chunk map bits of chunks first written since the last call to the chunk map copy
  // of every up part, after syncing the names of their files (PartStore::SyncCreated): a bit on
  // disk never names a chunk whose files could still vanish in a crash. Flush and durable writes
  // call it, and qbd-master's volume poll, so that the copies on disk trail by at most that
  // interval. Unavailable when no copy could be written (the bits stay queued).
  Status PersistChunkMap();
  // Up or resyncing: the part takes reads (where clean) and writes.
  bool PartUp(size_t i) const { return Reachable(i); }
  // Up and in sync: the part counts for the write quorum.
  bool PartInSync(size_t i) const { return InSync(i); }
  // Out of space: reads go on where it is clean; writes skip it until it has room again.
  bool PartFull(size_t i) const;
  // "up", "resyncing", "out of space: No space left on device", "down: <error>".
  std::string PartState(size_t i) const;
  uint64_t DirtyRegions(size_t i) const;
  const QuorumCounters& counters() const { return counters_; }
  // The volume's series (QuorumOptions::metrics, or the engine's own).
  const VolumeMetrics& metrics() const { return *metrics_; }
  // Sets the gauges of the parts' series that describe a state (state, dirty bytes); the
  // registry's collector calls it before the series are read.
  void UpdatePartGauges() const;
  uint32_t region_size() const { return region_size_; }
  // Marks part i down, as after an I/O error: reads and writes skip it and its missed writes
  // are recorded; the resync thread probes it and brings it back.
  void MarkPartDown(size_t i, const Status& why) { MarkDown(static_cast<int>(i), why); }
  // Marks part i down (reads and writes skip it, writes are recorded dirty) or up.
  void TEST_SetPartUp(size_t i, bool up);

 private:
  struct Part {
    std::unique_ptr<PartStore> store;
  };
  bool Reachable(size_t i) const;
  bool InSync(size_t i) const;

  uint64_t RegionOf(uint64_t chunk, uint64_t block_in_chunk) const;
  // Parts that are up and clean for regions [r0, r1], least loaded first, minus `exclude`.
  std::vector<int> ReadOrder(uint64_t r0, uint64_t r1, int exclude) const;
  // Reads verified blocks of one chunk from `order`; see Read in the .cc for the rules.
  Status ReadBlocks(const std::vector<int>& order, uint64_t chunk, uint64_t first,
                    std::span<std::byte> data, std::span<BlockMeta> metas, bool locked);
  Status ReadChunkPiece(uint64_t chunk, uint64_t first, std::span<std::byte> data,
                        std::span<BlockMeta> metas, bool locked);
  // Writes blocks with metas to every up part; records misses; checks the quorum.
  Status WriteToParts(uint64_t chunk, uint64_t first, std::span<const std::byte> data,
                      std::span<const BlockMeta> metas, bool fua);
  Status UnwriteOnParts(uint64_t chunk, uint64_t first, uint64_t n, bool fua);
  // Writes [off, off + len) of one chunk from `src` (zeros when null; whole blocks then become
  // unwritten when `may_trim`): read-modify-write of the edge blocks.
  Status WritePiece(uint64_t off, uint64_t len, const std::byte* src, bool fua, bool may_trim);
  Status CheckQuorum(int ok_parts, const std::vector<int>& missed, uint64_t r0, uint64_t r1,
                     std::string_view op);
  // Unavailable for an `op` that reached only `ok_parts` in sync: names each other part's state;
  // its errno is ENOSPC when a part is out of space, else EIO.
  Status QuorumLost(std::string_view op, int ok_parts) const;
  // Marks regions of part p dirty; with `durable`, persists the new bits on the other parts.
  Status MarkDirty(int p, uint64_t r0, uint64_t r1, bool durable, std::string_view why);
  // Clears region in part p's dirty map, in memory and (without sync) on disk.
  void ClearDirty(int p, uint64_t region);
  void MarkDown(int p, const Status& why);
  // Counts a bad copy of part p found by a read (QuorumCounters and the metrics).
  void CountReadRepair(int p);
  // Sets the chunk's bit in the chunk map once the first write has created its files, before it
  // is acknowledged (layout-spec.md §6). On disk the bit follows the files' names, at the next
  // PersistChunkMap; with `durable` now. Unavailable when no copy could be written.
  Status RecordChunkWritten(uint64_t chunk, bool durable);
  // Marks parts in `live` that lack the file of a chunk other parts hold for a whole-chunk rebuild.
  void CheckChunkPresence(uint64_t chunk, const std::vector<size_t>& live);

  // The volume's size: the one copy of that fact (options_.geometry keeps block and chunk size
  // only; its size is zeroed). Grows under resize_mu_ held exclusive.
  std::atomic<uint64_t> size_;
  const QuorumOptions options_;
  const uint32_t region_size_;
  std::atomic<bool> append_only_;
  std::atomic<bool> stop_reported_{false};  // StopResync logged the parts not reachable
  std::unique_ptr<Sequencer> seq_;      // generations and region locks
  std::unique_ptr<PartHealth> health_;  // part states and load
  std::unique_ptr<FlushCoalescer> flusher_;
  std::vector<std::unique_ptr<Part>> parts_;
  std::unique_ptr<ThreadPool> pool_;       // the request path's fan-out
  QuorumCounters counters_;
  std::shared_ptr<const VolumeMetrics> metrics_;  // every part has its PartMetrics

  std::shared_mutex resize_mu_;  // shared by every request, exclusive while growing
  // The dirty maps and the chunk map, and their copies on the parts.
  std::unique_ptr<ReplicatedMaps> maps_;
  // Which parts hold a chunk, the read plan and the judge of copies (redundancy.h).
  std::unique_ptr<Redundancy> redundancy_;
  // Chunks whose file is known to exist on the parts, and their create locks.
  std::unique_ptr<ChunkPresence> presence_;
  // Resync, reconcile, comparisons, chunk repair (repair_worker.h); declared last: it is
  // destroyed first, stopping its thread before the pieces it works on go.
  std::unique_ptr<RepairWorker> repair_;
};

// The replication engine's name for it (src/engine/).
using VolumeEngine = QuorumSet;

}  // namespace qbd
