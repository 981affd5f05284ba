// PartStore: one part (replica) of one volume on one StorageBackend, in blocks of one chunk.
//
// It owns the chunk files' layout (layout-spec.md §4, format 2): every read verifies each block
// against its metadata slots, and every write follows the torn-write protocol of §4.5: the new
// slot (beside the block's current one) before the data, and the finished write recorded (the old
// slot cleared) only after a sync has made the data durable. It is the
// "Checksum -> ChunkStore" leg under QuorumSet: the checksum check sits here, below the fan-out,
// so a corrupt copy is just one failed vote that QuorumSet can name and repair.
//
// Calls address blocks [first, first + n) of one chunk (0-based chunk and block-in-chunk).
// Open chunk files are cached; a cached file that was removed or replaced under its name is
// dropped and reopened, so an admin's `rm` or a repair tool's rename is seen at the next call.
//
// Thread-safety: safe for concurrent calls. Writes to the same blocks must be ordered by the
// caller (QuorumSet's region locks).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "qbd/backend.h"
#include "qbd/chunk_format.h"
#include "qbd/status.h"

namespace qbd {

// A write's new metadata slots (layout-spec.md §4.2), encoded once per write and shared by every
// part (QuorumSet), beside the caller's data, which is written without a copy. The data buffer
// must outlive its use; Assign reuses the capacity, so a thread-local instance never allocates
// again.
class RecordPieces {
 public:
  RecordPieces() = default;
  RecordPieces(const RecordPieces&) = delete;
  RecordPieces& operator=(const RecordPieces&) = delete;

  // Blocks [first.block, first.block + metas.size()) of chunk first.chunk.
  // REQUIRES: data.size() == metas.size() * g.block_size; g.format == kFormat2.
  void Assign(const Geometry& g, const BlockAddress& first, std::span<const std::byte> data,
              std::span<const BlockMeta> metas);
  uint64_t blocks() const { return n_; }
  std::span<const std::byte> data() const { return data_; }
  // kSlotSize bytes per block: the slot each block's write stores.
  const std::byte* slots() const { return slots_.data(); }

 private:
  uint64_t n_ = 0;
  std::span<const std::byte> data_;
  std::vector<std::byte> slots_;
};

class PartStore {
 public:
  // Whether a cached chunk file is still the file under its name (ChunkFile::Detached(), a path
  // lookup) is asked at most this often; 0 asks at every call.
  static constexpr std::chrono::milliseconds kDefaultRecheckInterval{1000};

  // `backend` must outlive the store.
  PartStore(StorageBackend& backend, uint32_t volnr, char part, Geometry geometry,
            size_t max_open_files = 256,
            std::chrono::milliseconds recheck_interval = kDefaultRecheckInterval);
  ~PartStore();

  char part() const { return part_; }
  StorageBackend& backend() { return backend_; }
  const Geometry& geometry() const { return geometry_; }
  // Growing the volume (qbdctl resize) only changes the chunk count.
  void SetSize(uint64_t size) { geometry_.size = size; }

  // Reads blocks [first, first + metas.size()) of `chunk`; data.size() == metas.size() * block size.
  // OK: every block verified (never-written blocks read as zeros with all-zero metas).
  // NotFound: the chunk file is absent.
  // Corruption: a short file (`bad` left empty: the whole chunk is suspect) or blocks that fail
  // their check (block-in-chunk indices appended to `bad`; the other blocks are valid).
  // IOError: the backend failed.
  Status Read(uint64_t chunk, uint64_t first, std::span<std::byte> data, std::span<BlockMeta> metas,
              std::vector<uint64_t>* bad);

  // Writes blocks with the given metas (an all-zero meta with zero data stores "never written").
  // Three positional I/Os: the slot pairs are read, the new slots written beside the current
  // ones, then the data (§4.5).
  // Creates the chunk file at full size when absent, or restores the full size of a short one,
  // and then sets *created: this part's copy of the rest of the chunk is missing. With `sync`
  // the blocks, and the name of a file it created, are durable when it returns; without, they
  // are at the next Flush (the name also at the next SyncCreated).
  Status Write(uint64_t chunk, uint64_t first, std::span<const std::byte> data,
               std::span<const BlockMeta> metas, bool sync, bool* created);

  // Write() of records already laid out (records.blocks() blocks from `first`), so that one
  // encoding serves every part. One positional vectored write: the data is not copied.
  Status WriteRecords(uint64_t chunk, uint64_t first, const RecordPieces& records, bool sync, bool* created);

