// Implements the chunk file layout of layout-spec.md §4 (format 2) over a StorageBackend.
#include "qbd/part_store.h"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "common/coding.h"

#include "qbd/log.h"

namespace qbd {
namespace {

// Per-thread scratch, reused so that no request allocates (a large buffer per request costs an
// mmap/munmap pair in glibc).
std::vector<std::byte>& Scratch(size_t size) {
  thread_local std::vector<std::byte> buf;
  if (buf.size() < size) buf.resize(size);
  return buf;
}

}  // namespace

void RecordPieces::Assign(const Geometry& g, const BlockAddress& first, std::span<const std::byte> data,
                          std::span<const BlockMeta> metas) {
  assert(g.format == kFormat2 && data.size() == metas.size() * g.block_size);
  n_ = metas.size();
  data_ = data;
  if (slots_.size() < n_ * kSlotSize) slots_.resize(n_ * kSlotSize);
  // Unwritten metas only come with zero data (Write's contract): their check needs the all-zero
  // block's checksum, computed only then.
  uint64_t zero_checksum = 0;
  for (uint64_t i = 0; i < n_; ++i) {
    if (metas[i].IsUnwritten() && zero_checksum == 0) zero_checksum = BlockChecksum(data.subspan(i * g.block_size, g.block_size));
    BlockAddress at = first;
    at.block += i;
    EncodeSlot(metas[i], at, zero_checksum, slots_.data() + i * kSlotSize);
  }
}

namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

PartStore::PartStore(StorageBackend& backend, uint32_t volnr, char part, Geometry geometry,
                     size_t max_open_files, std::chrono::milliseconds recheck_interval)
    : backend_(backend),
      volnr_(volnr),
      part_(part),
      geometry_(geometry),
      max_open_files_(max_open_files),
      recheck_ns_(std::chrono::duration_cast<std::chrono::nanoseconds>(recheck_interval).count()) {
  assert(geometry_.format == kFormat2);
  std::vector<std::byte> zeros(geometry_.block_size);
  zero_checksum_ = BlockChecksum(zeros);
  remote_ = backend_.IsRemote();
}

void PartStore::SlotState::PairCache::Clear() {
  if (account) account->fetch_sub(bytes.size(), std::memory_order_relaxed);
  account = nullptr;
  std::vector<std::byte>().swap(bytes);
}

Status PartStore::ReadPairsLocked(Handle& h, uint64_t first, std::span<std::byte> out) {
  if (h.pair_cache.empty()) {
    const uint64_t area = geometry_.BlocksPerChunk() * kSlotPairSize;
    if (pair_cache_bytes_.fetch_add(area, std::memory_order_relaxed) + area > kPairCacheBudget) {
      pair_cache_bytes_.fetch_sub(area, std::memory_order_relaxed);
      return h.file->ReadAt(geometry_.MetaOffset(first), out);  // budget spent: read them
    }
    h.pair_cache.account = &pair_cache_bytes_;
    h.pair_cache.bytes.resize(area);
    Status s = h.file->ReadAt(geometry_.MetaOffset(0), h.pair_cache.bytes);
    if (!s.ok()) {
      h.pair_cache.Clear();
      return s;
    }
  }
  std::memcpy(out.data(), h.pair_cache.bytes.data() + first * kSlotPairSize, out.size());
  return Status::OK();
}

Status PartStore::WritePairsLocked(Handle& h, uint64_t first, std::span<const std::byte> in) {
  Status s = h.file->WriteAt(geometry_.MetaOffset(first), in);
  if (!h.pair_cache.empty()) {
    if (s.ok()) {
      std::memcpy(h.pair_cache.bytes.data() + first * kSlotPairSize, in.data(), in.size());
    } else {
      h.pair_cache.Clear();  // what the file holds now is unknown: read again
    }
  }
  return s;
}

PartStore::~PartStore() { CloseAll().IgnoreError(); }

Status PartStore::CheckRoom(uint64_t bytes) {
  if (!free_known_.load(std::memory_order_relaxed)) return Status::OK();
  const int64_t now = NowNs();
  // Asks the backend; false when it cannot tell (no reserve then).
  auto ask = [&] {
    auto free = backend_.FreeBytes();
    if (free.status().IsNotSupported()) {
      free_known_.store(false, std::memory_order_relaxed);
      return false;
    }
    if (free.ok()) {
      free_estimate_.store(static_cast<int64_t>(*free), std::memory_order_relaxed);
      free_at_ns_.store(now, std::memory_order_relaxed);
    }
    return true;
  };
  const int64_t at = free_at_ns_.load(std::memory_order_relaxed);
  bool fresh = at == 0 || now - at >= std::chrono::nanoseconds(kFreeRecheck).count();
  if (fresh && !ask()) return Status::OK();
  // An upper bound of what the write allocates (an overwrite allocates nothing).
  const auto want = static_cast<int64_t>(bytes);
  int64_t left = free_estimate_.fetch_sub(want, std::memory_order_relaxed) - want;
  if (left >= static_cast<int64_t>(kReservedBytes)) return Status::OK();
  free_estimate_.fetch_add(want, std::memory_order_relaxed);  // not written
  if (!fresh) {
    // The estimate may be old (space freed since): asked again before refusing.
    if (!ask()) return Status::OK();
    left = free_estimate_.fetch_sub(want, std::memory_order_relaxed) - want;
    if (left >= static_cast<int64_t>(kReservedBytes)) return Status::OK();
    free_estimate_.fetch_add(want, std::memory_order_relaxed);
  }
  return Status::IOError(fmt::format("part {}: {} free on {}, {} kept for metadata: {}", part_,
                                     std::max<int64_t>(left + static_cast<int64_t>(bytes), 0), backend_.Describe(),
                                     kReservedBytes, std::strerror(ENOSPC)),
                         ENOSPC);
}

std::string PartStore::Name(uint64_t chunk) const { return ChunkPath(volnr_, part_, chunk); }

Result<std::shared_ptr<PartStore::Handle>> PartStore::GetFile(uint64_t chunk, bool create, bool complete,
                                                              bool* created) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::shared_ptr<Handle> h;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = open_.find(chunk);
      if (it != open_.end()) h = it->second;
    }
    if (!h) break;
    // Whether the name still leads to this file is asked at most every recheck_ns_ (a path
    // lookup per request and part cost more than the write itself).
    const int64_t now = recheck_ns_ > 0 ? NowNs() : 0;
    if (recheck_ns_ > 0 && now - h->checked_ns.load(std::memory_order_relaxed) < recheck_ns_) return h;
    if (!h->file->Detached()) {
      h->checked_ns.store(now, std::memory_order_relaxed);
      return h;
    }
    QBD_LOG_WARN("volume {} part {}: chunk file {} was removed or replaced under the daemon",
                 volnr_, part_, Name(chunk));
    Forget(h);
  }
  // Opening and creating files are serialized per part (two creators of one chunk would share its
  // temporary name), but not under mu_: a creation waits on a sync, and requests to open files
  // must not wait for it.
  std::lock_guard<std::mutex> cl(open_mu_);
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = open_.find(chunk);
    if (it != open_.end()) return it->second;
  }
  std::string path = Name(chunk);
  auto opened = backend_.Open(path);
  if (!opened.ok()) {
    if (!opened.status().IsNotFound() || !create) return opened.status();
    // §4.1 Publish: a chunk file appears under its name only at full size, so a short file is
    // always damage, never a file still being created.
    if (!dir_ready_) {
      QBD_RETURN_IF_ERROR(backend_.MkDirs(PartDir(volnr_, part_)));
      QBD_RETURN_IF_ERROR(backend_.SyncDir(std::to_string(volnr_)));
      dir_ready_ = true;
    }
    std::string tmp = fmt::format("{}/.{}.tmp", PartDir(volnr_, part_), chunk + 1);
    {
      QBD_ASSIGN_OR_RETURN(auto f, backend_.Create(tmp));
      QBD_RETURN_IF_ERROR(f->Truncate(geometry_.ChunkFileSize()));
      QBD_RETURN_IF_ERROR(f->Sync());
    }
    QBD_RETURN_IF_ERROR(backend_.Rename(tmp, path));
    // The new name becomes durable with the next SyncCreated (Flush, or a durable write): like
    // the data written into the file, it need not outlive a crash before then.
    created_unsynced_.store(true, std::memory_order_release);
    if (created) *created = true;
    opened = backend_.Open(path);
    if (!opened.ok()) return opened.status();
  }
  std::shared_ptr<SlotState> adopted;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto o = orphans_.find(chunk);
    if (o != orphans_.end()) {
      adopted = std::move(o->second);
      orphans_.erase(o);
    }
  }
  auto h = std::make_shared<Handle>(chunk, std::move(opened).value(), recheck_ns_ > 0 ? NowNs() : 0,
                                    std::move(adopted));
  // The slot pairs of the whole chunk in one read-ahead (32 KiB for 4 MiB of 4 KiB blocks), not a
  // page at a time as the requests touch them (§4.2).
  h->file->WillNeed(geometry_.chunk_size, geometry_.BlocksPerChunk() * kSlotPairSize);
  QBD_ASSIGN_OR_RETURN(uint64_t size, h->file->Size());
  if (size < geometry_.ChunkFileSize()) {
    // §4.1: a short file is damage. Readers see Corruption past its end; a writer first restores
    // the full size (the lost tail reads as unwritten) and reports the copy as rebuilt, so that
    // the caller re-copies the whole chunk into it.
    if (!complete) return h;  // not cached: the next call looks again
    QBD_LOG_WARN("volume {} part {}: chunk file {} is short ({} of {} bytes): restoring its size", volnr_, part_,
                 path, size, geometry_.ChunkFileSize());
    QBD_RETURN_IF_ERROR(h->file->Truncate(geometry_.ChunkFileSize()));
    QBD_RETURN_IF_ERROR(h->file->Sync());
    if (created) *created = true;
  }
  std::vector<std::shared_ptr<Handle>> victims;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (open_.size() >= max_open_files_) victims = EvictLocked();
    open_[chunk] = h;
  }
  SyncEvicted(victims);
  return h;
}

