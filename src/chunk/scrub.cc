// Implements include/qbd/scrub.h over layout-spec.md §4-§6.
#include "qbd/scrub.h"

#include <fmt/format.h>

#include <cstring>
#include <vector>

namespace qbd {
namespace {

bool AllZero(const std::byte* p, size_t n) {
  static const std::byte kZeros[4096] = {};
  while (n >= sizeof(kZeros)) {
    if (std::memcmp(p, kZeros, sizeof(kZeros)) != 0) return false;
    p += sizeof(kZeros);
    n -= sizeof(kZeros);
  }
  return std::memcmp(p, kZeros, n) == 0;
}

uint64_t ZeroChecksum(uint64_t block_size) {
  static const std::vector<std::byte> kZeros(kMaxBlockSize);
  return BlockChecksum(std::span(kZeros.data(), block_size));
}

}  // namespace

const char* CopyStateName(CopyState s) {
  switch (s) {
    case CopyState::kPresent:
      return "present";
    case CopyState::kAbsent:
      return "missing";
    case CopyState::kShort:
      return "short";
    case CopyState::kLong:
      return "long";
    case CopyState::kUnreadable:
      return "unreadable";
    case CopyState::kUnreachable:
      return "unreachable";
  }
  return "?";
}

const char* BlockIssueName(BlockIssue i) {
  switch (i) {
    case BlockIssue::kNone:
      return "ok";
    case BlockIssue::kMissing:
      return "missing";
    case BlockIssue::kCorrupt:
      return "corrupt";
    case BlockIssue::kStale:
      return "stale";
    case BlockIssue::kConflict:
      return "conflict";
  }
  return "?";
}

PartCopy UnreachableCopy(const Status& why) {
  PartCopy c;
  c.state = CopyState::kUnreachable;
  c.error = why;
  return c;
}

void ReadCopyInto(PartCopy& c, StorageBackend& backend, uint32_t volnr, char part, const Geometry& g,
                  uint64_t chunk, uint64_t first, uint64_t n) {
  // The buffers keep their capacity: a deep pass reads gigabytes through a few of them (a fresh
  // 4 MiB buffer per read made glibc hand memory back and fault it in again, 10x slower).
  c.state = CopyState::kAbsent;
  c.error = Status::OK();
  c.file_size = 0;
  c.metas.clear();
  c.good.clear();
  c.dirty.clear();
  auto file = backend.Open(ChunkPath(volnr, part, chunk));
  if (!file.ok()) {
    c.state = file.status().IsNotFound() ? CopyState::kAbsent : CopyState::kUnreadable;
    c.error = file.status();
    c.records.clear();
    return;
  }
  auto size = (*file)->Size();
  if (!size.ok()) {
    c.state = CopyState::kUnreadable;
    c.error = size.status();
    c.records.clear();
    return;
  }
  c.file_size = *size;
  if (*size != g.ChunkFileSize()) {
    c.state = *size < g.ChunkFileSize() ? CopyState::kShort : CopyState::kLong;
    c.records.clear();
    return;
  }
  const uint64_t rec = g.RecordSize(), bs = g.block_size;
  c.records.resize(n * rec);  // no-op when the last slice had this size
  Status s;
  if (g.format == kFormat1) {
    s = (*file)->ReadAt(first * rec, c.records);  // §9.2: the records as they lie
  } else {
    // §4.2: data and slot pairs from their areas, gathered into records.
    thread_local std::vector<std::span<std::byte>> pieces;
    pieces.resize(n);
    for (uint64_t b = 0; b < n; ++b) pieces[b] = std::span(c.records.data() + b * rec, bs);
    s = (*file)->ReadAtV(g.DataOffset(first), pieces);
    for (uint64_t b = 0; b < n; ++b) pieces[b] = std::span(c.records.data() + b * rec + bs, kSlotPairSize);
    if (s.ok()) s = (*file)->ReadAtV(g.MetaOffset(first), pieces);
  }
  if (!s.ok()) {
    c.state = CopyState::kUnreadable;
    c.error = s;
    c.records.clear();
    return;
  }
  c.state = CopyState::kPresent;
  c.metas.resize(n);
  c.good.resize(n);
  if (g.format == kFormat1) {
    for (uint64_t b = 0; b < n; ++b) {
      const std::byte* r = c.records.data() + b * rec;
      c.metas[b] = DecodeBlockMeta(r + bs);
      const BlockMeta& m = c.metas[b];
      if (m.IsUnwritten()) {
        c.good[b] = AllZero(r, bs);  // §9.3: data under all-zero metadata is corruption
      } else {
        c.good[b] = m.generation != 0 && BlockChecksum(std::span(r, bs)) == m.checksum;
      }
    }
    return;
  }
  const uint64_t zero_checksum = ZeroChecksum(bs);
  for (uint64_t b = 0; b < n; ++b) {
    std::byte* r = c.records.data() + b * rec;
    std::span<const std::byte> data(r, bs);
    const SlotVerdict v = ResolveSlots(data, BlockChecksum(data), r + bs, BlockAddress{volnr, chunk, first + b},
                                       zero_checksum);
    c.metas[b] = v.meta;
    c.good[b] = v.good;
    if (v.good) {
      // A good copy is carried settled (§4.5): its matching slot first, the other empty, so that
      // a rewrite from it leaves nothing for the target's next write to resolve.
      std::byte pair[kSlotPairSize] = {};
      if (v.slot >= 0 && !v.meta.IsUnwritten()) std::memcpy(pair, r + bs + v.slot * kSlotSize, kSlotSize);
      std::memcpy(r + bs, pair, kSlotPairSize);
    }
  }
}

PartCopy ReadCopy(StorageBackend& backend, uint32_t volnr, char part, const Geometry& g, uint64_t chunk,
                  uint64_t first, uint64_t n) {
  PartCopy c;
  ReadCopyInto(c, backend, volnr, part, g, chunk, first, n);
  return c;
}

bool SliceVerdict::Clean() const {
  for (uint64_t b = 0; b < n; ++b) {
    if (lost[b] || unknown[b]) return false;
  }
  for (const auto& per_part : issue) {
    for (BlockIssue i : per_part) {
      if (i != BlockIssue::kNone) return false;
    }
  }
  for (uint8_t f : bad_file) {
    if (f) return false;
  }
  return true;
}

SliceVerdict JudgeCopies(const std::vector<PartCopy>& copies, bool chunk_written, uint64_t max_generation) {
  const size_t np = copies.size();
  SliceVerdict v;
  for (const PartCopy& c : copies) {
    if (c.state == CopyState::kPresent) v.n = c.metas.size();
  }
  for (const PartCopy& c : copies) v.n = std::max<uint64_t>(v.n, c.dirty.size());
  const uint64_t n = v.n;
  v.source.assign(n, -1);
  v.lost.assign(n, 0);
  v.unknown.assign(n, 0);
  v.issue.assign(np, std::vector<BlockIssue>(n, BlockIssue::kNone));
  v.bad_file.assign(np, 0);
  bool any_file = false, any_unreachable = false;
  for (const PartCopy& c : copies) {
    any_file = any_file || (c.state != CopyState::kAbsent && c.state != CopyState::kUnreachable);
    any_unreachable = any_unreachable || c.state == CopyState::kUnreachable;
  }
  const bool written = chunk_written || any_file;
  for (size_t p = 0; p < np; ++p) {
    const CopyState s = copies[p].state;
    v.bad_file[p] = s == CopyState::kShort || s == CopyState::kLong ||
                    s == CopyState::kUnreadable || (s == CopyState::kAbsent && written);
  }
  if (!written) return v;  // never written: no file anywhere, nothing to compare
  auto dirty = [&](size_t p, uint64_t b) {
    return b < copies[p].dirty.size() && copies[p].dirty[b];
  };
  auto good = [&](size_t p, uint64_t b) {
    return copies[p].state == CopyState::kPresent && copies[p].good[b];
  };
  // A good copy whose generation no write of this volume can have made (a file from elsewhere,
  // a forged or misdirected record) is suspect: never the source, whatever the others hold.
  auto trusted = [&](size_t p, uint64_t b) { return good(p, b) && copies[p].metas[b].generation <= max_generation; };
  for (uint64_t b = 0; b < n; ++b) {
    // Every acknowledged write reached each part that is clean here: with such a part in reach,
    // only a good copy on a clean part is known to be the newest, whatever the generations of
    // the dirty parts' copies (a trim that a dirty part missed left it an older, written block
    // with a larger generation than the clean parts' unwritten one). With every part dirty here,
    // the newest good copy wins (the resync's reconcile rule).
    // A part out of reach that is clean here may hold the newest copy: then no reachable dirty
    // copy may stand in for it.
    bool clean_part = false, clean_good = false, clean_away = false;
    for (size_t p = 0; p < np; ++p) {
      if (dirty(p, b)) continue;
      if (copies[p].state == CopyState::kUnreachable) {
        clean_away = true;
        continue;
      }
      clean_part = true;
      clean_good = clean_good || trusted(p, b);
    }
    int src = -1;
    for (size_t p = 0; p < np; ++p) {
      if (copies[p].state == CopyState::kUnreachable || !trusted(p, b) || (clean_good && dirty(p, b))) {
        continue;
      }
      if (src < 0 || copies[p].metas[b].generation > copies[src].metas[b].generation) {
        src = static_cast<int>(p);
      }
    }
    if (src < 0 || (!clean_good && (clean_part || clean_away))) {
      (any_unreachable ? v.unknown : v.lost)[b] = 1;
      src = -1;
    }
    v.source[b] = src;
    for (size_t p = 0; p < np; ++p) {
      const PartCopy& c = copies[p];
      if (c.state == CopyState::kUnreachable || static_cast<int>(p) == src) continue;
      if (c.state != CopyState::kPresent) {
        // An absent file holds unwritten blocks only where the newest copy is unwritten too.
        const bool fine =
            c.state == CopyState::kAbsent && src >= 0 && copies[src].metas[b].IsUnwritten();
        if (!fine) v.issue[p][b] = BlockIssue::kMissing;
        continue;
      }
      if (!c.good[b]) {
        v.issue[p][b] = BlockIssue::kCorrupt;
        continue;
      }
      if (!trusted(p, b)) {
        v.issue[p][b] = BlockIssue::kConflict;  // suspect: a generation never issued
        continue;
      }
      if (src < 0) continue;  // a good copy, but not known to be the newest
      const BlockMeta& m = c.metas[b];
      const BlockMeta& best = copies[src].metas[b];
      if (m == best) continue;
      // A dirty part's copy is stale whatever its generation (it missed writes here).
      v.issue[p][b] = m.generation < best.generation || dirty(p, b) ? BlockIssue::kStale
                                                                    : BlockIssue::kConflict;
    }
  }
  return v;
}

std::string FormatRanges(const std::vector<uint64_t>& sorted) {
  std::string out;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j + 1 < sorted.size() && sorted[j + 1] == sorted[j] + 1) ++j;
    if (!out.empty()) out += ", ";
    out += j == i ? fmt::format("{}", sorted[i]) : fmt::format("{}-{}", sorted[i], sorted[j]);
    i = j + 1;
  }
  return out;
}

}  // namespace qbd
