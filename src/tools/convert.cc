// Implements include/qbd/convert.h: layout-spec.md §9 (format 1) to §4 (format 2).
#include "qbd/convert.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <optional>

#include "qbd/dirty_map.h"
#include "qbd/part_store.h"
#include "qbd/replicated_bitmap.h"
#include "qbd/replicated_text.h"
#include "qbd/scrub.h"
#include "qbd/volume_files.h"

namespace qbd {

Geometry ChunkFileGeometry(const Geometry& volume, uint64_t file_size) {
  Geometry g = volume;
  Geometry two = volume;
  two.format = kFormat2;
  if (file_size == two.ChunkFileSize()) g.format = kFormat2;
  return g;
}

Status CheckNotServed(const VolumeMeta& meta, const std::vector<StorageBackend*>& parts,
                      const LeaseIdentity& self) {
  // layout-spec.md §4.5: qbd-master writes it when it opens the volume and removes it at a clean
  // close.
  const std::string running = fmt::format("{}/.running", meta.number);
  for (StorageBackend* b : parts) {
    auto st = b->Stat(running);
    if (st.ok()) {
      return Status::Unavailable(
          fmt::format("volume {}: {}/{} is present: a qbd-master has the volume open, or the last "
                      "one that had it "
                      "open did not close it (a crash). Stop qbd-master first; after a crash, once "
                      "no master runs, "
                      "remove {} on every part (the first start after the conversion compares the "
                      "copies of every "
                      "written chunk anyway)",
                      meta.name, b->Describe(), running, running));
    }
    if (!st.status().IsNotFound())
      return st.status().WithContext(fmt::format("volume {}: {}", meta.name, running));
  }
  if (auto holder = ForeignLease(meta.number, parts, self)) {
    return Status::Unavailable(fmt::format(
        "volume {}: {} holds its lease ({}/.owner on the parts): stop that master first (a clean "
        "stop removes "
        ".owner; after a crash remove {}/.owner on every part once that master is surely gone)",
        meta.name, holder->Describe(), meta.number, meta.number));
  }
  return Status::OK();
}

namespace {

// Blocks read and written at a time: a chunk can be up to 1 GiB, and every part's copy of a slice
// is in memory at once.
constexpr uint64_t kSliceBytes = 4ull << 20;

uint64_t SliceBlocks(const Geometry& g) {
  return std::min<uint64_t>(g.BlocksPerChunk(), std::max<uint64_t>(1, kSliceBytes / g.block_size));
}

uint64_t ZeroChecksum(uint32_t block_size) {
  const std::vector<std::byte> zeros(block_size);
  return BlockChecksum(zeros);
}

char PartName(size_t p) { return static_cast<char>('a' + p); }

// PartStore::BuildReplacement's temporary name (layout-spec.md §4.1 Publish).
std::string TmpPath(uint32_t volnr, char part, uint64_t chunk) {
  return fmt::format("{}/.{}.tmp", PartDir(volnr, part), chunk + 1);
}

std::string MetaText(const BlockMeta& m) {
  return m.IsUnwritten() ? "unwritten"
                         : fmt::format("generation {} checksum {:016x}", m.generation, m.checksum);
}

// Reads a format-2 chunk file back and checks that every block passes its check with `expected`
// (one per block of the chunk: what the conversion wrote) as its generation and content checksum.
Status CheckConverted(ChunkFile& f, const Geometry& g, uint32_t volnr, uint64_t chunk,
                      const std::vector<BlockMeta>& expected, const std::string& where) {
  const uint64_t bs = g.block_size, slice = SliceBlocks(g);
  const uint64_t zero = ZeroChecksum(g.block_size);
  std::vector<std::byte> data, pairs;
  for (uint64_t first = 0; first < expected.size(); first += slice) {
    const uint64_t n = std::min<uint64_t>(slice, expected.size() - first);
    data.resize(n * bs);
    pairs.resize(n * kSlotPairSize);
    QBD_RETURN_IF_ERROR(f.ReadAt(g.DataOffset(first), data).WithContext(where));
    QBD_RETURN_IF_ERROR(f.ReadAt(g.MetaOffset(first), pairs).WithContext(where));
    for (uint64_t b = 0; b < n; ++b) {
      std::span<const std::byte> block(data.data() + b * bs, bs);
      const SlotVerdict v =
          ResolveSlots(block, BlockChecksum(block), pairs.data() + b * kSlotPairSize,
                       BlockAddress{volnr, chunk, first + b}, zero);
      const BlockMeta& want = expected[first + b];
      if (!v.good || !(v.meta == want)) {
        return Status::Corruption(
            fmt::format("{}: block {} reads back as {} where {} was written", where, first + b,
                        v.good ? MetaText(v.meta) : "corrupt", MetaText(want)));
      }
    }
  }
  return Status::OK();
}

// One block's format-2 record as scrub.h carries it: the data, then the settled slot pair (the
// slot first, the other empty).
void EncodeRecord(const Geometry& g, const std::byte* data, const BlockMeta& m,
                  const BlockAddress& at, uint64_t zero_checksum, std::byte* out) {
  std::memcpy(out, data, g.block_size);
  std::byte* pair = out + g.block_size;
  std::memset(pair, 0, kSlotPairSize);
  if (!m.IsUnwritten()) EncodeSlot(m, at, zero_checksum, pair);
}

class Converter {
 public:
  Converter(const VolumeMeta& meta, const std::vector<StorageBackend*>& parts,
            const ConvertOptions& options)
      : meta_(meta), parts_(parts), options_(options), g_(meta.geometry), g2_(meta.geometry) {
    g2_.format = kFormat2;
    zero_checksum_ = ZeroChecksum(g_.block_size);
  }

