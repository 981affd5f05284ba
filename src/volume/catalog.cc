#include "qbd/catalog.h"

#include <fmt/format.h>

#include <charconv>
#include <fmt/ranges.h>

#include <chrono>
#include <ctime>
#include <map>
#include <string>
#include <vector>

#include "qbd/dirty_map.h"
#include "qbd/log.h"

namespace qbd {
namespace {

std::string NowIso() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec);
}

}  // namespace

Result<std::unique_ptr<StorageBackend>> OpenBackend(const BackendConfig& config, bool create_missing) {
  NfsOptions nfs;
  nfs.timeout_ms = config.nfs_timeout_ms;
  nfs.create_if_missing = create_missing;
  auto b = config.location.rfind("nfs://", 0) == 0 ? NewNfsBackend(config.location, nfs)
                                                   : NewLocalDirBackend(config.location, create_missing);
  if (!b.ok()) return b.status().WithContext(fmt::format("backend {}", config.name));
  return b;
}

Result<std::unique_ptr<Catalog>> Catalog::Open(const Config& config, bool create_missing) {
  std::unique_ptr<Catalog> c(new Catalog(config));
  for (size_t i = 0; i < config.parts.size(); ++i) {
    const BackendConfig* bc = config.BackendForPart(static_cast<char>('a' + i));
    QBD_CHECK(bc != nullptr, "part {} has no backend", i);
    QBD_ASSIGN_OR_RETURN(auto backend, OpenBackend(*bc, create_missing));
    c->backends_.push_back(std::move(backend));
  }
  return c;
}

std::vector<std::string> SharedFailureDomains(const std::vector<const StorageBackend*>& parts) {
  std::map<std::string, std::vector<std::string>> domains;  // domain -> "a (location)"...
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i] == nullptr) continue;
    domains[parts[i]->FailureDomain()].push_back(
        fmt::format("{} ({})", static_cast<char>('a' + i), parts[i]->Describe()));
  }
  std::vector<std::string> shared;
  for (const auto& [domain, names] : domains) {
    if (names.size() > 1) shared.push_back(fmt::format("parts {} share {}", fmt::join(names, ", "), domain));
  }
  return shared;
}

std::vector<std::string> Catalog::SharedFailureDomains() const {
  std::vector<const StorageBackend*> parts;
  for (const auto& b : backends_) parts.push_back(b.get());
  return qbd::SharedFailureDomains(parts);
}

std::vector<StorageBackend*> Catalog::BackendsFor(const VolumeMeta& meta) {
  std::vector<StorageBackend*> out;
  for (uint32_t i = 0; i < meta.replicas && i < backends_.size(); ++i) out.push_back(backends_[i].get());
  return out;
}

std::string Catalog::EpochPath(uint32_t volnr) { return fmt::format("{}/.epoch", volnr); }

Result<uint64_t> Catalog::ParseEpoch(std::string_view text, std::string_view file) {
  QBD_ASSIGN_OR_RETURN(auto lines, ParseKvText(text, file));
  uint64_t epoch = 0;
  for (const KvLine& l : lines) {
    if (l.key != "epoch") continue;
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(l.value.data(), l.value.data() + l.value.size(), v);
    if (ec != std::errc() || end != l.value.data() + l.value.size()) {
      return Status::InvalidArgument(fmt::format("{}:{}: epoch is not a number", file, l.line));
    }
    epoch = std::max(epoch, v);
  }
  return epoch;
}

// A copy that could not be read at all (as opposed to a missing one, serial -1).
static constexpr int64_t kUnreadable = -2;