Status PartStore::SyncCreated() {
  // Under sync_mu_, so that a call that finds the flag clear returns only after the directory
  // sync of a concurrent call, which may cover its creations, has finished.
  std::lock_guard<std::mutex> l(sync_mu_);
  if (!created_unsynced_.exchange(false, std::memory_order_acq_rel)) return Status::OK();
  // Covers every rename done before the exchange: each sets the flag after it renamed.
  Status s = backend_.SyncDir(PartDir(volnr_, part_));
  if (!s.ok()) created_unsynced_.store(true, std::memory_order_release);
  return s;
}

void PartStore::Forget(const std::shared_ptr<Handle>& h) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = open_.find(h->chunk);
  if (it != open_.end() && it->second == h) open_.erase(it);
}

void PartStore::DropReplaced(uint64_t chunk, bool same_file) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = open_.find(chunk);
  if (!same_file) {
    orphans_.erase(chunk);  // a new file: what was pending in the old one is gone with it
  } else if (it != open_.end() && orphans_.size() < max_open_files_) {
    orphans_[chunk] = it->second->state;  // writes in flight through the old handle update it too
  }
  if (it != open_.end()) open_.erase(it);
  // The writes the old handles took are in the rebuilt file, which is synced.
  std::erase_if(unsynced_, [chunk](const std::shared_ptr<Handle>& h) {
    if (h->chunk != chunk) return false;
    h->listed = false;
    h->unsynced.store(false);
    return true;
  });
}