  // Marks blocks never written (all-zero metas, zero data) and gives their space back where the
  // backend can (the data area is punched; the slots say "zeros", then empty after a sync). A missing chunk file is already all unwritten: OK. A short file gets its full
  // size back and sets *rebuilt (as Write's *created).
  Status Unwrite(uint64_t chunk, uint64_t first, uint64_t n, bool sync, bool* rebuilt);

  // What blocks [first, first + n) of `chunk` hold, from their slot pairs alone (layout-spec.md
  // §4.3), for block status: kUnwritten for an empty pair, kZeros for a slot of zero data (a
  // NO_HOLE zeroing), kData otherwise. A pending pair counts by its new slot when this process
  // knows that write completed, else as kData. NotFound: no chunk file (all unwritten here).
  enum class BlockState : uint8_t { kData, kZeros, kUnwritten };
  Status BlockStates(uint64_t chunk, uint64_t first, uint64_t n, std::vector<BlockState>* states);

  enum class ChunkState { kAbsent, kShort, kComplete };
  // Whether the chunk file exists, and at its full size (layout-spec.md §4.1).
  Result<ChunkState> CheckChunk(uint64_t chunk);

  // Makes the names of the chunk files created since the last call durable (a directory sync;
  // nothing when none was). Flush and durable writes call it; QuorumSet calls it before it records
  // new chunks in the chunk map, which must never name a chunk whose file could vanish.
  Status SyncCreated();

  // Makes every write since the previous Flush durable, and the names of new chunk files. On failure, `failed` (if given) gets the
  // chunks whose sync failed: writes to them since their last good sync may be lost (they stay
  // queued for the next Flush).
  Status Flush(std::vector<uint64_t>* failed = nullptr);

  // Drops every cached file handle (syncing written ones first).
  Status CloseAll();

  // Space kept free on the backend for metadata (layout-spec.md §5: the lease, the epoch, the
  // maps' rewrites), where the backend can tell its free space (FreeBytes): a write or repair that
  // would leave less fails with IOError(ENOSPC) before it writes anything, so a file system filled
  // by chunk data still takes the volume's metadata. Free space is asked at most every
  // kFreeRecheck; in between, the bytes written since are counted off.
  static constexpr uint64_t kReservedBytes = 8ull << 20;
  static constexpr std::chrono::milliseconds kFreeRecheck{100};

  // Bytes of slot pairs kept in memory for the open chunk files (at most kPairCacheBudget).
  uint64_t PairCacheBytes() const { return pair_cache_bytes_.load(std::memory_order_relaxed); }
  static constexpr uint64_t kPairCacheBudget = 32ull << 20;

  // Drops the cached handle of `chunk` and its pending sync, after its file was replaced under its
  // name by a synced rebuild (ChunkRewrite::Commit of a replacement): the next call opens the new
  // file. A remote backend notices a replaced file only every so often, and a write through the
  // old handle in between would land in the unlinked file. REQUIRES: no write to the chunk in
  // flight (the caller holds its region locks). Also used after a failed sync whose chunk is
  // recorded dirty (it is resynced): the file is the same, so a write in flight through the old
  // handle lists it again for the next Flush, as any write does, and with `same_file` the old
  // handle's pending slot pairs (§4.5) pass to the next handle of the chunk, so that they are
  // settled all the same.
  void DropReplaced(uint64_t chunk, bool same_file = false);

  // A rewrite of one chunk's records exactly as stored (layout-spec.md §4.2), for repairs
  // (QuorumSet::RepairChunk): either in place, in the existing file, or as a replacement file
  // built under a temporary name and published over the chunk's name (§4.1). Used by one thread.
  class ChunkRewrite {
   public:
    ~ChunkRewrite();  // a replacement not committed is removed (best effort)
    ChunkRewrite(const ChunkRewrite&) = delete;
    ChunkRewrite& operator=(const ChunkRewrite&) = delete;
    // Writes whole records (scrub.h: block data, then its slot pair as stored) from block `first`
    // of the chunk, into the data and metadata areas. Durable only after Commit.
    Status WriteRecords(uint64_t first, std::span<const std::byte> records);
    // In place: syncs the file; the cached handle forgets the pending pairs of the blocks
    // rewritten and settles the others (the sync covered them). A replacement: syncs it, renames it over the chunk's name, drops
    // the store's cached handle of the old file (DropReplaced) and syncs the directory; on failure
    // the temporary file is removed. REQUIRES: no write to the chunk in flight (region locks).
    Status Commit();

