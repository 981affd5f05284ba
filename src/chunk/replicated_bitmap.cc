// Implements include/qbd/replicated_bitmap.h (layout-spec.md §1.1, §5, §6).
#include "qbd/replicated_bitmap.h"

#include <fmt/format.h>

#include <span>

namespace qbd {

ReplicatedBitmap ReplicatedBitmap::Load(const std::vector<StorageBackend*>& holders,
                                        std::string path, uint32_t bytes_per_bit, uint64_t bits,
                                        const char* magic, const std::vector<Status>& down,
                                        size_t backends) {
  std::vector<FileCopy> copies = ReadCopies(holders, path, down);
  return FromCopies(std::move(copies), std::move(path), bytes_per_bit, bits, magic, backends);
}

ReplicatedBitmap ReplicatedBitmap::FromCopies(std::vector<FileCopy> copies, std::string path,
                                              uint32_t bytes_per_bit, uint64_t bits,
                                              const char* magic, size_t backends) {
  ReplicatedBitmap m;
  m.path_ = std::move(path);
  m.magic_ = magic;
  m.copies_ = std::move(copies);
  m.counts_.assign(m.copies_.size(), 0);
  m.merged_ = std::make_unique<DirtyMap>(bytes_per_bit, bits);
  for (size_t i = 0; i < m.copies_.size(); ++i) {
    FileCopy& c = m.copies_[i];
    if (c.state != MetaCopyState::kGood) continue;
    auto map = DirtyMap::Decode(std::as_bytes(std::span(c.bytes.data(), c.bytes.size())),
                                bytes_per_bit, bits, c.where, magic);
    if (!map.ok()) {
      c.state = MetaCopyState::kMalformed;
      c.error = map.status();
      c.reason = Printable(map.status().message(), 400);
      c.rewrite = true;
      continue;
    }
    m.merged_->Merge(**map);
    m.counts_[i] = (*map)->CountSet();
  }
  m.verdict_ = CopiesVerdict(m.copies_, m.path_, backends);
  return m;
}

ReplicatedBitmap ReplicatedBitmap::LoadDirtyMap(const std::vector<StorageBackend*>& parts,
                                                uint32_t volnr, char part, uint32_t region_size,
                                                uint64_t regions, const std::vector<Status>& down) {
  std::vector<StorageBackend*> holders = parts;
  const size_t self = static_cast<size_t>(part - 'a');
  if (self < holders.size()) holders[self] = nullptr;  // a part's map lives on the *other* parts
  return Load(holders, DirtyMap::PathFor(volnr, part), region_size, regions, kDirtyMagic, down,
              parts.size());
}

ReplicatedBitmap ReplicatedBitmap::LoadChunkMap(const std::vector<StorageBackend*>& parts,
                                                uint32_t volnr, uint64_t chunk_size,
                                                uint64_t chunks, const std::vector<Status>& down) {
  return Load(parts, DirtyMap::ChunkMapPath(volnr), static_cast<uint32_t>(chunk_size), chunks,
              kChunkMapMagic, down);
}

uint64_t ReplicatedBitmap::Lacking(size_t i) const {
  if (copies_[i].state != MetaCopyState::kGood) return 0;
  return merged_->CountSet() - counts_[i];
}

bool ReplicatedBitmap::AllMissing() const {
  const CopyCounts n = CountCopies(copies_);
  return n.holders > 0 && n.missing == n.holders;
}

std::string ReplicatedBitmap::Encoded() const { return merged_->Encode(magic_); }

bool ReplicatedBitmap::Damaged(size_t i) const {
  const FileCopy& c = copies_[i];
  return c.state == MetaCopyState::kMissing || c.state == MetaCopyState::kMalformed ||
         Lacking(i) > 0;
}

bool ReplicatedBitmap::NeedsRewrite(size_t i) const {
  const FileCopy& c = copies_[i];
  switch (c.state) {
    case MetaCopyState::kMissing:
    case MetaCopyState::kMalformed:
      return true;
    case MetaCopyState::kGood:
      return c.bytes != Encoded();
    default:
      return false;
  }
}

Status ReplicatedBitmap::Rewrite(size_t i) {
  FileCopy& c = copies_[i];
  const std::string bytes = Encoded();
  if (!DirName(path_).empty()) QBD_RETURN_IF_ERROR(c.backend->MkDirs(DirName(path_)));
  QBD_RETURN_IF_ERROR(WriteFileAtomic(*c.backend, path_, bytes));
  c.bytes = bytes;
  c.state = MetaCopyState::kGood;
  c.rewrite = false;
  c.reason.clear();
  counts_[i] = merged_->CountSet();
  return Status::OK();
}

}  // namespace qbd
