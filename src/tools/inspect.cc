// Implements include/qbd/inspect.h over layout-spec.md §4 (format 2) and §9 (format 1).
#include "qbd/inspect.h"

#include <fmt/format.h>

#include <algorithm>

#include "qbd/config.h"
#include "qbd/convert.h"
#include "qbd/dirty_map.h"
#include "qbd/replicated_bitmap.h"
#include "qbd/replicated_text.h"
#include "qbd/verify.h"
#include "qbd/volume_files.h"

namespace qbd {
namespace {

constexpr uint64_t kCounterMask = (1ull << kGenerationBits) - 1;

// "3298534883345 (epoch 3, n 17)"
std::string Generation(uint64_t g) {
  return fmt::format("{} (epoch {}, n {})", g, g >> kGenerationBits, g & kCounterMask);
}

// Reads the block's data and stored metadata as they lie in the file.
void ReadRaw(StorageBackend& backend, const std::string& path, const Geometry& g,
             PartBlockView& out, std::vector<std::byte>& data, std::vector<std::byte>& meta) {
  data.assign(g.block_size, std::byte{0});
  meta.assign(g.MetaBytes(), std::byte{0});
  auto f = backend.Open(path);
  Status s = f.status();
  if (s.ok()) s = (*f)->ReadAt(out.data_offset, data);
  if (s.ok()) s = (*f)->ReadAt(out.meta_offset, meta);
  if (!s.ok()) {
    out.state = CopyState::kUnreadable;
    out.error = s.ToString();
  }
}

void Judge(PartBlockView& pv, const Geometry& g, const BlockAddress& at,
           std::span<const std::byte> data, std::span<const std::byte> meta) {
  pv.content = BlockChecksum(data);
  pv.data_zero =
      std::all_of(data.begin(), data.end(), [](std::byte b) { return b == std::byte{0}; });
  if (g.format == kFormat1) {
    pv.stored = DecodeBlockMeta(meta.data());
    const bool good = VerifyBlock(data, pv.stored).ok();
    pv.meta = good ? pv.stored : BlockMeta{};
    pv.verdict = !good ? "corrupt" : pv.stored.IsUnwritten() ? "unwritten" : "good";
    return;
  }
  const std::vector<std::byte> zeros(g.block_size);
  const SlotVerdict v = ResolveSlots(data, pv.content, meta.data(), at, BlockChecksum(zeros));
  for (int s = 0; s < 2; ++s) {
    const std::byte* p = meta.data() + s * kSlotSize;
    SlotView& sv = pv.slots[s];
    sv.empty = SlotEmpty(p);
    const BlockMeta raw = DecodeBlockMeta(p);  // the same two little-endian u64 fields
    sv.generation = raw.generation;
    sv.check = raw.checksum;
    sv.matches = v.good && v.slot == s;
  }
  pv.slot = v.good ? v.slot : -1;
  pv.meta = v.meta;
  pv.verdict = !v.good                ? "corrupt"
               : v.pending            ? "pending"
               : v.meta.IsUnwritten() ? "unwritten"
                                      : "good";
}

std::string Hex(uint64_t v) { return fmt::format("{:016x}", v); }

}  // namespace

Result<BlockView> InspectBlock(const VolumeMeta& meta, const std::vector<StorageBackend*>& parts,
                               uint64_t offset) {
  const Geometry& g = meta.geometry;
  if (offset >= g.size) {
    return Status::InvalidArgument(
        fmt::format("offset {} is beyond volume {} ({} bytes)", offset, meta.name, g.size));
  }
  BlockView v;
  v.volume = meta.name;
  v.volnr = meta.number;
  v.geometry = g;
  v.offset = offset;
  v.chunk = offset / g.chunk_size;
  v.block = offset % g.chunk_size / g.block_size;
  const size_t np = parts.size();
  const uint32_t nr = meta.number;
  // The judge's inputs besides the copies: the epoch, the chunk map and the dirty maps.
  ReplicatedText epoch = LoadEpochCopies(parts, nr);
  if (epoch.verdict().ok() && epoch.chosen() >= 0)
    v.max_generation = MaxGenerationOfEpoch(epoch.version());
  ReplicatedBitmap chunk_map =
      ReplicatedBitmap::LoadChunkMap(parts, nr, g.chunk_size, g.ChunkCount());
  v.chunk_written = v.chunk < chunk_map.merged().regions() && chunk_map.merged().Test(v.chunk);
  const uint32_t rs = DirtyRegionSize(g);
  const uint64_t regions = (g.size + rs - 1) / rs;
  const uint64_t region = offset / rs;
  std::vector<PartCopy> copies(np);
  std::vector<std::byte> data, stored;
  for (size_t p = 0; p < np; ++p) {
    const char part = static_cast<char>('a' + p);
    PartBlockView pv;
    pv.part = part;
    const std::string path = ChunkPath(nr, part, v.chunk);
    if (parts[p] == nullptr) {
      pv.file = path;
      pv.state = CopyState::kUnreachable;
      pv.error = "the part's backend is out of reach";
      copies[p] = UnreachableCopy(Status::Unavailable(pv.error));
      v.parts.push_back(std::move(pv));
      continue;
    }
    StorageBackend& b = *parts[p];
    pv.file = b.Describe() + "/" + path;
    ReplicatedBitmap dirty = ReplicatedBitmap::LoadDirtyMap(parts, nr, part, rs, regions);
    pv.dirty = region < dirty.merged().regions() && dirty.merged().Test(region);
    Geometry fg = g;
    if (auto st = b.Stat(path); st.ok()) fg = ChunkFileGeometry(g, st->size);
    pv.format = fg.format;
    pv.data_offset = fg.format == kFormat1 ? fg.RecordOffset(v.block) : fg.DataOffset(v.block);
    pv.meta_offset =
        fg.format == kFormat1 ? fg.RecordOffset(v.block) + fg.block_size : fg.MetaOffset(v.block);
    PartCopy& cp = copies[p];
    ReadCopyInto(cp, b, nr, part, fg, v.chunk, v.block, 1);
    cp.dirty.assign(1, pv.dirty);
    pv.state = cp.state;
    pv.file_size = cp.file_size;
    if (cp.state == CopyState::kUnreadable) pv.error = cp.error.ToString();
    if (cp.state == CopyState::kPresent) {
      ReadRaw(b, path, fg, pv, data, stored);
      if (pv.state == CopyState::kPresent)
        Judge(pv, fg, BlockAddress{nr, v.chunk, v.block}, data, stored);
    }
    if (pv.state != CopyState::kPresent) pv.verdict = "missing";
    v.chunk_written = v.chunk_written || cp.state != CopyState::kAbsent;
    v.parts.push_back(std::move(pv));
  }
  const SliceVerdict j = JudgeCopies(copies, v.chunk_written, v.max_generation);
  if (j.n == 1) {
    v.source = j.source[0];
    v.lost = j.lost[0];
    v.unknown = j.unknown[0];
    for (size_t p = 0; p < np; ++p) v.parts[p].issue = j.issue[p][0];
  } else {
    // No present copy anywhere: every part's file is absent, short, unreadable or out of reach.
    const bool away = std::any_of(copies.begin(), copies.end(), [](const PartCopy& c) {
      return c.state == CopyState::kUnreachable;
    });
    (away ? v.unknown : v.lost) = v.chunk_written;
  }
  return v;
}

std::string FormatBlockText(const BlockView& v) {
  const Geometry& g = v.geometry;
  std::string out = fmt::format(
      "volume {} (number {}): format {}, size {}, block size {}, chunk size {}\n", v.volume,
      v.volnr, g.format, FormatSize(g.size), g.block_size, FormatSize(g.chunk_size));
  out += fmt::format(
      "offset {}: chunk file {} (chunk index {}), block {} of {} in the chunk (device bytes "
      "{}-{})\n",
      v.offset, v.ChunkFileNumber(), v.chunk, v.block, g.BlocksPerChunk(),
      v.chunk * g.chunk_size + v.block * g.block_size,
      v.chunk * g.chunk_size + (v.block + 1) * g.block_size - 1);
  if (v.max_generation != UINT64_MAX) {
    out += fmt::format("epoch {}: generations up to {} are issued\n",
                       v.max_generation >> kGenerationBits, v.max_generation);
  } else {
    out += "epoch unknown (no good .epoch copy)\n";
  }
  for (const PartBlockView& p : v.parts) {
    out += fmt::format("\npart {}: {}", p.part, p.file);
    if (p.state == CopyState::kAbsent) {
      out += " (no such file)\n";
    } else if (p.state == CopyState::kUnreachable || p.state == CopyState::kUnreadable) {
      out += fmt::format(" ({}: {})\n", CopyStateName(p.state), p.error);
    } else {
      out += fmt::format(" ({}, {} bytes, format {})\n", CopyStateName(p.state), p.file_size,
                         p.format);
    }
    if (p.state == CopyState::kPresent) {
      if (p.format == kFormat1) {
        out += fmt::format("  record at byte {} (data), metadata at byte {}\n", p.data_offset,
                           p.meta_offset);
        out += p.stored.IsUnwritten()
                   ? "  metadata: all zero (unwritten)\n"
                   : fmt::format("  metadata: generation {}, checksum {}\n",
                                 Generation(p.stored.generation), Hex(p.stored.checksum));
      } else {
        out +=
            fmt::format("  data at byte {}, slot pair at byte {}\n", p.data_offset, p.meta_offset);
        for (int s = 0; s < 2; ++s) {
          const SlotView& sv = p.slots[s];
          out += fmt::format("  slot {}: {}", s, sv.Kind());
          if (!sv.empty) {
            out += fmt::format("{:<{}} generation {}, check {}", "",
                               7 - std::string_view(sv.Kind()).size(), Generation(sv.generation),
                               Hex(sv.check));
          }
          if (sv.matches) out += "  <- matches the data";
          out += "\n";
        }
      }
      out +=
          fmt::format("  data XXH3-64 {}{}\n", Hex(p.content), p.data_zero ? " (all zeros)" : "");
    }
    std::string verdict = p.verdict;
    if (p.format == kFormat2 && p.slot >= 0 && p.verdict != "corrupt")
      verdict += fmt::format(" (slot {})", p.slot);
    if (p.state != CopyState::kPresent && p.state != CopyState::kAbsent)
      verdict += fmt::format(" ({})", CopyStateName(p.state));
    if (p.dirty) verdict += "; its dirty map marks the block's region (it missed writes there)";
    out += fmt::format("  verdict: {}\n", verdict);
  }
  out += "\njudge: ";
  if (!v.chunk_written) {
    out += "the chunk was never written on any part: the block reads as zeros\n";
    return out;
  }
  if (v.source >= 0) {
    const PartBlockView& s = v.parts[v.source];
    out += fmt::format("source part {} ({})", s.part,
                       s.meta.IsUnwritten() ? "unwritten: reads as zeros"
                                            : "generation " + Generation(s.meta.generation));
  } else if (v.unknown) {
    out += "no good copy in reach: a part out of reach may hold one";
  } else {
    out +=
        "DATA LOST: no good copy on any part that is clean here (qbd-repair --accept-loss makes it "
        "read as zeros)";
  }
  std::string issues;
  for (const PartBlockView& p : v.parts) {
    if (p.issue == BlockIssue::kNone) continue;
    issues +=
        fmt::format("{}part {} {}", issues.empty() ? "" : ", ", p.part, BlockIssueName(p.issue));
  }
  out += issues.empty() ? (v.source >= 0 ? "; every copy agrees\n" : "\n") : "; " + issues + "\n";
  return out;
}

std::string FormatBlockJson(const BlockView& v) {
  const Geometry& g = v.geometry;
  auto gen = [](uint64_t x) {
    return fmt::format("{{\"value\":{},\"epoch\":{},\"n\":{}}}", x, x >> kGenerationBits,
                       x & kCounterMask);
  };
  std::string out = fmt::format(
      "{{\"volume\":{},\"number\":{},\"format\":{},\"size\":{},\"block_size\":{},\"chunk_size\":{},"
      "\"offset\":{},\"chunk_file\":{},\"chunk_index\":{},\"block\":{},\"max_generation\":{},"
      "\"chunk_written\":{},\"parts\":[",
      JsonString(v.volume), v.volnr, g.format, g.size, g.block_size, g.chunk_size, v.offset,
      v.ChunkFileNumber(), v.chunk, v.block,
      v.max_generation == UINT64_MAX ? "null" : std::to_string(v.max_generation),
      v.chunk_written ? "true" : "false");
  for (size_t i = 0; i < v.parts.size(); ++i) {
    const PartBlockView& p = v.parts[i];
    out += fmt::format("{}{{\"part\":{},\"file\":{},\"state\":{},\"error\":{}", i ? "," : "",
                       JsonString(std::string(1, p.part)), JsonString(p.file),
                       JsonString(CopyStateName(p.state)),
                       p.error.empty() ? "null" : JsonString(p.error));
    if (p.state == CopyState::kPresent) {
      out += fmt::format(",\"file_size\":{},\"format\":{},\"data_offset\":{},\"meta_offset\":{}",
                         p.file_size, p.format, p.data_offset, p.meta_offset);
      if (p.format == kFormat1) {
        out += fmt::format(",\"stored\":{{\"generation\":{},\"checksum\":{}}}",
                           gen(p.stored.generation), JsonString(Hex(p.stored.checksum)));
      } else {
        out += ",\"slots\":[";
        for (int s = 0; s < 2; ++s) {
          const SlotView& sv = p.slots[s];
          out += fmt::format("{}{{\"kind\":{},\"generation\":{},\"check\":{},\"matches\":{}}}",
                             s ? "," : "", JsonString(sv.Kind()), gen(sv.generation),
                             JsonString(Hex(sv.check)), sv.matches ? "true" : "false");
        }
        out += fmt::format("],\"slot\":{}", p.slot >= 0 ? std::to_string(p.slot) : "null");
      }
      out += fmt::format(",\"xxh3\":{},\"data_zero\":{}", JsonString(Hex(p.content)),
                         p.data_zero ? "true" : "false");
    } else if (p.state == CopyState::kShort || p.state == CopyState::kLong) {
      out += fmt::format(",\"file_size\":{}", p.file_size);
    }
    out += fmt::format(",\"dirty\":{},\"verdict\":{},\"issue\":{}}}", p.dirty ? "true" : "false",
                       JsonString(p.verdict), JsonString(BlockIssueName(p.issue)));
  }
  out += fmt::format("],\"judge\":{{\"source\":{},\"lost\":{},\"unknown\":{},\"readable\":{}}}}}\n",
                     v.source >= 0 ? JsonString(std::string(1, v.parts[v.source].part)) : "null",
                     v.lost ? "true" : "false", v.unknown ? "true" : "false",
                     v.Readable() ? "true" : "false");
  return out;
}

}  // namespace qbd
