// Implements include/qbd/repair.h.
#include "qbd/repair.h"

#include <fmt/format.h>

#include <set>

#include "qbd/config.h"
#include "qbd/dirty_map.h"
#include "qbd/replicated_bitmap.h"
#include "qbd/replicated_text.h"
#include "qbd/volume_files.h"

namespace qbd {

std::vector<uint64_t> ChunksToVisit(const VolumeMeta& meta,
                                    const std::vector<StorageBackend*>& backends) {
  const Geometry& g = meta.geometry;
  ReplicatedBitmap maps =
      ReplicatedBitmap::LoadChunkMap(backends, meta.number, g.chunk_size, g.ChunkCount());
  std::set<uint64_t> chunks = ChunksWithFiles(meta, backends);
  DirtyMap& all = maps.merged();
  for (auto c = all.NextSet(0); c; c = all.NextSet(*c + 1)) chunks.insert(*c);
  return {chunks.begin(), chunks.end()};
}

namespace {

// What is wrong with copy `c`, for the line that says it is rewritten.
std::string Why(const FileCopy& c, const std::string& what) {
  switch (c.state) {
    case MetaCopyState::kMissing:
      return what + " copy missing";
    case MetaCopyState::kMalformed:
      return what + " copy malformed: " + c.reason;
    default:
      return c.reason.empty() ? what + " copy stale" : what + " copy " + c.reason;
  }
}

class MetadataWriter {
 public:
  MetadataWriter(bool dry_run, MetadataRepair& out) : dry_(dry_run), out_(out) {}

  // Says what is written where; `write` does it unless dry_run.
  template <typename F>
  void Write(const FileCopy& c, const std::string& why, F write) {
    Status s = dry_ ? Status::OK() : write();
    out_.lines.push_back(fmt::format("{}{}: {}{}", dry_ ? "would write " : "wrote ", c.where, why,
                                     s.ok() ? "" : " - failed: " + s.ToString()));
    (s.ok() ? out_.written : out_.failed)++;
  }
  void Refuse(const std::string& path, const Status& verdict) {
    out_.lines.push_back(
        fmt::format("not repaired: {}: {} (copy the right one over the others by hand)", path,
                    verdict.message()));
    ++out_.failed;
  }

