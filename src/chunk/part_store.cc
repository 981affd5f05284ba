// Implements the record layout of layout-spec.md §4 over a StorageBackend.
#include "qbd/part_store.h"

#include <fmt/format.h>

#include <cassert>
#include <chrono>
#include <cstring>

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

void RecordPieces::Assign(const Geometry& g, std::span<const std::byte> data, std::span<const BlockMeta> metas) {
  const uint64_t n = metas.size(), bs = g.block_size;
  assert(data.size() == n * bs);
  if (meta_bytes_.size() < n * kBlockMetaSize) meta_bytes_.resize(n * kBlockMetaSize);
  pieces_.resize(2 * n);
  for (uint64_t i = 0; i < n; ++i) {
    std::byte* m = meta_bytes_.data() + i * kBlockMetaSize;
    EncodeBlockMeta(metas[i], m);
    pieces_[2 * i] = data.subspan(i * bs, bs);
    pieces_[2 * i + 1] = std::span<const std::byte>(m, kBlockMetaSize);
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
      recheck_ns_(std::chrono::duration_cast<std::chrono::nanoseconds>(recheck_interval).count()) {}

PartStore::~PartStore() { CloseAll().IgnoreError(); }

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
  auto h = std::make_shared<Handle>(chunk, std::move(opened).value(), recheck_ns_ > 0 ? NowNs() : 0);
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

void PartStore::DropReplaced(uint64_t chunk) {
  std::lock_guard<std::mutex> l(mu_);
  open_.erase(chunk);
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
    if (!h->file->Sync().ok()) {
      h->unsynced.store(true);
      continue;
    }
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
  // Data straight into `data`, metas into a scratch buffer: one preadv, no copy.
  thread_local std::vector<std::byte> meta_bytes;
  thread_local std::vector<std::span<std::byte>> pieces;
  if (meta_bytes.size() < n * kBlockMetaSize) meta_bytes.resize(n * kBlockMetaSize);
  pieces.resize(2 * n);
  for (uint64_t i = 0; i < n; ++i) {
    pieces[2 * i] = data.subspan(i * bs, bs);
    pieces[2 * i + 1] = std::span(meta_bytes.data() + i * kBlockMetaSize, kBlockMetaSize);
  }
  Status s = h->file->ReadAtV(geometry_.RecordOffset(first), pieces);
  if (!s.ok()) {
    // A short file (Corruption) is looked at afresh by the next call, which restores its size
    // before writing into it.
    if (s.IsCorruption()) Forget(h);
    return s.WithContext(fmt::format("part {}", part_));
  }
  bool any_bad = false;
  for (uint64_t i = 0; i < n; ++i) {
    metas[i] = DecodeBlockMeta(meta_bytes.data() + i * kBlockMetaSize);
    if (!VerifyBlock(data.subspan(i * bs, bs), metas[i]).ok()) {
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
  records.Assign(geometry_, data, metas);
  return WriteRecords(chunk, first, records, sync, created);
}

Status PartStore::WriteRecords(uint64_t chunk, uint64_t first, const RecordPieces& records, bool sync,
                               bool* created) {
  const uint64_t n = records.blocks();
  if (n == 0) return Status::OK();
  if (first + n > geometry_.BlocksPerChunk()) {
    return Status::InvalidArgument(fmt::format("write of blocks {}+{} outside chunk {}", first, n, Name(chunk)));
  }
  QBD_ASSIGN_OR_RETURN(auto h, GetFile(chunk, /*create=*/true, /*complete=*/true, created));
  Status s = h->file->WriteAtV(geometry_.RecordOffset(first), records.pieces());
  if (s.ok() && sync) s = h->file->Sync();
  if (s.ok() && sync) s = SyncCreated();
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
  ChunkFile* file = (*got)->file.get();
  const uint64_t off = geometry_.RecordOffset(first);
  const uint64_t len = n * geometry_.RecordSize();
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
  if (s.ok() && sync) s = file->Sync();
  if (s.ok() && sync) s = SyncCreated();
  if (!s.ok()) return s.WithContext(fmt::format("part {}", part_));
  if (!sync) MarkUnsynced(*got);
  return Status::OK();
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
    }
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
  return file_->WriteAt(first * store_.geometry_.RecordSize(), records);
}

Status PartStore::ChunkRewrite::Commit() {
  QBD_RETURN_IF_ERROR(file_->Sync());
  if (tmp_.empty()) {
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
  std::lock_guard<std::mutex> l(mu_);
  open_.clear();
  return s;
}

}  // namespace qbd