  Result<ConvertReport> Run() {
    QBD_ASSIGN_OR_RETURN(ReplicatedText copies, LoadMetaCopies());
    QBD_ASSIGN_OR_RETURN(VolumeMeta current,
                         ParseVolumeMeta(copies.text(), copies.copies()[copies.chosen()].where));
    if (current.geometry.format == kFormat2) {
      // Done by an earlier run (maybe stopped while it wrote the copies): the older copies follow.
      report_.already_converted = true;
      QBD_RETURN_IF_ERROR(WriteMetaCopies(copies, copies.text()));
      return report_;
    }
    QBD_RETURN_IF_ERROR(LoadJudgeInputs());
    QBD_ASSIGN_OR_RETURN(files_, ListChunkFiles(/*note_strays=*/true));
    std::map<uint64_t, bool> chunks;
    for (const auto& per_part : files_) {
      for (const auto& [c, size] : per_part) chunks[c] = true;
    }
    report_.chunks = chunks.size();
    for (size_t p = 0; p < parts_.size(); ++p) {
      stores_.push_back(std::make_unique<PartStore>(*parts_[p], meta_.number, PartName(p), g2_));
    }
    ConvertProgress progress;
    progress.chunks_total = chunks.size();
    for (const auto& [c, unused] : chunks) {
      QBD_RETURN_IF_ERROR(Chunk(c));
      ++progress.chunks_done;
      progress.bytes_read = report_.bytes_read;
      progress.bytes_written = report_.bytes_written;
      if (options_.progress) options_.progress(progress);
    }
    for (auto& s : stores_) QBD_RETURN_IF_ERROR(s->CloseAll());
    // Every chunk file of every part is in format 2 now: only then may `.meta` say so.
    QBD_ASSIGN_OR_RETURN(auto after, ListChunkFiles(/*note_strays=*/false));
    for (size_t p = 0; p < after.size(); ++p) {
      for (const auto& [c, size] : after[p]) {
        if (size != g2_.ChunkFileSize()) {
          return Status::Corruption(fmt::format(
              "volume {}: {}: {} bytes after the conversion (format 2: {})", meta_.name,
              Where(p, ChunkPath(meta_.number, PartName(p), c)), size, g2_.ChunkFileSize()));
        }
      }
    }
    current.geometry.format = kFormat2;
    current.serial++;
    QBD_RETURN_IF_ERROR(WriteMetaCopies(copies, EncodeVolumeMeta(current)));
    return report_;
  }

 private:
  std::string Where(size_t p, const std::string& path) const {
    return parts_[p]->Describe() + "/" + path;
  }