// Reports how the copies of one metadata file differ (once per change, not at every poll) and,
// with `reconcile`, rewrites the missing and older copies with the newest text.
void Catalog::SettleCopies(const std::string& path, const std::vector<int64_t>& serials, size_t best,
                           const std::string& best_text, bool reconcile) {
  std::string report, unreadable;
  std::vector<size_t> stale;
  for (size_t k = 0; k < serials.size(); ++k) {
    if (serials[k] == serials[best]) continue;
    const std::string where = backends_[k]->Describe() + "/" + path;
    if (serials[k] == kUnreadable) {
      unreadable += fmt::format("{}{}", unreadable.empty() ? "" : ", ", where);
      continue;  // nothing can be written there either; reconciled once it is back
    }
    stale.push_back(k);
    report += serials[k] < 0 ? fmt::format("; {} is missing", where)
                             : fmt::format("; {} has serial {}", where, serials[k]);
  }
  {
    std::lock_guard<std::mutex> l(report_mu_);
    std::string& last = last_report_[path];
    const std::string now = report + "|" + unreadable;
    if (now != last) {
      if (!report.empty()) {
        QBD_LOG_WARN("{}: copies differ, the newest (serial {}) is used{}", path, serials[best], report);
      }
      if (!unreadable.empty()) {
        QBD_LOG_WARN("{}: a copy cannot be read (backend unreachable?), the newest readable one (serial {}) is "
                     "used: {}", path, serials[best], unreadable);
      }
    }
    last = now;
  }
  if (!reconcile) return;
  for (size_t h : stale) {
    Status s = WriteFileAtomic(*backends_[h], path, best_text);
    if (s.ok()) {
      QBD_LOG_INFO("{}/{}: rewritten from the newest copy (serial {})", backends_[h]->Describe(), path, serials[best]);
    } else {
      QBD_LOG_WARN("{}/{}: cannot rewrite: {}", backends_[h]->Describe(), path, s.ToString());
    }
  }
}

Catalog::Copies Catalog::ReadCopies(const std::string& path) {
  Copies c;
  c.texts.resize(backends_.size());
  c.serials.assign(backends_.size(), -1);
  for (size_t i = 0; i < backends_.size(); ++i) {
    auto text = ReadSmallFile(*backends_[i], path);
    if (text.ok()) {
      c.texts[i] = std::move(text).value();
    } else if (!text.status().IsNotFound()) {
      // A backend that cannot be read (a server down) is one copy short, not a reason to stop.
      c.serials[i] = kUnreadable;
      c.unreadable = text.status();
    }
  }
  return c;
}

Result<VolumesIndex> Catalog::LoadIndex(bool reconcile) {
  Copies c = ReadCopies(kVolumesMetaPath);
  VolumesIndex best;
  int best_k = -1;
  for (size_t i = 0; i < backends_.size(); ++i) {
    if (!c.texts[i]) continue;
    QBD_ASSIGN_OR_RETURN(VolumesIndex idx,
                         ParseVolumesIndex(*c.texts[i], backends_[i]->Describe() + "/" + kVolumesMetaPath));
    c.serials[i] = static_cast<int64_t>(idx.serial);
    if (best_k < 0 || idx.serial > best.serial) {
      best = std::move(idx);
      best_k = static_cast<int>(i);
    }
  }
  if (best_k < 0 && !c.unreadable.ok()) {
    return Status::Unavailable(fmt::format("no copy of {} can be read: {}", kVolumesMetaPath, c.unreadable.ToString()));
  }
  if (best_k >= 0) SettleCopies(kVolumesMetaPath, c.serials, best_k, *c.texts[best_k], reconcile);
  return best;
}