   private:
    friend class PartStore;
    ChunkRewrite(PartStore& store, uint64_t chunk, std::unique_ptr<ChunkFile> file, std::string tmp);
    PartStore& store_;
    const uint64_t chunk_;
    std::unique_ptr<ChunkFile> file_;
    const std::string tmp_;  // a replacement's temporary name; empty in place
    bool committed_ = false;
    std::vector<std::pair<uint64_t, uint64_t>> written_;  // in place: blocks [first, end) rewritten
  };
  // Opens the chunk's file for a rewrite in place (NotFound when absent). Its records bypass the
  // cached handles: the caller holds the chunk's region locks.
  Result<std::unique_ptr<ChunkRewrite>> RewriteInPlace(uint64_t chunk);
  // Creates `<part>/.<n>.tmp` at full size (sparse: unwritten records), the directory if needed.
  Result<std::unique_ptr<ChunkRewrite>> BuildReplacement(uint64_t chunk);

 private:
  // A chunk file's slot-pair state (§4.5), shared by the handles of one file: a handle dropped
  // after a failed sync passes it to the chunk's next handle, so that writes still in flight
  // through the old one record their completion where the new one settles them.
  struct SlotState {
    // Blocks whose slot pair holds a write's new slot beside the previous one, until a sync
    // after the data write lets Settle() clear the previous one.
    struct Pending {
      uint64_t seq = 0;       // PartStore::write_seq_ when the slots were written
      bool done = false;      // the data write completed
      uint64_t done_seq = 0;  // PartStore::done_seq_ when it did: a sync begun later covers it
      std::byte slot0[kSlotSize];  // the new slot (slot 0 of the pair)
    };
    std::mutex mu;  // serializes slot-pair updates of the file
    std::unordered_map<uint64_t, Pending> pending;  // GUARDED_BY(mu): by block in chunk
    bool settled_unsynced = false;                  // GUARDED_BY(mu): Settle wrote since a sync
    // The whole metadata area as written (read once, kept in step with every pair write), so
    // that a write costs no read of its pairs: a round trip on a remote backend, a system call
    // on a local one. Reads on a remote backend take their pairs from it too; local reads read
    // what is stored, to check it. Empty until loaded, when
    // the store's pair-cache budget is spent, or after a failed pair write or a rewrite through
    // another handle. GUARDED_BY(mu).
    struct PairCache {
      PairCache() = default;
      PairCache(const PairCache&) = delete;
      PairCache& operator=(const PairCache&) = delete;
      ~PairCache() { Clear(); }
      bool empty() const { return bytes.empty(); }
      void Clear();  // frees the bytes and gives them back to the budget
      std::vector<std::byte> bytes;
      std::atomic<uint64_t>* account = nullptr;  // PartStore::pair_cache_bytes_ while loaded
    };
    PairCache pair_cache;
  };
  // A cached open chunk file.
  struct Handle {
    Handle(uint64_t c, std::unique_ptr<ChunkFile> f, int64_t now_ns, std::shared_ptr<SlotState> st)
        : chunk(c),
          file(std::move(f)),
          checked_ns(now_ns),
          state(st ? std::move(st) : std::make_shared<SlotState>()),
          meta_mu(state->mu),
          pending(state->pending),
          settled_unsynced(state->settled_unsynced),
          pair_cache(state->pair_cache) {}
    using Pending = SlotState::Pending;
    const uint64_t chunk;
    const std::unique_ptr<ChunkFile> file;
    std::atomic<int64_t> checked_ns;    // when it was opened or Detached() last said no
    std::atomic<bool> unsynced{false};  // written since its last sync (see MarkUnsynced)
    bool listed = false;                // GUARDED_BY(mu_): in unsynced_
    const std::shared_ptr<SlotState> state;
    // The members of `state`, by their names here.
    std::mutex& meta_mu;
    std::unordered_map<uint64_t, Pending>& pending;
    bool& settled_unsynced;
    SlotState::PairCache& pair_cache;
  };

