// Implements the record layout of layout-spec.md §4 over a StorageBackend.
#include "qbd/part_store.h"

#include <fmt/format.h>

#include <cassert>
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

PartStore::PartStore(StorageBackend& backend, uint32_t volnr, char part, Geometry geometry,
                     size_t max_open_files)
    : backend_(backend), volnr_(volnr), part_(part), geometry_(geometry), max_open_files_(max_open_files) {}

PartStore::~PartStore() { CloseAll().IgnoreError(); }

std::string PartStore::Name(uint64_t chunk) const { return ChunkPath(volnr_, part_, chunk); }

Result<std::shared_ptr<ChunkFile>> PartStore::GetFile(uint64_t chunk, bool create, bool complete, bool* created) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::shared_ptr<ChunkFile> file;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = open_.find(chunk);
      if (it != open_.end()) file = it->second;
    }
    if (file) {
      if (!file->Detached()) return file;
      QBD_LOG_WARN("volume {} part {}: chunk file {} was removed or replaced under the daemon",
                   volnr_, part_, Name(chunk));
      Forget(chunk, file);
      continue;
    }
    break;
  }
  std::lock_guard<std::mutex> l(mu_);
  auto it = open_.find(chunk);
  if (it != open_.end()) return it->second;
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
    QBD_RETURN_IF_ERROR(backend_.SyncDir(PartDir(volnr_, part_)));
    if (created) *created = true;
    opened = backend_.Open(path);
    if (!opened.ok()) return opened.status();
  }
  std::shared_ptr<ChunkFile> file(std::move(opened).value());
  QBD_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  if (size < geometry_.ChunkFileSize()) {
    // §4.1: a short file is damage. Readers see Corruption past its end; a writer first restores
    // the full size (the lost tail reads as unwritten) and reports the copy as rebuilt, so that
    // the caller re-copies the whole chunk into it.
    if (!complete) return file;  // not cached: the next call looks again
    QBD_LOG_WARN("volume {} part {}: chunk file {} is short ({} of {} bytes): restoring its size", volnr_, part_,
                 path, size, geometry_.ChunkFileSize());
    QBD_RETURN_IF_ERROR(file->Truncate(geometry_.ChunkFileSize()));
    QBD_RETURN_IF_ERROR(file->Sync());
    if (created) *created = true;
  }
  if (open_.size() >= max_open_files_) EvictLocked();
  open_[chunk] = file;
  return file;
}

void PartStore::Forget(uint64_t chunk, const std::shared_ptr<ChunkFile>& file) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = open_.find(chunk);
  if (it != open_.end() && it->second == file) open_.erase(it);
}

void PartStore::DropReplaced(uint64_t chunk) {
  std::lock_guard<std::mutex> l(mu_);
  open_.erase(chunk);
  unsynced_.erase(chunk);  // the writes it covered are in the rebuilt file, which is synced
}

void PartStore::EvictLocked() {
  // Drop handles nobody is using; a handle with unsynced writes is synced first so that a later
  // Flush, which only syncs cached files, misses nothing.
  for (auto it = open_.begin(); it != open_.end() && open_.size() >= max_open_files_ / 2;) {
    if (it->second.use_count() == 1) {
      if (unsynced_.count(it->first)) {
        Status s = it->second->Sync();
        if (!s.ok()) {
          ++it;
          continue;
        }
        unsynced_.erase(it->first);
      }
      it = open_.erase(it);
    } else {
      ++it;
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
  QBD_ASSIGN_OR_RETURN(auto file, GetFile(chunk, /*create=*/false, /*complete=*/false, nullptr));
  // Data straight into `data`, metas into a scratch buffer: one preadv, no copy.
  thread_local std::vector<std::byte> meta_bytes;
  thread_local std::vector<std::span<std::byte>> pieces;
  if (meta_bytes.size() < n * kBlockMetaSize) meta_bytes.resize(n * kBlockMetaSize);
  pieces.resize(2 * n);
  for (uint64_t i = 0; i < n; ++i) {
    pieces[2 * i] = data.subspan(i * bs, bs);
    pieces[2 * i + 1] = std::span(meta_bytes.data() + i * kBlockMetaSize, kBlockMetaSize);
  }
  Status s = file->ReadAtV(geometry_.RecordOffset(first), pieces);
  if (!s.ok()) {
    // A short file (Corruption) is looked at afresh by the next call, which restores its size
    // before writing into it.
    if (s.IsCorruption()) Forget(chunk, file);
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
  QBD_ASSIGN_OR_RETURN(auto file, GetFile(chunk, /*create=*/true, /*complete=*/true, created));
  Status s = file->WriteAtV(geometry_.RecordOffset(first), records.pieces());
  if (s.ok() && sync) s = file->Sync();
  if (!s.ok()) return s.WithContext(fmt::format("part {}", part_));
  if (!sync) MarkUnsynced(chunk);
  return Status::OK();
}

Status PartStore::Unwrite(uint64_t chunk, uint64_t first, uint64_t n, bool sync, bool* rebuilt) {
  if (n == 0) return Status::OK();
  if (first + n > geometry_.BlocksPerChunk()) {
    return Status::InvalidArgument(fmt::format("unwrite of blocks {}+{} outside chunk {}", first, n, Name(chunk)));
  }
  auto got = GetFile(chunk, /*create=*/false, /*complete=*/true, rebuilt);
  if (!got.ok()) return got.status().IsNotFound() ? Status::OK() : got.status();
  auto file = got.value();
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
  if (!s.ok()) return s.WithContext(fmt::format("part {}", part_));
  if (!sync) MarkUnsynced(chunk);
  return Status::OK();
}

void PartStore::MarkUnsynced(uint64_t chunk) {
  // Invariant: recorded only after the write completed, so that a Flush that swaps the set out
  // while this write is in flight cannot drop it from the next Flush.
  std::lock_guard<std::mutex> l(mu_);
  unsynced_.insert(chunk);
}

Result<PartStore::ChunkState> PartStore::CheckChunk(uint64_t chunk) {
  auto got = GetFile(chunk, /*create=*/false, /*complete=*/false, nullptr);
  if (!got.ok()) {
    if (got.status().IsNotFound()) return ChunkState::kAbsent;
    return got.status();
  }
  QBD_ASSIGN_OR_RETURN(uint64_t size, (*got)->Size());
  return size < geometry_.ChunkFileSize() ? ChunkState::kShort : ChunkState::kComplete;
}

Status PartStore::Flush(std::vector<uint64_t>* failed) {
  std::set<uint64_t> todo;
  std::vector<std::pair<uint64_t, std::shared_ptr<ChunkFile>>> files;
  {
    std::lock_guard<std::mutex> l(mu_);
    todo.swap(unsynced_);
    for (uint64_t c : todo) {
      auto it = open_.find(c);
      if (it != open_.end()) files.emplace_back(c, it->second);
    }
  }
  Status first_error;
  for (auto& [chunk, file] : files) {
    Status s = file->Sync();
    if (!s.ok()) {
      std::lock_guard<std::mutex> l(mu_);
      unsynced_.insert(chunk);
      if (failed != nullptr) failed->push_back(chunk);
      if (first_error.ok()) first_error = s.WithContext(fmt::format("flush part {}", part_));
    }
  }
  return first_error;
}

Status PartStore::CloseAll() {
  Status s = Flush();
  std::lock_guard<std::mutex> l(mu_);
  open_.clear();
  return s;
}

}  // namespace qbd