 private:
  const bool dry_;
  MetadataRepair& out_;
};

// The missing, malformed and older copies of a text file, from the chosen copy.
void RepairText(ReplicatedText& t, const std::string& what, MetadataWriter& w) {
  const Status& v = t.verdict();
  if (v.IsNotFound() || v.IsUnavailable()) return;
  if (!v.ok()) {
    w.Refuse(t.path(), v);
    return;
  }
  const std::string text = t.text();
  for (size_t i = 0; i < t.copies().size(); ++i) {
    if (!t.NeedsRewrite(i)) continue;
    w.Write(t.copies()[i], Why(t.copies()[i], what), [&] { return t.Rewrite(i, text); });
  }
}

}  // namespace

MetadataRepair RepairMetadata(Catalog& catalog, const VolumeMeta& meta, bool dry_run) {
  MetadataRepair out;
  MetadataWriter w(dry_run, out);
  std::vector<StorageBackend*> bs = catalog.BackendsFor(meta);
  const uint32_t nr = meta.number;
  const size_t np = bs.size();
  // Reachable parts only: a part that cannot be stat'ed is left for later.
  std::vector<StorageBackend*> reach(np, nullptr);
  for (size_t p = 0; p < np; ++p) {
    if (bs[p]->Stat("").ok()) reach[p] = bs[p];
  }
  // Every copy is read and judged first.
  ReplicatedText index = catalog.ReadIndexCopies();
  ReplicatedText meta_copies = catalog.ReadMetaCopies(nr);
  ReplicatedText epoch = LoadEpochCopies(reach, nr);
  ReplicatedBitmap chunks = ReplicatedBitmap::LoadChunkMap(reach, nr, meta.geometry.chunk_size,
                                                           meta.geometry.ChunkCount());
  const uint32_t rs = DirtyRegionSize(meta.geometry);
  const uint64_t regions = (meta.geometry.size + rs - 1) / rs;
  std::vector<ReplicatedBitmap> dirty;
  for (size_t x = 0; x < np; ++x) {
    dirty.push_back(
        ReplicatedBitmap::LoadDirtyMap(reach, nr, static_cast<char>('a' + x), rs, regions));
  }
  // Then written.
  for (size_t p = 0; p < np; ++p) {
    const std::string dir = PartDir(nr, static_cast<char>('a' + p));
    if (!reach[p] || !bs[p]->Stat(dir).status().IsNotFound()) continue;
    Status s = dry_run ? Status::OK() : bs[p]->MkDirs(dir);
    out.lines.push_back(fmt::format("{}{}/{}: part directory{}",
                                    dry_run ? "would create " : "created ", bs[p]->Describe(), dir,
                                    s.ok() ? "" : " - failed: " + s.ToString()));
    (s.ok() ? out.written : out.failed)++;
  }
  // .volumesmeta and .meta: from the newest good copy, on the backends in reach.
  RepairText(index, ".volumesmeta", w);
  RepairText(meta_copies, ".meta", w);
  // .epoch: the largest good epoch, where a copy is missing or malformed (an older one only
  // says that the part was out of reach at a start; the next start rewrites it).
  if (!epoch.verdict().ok() && !epoch.verdict().IsNotFound() && !epoch.verdict().IsUnavailable()) {
    w.Refuse(epoch.path(), epoch.verdict());
  } else if (epoch.chosen() >= 0) {
    const std::string text = EncodeEpoch(epoch.version());
    for (size_t p = 0; p < np; ++p) {
      const FileCopy& c = epoch.copies()[p];
      if (c.state != MetaCopyState::kMissing && c.state != MetaCopyState::kMalformed) continue;
      w.Write(c, Why(c, "epoch"), [&] { return epoch.Rewrite(p, text); });
    }
  }
  // The chunk map: the union of the good copies and of the chunks whose files exist.
  {
    const CopyCounts n = CountCopies(chunks.copies());
    for (uint64_t c : ChunksWithFiles(meta, reach)) chunks.merged().Set(c, c);
    const std::string why =
        n.good == 0 && n.malformed > 0
            ? fmt::format(
                  "no good copy: rebuilt from the chunk files present on the parts "
                  "({} chunks)",
                  chunks.merged().CountSet())
            : "";
    for (size_t p = 0; p < np; ++p) {
      if (!chunks.Damaged(p)) continue;
      const FileCopy& c = chunks.copies()[p];
      std::string reason = !why.empty() ? Why(c, "chunk map") + "; " + why
                           : c.state == MetaCopyState::kGood
                               ? "chunk map copy lacked written chunks"
                               : Why(c, "chunk map");
      w.Write(c, reason, [&] { return chunks.Rewrite(p); });
    }
  }
  // Dirty maps: part x's map on every other part.
  for (size_t x = 0; x < np; ++x) {
    ReplicatedBitmap& m = dirty[x];
    const CopyCounts n = CountCopies(m.copies());
    std::string why;
    if (n.malformed > 0 && !m.verdict().ok()) {
      // A bit only the damaged copies held is unknown: the whole part is resynced.
      if (regions > 0) m.merged().Set(0, regions - 1);
      why = fmt::format("; no good majority: every region of part {} marked for resync",
                        static_cast<char>('a' + x));
    }
    for (size_t p = 0; p < np; ++p) {
      if (p == x || !(m.Damaged(p) || (!why.empty() && m.NeedsRewrite(p)))) continue;
      const FileCopy& c = m.copies()[p];
      const std::string what = fmt::format("dirty map of part {}", static_cast<char>('a' + x));
      w.Write(c,
              (c.state == MetaCopyState::kGood && why.empty() ? what + " copy lacked dirty regions"
                                                              : Why(c, what)) +
                  why,
              [&] { return m.Rewrite(p); });
    }
  }
  return out;
}

}  // namespace qbd