  // The open chunk file. `create`: create it when absent. `complete`: give a short file its full
  // size back. Either sets *created.
  Result<std::shared_ptr<Handle>> GetFile(uint64_t chunk, bool create, bool complete, bool* created);
  void Forget(const std::shared_ptr<Handle>& h);
  // Drops unused handles from open_; returns those with unsynced writes, for SyncEvicted.
  std::vector<std::shared_ptr<Handle>> EvictLocked();
  void SyncEvicted(const std::vector<std::shared_ptr<Handle>>& victims);
  // Before syncing several handles in turn: starts the writeback of all of them.
  static void StartSyncs(const std::vector<std::shared_ptr<Handle>>& handles);
  // Writes the slot pairs of blocks [first, first + n): `slots` (kSlotSize each) become slot 0,
  // each block's current slot slot 1 (§4.5). `zeros_only`: Unwrite, which leaves empty pairs
  // alone. Returns the write's sequence number for MarkDone.
  Result<uint64_t> WriteSlots(Handle& h, uint64_t chunk, uint64_t first, uint64_t n, const std::byte* slots,
                              bool zeros_only);
  // The data write of sequence `seq` completed; returns its completion number (done_seq_).
  uint64_t MarkDone(Handle& h, uint64_t first, uint64_t n, uint64_t seq);
  // After a sync of h's file that began once done_seq_ had reached `synced`: the pairs of writes
  // completed by then (done_seq <= synced) get their previous slot cleared (§4.5). Not synced
  // (the next sync carries it; losing it costs a data read).
  Status Settle(Handle& h, uint64_t synced);
  // After a rewrite in place of `chunk` synced (ChunkRewrite::Commit, begun once done_seq_ was
  // `synced`): the cached handle's pending pairs of the rewritten blocks are forgotten (the
  // rewrite stored settled pairs there), the others settled.
  void AfterRewriteInPlace(uint64_t chunk, const std::vector<std::pair<uint64_t, uint64_t>>& written,
                           uint64_t synced);
  // Pairs [first, first + out.size() / 32) of h's file into `out`: from h.pair_cache (the whole
  // area read once, while the budget allows), else from the file. REQUIRES: h.meta_mu held.
  Status ReadPairsLocked(Handle& h, uint64_t first, std::span<std::byte> out);
  // Writes pairs from block `first` and keeps h.pair_cache in step. REQUIRES: h.meta_mu held.
  Status WritePairsLocked(Handle& h, uint64_t first, std::span<const std::byte> in);
  // Records a completed unsynced write for the next Flush.
  void MarkUnsynced(const std::shared_ptr<Handle>& h);
  std::string Name(uint64_t chunk) const;

  StorageBackend& backend_;
  const uint32_t volnr_;
  const char part_;
  Geometry geometry_;
  const size_t max_open_files_;
  const int64_t recheck_ns_;

  std::mutex open_mu_;  // serializes opening and creating files; guards dir_ready_
  std::mutex mu_;       // guards open_, unsynced_, Handle::listed
  std::unordered_map<uint64_t, std::shared_ptr<Handle>> open_;
  // Handles written since the last Flush (Handle::unsynced went from false to true), each once.
  std::vector<std::shared_ptr<Handle>> unsynced_;
  bool dir_ready_ = false;
  std::mutex sync_mu_;  // serializes SyncCreated
  std::atomic<bool> created_unsynced_{false};  // a chunk file was created since the last SyncCreated
  std::atomic<uint64_t> write_seq_{0};  // numbers slot writes
  std::atomic<uint64_t> done_seq_{0};   // numbers completed data writes, for Settle
  uint64_t zero_checksum_ = 0;          // BlockChecksum of an all-zero block
  bool remote_ = false;  // backend_.IsRemote(): reads take the pairs from the pair caches
  // Bytes of the handles' pair caches, at most kPairCacheBudget: 1,024 open files of the default
  // geometry (4 MiB chunks of 4 KiB blocks, 32 KiB of pairs each). Beyond, pairs are read.
  std::atomic<uint64_t> pair_cache_bytes_{0};
  // IOError(ENOSPC) when writing `bytes` would leave less than kReservedBytes free (see there).
  Status CheckRoom(uint64_t bytes);
  // The backend's free space as last asked (when free_at_ns_ was), minus the bytes written since;
  // free_known_ is false once the backend said it cannot tell.
  std::atomic<bool> free_known_{true};
  std::atomic<int64_t> free_estimate_{0};
  std::atomic<int64_t> free_at_ns_{0};
  // Pending pairs of handles dropped by DropReplaced(same_file), adopted by the chunk's next
  // handle. GUARDED_BY(mu_); at most max_open_files_ chunks (beyond, forgotten: a data read each).
  std::unordered_map<uint64_t, std::shared_ptr<SlotState>> orphans_;
};

}  // namespace qbd
