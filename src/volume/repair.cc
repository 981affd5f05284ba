// Implements include/qbd/repair.h.
#include "qbd/repair.h"

#include <fmt/format.h>

#include <charconv>
#include <memory>
#include <optional>
#include <set>

#include "qbd/config.h"
#include "qbd/dirty_map.h"

namespace qbd {
namespace {

// The union of the copies of a bitmap file, and which backends lack a copy or some of its bits.
struct MapCopies {
  std::unique_ptr<DirtyMap> all;
  std::vector<int> state;  // per backend: 0 has every bit, 1 missing, 2 lacks bits, 3 unreadable
};

MapCopies ReadMaps(const std::vector<StorageBackend*>& holders, const std::string& path,
                   uint32_t bytes_per_bit, uint64_t bits, const char* magic) {
  MapCopies m;
  m.all = std::make_unique<DirtyMap>(bytes_per_bit, bits);
  m.state.assign(holders.size(), 3);
  std::vector<uint64_t> counts(holders.size(), 0);
  for (size_t i = 0; i < holders.size(); ++i) {
    if (!holders[i]) continue;
    auto text = ReadSmallFile(*holders[i], path);
    if (text.status().IsNotFound()) {
      m.state[i] = 1;
      continue;
    }
    if (!text.ok()) continue;
    auto map = DirtyMap::Decode(std::as_bytes(std::span(text->data(), text->size())), bytes_per_bit,
                                bits, holders[i]->Describe() + "/" + path, magic);
    if (!map.ok()) {
      m.state[i] = 1;  // malformed: rewritten like a missing one
      continue;
    }
    m.all->Merge(**map);
    counts[i] = (*map)->CountSet();
    m.state[i] = 0;
  }
  for (size_t i = 0; i < holders.size(); ++i) {
    if (m.state[i] == 0 && counts[i] < m.all->CountSet()) m.state[i] = 2;
  }
  return m;
}

}  // namespace

std::vector<uint64_t> ChunksToVisit(const VolumeMeta& meta,
                                    const std::vector<StorageBackend*>& backends) {
  const Geometry& g = meta.geometry;
  MapCopies maps = ReadMaps(backends, DirtyMap::ChunkMapPath(meta.number),
                            static_cast<uint32_t>(g.chunk_size), g.ChunkCount(), kChunkMapMagic);
  std::set<uint64_t> chunks;
  for (auto c = maps.all->NextSet(0); c; c = maps.all->NextSet(*c + 1)) chunks.insert(*c);
  for (size_t p = 0; p < backends.size(); ++p) {
    auto names = backends[p]->List(PartDir(meta.number, static_cast<char>('a' + p)));
    if (!names.ok()) continue;
    for (const std::string& n : *names) {
      const uint64_t file = ChunkFileNumber(n);
      if (file >= 1 && file <= g.ChunkCount()) chunks.insert(file - 1);
    }
  }
  return {chunks.begin(), chunks.end()};
}

std::vector<std::string> RepairMetadata(Catalog& catalog, const VolumeMeta& meta, bool dry_run) {
  std::vector<std::string> out;
  std::vector<StorageBackend*> bs = catalog.BackendsFor(meta);
  const uint32_t nr = meta.number;
  auto write = [&](StorageBackend& b, const std::string& path, const std::string& text,
                   const std::string& why) {
    Status s = dry_run ? Status::OK() : WriteFileAtomic(b, path, text);
    out.push_back(fmt::format("{}{}/{}: {}{}", dry_run ? "would write " : "wrote ", b.Describe(),
                              path, why, s.ok() ? "" : " - failed: " + s.ToString()));
  };
  // Reachable parts only: a part that cannot be stat'ed is left for later.
  std::vector<StorageBackend*> reach(bs.size(), nullptr);
  for (size_t p = 0; p < bs.size(); ++p) {
    auto root = bs[p]->Stat("");
    if (!root.ok()) continue;
    reach[p] = bs[p];
    const std::string dir = PartDir(nr, static_cast<char>('a' + p));
    if (bs[p]->Stat(dir).status().IsNotFound()) {
      Status s = dry_run ? Status::OK() : bs[p]->MkDirs(dir);
      out.push_back(fmt::format("{}{}/{}: part directory{}", dry_run ? "would create " : "created ",
                                bs[p]->Describe(), dir,
                                s.ok() ? "" : " - failed: " + s.ToString()));
    }
  }
  // .volumesmeta and .meta: the catalog rewrites missing and older copies from the newest.
  for (size_t p = 0; p < bs.size(); ++p) {
    if (!reach[p]) continue;
    for (const std::string& path : {std::string(kVolumesMetaPath), MetaPath(nr)}) {
      auto text = ReadSmallFile(*bs[p], path);
      if (text.status().IsNotFound()) {
        out.push_back(fmt::format("{}{}/{}: copy missing", dry_run ? "would write " : "wrote ",
                                  bs[p]->Describe(), path));
      }
    }
  }
  if (!dry_run) {
    catalog.LoadIndex(/*reconcile=*/true).status().IgnoreError();  // reported by the lines above
    catalog.LoadMeta(nr, /*reconcile=*/true).status().IgnoreError();
  }
  // .epoch: the largest epoch any part has.
  {
    const std::string path = Catalog::EpochPath(nr);
    uint64_t epoch = 0;
    std::vector<char> missing(bs.size(), 0);
    for (size_t p = 0; p < bs.size(); ++p) {
      if (!reach[p]) continue;
      auto text = ReadSmallFile(*bs[p], path);
      if (text.status().IsNotFound()) {
        missing[p] = 1;
        continue;
      }
      if (!text.ok()) continue;
      auto v = Catalog::ParseEpoch(*text, path);
      if (!v.ok()) {
        missing[p] = 1;  // malformed: rewritten like a missing one
        continue;
      }
      epoch = std::max(epoch, *v);
    }
    for (size_t p = 0; p < bs.size(); ++p) {
      if (missing[p] && epoch > 0) {
        write(*bs[p], path,
              fmt::format(
                  "# generation epoch of this volume (layout-spec.md section 4.2)\nepoch = {}\n",
                  epoch),
              "epoch copy missing");
      }
    }
  }
  // The chunk map: the union, on every part that lacks it or some of its chunks.
  {
    const std::string path = DirtyMap::ChunkMapPath(nr);
    MapCopies m = ReadMaps(reach, path, static_cast<uint32_t>(meta.geometry.chunk_size),
                           meta.geometry.ChunkCount(), kChunkMapMagic);
    for (size_t p = 0; p < bs.size(); ++p) {
      if (!reach[p] || (m.state[p] != 1 && m.state[p] != 2)) continue;
      write(*bs[p], path, m.all->Encode(kChunkMapMagic),
            m.state[p] == 1 ? "chunk map copy missing" : "chunk map copy lacked written chunks");
    }
  }
  // Dirty maps: part x's map on every other part; a missing copy gets the union of the others.
  const uint32_t rs = DirtyRegionSize(meta.geometry);
  const uint64_t regions = (meta.geometry.size + rs - 1) / rs;
  for (size_t x = 0; x < bs.size(); ++x) {
    const std::string path = DirtyMap::PathFor(nr, static_cast<char>('a' + x));
    std::vector<StorageBackend*> holders = reach;
    holders[x] = nullptr;
    MapCopies m = ReadMaps(holders, path, rs, regions, kDirtyMagic);
    for (size_t p = 0; p < bs.size(); ++p) {
      if (p == x || !reach[p] || m.state[p] != 1) continue;
      write(*bs[p], path, m.all->Encode(kDirtyMagic),
            fmt::format("dirty map copy of part {} missing", static_cast<char>('a' + x)));
    }
  }
  return out;
}

}  // namespace qbd
