// SSD cache: qbd-master's second cache tier, a log of blocks in "<volnr>/log" on a local cache
// directory (`cache_dir` in qbd.conf; layout-spec.md §7), below the memory cache and above the
// fan-out: Stats -> [CacheLayer] -> [SsdCacheLayer] -> QuorumSet.
//
// The log is a ring of segments; each segment is one header block of 32-byte entries (block number,
// sequence number, checksum, flags) followed by the data blocks those entries describe. Blocks are
// appended at the head, so the log is also the eviction order (FIFO): the segment the head enters
// next is emptied first. The memory tier above keeps the hot blocks.
//
// Two modes:
// - write-through (default): a write goes to the parts first; the log only ever holds copies of
//   what the parts hold (read fills and successful writes). The log is not trusted across restarts:
//   each start begins with an empty cache.
// - write-back: an aligned write is acknowledged once its blocks are in the log (a FUA write, or
//   the next FLUSH, syncs the log first), and a destage thread copies them to the parts in the
//   background, flushes the parts, then records in "<volnr>/checkpoint" the sequence number up to
//   which the parts hold every logged write. The blocks not yet destaged are also kept in memory
//   (at most `dirty_max` bytes; writers wait beyond), so that reads and destaging never depend on
//   the SSD. After a crash, Recover replays the logged writes past the checkpoint (the newest valid
//   copy of each block) onto the parts before the volume is served. Writes the log cannot take
//   whole (partial blocks), TRIM and WRITE_ZEROES first destage everything, then go to the parts.
//
// Failures of the cache directory never reach the client: when the log cannot be written or read,
// or was removed (its directory deleted while running), the layer logs it once, destages what it
// holds from memory, and from then on passes every request to the parts.
//
// Thread-safety: safe for concurrent use.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "qbd/backend.h"
#include "qbd/cache.h"
#include "qbd/handler.h"
#include "qbd/metrics.h"

namespace qbd {

struct SsdCacheOptions {
  uint64_t log_size = uint64_t{1} << 30;  // bytes of "<volnr>/log" (rounded down to whole segments)
  bool write_back = false;
  uint64_t dirty_max = uint64_t{32} << 20;  // write-back: bytes not yet destaged before writers wait
  uint32_t destage_delay_ms = 200;          // write-back: how long a block may wait before destaging
};

struct SsdCacheCounters {
  std::atomic<uint64_t> hits{0};       // blocks served from the log or from not-yet-destaged memory
  std::atomic<uint64_t> misses{0};     // blocks read from the parts
  std::atomic<uint64_t> fills{0};      // blocks appended to the log
  std::atomic<uint64_t> destaged{0};   // write-back blocks copied to the parts
  std::atomic<uint64_t> syncs{0};      // log syncs (FLUSH, FUA)
};

// What Recover replayed.
struct SsdReplay {
  uint64_t blocks = 0;    // blocks written to the parts
  uint64_t skipped = 0;   // logged copies past the checkpoint that failed their checksum (torn)
  uint64_t last_seq = 0;  // the largest sequence number in the log
};

// The log's records (layout-spec.md §7), as pure functions for Recover, the layer and tests.
inline constexpr size_t kSsdEntrySize = 32;
inline constexpr uint32_t kSsdEntryDirty = 1;  // flags bit 0: a write-back copy

// Entry 1 + j of a segment's header block: data block j of the segment.
struct SsdLogEntry {
  uint64_t block = 0;     // block number in the volume
  uint64_t seq = 0;       // sequence number
  uint64_t checksum = 0;  // BlockChecksum (XXH3-64) of the block's data
  uint32_t flags = 0;     // kSsdEntryDirty or 0
  bool operator==(const SsdLogEntry&) const = default;
};

// Writes entry 0 of a segment's header block (the segment's own entry) into out[0, 32).
void EncodeSsdSegmentHeader(std::span<std::byte, kSsdEntrySize> out, uint32_t volnr,
                            uint32_t block_size);
// Writes one data block's entry, its check included, into out[0, 32).
void EncodeSsdLogEntry(std::span<std::byte, kSsdEntrySize> out, const SsdLogEntry& entry);
// Decodes a segment's header block `header` (the log's block size: header.size() / 32 - 1 data
// slots): element j is data slot j's entry, nullopt when it fails its check (never written, or
// cut short). Corruption when entry 0 is not a segment of volume `volnr` with a block size of
// header.size() (bad magic, volnr, block size or check: a segment never written, or another log's).
Result<std::vector<std::optional<SsdLogEntry>>> DecodeSsdSegment(std::span<const std::byte> header,
                                                                  uint32_t volnr);
// The sequence number of a "<volnr>/checkpoint" file's text ("seq N", '#' comment lines and blank
// lines skipped). Corruption naming `where` and the line otherwise.
Result<uint64_t> ParseSsdCheckpoint(std::string_view text, std::string_view where);

class SsdCacheLayer : public BlockHandler {
 public:
  // Replays onto `below` the write-back blocks that "<volnr>/log" on `dir` holds past its checkpoint,
  // flushes `below`, then advances the checkpoint. OK with nothing to do when there is no log. An
  // error of `below` is returned (the log is kept for the next attempt); an unreadable log is too.
  static Result<SsdReplay> Recover(StorageBackend& dir, uint32_t volnr, uint32_t block_size, BlockHandler& below);

  // Creates "<volnr>/log" on `dir` (which must outlive the layer), empty, its sequence numbers
  // starting after `replay.last_seq`. When it cannot, the layer logs why and passes everything
  // through (healthy() is false).
  SsdCacheLayer(std::unique_ptr<BlockHandler> next, StorageBackend& dir, uint32_t volnr, uint32_t block_size,
                const SsdCacheOptions& options, const SsdReplay& replay,
                std::shared_ptr<const VolumeMetrics> metrics = nullptr);
  ~SsdCacheLayer() override;  // Drain()s

