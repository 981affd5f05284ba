// Implements include/qbd/volume_files.h (layout-spec.md §1.1, §4.2, §5, §6).
#include "qbd/volume_files.h"

#include <fmt/format.h>

#include "qbd/log.h"

namespace qbd {

std::string EncodeEpoch(uint64_t epoch) {
  return fmt::format("# generation epoch of this volume (layout-spec.md section 4.2)\nepoch = {}\n",
                     epoch);
}

ReplicatedText LoadEpochCopies(const std::vector<StorageBackend*>& parts, uint32_t volnr) {
  // The epoch only grows: the largest good copy wins, whatever its comments say.
  return ReplicatedText::Load(
      parts, Catalog::EpochPath(volnr),
      [](std::string_view text, const std::string& where) {
        return Catalog::ParseEpoch(text, where);
      },
      /*same_text=*/false, "epoch");
}

std::set<uint64_t> ChunksWithFiles(const VolumeMeta& meta,
                                   const std::vector<StorageBackend*>& parts,
                                   const std::vector<Status>& down) {
  std::set<uint64_t> chunks;
  const uint64_t count = meta.geometry.ChunkCount();
  for (size_t p = 0; p < parts.size(); ++p) {
    if (!parts[p] || (p < down.size() && !down[p].ok())) continue;
    auto names = parts[p]->List(PartDir(meta.number, static_cast<char>('a' + p)));
    if (!names.ok()) continue;
    for (const std::string& n : *names) {
      const uint64_t file = ChunkFileNumber(n);
      if (file >= 1 && file <= count) chunks.insert(file - 1);
    }
  }
  return chunks;
}

Result<std::unique_ptr<VolumeFiles>> VolumeFiles::Load(const VolumeMeta& meta,
                                                       std::vector<StorageBackend*> backends) {
  std::unique_ptr<VolumeFiles> f(new VolumeFiles());
  f->meta_ = meta;
  f->backends_ = std::move(backends);
  const size_t np = f->backends_.size();
  const uint32_t nr = meta.number;
  // The epoch first: a part whose copy cannot be read is out of reach, and starts down.
  f->epoch_ = LoadEpochCopies(f->backends_, nr);
  f->down_.assign(np, Status::OK());
  for (size_t i = 0; i < np; ++i) {
    const FileCopy& c = f->epoch_.copies()[i];
    if (c.state == MetaCopyState::kUnreachable) f->down_[i] = c.error;
  }
  const Status& ev = f->epoch_.verdict();
  if (!ev.ok() && !ev.IsNotFound() && !ev.IsUnavailable()) return ev;
  // Each part's dirty map, from the other parts' backends.
  const uint32_t rs = DirtyRegionSize(meta.geometry);
  const uint64_t regions = (meta.geometry.size + rs - 1) / rs;
  f->dirty_unknown_.assign(np, 0);
  for (size_t p = 0; p < np; ++p) {
    ReplicatedBitmap m = ReplicatedBitmap::LoadDirtyMap(
        f->backends_, nr, static_cast<char>('a' + p), rs, regions, f->down_);
    const Status& v = m.verdict();
    if (!v.ok() && !v.IsNotFound() && !v.IsUnavailable()) return v;
    // No copy in reach at all (not even a missing one): what the part missed is unknown.
    const CopyCounts n = CountCopies(m.copies());
    f->dirty_unknown_[p] = n.holders > 0 && n.unreachable == n.holders;
    f->dirty_copy_lost_ = f->dirty_copy_lost_ || n.malformed > 0;
    f->dirty_.push_back(std::move(m));
  }
  // The chunk map: the union of the good copies and the chunks whose files exist (a first write
  // cut short before its bit was written, or a volume made before the chunk map existed).
  f->chunk_map_ = ReplicatedBitmap::LoadChunkMap(f->backends_, nr, meta.geometry.chunk_size,
                                                 meta.geometry.ChunkCount(), f->down_);
  const Status& cv = f->chunk_map_.verdict();
  if (!cv.ok() && !cv.IsNotFound() && !cv.IsUnavailable()) return cv;
  for (uint64_t c : ChunksWithFiles(meta, f->backends_, f->down_)) {
    if (f->chunk_map_.merged().Test(c)) continue;
    f->chunk_map_.merged().Set(c, c);
    ++f->chunks_added_;
  }
  return f;
}

namespace {

// One line about copy `c` of a file that is rewritten (or would be, with `no_writes`).
void SayCopy(const std::string& volume, const FileCopy& c, const std::string& fixed, bool no_writes,
             const Status& written) {
  std::string what =
      c.state == MetaCopyState::kMalformed ? c.reason + ": ignored" : c.where + ": " + c.reason;
  if (no_writes) {
    QBD_LOG_WARN("volume {}: {}; the good copies are used", volume, what);
  } else if (written.ok()) {
    QBD_LOG_WARN("volume {}: {}; {}", volume, what, fixed);
  } else {
    QBD_LOG_WARN("volume {}: {}; cannot rewrite it: {}", volume, what, written.ToString());
  }
}

}  // namespace

Result<uint64_t> VolumeFiles::Commit(bool no_writes) {
  const std::string& name = meta_.name;
  const uint32_t nr = meta_.number;
  const size_t np = backends_.size();
  // The epoch: the largest good one, plus one, on every part in reach (layout-spec.md §4.2).
  const uint64_t epoch = (epoch_.chosen() >= 0 ? epoch_.version() : 0) + 1;
  const bool first_epoch = epoch_.AllMissing();
  int written = 0;
  const std::string text = EncodeEpoch(epoch);
  for (size_t i = 0; i < np; ++i) {
    const FileCopy& c = epoch_.copies()[i];
    if (!down_[i].ok()) continue;
    const bool bad = c.state == MetaCopyState::kMalformed ||
                     (c.state == MetaCopyState::kMissing && !first_epoch);
    Status s;
    if (!no_writes) {
      // A part whose volume directory is gone (a replaced disk) gets it back; its chunks come
      // back through read-repair and resync.
      s = backends_[i]->MkDirs(std::to_string(nr));
      if (s.ok()) s = WriteFileAtomic(*backends_[i], epoch_.path(), text);
      if (s.ok()) {
        ++written;
      } else {
        down_[i] = s;
      }
    }
    if (bad) {
      SayCopy(name, c, fmt::format("written with the new epoch {}", epoch), no_writes, s);
    } else if (!s.ok()) {
      QBD_LOG_WARN("volume {}: epoch not written on {}: {}", nr, backends_[i]->Describe(),
                   s.ToString());
    }
  }
  if (!no_writes && written == 0) {
    return Status::IOError(fmt::format("volume {}: epoch could not be written on any part", nr));
  }
  // Dirty maps: every copy in reach gets the union (a missing one is created).
  for (size_t p = 0; p < np; ++p) {
    ReplicatedBitmap& m = dirty_[p];
    const bool first = m.AllMissing();
    for (size_t h = 0; h < np; ++h) {
      const FileCopy c = m.copies()[h];  // as it was: Rewrite changes it
      if (h == p || !down_[h].ok() || !m.NeedsRewrite(h)) continue;
      const bool bad =
          c.state == MetaCopyState::kMalformed || (c.state == MetaCopyState::kMissing && !first);
      Status s = no_writes ? Status::OK() : m.Rewrite(h);
      if (bad) {
        SayCopy(name, c, "rewritten from the good copies", no_writes, s);
      } else if (!s.ok()) {
        QBD_LOG_WARN("volume {}: cannot write {}: {}", name, c.where, s.ToString());
      }
    }
  }
  // The chunk map likewise.
  const CopyCounts cn = CountCopies(chunk_map_.copies());
  if (cn.good == 0 && cn.malformed == 0) {
    QBD_LOG_INFO("volume {}: no chunk map yet: built one from the {} chunks found on the parts",
                 name, chunk_map_.merged().CountSet());
  } else if (chunks_added_ > 0) {
    QBD_LOG_INFO(
        "volume {}: {} chunk(s) with files were missing from the chunk map (a first write cut "
        "short): "
        "added",
        name, chunks_added_);
  }
  for (size_t i = 0; i < np; ++i) {
    const FileCopy c = chunk_map_.copies()[i];  // as it was: Rewrite changes it
    if (!down_[i].ok() || !chunk_map_.NeedsRewrite(i)) continue;
    const bool bad =
        c.state == MetaCopyState::kMalformed || (c.state == MetaCopyState::kMissing && cn.good > 0);
    Status s = no_writes ? Status::OK() : chunk_map_.Rewrite(i);
    if (bad) {
      SayCopy(name, c, "rewritten from the good copies", no_writes, s);
    } else if (!s.ok()) {
      QBD_LOG_WARN("volume {}: cannot write {}: {}", name, c.where, s.ToString());
    }
  }
  return epoch;
}

std::vector<std::unique_ptr<DirtyMap>> VolumeFiles::TakeDirtyMaps() {
  std::vector<std::unique_ptr<DirtyMap>> out;
  for (size_t p = 0; p < dirty_.size(); ++p) {
    std::unique_ptr<DirtyMap> map = dirty_[p].TakeMerged();
    if (dirty_unknown_[p] && map->regions() > 0) {
      // No copy of this part's dirty map is in reach: what it missed is unknown, so all of it
      // is resynced before it counts again.
      QBD_LOG_WARN(
          "volume {} part {}: no copy of its dirty map can be read: the whole part will be "
          "resynced",
          meta_.name, static_cast<char>('a' + p));
      map->Set(0, map->regions() - 1);
    }
    out.push_back(std::move(map));
  }
  return out;
}

std::unique_ptr<DirtyMap> VolumeFiles::TakeChunkMap() { return chunk_map_.TakeMerged(); }

Status CheckVolumeFiles(Catalog& catalog) {
  ReplicatedText index = catalog.ReadIndexCopies();
  if (index.verdict().IsNotFound()) return Status::OK();
  QBD_RETURN_IF_ERROR(index.verdict());
  QBD_ASSIGN_OR_RETURN(VolumesIndex idx,
                       ParseVolumesIndex(index.text(), index.copies()[index.chosen()].where));
  for (const auto& [name, nr] : idx.volumes) {
    ReplicatedText copies = catalog.ReadMetaCopies(nr);
    // A volume without a .meta is the catalog's to report.
    if (copies.verdict().IsNotFound() || copies.verdict().IsUnavailable()) continue;
    QBD_RETURN_IF_ERROR(copies.verdict());
    auto meta = ParseVolumeMeta(copies.text(), copies.copies()[copies.chosen()].where);
    if (!meta.ok() || meta->replicas > catalog.part_count()) continue;
    QBD_RETURN_IF_ERROR(VolumeFiles::Load(*meta, catalog.BackendsFor(*meta)).status());
  }
  return Status::OK();
}

}  // namespace qbd