std::vector<std::shared_ptr<PartStore::Handle>> PartStore::EvictLocked() {
  // Drop handles no request is using (the map holds one reference, the unsynced list one more).
  // A handle with unsynced writes is synced by SyncEvicted, outside mu_, so that the number of
  // open files stays bounded when no Flush comes.
  std::vector<std::shared_ptr<Handle>> victims;
  for (auto it = open_.begin(); it != open_.end() && open_.size() >= max_open_files_ / 2;) {
    const std::shared_ptr<Handle>& h = it->second;
    if (h.use_count() != (h->listed ? 2 : 1)) {
      ++it;
      continue;
    }
    if (h->listed) victims.push_back(h);
    it = open_.erase(it);
  }
  return victims;
}

void PartStore::StartSyncs(const std::vector<std::shared_ptr<Handle>>& handles) {
  // Many files (a stream that created chunk after chunk): their writeback runs side by side
  // before the syncs wait on each in turn, and one journal commit serves the metadata of many.
  if (handles.size() < 2) return;
  for (const auto& h : handles) h->file->StartSync();
}

void PartStore::SyncEvicted(const std::vector<std::shared_ptr<Handle>>& victims) {
  StartSyncs(victims);
  for (const auto& h : victims) {
    // A failed sync leaves the handle listed: the next Flush tries again and reports it.
    h->unsynced.store(false);
    const uint64_t synced = done_seq_.load(std::memory_order_acquire);
    if (!h->file->Sync().ok()) {
      h->unsynced.store(true);
      continue;
    }
    // Its last chance: the handle is gone after this. The settled pairs are not synced (the
    // file system writes them back); one lost, or left unsettled, costs a data read at the
    // block's next write.
    Settle(*h, synced).IgnoreError();
    std::lock_guard<std::mutex> l(mu_);
    if (h->listed && !h->unsynced.load()) {
      h->listed = false;
      std::erase(unsynced_, h);
    }
  }
}

