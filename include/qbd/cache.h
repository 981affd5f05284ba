// Cache: qbd-master's memory cache of blocks, in front of QuorumSet (qbd/chain.h's chain:
// Stats -> Qos -> [Fence] -> CacheLayer -> [SsdCacheLayer] -> QuorumSet), so that it only ever
// holds data the quorum returned or confirmed.
//
// BlockCache is one pool of memory shared by every volume (its capacity is `cache_size` in
// qbd.conf), keyed by (volume number, block). Eviction is S3-FIFO: a new block enters a small
// probation FIFO; a block used again there moves to the main FIFO, where used blocks are
// reinserted and unused ones evicted; a ghost list remembers recently evicted probation blocks so
// that their return goes straight to main. A long sequential scan therefore passes through the
// small FIFO without pushing out the working set.
//
// CacheLayer is write-through: a write goes down first, and only once it succeeded are its whole
// blocks cached (a failed write, a partial block, TRIM and WRITE_ZEROES drop the blocks instead).
// Coherence with concurrent requests: a read fills the cache only if no write touched its blocks
// while it read, and a write caches its data only if no other write to those blocks overlapped it
// (per-block counters of writes in flight and finished), so a fill never puts back older data.
//
// Thread-safety: BlockCache is sharded, one mutex per shard; CacheLayer is safe for concurrent use.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "qbd/handler.h"
#include "qbd/metrics.h"

namespace qbd {

struct CacheCounters {
  std::atomic<uint64_t> hits{0};       // blocks served from the cache
  std::atomic<uint64_t> misses{0};     // blocks read from below
  std::atomic<uint64_t> fills{0};      // blocks inserted
  std::atomic<uint64_t> evictions{0};  // blocks evicted to make room
  std::atomic<uint64_t> skipped{0};    // fills left out because a write overlapped them
};

class BlockCache {
 public:
  // `capacity_bytes`: the memory it may use, block data and bookkeeping (kEntryOverhead per block:
  // list and index nodes, a ghost key, allocator headers; about 4% of 4 KiB blocks).
  explicit BlockCache(uint64_t capacity_bytes, int shards = 16);
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  uint64_t capacity() const { return capacity_; }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  const CacheCounters& counters() const { return counters_; }
  CacheCounters& counters() { return counters_; }
  // "cache: 12.0 MiB of 256 MiB, hits 1234 (91.2%), ..." for the log.
  std::string Summary() const;

  // Copies the block into `out` (its size is the block size) and counts a use. False on a miss.
  bool Lookup(uint32_t volnr, uint64_t block, std::span<std::byte> out);
  // Inserts or replaces the block's data.
  void Insert(uint32_t volnr, uint64_t block, std::span<const std::byte> data);
  void Erase(uint32_t volnr, uint64_t block);
  // Drops every block of the volume (it was closed or deleted).
  void EraseVolume(uint32_t volnr);
  // Drops the volume's blocks in [b0, b1] (a scan of the cache, for ranges wider than it).
  void EraseRange(uint32_t volnr, uint64_t b0, uint64_t b1);

  // Runs `fn` under the lock of the shard holding (volnr, block): coherence checks and the
  // insertion they guard happen atomically with respect to Erase and Insert.
  template <typename Fn>
  void WithShardLocked(uint32_t volnr, uint64_t block, Fn&& fn) {
    Shard& s = ShardOf(volnr, block);
    std::lock_guard<std::mutex> l(s.mu);
    fn(s);
  }

  struct Entry {
    uint64_t key = 0;
    uint8_t freq = 0;
    bool main = false;
    uint32_t size = 0;
    std::byte* data = nullptr;  // from the shard's slabs
  };
  struct SlabUnmap {
    size_t bytes = 0;
    void operator()(std::byte* p) const;
  };
  struct Shard {
    std::mutex mu;
    std::list<Entry> small, main;  // front: newest
    std::unordered_map<uint64_t, std::list<Entry>::iterator> index;
    std::list<uint64_t> ghost;  // front: newest
    std::unordered_set<uint64_t> ghost_index;
    uint64_t small_bytes = 0, main_bytes = 0;
    // Block memory: carved from slabs that are kept for reuse (freed blocks go to a free list per
    // size), so that the cache's footprint stays at its capacity instead of growing with the
    // allocator's fragmentation as blocks come and go. Slabs are mapped memory (SlabUnmap), in
    // transparent huge pages where they are large enough (kHugeSlab).
    size_t slab_bytes = 0;
    std::vector<std::unique_ptr<std::byte[], SlabUnmap>> slabs;
    std::unordered_map<uint32_t, std::vector<std::byte*>> free_blocks;
  };
  // REQUIRES: the shard's lock.
  void InsertLocked(Shard& s, uint64_t key, std::span<const std::byte> data);
  void EraseLocked(Shard& s, uint64_t key);