Result<VolumeMeta> Catalog::LoadMeta(uint32_t volnr, bool reconcile) {
  const std::string path = MetaPath(volnr);
  Copies c = ReadCopies(path);
  VolumeMeta best;
  int best_k = -1;
  for (size_t i = 0; i < backends_.size(); ++i) {
    if (!c.texts[i]) continue;
    const std::string file = backends_[i]->Describe() + "/" + path;
    QBD_ASSIGN_OR_RETURN(VolumeMeta m, ParseVolumeMeta(*c.texts[i], file));
    if (m.number != volnr) {
      return Status::Corruption(fmt::format("{}: number {} where {} was expected", file, m.number, volnr));
    }
    c.serials[i] = static_cast<int64_t>(m.serial);
    if (best_k < 0 || m.serial > best.serial) {
      best = std::move(m);
      best_k = static_cast<int>(i);
    }
  }
  if (best_k < 0 && !c.unreadable.ok()) {
    return Status::Unavailable(
        fmt::format("volume number {}: no copy of .meta can be read: {}", volnr, c.unreadable.ToString()));
  }
  if (best_k < 0) return Status::NotFound(fmt::format("volume number {}: no .meta on any backend", volnr));
  if (best.replicas > backends_.size()) {
    return Status::InvalidArgument(fmt::format("volume {} has {} replicas but {} lists {} parts", best.name,
                                               best.replicas, config_.file, backends_.size()));
  }
  // Only the backends of the volume's parts keep a copy.
  c.serials.resize(best.replicas);
  if (static_cast<size_t>(best_k) < c.serials.size()) {
    SettleCopies(path, c.serials, best_k, *c.texts[best_k], reconcile);
  }
  return best;
}

Result<VolumeMeta> Catalog::Find(const std::string& name) {
  QBD_ASSIGN_OR_RETURN(VolumesIndex idx, LoadIndex());
  uint32_t nr = idx.Find(name);
  if (nr == 0) return Status::NotFound(fmt::format("no volume named '{}'", name));
  return LoadMeta(nr);
}

Status Catalog::WriteIndex(const VolumesIndex& index) {
  std::string text = EncodeVolumesIndex(index);
  for (auto& b : backends_) {
    QBD_RETURN_IF_ERROR(WriteFileAtomic(*b, kVolumesMetaPath, text).WithContext(b->Describe()));
  }
  return Status::OK();
}

Status Catalog::WriteMeta(const VolumeMeta& meta) {
  std::string text = EncodeVolumeMeta(meta);
  for (StorageBackend* b : BackendsFor(meta)) {
    QBD_RETURN_IF_ERROR(b->MkDirs(std::to_string(meta.number)));
    QBD_RETURN_IF_ERROR(WriteFileAtomic(*b, MetaPath(meta.number), text).WithContext(b->Describe()));
  }
  return Status::OK();
}

Result<VolumeMeta> Catalog::Create(const CreateVolumeOptions& o) {
  QBD_RETURN_IF_ERROR(ValidateVolumeName(o.name));
  VolumeMeta m;
  m.name = o.name;
  m.geometry.size = o.size;
  m.geometry.block_size = o.block_size;
  m.geometry.chunk_size = o.chunk_size;
  QBD_RETURN_IF_ERROR(m.geometry.Validate());
  m.replicas = o.replicas == 0 ? static_cast<uint32_t>(backends_.size()) : o.replicas;
  if (m.replicas > backends_.size()) {
    return Status::InvalidArgument(fmt::format("{} replicas asked, but {} lists only {} parts", m.replicas,
                                               config_.file, backends_.size()));
  }
  m.write_quorum = o.write_quorum != 0 ? o.write_quorum : config_.write_quorum;
  if (m.write_quorum > m.replicas) {
    return Status::InvalidArgument(fmt::format("write quorum {} exceeds {} replicas", m.write_quorum, m.replicas));
  }
  m.created = NowIso();
  QBD_ASSIGN_OR_RETURN(VolumesIndex idx, LoadIndex());
  if (idx.Find(o.name) != 0) return Status::InvalidArgument(fmt::format("volume '{}' already exists", o.name));
  // Skip numbers whose directory survives on some backend (a volume being deleted, or debris).
  uint32_t nr = idx.NextNumber();
  for (bool busy = true; busy;) {
    busy = false;
    for (auto& b : backends_) busy = busy || b->Stat(std::to_string(nr)).ok();
    if (busy) ++nr;
  }
  m.number = nr;
  QBD_RETURN_IF_ERROR(WriteMeta(m));
  // Every part's dirty map has a copy on each other part (layout-spec.md §5).
  const uint32_t rs = DirtyRegionSize(m.geometry);
  std::vector<StorageBackend*> bs = BackendsFor(m);
  for (size_t h = 0; h < bs.size(); ++h) {
    QBD_RETURN_IF_ERROR(bs[h]->MkDirs(PartDir(nr, static_cast<char>('a' + h))));
    for (size_t p = 0; p < bs.size(); ++p) {
      if (p == h) continue;
      DirtyMap empty(rs, (m.geometry.size + rs - 1) / rs);
      QBD_RETURN_IF_ERROR(WriteFileAtomic(*bs[h], DirtyMap::PathFor(nr, static_cast<char>('a' + p)), empty.Encode()));
    }
    // No chunk written yet (layout-spec.md §6).
    DirtyMap chunks(static_cast<uint32_t>(m.geometry.chunk_size), m.geometry.ChunkCount());
    QBD_RETURN_IF_ERROR(WriteFileAtomic(*bs[h], DirtyMap::ChunkMapPath(nr), chunks.Encode(kChunkMapMagic)));
    QBD_RETURN_IF_ERROR(bs[h]->SyncDir(std::to_string(nr)));
  }
  // The index is written last: a volume exists once it is listed.
  idx.volumes[o.name] = nr;
  idx.serial++;
  QBD_RETURN_IF_ERROR(WriteIndex(idx));
  return m;
}