Status PartStore::Read(uint64_t chunk, uint64_t first, std::span<std::byte> data, std::span<BlockMeta> metas,
                       std::vector<uint64_t>* bad) {
  const uint64_t n = metas.size();
  const uint64_t bs = geometry_.block_size;
  if (n == 0) return Status::OK();
  if (first + n > geometry_.BlocksPerChunk() || data.size() != n * bs) {
    return Status::InvalidArgument(fmt::format("read of blocks {}+{} outside chunk {}", first, n, Name(chunk)));
  }
  QBD_ASSIGN_OR_RETURN(auto h, GetFile(chunk, /*create=*/false, /*complete=*/false, nullptr));
  // §4.2: the slot pairs from the metadata area, the data straight into `data`.
  thread_local std::vector<std::byte> pairs;
  if (pairs.size() < n * kSlotPairSize) pairs.resize(n * kSlotPairSize);
  // On a local part from the file, so that a read also checks the stored pairs (a system call
  // that finds them in the page cache). On a remote one from the pairs this process stored (read
  // once per open file): a read is one round trip, not two. The data is checked against them all
  // the same; a damaged pair beside intact data is left to verify (§4.2).
  const std::span<std::byte> pair_buf(pairs.data(), n * kSlotPairSize);
  Status s;
  if (remote_) {
    std::lock_guard<std::mutex> l(h->meta_mu);
    s = ReadPairsLocked(*h, first, pair_buf);
  } else {
    s = h->file->ReadAt(geometry_.MetaOffset(first), pair_buf);
  }
  if (s.ok()) s = h->file->ReadAt(geometry_.DataOffset(first), data);
  if (!s.ok()) {
    // A short file (Corruption) is looked at afresh by the next call, which restores its size
    // before writing into it.
    if (s.IsCorruption()) Forget(h);
    return s.WithContext(fmt::format("part {}", part_));
  }
  bool any_bad = false;
  BlockAddress at{volnr_, chunk, first};
  for (uint64_t i = 0; i < n; ++i, ++at.block) {
    std::span<const std::byte> block = data.subspan(i * bs, bs);
    const SlotVerdict v = ResolveSlots(block, BlockChecksum(block), pairs.data() + i * kSlotPairSize, at, zero_checksum_);
    metas[i] = v.meta;
    if (!v.good) {
      any_bad = true;
      if (bad) bad->push_back(first + i);
    }
  }
  if (any_bad) {
    return Status::Corruption(fmt::format("{}: checksum mismatch", Name(chunk)));
  }
  return Status::OK();
}

Status PartStore::Write(uint64_t chunk, uint64_t first, std::span<const std::byte> data,
                        std::span<const BlockMeta> metas, bool sync, bool* created) {
  const uint64_t n = metas.size();
  if (data.size() != n * geometry_.block_size) {
    return Status::InvalidArgument(fmt::format("write of {} bytes for {} blocks", data.size(), n));
  }
  thread_local RecordPieces records;
  records.Assign(geometry_, BlockAddress{volnr_, chunk, first}, data, metas);
  return WriteRecords(chunk, first, records, sync, created);
}