 private:
  static constexpr uint64_t kEntryOverhead = 160;
  // A shard of at least 8 huge pages takes its block memory 2 MiB at a time, 2 MiB aligned and
  // advised as a huge page: filling the cache then faults once per 2 MiB, not once per block
  // (page faults cost the miss path more than the read itself, worst in a virtual machine). The
  // slack, one partly used slab per shard and block size, stays within 1/8 of the shard.
  static constexpr size_t kHugeSlab = size_t{2} << 20;
  static constexpr size_t kSmallSlab = size_t{256} << 10;
  static std::byte* AllocLocked(Shard& s, uint32_t size);
  static void FreeLocked(Shard& s, std::byte* p, uint32_t size) { s.free_blocks[size].push_back(p); }
  static uint64_t Charge(size_t data_bytes) { return data_bytes + kEntryOverhead; }
  static uint64_t Key(uint32_t volnr, uint64_t block) { return (uint64_t{volnr} << 44) ^ block; }
  Shard& ShardOf(uint32_t volnr, uint64_t block);
  void EvictLocked(Shard& s);

  const uint64_t capacity_;
  uint64_t shard_capacity_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<uint64_t> used_{0};
  CacheCounters counters_;
};

// Per-block counters of writes in flight and writes finished, hashed into a fixed table of slots
// (blocks sharing a slot share counters, which only makes a cache skip more). A cache fills a block
// only if no write touched it while the data was read, and caches a write's data only if no other
// write overlapped it, so older data is never put back. The caller serializes each check with the
// insertion it guards (a lock it also holds around Begin).
//
// Thread-safety: safe for concurrent use (atomics).
class WriteTracker {
 public:
  static constexpr uint64_t kBusy = ~uint64_t{0};
  WriteTracker();

  // A write to `block` starts; returns the count of finished writes, for Sole.
  uint64_t Begin(uint64_t block);
  // ... and ends.
  void End(uint64_t block);
  // Every slot at once: a write wider than the table (a trim of a large range).
  void BeginAll();
  void EndAll();
  static bool Wide(uint64_t b0, uint64_t b1) { return b1 - b0 + 1 >= kSlots; }

  // Before a read: the finished-write count, or kBusy while a write is in flight.
  uint64_t Seen(uint64_t block) const;
  // After it: true if no write touched the block since Seen returned `seen`.
  bool Unchanged(uint64_t block, uint64_t seen) const;
  // Before End: true if the write that Begin returned `begun` for was the only one to the block.
  bool Sole(uint64_t block, uint64_t begun) const;

 private:
  static constexpr size_t kSlots = 1u << 16;
  static size_t Slot(uint64_t block) { return block % kSlots; }
  std::unique_ptr<std::atomic<uint32_t>[]> inflight_;
  std::unique_ptr<std::atomic<uint64_t>[]> version_;
};

// The whole blocks under a read of `out` at `off`, for the layers that cache whole blocks: they
// read `whole` from below (the caller's buffer itself when the read is block-aligned, else
// `scratch`, the caller's per-thread buffer) and CopyOut() puts the requested bytes into `out`.
class WholeBlocks {
 public:
  WholeBlocks(uint64_t off, std::span<std::byte> out, uint32_t block_size, std::vector<std::byte>& scratch)
      : b0(off / block_size), b1((off + out.size() - 1) / block_size), offset(b0 * block_size), out_(out), off_(off) {
    const uint64_t len = (b1 + 1) * block_size - offset;
    if (offset == off && len == out.size()) {
      whole = out;
    } else {
      scratch.resize(len);
      whole = std::span(scratch.data(), len);
    }
  }
  void CopyOut() const {
    if (whole.data() != out_.data()) std::memcpy(out_.data(), whole.data() + (off_ - offset), out_.size());
  }

  const uint64_t b0, b1;  // REQUIRES: out is not empty
  const uint64_t offset;  // of block b0
  std::span<std::byte> whole;

 private:
  const std::span<std::byte> out_;
  const uint64_t off_;
};

class CacheLayer : public BlockHandler {
 public:
  // `cache` must outlive the layer; `volnr` keys this volume's blocks in it. Hits and misses are
  // counted into the cache's counters and, with `metrics`, into the volume's series.
  CacheLayer(std::unique_ptr<BlockHandler> next, BlockCache& cache, uint32_t volnr, uint32_t block_size,
             std::shared_ptr<const VolumeMetrics> metrics = nullptr);
  ~CacheLayer() override;  // drops the volume's blocks from the cache

  uint64_t Size() const override { return next_->Size(); }
  Status Read(uint64_t off, std::span<std::byte> out) override;
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override;
  Status Flush() override { return next_->Flush(); }
  Status Trim(uint64_t off, uint64_t len, bool fua) override;
  Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) override;
  Result<std::vector<Extent>> BlockStatus(uint64_t off, uint64_t len) override {
    return next_->BlockStatus(off, len);
  }

 private:
  // Requests larger than this bypass the cache (reads) or only invalidate it (writes).
  static constexpr size_t kStreamBytes = 128 * 1024;
  // Marks writes to blocks [b0, b1] in flight and drops them from the cache; returns the
  // finished-write versions seen at the start.
  std::vector<uint64_t> BeginWrite(uint64_t b0, uint64_t b1);
  // Ends them; with `data` (the written blocks, whole-block aligned at b0) caches the blocks that
  // no other write overlapped.
  void EndWrite(uint64_t b0, uint64_t b1, const std::vector<uint64_t>& versions, const std::byte* data);

  std::unique_ptr<BlockHandler> next_;
  BlockCache& cache_;
  const uint32_t volnr_;
  const uint32_t bs_;
  WriteTracker writes_;
  const std::shared_ptr<const VolumeMetrics> metrics_;  // may be null
};

}  // namespace qbd
