// Implements include/qbd/cache.h.
#include "qbd/cache.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <new>

#include <fmt/format.h>

namespace qbd {

// ---------------------------------------------------------------------------------------------
// BlockCache

BlockCache::BlockCache(uint64_t capacity_bytes, int shards) : capacity_(capacity_bytes) {
  const int n = std::max(1, shards);
  shard_capacity_ = std::max<uint64_t>(1, capacity_ / static_cast<uint64_t>(n));
  for (int i = 0; i < n; ++i) {
    shards_.push_back(std::make_unique<Shard>());
    shards_.back()->slab_bytes = shard_capacity_ >= 8 * kHugeSlab ? kHugeSlab : kSmallSlab;
  }
}

void BlockCache::SlabUnmap::operator()(std::byte* p) const { munmap(p, bytes); }

BlockCache::Shard& BlockCache::ShardOf(uint32_t volnr, uint64_t block) {
  // Neighbouring blocks go to different shards, so a sequential request spreads its locks.
  return *shards_[(Key(volnr, block) * 0x9E3779B97F4A7C15ull >> 32) % shards_.size()];
}

bool BlockCache::Lookup(uint32_t volnr, uint64_t block, std::span<std::byte> out) {
  Shard& s = ShardOf(volnr, block);
  std::lock_guard<std::mutex> l(s.mu);
  auto it = s.index.find(Key(volnr, block));
  if (it == s.index.end() || it->second->size != out.size()) return false;
  Entry& e = *it->second;
  std::memcpy(out.data(), e.data, out.size());
  if (e.freq < 3) ++e.freq;
  return true;
}

void BlockCache::Insert(uint32_t volnr, uint64_t block, std::span<const std::byte> data) {
  Shard& s = ShardOf(volnr, block);
  std::lock_guard<std::mutex> l(s.mu);
  InsertLocked(s, Key(volnr, block), data);
}

void BlockCache::Erase(uint32_t volnr, uint64_t block) {
  Shard& s = ShardOf(volnr, block);
  std::lock_guard<std::mutex> l(s.mu);
  EraseLocked(s, Key(volnr, block));
}

void BlockCache::EraseVolume(uint32_t volnr) { EraseRange(volnr, 0, (uint64_t{1} << 44) - 1); }

void BlockCache::EraseRange(uint32_t volnr, uint64_t b0, uint64_t b1) {
  for (auto& sp : shards_) {
    Shard& s = *sp;
    std::lock_guard<std::mutex> l(s.mu);
    std::vector<uint64_t> keys;
    for (const auto& [key, it] : s.index) {
      const uint64_t block = key ^ (uint64_t{volnr} << 44);
      if ((key >> 44) == volnr && block >= b0 && block <= b1) keys.push_back(key);
    }
    for (uint64_t k : keys) EraseLocked(s, k);
  }
}

std::byte* BlockCache::AllocLocked(Shard& s, uint32_t size) {
  std::vector<std::byte*>& free = s.free_blocks[size];
  if (free.empty()) {
    const size_t n = std::max<size_t>(1, s.slab_bytes / size);
    const size_t bytes = n * size;
    // Huge slabs: map one huge page more than needed and trim to a 2 MiB boundary, then advise
    // huge pages. Pages are touched (faulted in) only when blocks are used.
    const bool huge = bytes % kHugeSlab == 0;
    const size_t map_bytes = huge ? bytes + kHugeSlab : bytes;
    void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    auto* base = static_cast<std::byte*>(m);
    if (huge) {
      const size_t lead = (kHugeSlab - reinterpret_cast<uintptr_t>(base) % kHugeSlab) % kHugeSlab;
      if (lead > 0) munmap(base, lead);
      munmap(base + lead + bytes, kHugeSlab - lead);
      base += lead;
      madvise(base, bytes, MADV_HUGEPAGE);  // advice only: without THP the slab is small pages
    }
    s.slabs.push_back(std::unique_ptr<std::byte[], SlabUnmap>(base, SlabUnmap{bytes}));
    for (size_t i = n; i > 0; --i) free.push_back(base + (i - 1) * size);
  }
  std::byte* p = free.back();
  free.pop_back();
  return p;
}

void BlockCache::InsertLocked(Shard& s, uint64_t key, std::span<const std::byte> data) {
  auto found = s.index.find(key);
  if (found != s.index.end() && found->second->size != data.size()) EraseLocked(s, key);
  found = s.index.find(key);
  if (found != s.index.end()) {
    std::memcpy(found->second->data, data.data(), data.size());
  } else {
    // A block evicted from probation not long ago comes back: it is part of the working set.
    const bool to_main = s.ghost_index.erase(key) > 0;
    std::list<Entry>& q = to_main ? s.main : s.small;
    const auto size = static_cast<uint32_t>(data.size());
    std::byte* p = AllocLocked(s, size);
    std::memcpy(p, data.data(), size);
    q.push_front(Entry{key, 0, to_main, size, p});
    s.index[key] = q.begin();
    (to_main ? s.main_bytes : s.small_bytes) += Charge(size);
    used_.fetch_add(Charge(size));
  }
  counters_.fills.fetch_add(1, std::memory_order_relaxed);
  while (s.small_bytes + s.main_bytes > shard_capacity_ && !s.index.empty()) EvictLocked(s);
}

void BlockCache::EraseLocked(Shard& s, uint64_t key) {
  auto found = s.index.find(key);
  if (found == s.index.end()) return;
  auto it = found->second;
  const uint64_t size = Charge(it->size);
  FreeLocked(s, it->data, it->size);
  if (it->main) {
    s.main_bytes -= size;
    s.main.erase(it);
  } else {
    s.small_bytes -= size;
    s.small.erase(it);
  }
  used_.fetch_sub(size);
  s.index.erase(found);
}

void BlockCache::EvictLocked(Shard& s) {
  if (!s.small.empty() && (s.small_bytes > shard_capacity_ / 10 || s.main.empty())) {
    auto last = std::prev(s.small.end());
    if (last->freq > 0) {
      // Used while on probation: promoted to main.
      last->freq = 0;
      last->main = true;
      s.small_bytes -= Charge(last->size);
      s.main_bytes += Charge(last->size);
      s.main.splice(s.main.begin(), s.small, last);
      return;
    }
    const uint64_t key = last->key;
    EraseLocked(s, key);
    counters_.evictions.fetch_add(1, std::memory_order_relaxed);
    s.ghost.push_front(key);
    s.ghost_index.insert(key);
    while (s.ghost.size() > std::max<size_t>(16, s.index.size())) {
      s.ghost_index.erase(s.ghost.back());
      s.ghost.pop_back();
    }
    return;
  }
  auto last = std::prev(s.main.end());
  if (last->freq > 0) {
    --last->freq;
    s.main.splice(s.main.begin(), s.main, last);
    return;
  }
  EraseLocked(s, last->key);
  counters_.evictions.fetch_add(1, std::memory_order_relaxed);
}

std::string BlockCache::Summary() const {
  const uint64_t h = counters_.hits.load(), m = counters_.misses.load();
  return fmt::format("cache: {:.1f} MiB of {:.1f} MiB, hits {} ({:.1f}%), misses {}, fills {}, evictions {}, "
                     "fills skipped for overlapping writes {}",
                     used() / 1048576.0, capacity_ / 1048576.0, h, h + m ? 100.0 * h / (h + m) : 0.0, m,
                     counters_.fills.load(), counters_.evictions.load(), counters_.skipped.load());
}

// ---------------------------------------------------------------------------------------------
// WriteTracker

WriteTracker::WriteTracker() : inflight_(new std::atomic<uint32_t>[kSlots]), version_(new std::atomic<uint64_t>[kSlots]) {
  for (size_t i = 0; i < kSlots; ++i) {
    inflight_[i].store(0);
    version_[i].store(0);
  }
}

uint64_t WriteTracker::Begin(uint64_t block) {
  inflight_[Slot(block)].fetch_add(1, std::memory_order_acq_rel);
  return version_[Slot(block)].load(std::memory_order_acquire);
}

void WriteTracker::End(uint64_t block) {
  version_[Slot(block)].fetch_add(1, std::memory_order_acq_rel);
  inflight_[Slot(block)].fetch_sub(1, std::memory_order_acq_rel);
}

void WriteTracker::BeginAll() {
  for (size_t slot = 0; slot < kSlots; ++slot) inflight_[slot].fetch_add(1, std::memory_order_acq_rel);
}

void WriteTracker::EndAll() {
  for (size_t slot = 0; slot < kSlots; ++slot) {
    version_[slot].fetch_add(1, std::memory_order_acq_rel);
    inflight_[slot].fetch_sub(1, std::memory_order_acq_rel);
  }
}

uint64_t WriteTracker::Seen(uint64_t block) const {
  return inflight_[Slot(block)].load(std::memory_order_acquire) == 0 ? version_[Slot(block)].load(std::memory_order_acquire)
                                                                      : kBusy;
}

bool WriteTracker::Unchanged(uint64_t block, uint64_t seen) const {
  return seen != kBusy && inflight_[Slot(block)].load(std::memory_order_acquire) == 0 &&
         version_[Slot(block)].load(std::memory_order_acquire) == seen;
}

bool WriteTracker::Sole(uint64_t block, uint64_t begun) const {
  return inflight_[Slot(block)].load(std::memory_order_acquire) == 1 &&
         version_[Slot(block)].load(std::memory_order_acquire) == begun;
}

// ---------------------------------------------------------------------------------------------
// CacheLayer

CacheLayer::CacheLayer(std::unique_ptr<BlockHandler> next, BlockCache& cache, uint32_t volnr, uint32_t block_size,
                       std::shared_ptr<const VolumeMetrics> metrics)
    : next_(std::move(next)), cache_(cache), volnr_(volnr), bs_(block_size), metrics_(std::move(metrics)) {}

CacheLayer::~CacheLayer() { cache_.EraseVolume(volnr_); }

Status CacheLayer::Read(uint64_t off, std::span<std::byte> out) {
  // A large request is a stream (a backup, a copy): served from below without filling, as the
  // page cache does it cheaper than 4 KiB lookups, and the working set stays.
  // A read past the end is the layer below's to refuse.
  if (out.empty() || out.size() > kStreamBytes || off + out.size() > next_->Size()) return next_->Read(off, out);
  thread_local std::vector<std::byte> scratch;
  const WholeBlocks w(off, out, bs_, scratch);
  thread_local std::vector<std::byte> block;
  block.resize(bs_);
  bool all = true;
  for (uint64_t b = w.b0; b <= w.b1 && all; ++b) {
    if (!cache_.Lookup(volnr_, b, block)) {
      all = false;
      break;
    }
    const uint64_t start = std::max(off, b * bs_), end = std::min(off + out.size(), (b + 1) * bs_);
    std::memcpy(out.data() + (start - off), block.data() + (start - b * bs_), end - start);
  }
  CacheCounters& c = cache_.counters();
  const uint64_t n = w.b1 - w.b0 + 1;
  if (all) {
    c.hits.fetch_add(n, std::memory_order_relaxed);
    if (metrics_) metrics_->cache_hits->Increment(static_cast<double>(n));
    return Status::OK();
  }
  c.misses.fetch_add(n, std::memory_order_relaxed);
  if (metrics_) metrics_->cache_misses->Increment(static_cast<double>(n));
  // What the cache may take afterwards: blocks that no write touched while this read ran.
  std::vector<uint64_t> seen(n);
  for (uint64_t b = w.b0; b <= w.b1; ++b) seen[b - w.b0] = writes_.Seen(b);
  QBD_RETURN_IF_ERROR(next_->Read(w.offset, w.whole));
  w.CopyOut();
  for (uint64_t b = w.b0; b <= w.b1; ++b) {
    cache_.WithShardLocked(volnr_, b, [&](BlockCache::Shard& s) {
      if (!writes_.Unchanged(b, seen[b - w.b0])) {
        c.skipped.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      cache_.InsertLocked(s, (uint64_t{volnr_} << 44) ^ b, w.whole.subspan((b - w.b0) * bs_, bs_));
    });
  }
  return Status::OK();
}

std::vector<uint64_t> CacheLayer::BeginWrite(uint64_t b0, uint64_t b1) {
  if (WriteTracker::Wide(b0, b1)) {
    // Wider than the tracker (a trim of a large range): every slot is marked, and the cache is
    // scanned rather than the range.
    writes_.BeginAll();
    cache_.EraseRange(volnr_, b0, b1);
    return {};
  }
  std::vector<uint64_t> versions(b1 - b0 + 1);
  for (uint64_t b = b0; b <= b1; ++b) {
    cache_.WithShardLocked(volnr_, b, [&](BlockCache::Shard& s) {
      versions[b - b0] = writes_.Begin(b);
      cache_.EraseLocked(s, (uint64_t{volnr_} << 44) ^ b);
    });
  }
  return versions;
}

void CacheLayer::EndWrite(uint64_t b0, uint64_t b1, const std::vector<uint64_t>& versions, const std::byte* data) {
  if (versions.empty()) {  // the wide form of BeginWrite
    writes_.EndAll();
    return;
  }
  for (uint64_t b = b0; b <= b1; ++b) {
    cache_.WithShardLocked(volnr_, b, [&](BlockCache::Shard& s) {
      // Cached only when this was the one write to the block from its start to its end: else
      // the order in which overlapping writes landed below is unknown here.
      if (data != nullptr && writes_.Sole(b, versions[b - b0])) {
        cache_.InsertLocked(s, (uint64_t{volnr_} << 44) ^ b, std::span(data + (b - b0) * bs_, bs_));
      }
      writes_.End(b);
    });
  }
}

Status CacheLayer::Write(uint64_t off, std::span<const std::byte> in, bool fua) {
  if (in.empty()) return next_->Write(off, in, fua);
  const uint64_t b0 = off / bs_, b1 = (off + in.size() - 1) / bs_;
  std::vector<uint64_t> versions = BeginWrite(b0, b1);
  Status s = next_->Write(off, in, fua);
  // Whole blocks of a successful write are cached (a large one only drops them: a stream); a
  // partial edge block only loses its copy.
  const bool whole = off % bs_ == 0 && in.size() % bs_ == 0 && in.size() <= kStreamBytes;
  EndWrite(b0, b1, versions, s.ok() && whole ? in.data() : nullptr);
  return s;
}

Status CacheLayer::Trim(uint64_t off, uint64_t len, bool fua) {
  if (len == 0) return next_->Trim(off, len, fua);
  const uint64_t b0 = off / bs_, b1 = (off + len - 1) / bs_;
  std::vector<uint64_t> versions = BeginWrite(b0, b1);
  Status s = next_->Trim(off, len, fua);
  EndWrite(b0, b1, versions, nullptr);
  return s;
}

Status CacheLayer::WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) {
  if (len == 0) return next_->WriteZeroes(off, len, may_trim, fua);
  const uint64_t b0 = off / bs_, b1 = (off + len - 1) / bs_;
  std::vector<uint64_t> versions = BeginWrite(b0, b1);
  Status s = next_->WriteZeroes(off, len, may_trim, fua);
  EndWrite(b0, b1, versions, nullptr);
  return s;
}

}  // namespace qbd