Result<uint64_t> PartStore::WriteSlots(Handle& h, uint64_t chunk, uint64_t first, uint64_t n, const std::byte* slots,
                                       bool zeros_only) {
  // §4.5, step 1: each block's pair becomes {new slot, current slot}. The current slot is the
  // only used one of a settled pair, the zeros slot for an empty pair, slot 0 of a pair this
  // process wrote whose data write completed, and otherwise (a write torn by a crash, or one
  // whose data write failed) the slot that the data on disk matches.
  thread_local std::vector<std::byte> pairs;
  thread_local std::vector<std::byte> old_data;
  if (pairs.size() < n * kSlotPairSize) pairs.resize(n * kSlotPairSize);
  std::span<std::byte> buf(pairs.data(), n * kSlotPairSize);
  std::lock_guard<std::mutex> l(h.meta_mu);
  QBD_RETURN_IF_ERROR(ReadPairsLocked(h, first, buf));
  const uint64_t bs = geometry_.block_size;
  for (uint64_t i = 0; i < n; ++i) {
    std::byte* pair = buf.data() + i * kSlotPairSize;
    const BlockAddress at{volnr_, chunk, first + i};
    const bool empty0 = SlotEmpty(pair), empty1 = SlotEmpty(pair + kSlotSize);
    std::byte current[kSlotSize];
    if (empty0 && empty1) {
      if (zeros_only) {
        continue;  // already unwritten: Unwrite only punches the data

      }
      EncodeSlot(BlockMeta{}, at, zero_checksum_, current);
    } else if (empty0 != empty1) {
      std::memcpy(current, empty0 ? pair + kSlotSize : pair, kSlotSize);
    } else {
      auto it = h.pending.find(first + i);
      int slot = 0;
      if (it == h.pending.end() || !it->second.done) {
        // Unknown: judged by the data on disk (rare: only after a crash or a failed write).
        if (old_data.size() < bs) old_data.resize(bs);
        std::span<std::byte> block(old_data.data(), bs);
        QBD_RETURN_IF_ERROR(h.file->ReadAt(geometry_.DataOffset(first + i), block));
        const SlotVerdict v = ResolveSlots(block, BlockChecksum(block), pair, at, zero_checksum_);
        // A copy that matches neither slot is corrupt already: either slot may go.
        slot = v.slot >= 0 ? v.slot : 0;
      }
      std::memcpy(current, pair + slot * kSlotSize, kSlotSize);
    }
    std::memcpy(pair + kSlotSize, current, kSlotSize);
    std::memcpy(pair, slots + i * kSlotSize, kSlotSize);
  }
  QBD_RETURN_IF_ERROR(WritePairsLocked(h, first, buf));
  const uint64_t seq = write_seq_.fetch_add(1, std::memory_order_relaxed) + 1;
  for (uint64_t i = 0; i < n; ++i) {
    const std::byte* pair = buf.data() + i * kSlotPairSize;
    if (SlotEmpty(pair) && SlotEmpty(pair + kSlotSize)) continue;  // zeros_only, left alone
    Handle::Pending& p = h.pending[first + i];
    p.seq = seq;
    p.done = false;
    std::memcpy(p.slot0, pair, kSlotSize);
  }
  return seq;
}

uint64_t PartStore::MarkDone(Handle& h, uint64_t first, uint64_t n, uint64_t seq) {
  std::lock_guard<std::mutex> l(h.meta_mu);
  // Numbered under the lock: a Settle that reads done_seq_ before its sync sees either this
  // write's number or none of it.
  const uint64_t done = done_seq_.fetch_add(1, std::memory_order_acq_rel) + 1;
  for (uint64_t i = 0; i < n; ++i) {
    auto it = h.pending.find(first + i);
    if (it != h.pending.end() && it->second.seq == seq) {
      it->second.done = true;
      it->second.done_seq = done;
    }
  }
  return done;
}

Status PartStore::Settle(Handle& h, uint64_t synced) {
  // §4.5, step 3: the data of these writes is durable, so their previous slot can go. A pair
  // whose new slot says "zeros" becomes empty (unwritten).
  std::lock_guard<std::mutex> l(h.meta_mu);
  if (h.pending.empty()) return Status::OK();
  std::vector<uint64_t> blocks;
  for (const auto& [b, p] : h.pending) {
    if (p.done && p.done_seq <= synced) blocks.push_back(b);
  }
  if (blocks.empty()) return Status::OK();
  std::sort(blocks.begin(), blocks.end());
  thread_local std::vector<std::byte> run;
  Status s;
  for (size_t i = 0; i < blocks.size() && s.ok();) {
    size_t j = i + 1;
    while (j < blocks.size() && blocks[j] == blocks[j - 1] + 1) ++j;
    run.assign((j - i) * kSlotPairSize, std::byte{0});
    for (size_t k = i; k < j; ++k) {
      const std::byte* slot0 = h.pending[blocks[k]].slot0;
      if (DecodeLE64(slot0) != 0) std::memcpy(run.data() + (k - i) * kSlotPairSize, slot0, kSlotSize);
    }
    s = WritePairsLocked(h, blocks[i], run);
    if (s.ok()) {
      for (size_t k = i; k < j; ++k) h.pending.erase(blocks[k]);
      h.settled_unsynced = true;
    }
    i = j;
  }
  return s;
}