  uint64_t Size() const override { return next_->Size(); }
  Status Read(uint64_t off, std::span<std::byte> out) override;
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override;
  Status Flush() override;
  Status Trim(uint64_t off, uint64_t len, bool fua) override;
  Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) override;
  Result<std::vector<Extent>> BlockStatus(uint64_t off, uint64_t len) override;

  // Destages every write-back block, flushes the parts and advances the checkpoint, so that a
  // restart has nothing to replay. Called at close.
  Status Drain();
  // False once the log failed or was removed (everything passes through since).
  bool healthy() const { return !bypass_.load(std::memory_order_acquire); }
  const SsdCacheCounters& counters() const { return counters_; }
  uint64_t dirty_bytes() const;
  // "ssd cache /cache/3/log: 1.0 GiB write-back, 812 MiB used, hits ... " for the log and stats.
  std::string Summary() const;

  // For crash tests only: stops the destage thread and forgets the memory copies without
  // destaging them, as a killed process would.
  void AbandonForTest();

 private:
  struct SlotInfo {
    uint64_t block = kNoBlock;
    uint64_t seq = 0;
    uint64_t checksum = 0;
    bool dirty = false;  // a write-back copy (needed until the checkpoint passes seq)
  };
  struct Dirty {
    uint64_t seq = 0;
    std::shared_ptr<const std::vector<std::byte>> data;  // the write's buffer
    size_t offset = 0;                                   // of this block in it
  };
  static constexpr uint64_t kNoBlock = ~uint64_t{0};

  uint64_t DataOffset(uint64_t slot) const;
  uint64_t EntryOffset(uint64_t slot) const;
  // Reserves `n` consecutive slots (fewer at a segment's end) for `blocks`, in log order; returns the
  // first. Waits while the segment to enter holds blocks not yet destaged. REQUIRES: mu_ held.
  Result<uint64_t> ReserveLocked(std::unique_lock<std::mutex>& l, size_t n, size_t* got);
  // Writes blocks to reserved slots [slot, slot + infos.size()): data, then their entries.
  Status AppendAt(uint64_t slot, std::span<const SlotInfo> infos, std::span<const std::byte> data, bool dirty);
  // Appends blocks [b0, b0 + n) as clean copies (fills, write-through writes), each only if
  // `keep(b)` holds under mu_ (the coherence check).
  template <typename Keep>
  void AppendClean(uint64_t b0, std::span<const std::byte> data, Keep keep);
  void InvalidateLocked(uint64_t b0, uint64_t b1);
  Status WriteBack(uint64_t b0, std::span<const std::byte> in, bool fua);
  // Passes an operation that the log cannot hold to the parts: everything is destaged first.
  template <typename Op>
  Status Direct(uint64_t b0, uint64_t b1, Op op);
  // One destage pass over the blocks not yet destaged now.
  Status DestageRound();
  void DestageLoop();
  // Turns the log off for good (logged once); the destage thread still empties memory.
  void Fail(const std::string& why);

  std::unique_ptr<BlockHandler> next_;
  StorageBackend& dir_;
  const uint32_t volnr_;
  const uint32_t bs_;
  const SsdCacheOptions options_;
  std::string log_path_;
  std::unique_ptr<ChunkFile> log_;
  uint64_t segments_ = 0;  // data slots: segments_ * (entries per segment)
  uint64_t slots_per_segment_ = 0;
  // Per segment: its header entry is in the log for this lap of the ring. Recover reads no entry of
  // a segment without one, so an append is not done before it is there: the append of the
  // segment's first slot writes it, and any other append that finds it missing writes it too
  // (appends run side by side, and the first may still be under way when a later one returns).
  std::unique_ptr<std::atomic<bool>[]> header_written_;
  WriteTracker writes_;
  SsdCacheCounters counters_;
  const std::shared_ptr<const VolumeMetrics> metrics_;  // hits and misses also go there; may be null
  std::atomic<bool> bypass_{false};
  std::atomic<bool> direct_since_flush_{false};  // write-back: the parts took writes since the last FLUSH

  // Write-back requests hold it shared; operations that must see no block pending (Direct) hold it
  // exclusively.
  std::shared_mutex direct_mu_;
  std::mutex destage_mu_;  // one destage round at a time
  mutable std::mutex mu_;
  std::condition_variable cv_;  // space in the log, memory below dirty_max, a round finished
  std::vector<SlotInfo> slots_;                   // GUARDED_BY(mu_)
  std::unordered_map<uint64_t, uint64_t> index_;  // block -> slot of its valid copy; GUARDED_BY(mu_)
  std::map<uint64_t, Dirty> dirty_;               // block -> write-back copy not yet destaged; GUARDED_BY(mu_)
  uint64_t head_ = 0;                             // next slot to append; GUARDED_BY(mu_)
  uint64_t next_seq_ = 1;                         // GUARDED_BY(mu_)
  uint64_t checkpoint_ = 0;                       // persisted destage point; GUARDED_BY(mu_)
  uint64_t oldest_dirty_ms_ = 0;                  // when the oldest dirty block came; GUARDED_BY(mu_)
  bool stop_ = false;                             // GUARDED_BY(mu_)
  bool abandoned_ = false;                        // GUARDED_BY(mu_)
  bool wake_ = false;                             // a round is wanted now; GUARDED_BY(mu_)
  std::thread destager_;
};

}  // namespace qbd