  Result<ReplicatedText> LoadMetaCopies() {
    const uint32_t nr = meta_.number;
    ReplicatedText t = ReplicatedText::Load(
        parts_, MetaPath(nr),
        [nr](std::string_view text, const std::string& where) -> Result<uint64_t> {
          QBD_ASSIGN_OR_RETURN(VolumeMeta m, ParseVolumeMeta(text, where));
          if (m.number != nr) {
            return Status::Corruption(
                fmt::format("{}: number {} where {} was expected", where, m.number, nr));
          }
          return m.serial;
        });
    if (!t.verdict().ok()) return t.verdict().WithContext(fmt::format("volume {}", meta_.name));
    return t;
  }

  // Writes `text` to every copy of `.meta` that does not hold it.
  Status WriteMetaCopies(ReplicatedText& t, const std::string& text) {
    for (size_t i = 0; i < t.copies().size(); ++i) {
      const FileCopy& c = t.copies()[i];
      if (c.backend == nullptr || c.state == MetaCopyState::kAbsent) continue;
      if (c.state == MetaCopyState::kGood && c.bytes == text) continue;
      const std::string where = c.where;
      QBD_RETURN_IF_ERROR(
          t.Rewrite(i, text).WithContext(fmt::format("volume {}: write {}", meta_.name, where)));
      ++report_.meta_copies_written;
    }
    return Status::OK();
  }

  // The epoch (generations beyond it are suspect) and the dirty maps: the judge's other inputs.
  Status LoadJudgeInputs() {
    ReplicatedText epoch = LoadEpochCopies(parts_, meta_.number);
    if (epoch.verdict().ok() && epoch.chosen() >= 0)
      max_generation_ = MaxGenerationOfEpoch(epoch.version());
    const uint32_t rs = DirtyRegionSize(g_);
    const uint64_t regions = (g_.size + rs - 1) / rs;
    for (size_t p = 0; p < parts_.size(); ++p) {
      ReplicatedBitmap d =
          ReplicatedBitmap::LoadDirtyMap(parts_, meta_.number, PartName(p), rs, regions);
      dirty_.push_back(d.TakeMerged());
    }
    return Status::OK();
  }

  // Per part: chunk index -> file size, for the chunks of the volume's size. Every part must be
  // listed: a part out of reach would keep format-1 files under a `.meta` that says format 2.
  Result<std::vector<std::map<uint64_t, uint64_t>>> ListChunkFiles(bool note_strays) {
    std::vector<std::map<uint64_t, uint64_t>> out(parts_.size());
    const uint64_t count = g_.ChunkCount();
    for (size_t p = 0; p < parts_.size(); ++p) {
      const std::string dir = PartDir(meta_.number, PartName(p));
      auto entries = parts_[p]->ListInfo(dir);
      if (entries.status().IsNotFound()) continue;  // no chunk written on this part
      if (!entries.ok())
        return entries.status().WithContext(
            fmt::format("volume {}: list {}", meta_.name, Where(p, dir)));
      for (const DirEntry& e : *entries) {
        const uint64_t n = ChunkFileNumber(e.name);
        if (n == 0 || e.info.is_dir) continue;
        if (n > count) {
          if (note_strays) {
            report_.notes.push_back(fmt::format("{}: beyond the volume's {} chunks: left as it is",
                                                Where(p, dir + "/" + e.name), count));
          }
          continue;
        }
        out[p][n - 1] = e.info.size;
      }
    }
    return out;
  }

  Status Chunk(uint64_t c);