Status PartStore::WriteRecords(uint64_t chunk, uint64_t first, const RecordPieces& records, bool sync,
                               bool* created) {
  const uint64_t n = records.blocks();
  if (n == 0) return Status::OK();
  if (first + n > geometry_.BlocksPerChunk()) {
    return Status::InvalidArgument(fmt::format("write of blocks {}+{} outside chunk {}", first, n, Name(chunk)));
  }
  QBD_RETURN_IF_ERROR(CheckRoom(n * (geometry_.block_size + kSlotPairSize)));
  QBD_ASSIGN_OR_RETURN(auto h, GetFile(chunk, /*create=*/true, /*complete=*/true, created));
  auto seq = WriteSlots(*h, chunk, first, n, records.slots(), /*zeros_only=*/false);
  Status s = seq.status();
  if (s.ok()) s = h->file->WriteAt(geometry_.DataOffset(first), records.data());
  uint64_t done = 0;
  if (s.ok()) done = MarkDone(*h, first, n, *seq);
  if (s.ok() && sync) s = h->file->Sync();
  if (s.ok() && sync) s = SyncCreated();
  if (s.ok() && sync) Settle(*h, done).IgnoreError();  // a pair left unsettled costs a data read later
  if (!s.ok()) return s.WithContext(fmt::format("part {}", part_));
  if (!sync) MarkUnsynced(h);
  return Status::OK();
}

Status PartStore::Unwrite(uint64_t chunk, uint64_t first, uint64_t n, bool sync, bool* rebuilt) {
  if (n == 0) return Status::OK();
  if (first + n > geometry_.BlocksPerChunk()) {
    return Status::InvalidArgument(fmt::format("unwrite of blocks {}+{} outside chunk {}", first, n, Name(chunk)));
  }
  auto got = GetFile(chunk, /*create=*/false, /*complete=*/true, rebuilt);
  if (!got.ok()) return got.status().IsNotFound() ? Status::OK() : got.status();
  Handle& h = **got;
  ChunkFile* file = h.file.get();
  // The zeros slot first (§4.5), then the data punched out.
  std::vector<std::byte> zeros_slots(n * kSlotSize);
  for (uint64_t i = 0; i < n; ++i) {
    EncodeSlot(BlockMeta{}, BlockAddress{volnr_, chunk, first + i}, zero_checksum_, zeros_slots.data() + i * kSlotSize);
  }
  auto seq = WriteSlots(h, chunk, first, n, zeros_slots.data(), /*zeros_only=*/true);
  if (!seq.ok()) return seq.status().WithContext(fmt::format("part {}", part_));
  const uint64_t off = geometry_.DataOffset(first);
  const uint64_t len = n * geometry_.block_size;
  Status s = file->PunchHole(off, len);
  if (s.IsNotSupported()) {
    // Write zeros instead, in bounded pieces.
    std::vector<std::byte>& zeros = Scratch(std::min<uint64_t>(len, 1u << 20));
    std::fill(zeros.begin(), zeros.end(), std::byte{0});
    s = Status::OK();
    for (uint64_t done = 0; done < len && s.ok();) {
      uint64_t piece = std::min<uint64_t>(len - done, zeros.size());
      s = file->WriteAt(off + done, std::span<const std::byte>(zeros.data(), piece));
      done += piece;
    }
  }
  uint64_t done = 0;
  if (s.ok()) done = MarkDone(h, first, n, *seq);
  if (s.ok() && sync) s = file->Sync();
  if (s.ok() && sync) s = SyncCreated();
  if (s.ok() && sync) Settle(h, done).IgnoreError();  // a pair left unsettled costs a data read later
  if (!s.ok()) return s.WithContext(fmt::format("part {}", part_));
  if (!sync) MarkUnsynced(*got);
  return Status::OK();
}

void PartStore::AfterRewriteInPlace(uint64_t chunk, const std::vector<std::pair<uint64_t, uint64_t>>& written,
                                    uint64_t synced) {
  std::shared_ptr<Handle> h;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = open_.find(chunk);
    if (it == open_.end()) return;
    h = it->second;
  }
  {
    std::lock_guard<std::mutex> l(h->meta_mu);
    for (const auto& [first, end] : written) {
      for (uint64_t b = first; b < end; ++b) h->pending.erase(b);
    }
    h->pair_cache.Clear();  // the rewrite went through another handle
  }
  Settle(*h, synced).IgnoreError();  // a pair left unsettled costs a data read at its next write
}