Status Catalog::Resize(const std::string& name, uint64_t size) {
  QBD_ASSIGN_OR_RETURN(VolumeMeta m, Find(name));
  if (size < m.geometry.size) {
    return Status::InvalidArgument(fmt::format("volume '{}' is {} bytes; shrinking is not supported", name,
                                               m.geometry.size));
  }
  if (size % m.geometry.block_size != 0) {
    return Status::InvalidArgument(fmt::format("size {} is not a multiple of the block size {}", size,
                                               m.geometry.block_size));
  }
  if (size == m.geometry.size) return Status::OK();
  m.geometry.size = size;
  m.serial++;
  return WriteMeta(m);
}

Status Catalog::SetFlag(const std::string& name, const std::string& flag, bool on) {
  QBD_ASSIGN_OR_RETURN(VolumeMeta m, Find(name));
  if (flag == "read-only") {
    m.read_only = on;
  } else if (flag == "append-only") {
    m.append_only = on;
  } else {
    return Status::InvalidArgument(fmt::format("unknown flag '{}' (read-only, append-only)", flag));
  }
  m.serial++;
  return WriteMeta(m);
}

Status Catalog::Delete(const std::string& name) {
  QBD_ASSIGN_OR_RETURN(VolumesIndex idx, LoadIndex());
  uint32_t nr = idx.Find(name);
  if (nr == 0) return Status::NotFound(fmt::format("no volume named '{}'", name));
  idx.volumes.erase(name);
  idx.serial++;
  QBD_RETURN_IF_ERROR(WriteIndex(idx));
  // Unlisted now; remove its files everywhere. Leftovers only cost space and are reported.
  const std::string vdir = std::to_string(nr);
  for (auto& b : backends_) {
    auto names = b->List(vdir);
    if (!names.ok()) continue;
    for (const std::string& n : *names) {
      std::string path = vdir + "/" + n;
      auto info = b->Stat(path);
      if (info.ok() && info->is_dir) {
        auto files = b->List(path);
        if (files.ok()) {
          for (const std::string& f : *files) QBD_RETURN_IF_ERROR(b->Remove(path + "/" + f));
        }
        QBD_RETURN_IF_ERROR(b->RemoveDir(path));
      } else {
        QBD_RETURN_IF_ERROR(b->Remove(path));
      }
    }
    QBD_RETURN_IF_ERROR(b->RemoveDir(vdir));
    QBD_RETURN_IF_ERROR(b->SyncDir(""));
  }
  return Status::OK();
}

}  // namespace qbd