  const VolumeMeta& meta_;
  const std::vector<StorageBackend*>& parts_;
  const ConvertOptions& options_;
  Geometry g_;   // the volume's (format 1)
  Geometry g2_;  // the same in format 2
  uint64_t zero_checksum_ = 0;
  uint64_t max_generation_ = UINT64_MAX;
  std::vector<std::unique_ptr<DirtyMap>> dirty_;
  std::vector<std::map<uint64_t, uint64_t>> files_;
  std::vector<std::unique_ptr<PartStore>> stores_;
  ConvertReport report_;
};

Status Converter::Chunk(uint64_t c) {
  const size_t np = parts_.size();
  const uint32_t nr = meta_.number;
  const uint64_t per = g_.BlocksPerChunk(), slice = SliceBlocks(g_);
  const uint32_t rs = DirtyRegionSize(g_);
  const uint64_t number = c + 1;  // the chunk file's name
  // What each part has: no file, a format-2 file (kept, its failing blocks fixed in place), or
  // another file (format 1, or damaged: rebuilt whole in format 2).
  std::vector<Geometry> geometry(np, g_);
  std::vector<uint8_t> has(np, 0), kept(np, 0);
  std::vector<std::unique_ptr<PartStore::ChunkRewrite>> rebuild(np);
  for (size_t p = 0; p < np; ++p) {
    auto it = files_[p].find(c);
    if (it == files_[p].end()) continue;
    has[p] = 1;
    geometry[p] = ChunkFileGeometry(g_, it->second);
    kept[p] = geometry[p].format == kFormat2;
    if (!kept[p]) {
      auto rw = stores_[p]->BuildReplacement(c);
      if (!rw.ok()) {
        return rw.status().WithContext(fmt::format("volume {} chunk file {} part {}: create {}",
                                                   meta_.name, number, PartName(p),
                                                   TmpPath(nr, PartName(p), c)));
      }
      rebuild[p] = std::move(rw).value();
    }
  }
  // What each part's file holds once converted (checked when read back), and the records of
  // kept files to rewrite in place.
  std::vector<std::vector<BlockMeta>> expected(np, std::vector<BlockMeta>(per));
  std::vector<std::map<uint64_t, std::vector<std::byte>>> fixes(np);
  std::vector<std::vector<uint64_t>> taken(np);  // per part: blocks taken from another part
  std::vector<std::map<char, bool>> sources(np);
  std::vector<PartCopy> copies(np);
  std::vector<std::byte> records;
  const uint64_t rec2 = g2_.RecordSize();
  for (uint64_t first = 0; first < per; first += slice) {
    const uint64_t n = std::min<uint64_t>(slice, per - first);
    for (size_t p = 0; p < np; ++p) {
      PartCopy& cp = copies[p];
      ReadCopyInto(cp, *parts_[p], nr, PartName(p), geometry[p], c, first, n);
      if (cp.state == CopyState::kUnreadable) {
        return Status::IOError(fmt::format("volume {} chunk file {} part {}: {}", meta_.name,
                                           number, PartName(p), cp.error.message()));
      }
      report_.bytes_read += cp.records.size();
      cp.dirty.resize(n);
      for (uint64_t b = 0; b < n; ++b) {
        const uint64_t region = (c * g_.chunk_size + (first + b) * g_.block_size) / rs;
        cp.dirty[b] = region < dirty_[p]->regions() && dirty_[p]->Test(region);
      }
    }
    const SliceVerdict v = JudgeCopies(copies, /*chunk_written=*/true, max_generation_);
    // Where each part's block comes from: its own copy when good, else the judge's source. A
    // block without either stops the chunk before anything of it is published.
    std::vector<std::vector<int>> from(np, std::vector<int>(n, -1));
    for (size_t p = 0; p < np; ++p) {
      if (!has[p]) continue;
      for (uint64_t b = 0; b < n; ++b) {
        const bool own = copies[p].state == CopyState::kPresent && copies[p].good[b];
        const int src = own ? static_cast<int>(p) : v.source[b];
        if (src < 0) {
          std::string found;
          for (size_t q = 0; q < np; ++q) {
            const PartCopy& cq = copies[q];
            const std::string what = cq.state != CopyState::kPresent ? CopyStateName(cq.state)
                                     : cq.good[b] ? "good, but not known to be the newest"
                                                  : "fails its check";
            found += fmt::format("{}part {}: {}", found.empty() ? "" : ", ", PartName(q), what);
          }
          return Status::Corruption(
              fmt::format("volume {} chunk file {} block {}: no good copy on any part ({}); "
                          "nothing of this chunk was "
                          "converted: repair the volume first, then convert again",
                          meta_.name, number, first + b, found));
        }
        from[p][b] = src;
        expected[p][first + b] = copies[src].metas[b];
        if (!own) {
          taken[p].push_back(first + b);
          sources[p][PartName(src)] = true;
        }
      }
    }
    for (size_t p = 0; p < np; ++p) {
      if (!has[p]) continue;
      auto record_of = [&](uint64_t b, std::byte* out) {
        const int src = from[p][b];
        const std::byte* data = copies[src].records.data() + b * geometry[src].RecordSize();
        EncodeRecord(g2_, data, copies[src].metas[b], BlockAddress{nr, c, first + b},
                     zero_checksum_, out);
      };
      if (kept[p]) {
        for (uint64_t b = 0; b < n; ++b) {
          if (from[p][b] == static_cast<int>(p)) continue;
          std::vector<std::byte>& r = fixes[p][first + b];
          r.resize(rec2);
          record_of(b, r.data());
        }
        continue;
      }
      // Runs of written blocks; unwritten ones stay holes of the sparse replacement.
      for (uint64_t b = 0; b < n;) {
        if (copies[from[p][b]].metas[b].IsUnwritten()) {
          ++b;
          continue;
        }
        uint64_t e = b;
        while (e < n && !copies[from[p][e]].metas[e].IsUnwritten()) ++e;
        records.resize((e - b) * rec2);
        for (uint64_t i = b; i < e; ++i) record_of(i, records.data() + (i - b) * rec2);
        QBD_RETURN_IF_ERROR(
            rebuild[p]
                ->WriteRecords(first + b, records)
                .WithContext(fmt::format("volume {} chunk file {} part {}: write {}", meta_.name,
                                         number, PartName(p), TmpPath(nr, PartName(p), c))));
        report_.bytes_written += records.size();
        b = e;
      }
    }
  }
  for (size_t p = 0; p < np; ++p) {
    if (taken[p].empty()) continue;
    report_.blocks_from_other += taken[p].size();
    std::string src;
    for (const auto& [name, unused] : sources[p])
      src += fmt::format("{}{}", src.empty() ? "" : ", ", name);
    const bool whole = copies[p].state != CopyState::kPresent;
    report_.notes.push_back(fmt::format(
        "volume {} chunk file {} part {}: {}: taken from part {}", meta_.name, number, PartName(p),
        whole ? fmt::format("the file is {} ({} bytes)", CopyStateName(copies[p].state),
                            copies[p].file_size)
              : fmt::format("{} block(s) failed their check ({})", taken[p].size(),
                            FormatRanges(taken[p])),
        src));
  }
  // Publish: each replacement synced, read back and checked, then renamed over the chunk's name.
  for (size_t p = 0; p < np; ++p) {
    if (!rebuild[p]) continue;
    const std::string tmp = TmpPath(nr, PartName(p), c);
    const std::string where = fmt::format("volume {} chunk file {} part {}: {}", meta_.name, number,
                                          PartName(p), Where(p, tmp));
    {
      QBD_ASSIGN_OR_RETURN(auto f, parts_[p]->Open(tmp));
      QBD_RETURN_IF_ERROR(f->Sync().WithContext(where));
      QBD_RETURN_IF_ERROR(CheckConverted(*f, g2_, nr, c, expected[p], where));
    }
    QBD_RETURN_IF_ERROR(rebuild[p]->Commit().WithContext(where));
    ++report_.files_converted;
  }
  // Kept files: their failing blocks rewritten in place, then the whole file checked.
  for (size_t p = 0; p < np; ++p) {
    if (!kept[p]) continue;
    ++report_.files_kept;
    if (fixes[p].empty()) continue;
    const std::string path = ChunkPath(nr, PartName(p), c);
    const std::string where = fmt::format("volume {} chunk file {} part {}: {}", meta_.name, number,
                                          PartName(p), Where(p, path));
    QBD_ASSIGN_OR_RETURN(auto rw, stores_[p]->RewriteInPlace(c));
    for (const auto& [b, r] : fixes[p]) {
      QBD_RETURN_IF_ERROR(rw->WriteRecords(b, r).WithContext(where));
      report_.bytes_written += r.size();
    }
    QBD_RETURN_IF_ERROR(rw->Commit().WithContext(where));
    QBD_ASSIGN_OR_RETURN(auto f, parts_[p]->Open(path));
    QBD_RETURN_IF_ERROR(CheckConverted(*f, g2_, nr, c, expected[p], where));
  }
  return Status::OK();
}

}  // namespace

Result<ConvertReport> ConvertVolume(const VolumeMeta& meta,
                                    const std::vector<StorageBackend*>& parts,
                                    const ConvertOptions& options) {
  if (parts.size() != meta.replicas) {
    return Status::InvalidArgument(fmt::format("volume {}: {} backends for {} replicas", meta.name,
                                               parts.size(), meta.replicas));
  }
  Converter c(meta, parts, options);
  return c.Run();
}

}  // namespace qbd