void PartStore::MarkUnsynced(const std::shared_ptr<Handle>& h) {
  // Invariant: called only after the write completed. The flag orders it against Flush, which
  // clears the flag before it syncs: a write that finds the flag set completed before that clear
  // (the sync covers it); one that finds it clear lists the handle for the next Flush. Only that
  // first write after a sync takes the lock.
  if (h->unsynced.exchange(true, std::memory_order_acq_rel)) return;
  std::lock_guard<std::mutex> l(mu_);
  if (!h->listed) {
    h->listed = true;
    unsynced_.push_back(h);
  }
}

Status PartStore::BlockStates(uint64_t chunk, uint64_t first, uint64_t n, std::vector<BlockState>* states) {
  if (first + n > geometry_.BlocksPerChunk()) {
    return Status::InvalidArgument(fmt::format("block status of blocks {}+{} outside chunk {}", first, n, Name(chunk)));
  }
  QBD_ASSIGN_OR_RETURN(auto h, GetFile(chunk, /*create=*/false, /*complete=*/false, nullptr));
  std::vector<std::byte> pairs(n * kSlotPairSize);
  std::lock_guard<std::mutex> l(h->meta_mu);
  QBD_RETURN_IF_ERROR(ReadPairsLocked(*h, first, pairs));
  states->assign(n, BlockState::kData);
  for (uint64_t i = 0; i < n; ++i) {
    const std::byte* pair = pairs.data() + i * kSlotPairSize;
    const bool empty0 = SlotEmpty(pair), empty1 = SlotEmpty(pair + kSlotSize);
    if (empty0 && empty1) {
      (*states)[i] = BlockState::kUnwritten;
      continue;
    }
    const std::byte* slot = nullptr;  // the slot that holds, when known without the data
    if (empty0 != empty1) {
      slot = empty0 ? pair + kSlotSize : pair;
    } else {
      auto it = h->pending.find(first + i);
      if (it != h->pending.end() && it->second.done) slot = pair;
    }
    if (slot == nullptr) continue;
    const uint64_t generation = DecodeLE64(slot);
    if (generation == 0) {
      (*states)[i] = BlockState::kUnwritten;  // a zeros slot: a trim whose punch completed
    } else if ((DecodeLE64(slot + 8) ^ AddressKey(BlockAddress{volnr_, chunk, first + i}, generation)) ==
               zero_checksum_) {
      (*states)[i] = BlockState::kZeros;
    }
  }
  return Status::OK();
}

Result<PartStore::ChunkState> PartStore::CheckChunk(uint64_t chunk) {
  auto got = GetFile(chunk, /*create=*/false, /*complete=*/false, nullptr);
  if (!got.ok()) {
    if (got.status().IsNotFound()) return ChunkState::kAbsent;
    return got.status();
  }
  QBD_ASSIGN_OR_RETURN(uint64_t size, (*got)->file->Size());
  return size < geometry_.ChunkFileSize() ? ChunkState::kShort : ChunkState::kComplete;
}

Status PartStore::Flush(std::vector<uint64_t>* failed) {
  // Only files written since their last sync: a flush after a write to one chunk is one
  // fdatasync, however many files are open.
  Status first_error = SyncCreated();
  if (!first_error.ok()) first_error = first_error.WithContext(fmt::format("flush part {}", part_));
  std::vector<std::shared_ptr<Handle>> todo;
  {
    std::lock_guard<std::mutex> l(mu_);
    todo.swap(unsynced_);
    for (const auto& h : todo) h->listed = false;
  }
  // Writes completed up to here are covered by the syncs below: their pairs may be settled once
  // those have made their data durable. Later ones wait for the next flush.
  const uint64_t synced = done_seq_.load(std::memory_order_acquire);
  StartSyncs(todo);
  for (const auto& h : todo) {
    h->unsynced.store(false, std::memory_order_release);
    // A handle dropped from the cache meanwhile (evicted, detached) is synced all the same:
    // its writes were acknowledged.
    Status s = h->file->Sync();
    if (!s.ok()) {
      h->unsynced.store(true, std::memory_order_release);
      {
        std::lock_guard<std::mutex> l(mu_);
        if (!h->listed) {
          h->listed = true;
          unsynced_.push_back(h);
        }
      }
      if (failed != nullptr) failed->push_back(h->chunk);
      if (first_error.ok()) first_error = s.WithContext(fmt::format("flush part {}", part_));
      continue;
    }
    Settle(*h, synced).IgnoreError();  // a pair left unsettled costs a data read at its next write
  }
  return first_error;
}

PartStore::ChunkRewrite::ChunkRewrite(PartStore& store, uint64_t chunk, std::unique_ptr<ChunkFile> file,
                                      std::string tmp)
    : store_(store), chunk_(chunk), file_(std::move(file)), tmp_(std::move(tmp)) {}

PartStore::ChunkRewrite::~ChunkRewrite() {
  file_.reset();
  if (!committed_ && !tmp_.empty()) store_.backend_.Remove(tmp_).IgnoreError();  // best effort: an unfinished temp file
}

Status PartStore::ChunkRewrite::WriteRecords(uint64_t first, std::span<const std::byte> records) {
  // Records as scrub.h carries them: data, then the slot pair. Each goes to its area (§4.2).
  const Geometry& g = store_.geometry_;
  const uint64_t rec = g.RecordSize(), bs = g.block_size;
  const uint64_t n = records.size() / rec;
  if (n * rec != records.size() || first + n > g.BlocksPerChunk()) {
    return Status::InvalidArgument(fmt::format("rewrite of {} bytes at block {}", records.size(), first));
  }
  QBD_RETURN_IF_ERROR(store_.CheckRoom(records.size()));
  std::vector<std::span<const std::byte>> data(n), pairs(n);
  for (uint64_t i = 0; i < n; ++i) {
    data[i] = records.subspan(i * rec, bs);
    pairs[i] = records.subspan(i * rec + bs, kSlotPairSize);
  }
  QBD_RETURN_IF_ERROR(file_->WriteAtV(g.DataOffset(first), data));
  if (tmp_.empty()) written_.emplace_back(first, first + n);
  return file_->WriteAtV(g.MetaOffset(first), pairs);
}

Status PartStore::ChunkRewrite::Commit() {
  // The caller holds the chunk's region locks: every write to it through the cached handle has
  // completed, and the sync of the same file covers it.
  const uint64_t synced = store_.done_seq_.load(std::memory_order_acquire);
  QBD_RETURN_IF_ERROR(file_->Sync());
  if (tmp_.empty()) {
    store_.AfterRewriteInPlace(chunk_, written_, synced);
    committed_ = true;
    return Status::OK();
  }
  QBD_RETURN_IF_ERROR(store_.backend_.Rename(tmp_, store_.Name(chunk_)));
  // From now on the chunk's writes must reach the new file, not a cached handle of the old.
  store_.DropReplaced(chunk_);
  QBD_RETURN_IF_ERROR(store_.backend_.SyncDir(PartDir(store_.volnr_, store_.part_)));
  committed_ = true;
  return Status::OK();
}

Result<std::unique_ptr<PartStore::ChunkRewrite>> PartStore::RewriteInPlace(uint64_t chunk) {
  QBD_ASSIGN_OR_RETURN(auto f, backend_.Open(Name(chunk)));
  return std::unique_ptr<ChunkRewrite>(new ChunkRewrite(*this, chunk, std::move(f), ""));
}

Result<std::unique_ptr<PartStore::ChunkRewrite>> PartStore::BuildReplacement(uint64_t chunk) {
  const std::string tmp = fmt::format("{}/.{}.tmp", PartDir(volnr_, part_), chunk + 1);
  QBD_RETURN_IF_ERROR(backend_.MkDirs(PartDir(volnr_, part_)));
  QBD_ASSIGN_OR_RETURN(auto f, backend_.Create(tmp));
  std::unique_ptr<ChunkRewrite> rw(new ChunkRewrite(*this, chunk, std::move(f), tmp));
  QBD_RETURN_IF_ERROR(rw->file_->Truncate(geometry_.ChunkFileSize()));
  return rw;
}

Status PartStore::CloseAll() {
  Status s = Flush();
  std::vector<std::shared_ptr<Handle>> handles;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [c, h] : open_) handles.push_back(h);
    open_.clear();
  }
  // The pairs Flush settled, made durable too: a clean close leaves every pair settled (§4.5).
  for (const auto& h : handles) {
    bool settled;
    {
      std::lock_guard<std::mutex> l(h->meta_mu);
      settled = h->settled_unsynced;
      h->settled_unsynced = false;
    }
    if (settled) {
      Status r = h->file->Sync();
      if (s.ok() && !r.ok()) s = r.WithContext(fmt::format("close part {}", part_));
    }
  }
  return s;
}

}  // namespace qbd
