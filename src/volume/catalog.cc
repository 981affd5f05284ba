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
#include "qbd/lvm_thin.h"

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
  bool found = false;
  for (const KvLine& l : lines) {
    if (l.key != "epoch") {
      return Status::InvalidArgument(fmt::format("{}:{}: unknown key '{}' (epoch)", file, l.line, l.key));
    }
    found = true;
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(l.value.data(), l.value.data() + l.value.size(), v);
    if (l.value.empty() || ec != std::errc() || end != l.value.data() + l.value.size()) {
      return Status::InvalidArgument(fmt::format("{}:{}: epoch is not a number", file, l.line));
    }
    if (v > kMaxEpoch) {
      return Status::InvalidArgument(fmt::format("{}:{}: epoch {} is larger than {}: its generations would not fit "
                                                 "64 bits (layout-spec.md §4.2)",
                                                 file, l.line, v, kMaxEpoch));
    }
    epoch = std::max(epoch, v);
  }
  if (!found) return Status::InvalidArgument(fmt::format("{}: 'epoch' is missing", file));
  return epoch;
}

std::vector<StorageBackend*> Catalog::AllBackends() const {
  std::vector<StorageBackend*> all;
  for (const auto& b : backends_) all.push_back(b.get());
  return all;
}

// One log line per copy that is not good, when what is wrong with it changes (not at every poll).
void Catalog::SettleCopies(ReplicatedText& t, bool reconcile) {
  const std::string newest = fmt::format("serial {}", t.version());
  for (size_t i = 0; i < t.copies().size(); ++i) {
    const FileCopy& c = t.copies()[i];
    if (c.state == MetaCopyState::kAbsent) continue;
    std::string line;
    LogLevel level = LogLevel::kWarn;
    if (c.state == MetaCopyState::kMalformed) {
      line = fmt::format("{}: copy ignored, the good copies ({}) are used; qbd-repair rewrites it", c.reason, newest);
    } else if (c.state == MetaCopyState::kUnreachable) {
      line = fmt::format("{}: cannot be read ({}): the newest readable copy ({}) is used", c.where, c.reason, newest);
    } else if (t.NeedsRewrite(i)) {
      const std::string what = c.state == MetaCopyState::kMissing ? "copy missing" : c.reason;
      if (reconcile) {
        Status s = t.Rewrite(i, t.text());
        line = s.ok() ? fmt::format("{}: {}: rewritten from the newest copy ({})", c.where, what, newest)
                      : fmt::format("{}: {}: cannot rewrite it: {}", c.where, what, s.ToString());
        if (s.ok()) level = LogLevel::kInfo;
      } else {
        line = fmt::format("{}: {}: the newest copy ({}) is used", c.where, what, newest);
      }
    }
    std::lock_guard<std::mutex> l(report_mu_);
    if (line.empty()) {
      last_report_.erase(c.where);
      continue;
    }
    // A rewritten copy is good from now on: its line is said once, and again only if it breaks.
    const bool settled = level == LogLevel::kInfo;
    std::string& last = last_report_[c.where];
    if (last != line) Log(level, "{}", line);
    if (settled) {
      last_report_.erase(c.where);
    } else {
      last = line;
    }
  }
}

ReplicatedText Catalog::ReadIndexCopies() {
  return ReplicatedText::Load(AllBackends(), kVolumesMetaPath,
                              [](std::string_view text, const std::string& where) -> Result<uint64_t> {
                                QBD_ASSIGN_OR_RETURN(VolumesIndex idx, ParseVolumesIndex(text, where));
                                return idx.serial;
                              });
}

namespace {

ReplicatedText::Parser MetaParser(uint32_t volnr) {
  return [volnr](std::string_view text, const std::string& where) -> Result<uint64_t> {
    QBD_ASSIGN_OR_RETURN(VolumeMeta m, ParseVolumeMeta(text, where, volnr));
    return m.serial;
  };
}

}  // namespace

ReplicatedText Catalog::ReadMetaCopies(uint32_t volnr) {
  ReplicatedText t = ReplicatedText::Load(AllBackends(), MetaPath(volnr), MetaParser(volnr));
  if (t.chosen() >= 0) {
    // Only the backends of the volume's parts keep a copy.
    auto m = ParseVolumeMeta(t.text(), t.copies()[t.chosen()].where);
    if (m.ok() && m->replicas <= backends_.size()) t.LimitHolders(m->replicas);
  }
  return t;
}

Result<VolumesIndex> Catalog::LoadIndex(bool reconcile) {
  ReplicatedText t = ReadIndexCopies();
  if (t.verdict().IsNotFound()) return VolumesIndex{};  // no backend has one yet
  QBD_RETURN_IF_ERROR(t.verdict());
  QBD_ASSIGN_OR_RETURN(VolumesIndex idx, ParseVolumesIndex(t.text(), t.copies()[t.chosen()].where));
  SettleCopies(t, reconcile);
  return idx;
}

Result<VolumeMeta> Catalog::LoadMeta(uint32_t volnr, bool reconcile) {
  ReplicatedText t = ReadMetaCopies(volnr);
  if (t.verdict().IsNotFound()) {
    return Status::NotFound(fmt::format("volume number {}: no .meta on any backend", volnr));
  }
  if (t.verdict().IsUnavailable()) {
    return Status::Unavailable(fmt::format("volume number {}: {}", volnr, t.verdict().message()));
  }
  QBD_RETURN_IF_ERROR(t.verdict());
  QBD_ASSIGN_OR_RETURN(VolumeMeta best, ParseVolumeMeta(t.text(), t.copies()[t.chosen()].where));
  if (best.replicas > backends_.size()) {
    return Status::InvalidArgument(fmt::format("volume {} has {} replicas but {} lists {} parts", best.name,
                                               best.replicas, config_.file, backends_.size()));
  }
  SettleCopies(t, reconcile);
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
  if (o.size > kMaxVolumeSize) {
    return Status::InvalidArgument(fmt::format("size {} is larger than {}", FormatSize(o.size), FormatSize(kMaxVolumeSize)));
  }
  m.replicas = o.replicas == 0 ? static_cast<uint32_t>(backends_.size()) : o.replicas;
  if (m.replicas > backends_.size()) {
    return Status::InvalidArgument(fmt::format("{} replicas asked, but {} lists only {} parts", m.replicas,
                                               config_.file, backends_.size()));
  }
  m.write_quorum = o.write_quorum != 0 ? o.write_quorum : config_.write_quorum;
  if (m.write_quorum > m.replicas) {
    return Status::InvalidArgument(fmt::format("write quorum {} exceeds {} replicas", m.write_quorum, m.replicas));
  }
  m.read_only = o.read_only;
  QBD_RETURN_IF_ERROR(CheckQosText(o.qos));
  m.qos = o.qos;
  m.created = NowIso();
  QBD_ASSIGN_OR_RETURN(VolumesIndex idx, LoadIndex());
  if (idx.Find(o.name) != 0) return Status::InvalidArgument(fmt::format("volume '{}' already exists", o.name), EEXIST);
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
  if (size > kMaxVolumeSize) {
    return Status::InvalidArgument(fmt::format("size {} is larger than {}", FormatSize(size), FormatSize(kMaxVolumeSize)));
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

Status Catalog::SetQos(const std::string& name, const std::string& qos) {
  QBD_RETURN_IF_ERROR(CheckQosText(qos));
  QBD_ASSIGN_OR_RETURN(VolumeMeta m, Find(name));
  if (m.qos == qos) return Status::OK();
  m.qos = qos;
  m.serial++;
  return WriteMeta(m);
}

Status Catalog::SetLvmThin(const std::string& name, const std::string& pv_uuid) {
  QBD_RETURN_IF_ERROR(CheckPvUuid(pv_uuid));
  QBD_ASSIGN_OR_RETURN(VolumeMeta m, Find(name));
  if (m.lvm_thin && m.lvm_pv_uuid == pv_uuid) return Status::OK();
  m.lvm_thin = true;
  m.lvm_pv_uuid = pv_uuid;
  m.serial++;
  return WriteMeta(m);
}

std::string Catalog::OfflineState(const VolumeMeta& meta) {
  std::string why;
  std::vector<StorageBackend*> bs = BackendsFor(meta);
  for (size_t i = 0; i < bs.size(); ++i) {
    const std::string dir = PartDir(meta.number, static_cast<char>('a' + i));
    auto st = bs[i]->Stat(dir);
    if (!st.ok() || !st->is_dir) {
      why += fmt::format("{}part {}: {}/{} {}", why.empty() ? "" : "; ", static_cast<char>('a' + i), bs[i]->Describe(),
                         dir, st.ok() ? "is not a directory" : st.status().message());
    }
  }
  return why.empty() ? "ready" : fmt::format("degraded ({})", why);
}

Status Catalog::Delete(const std::string& name) {
  QBD_ASSIGN_OR_RETURN(uint32_t nr, Unlist(name));
  return RemoveFiles(nr);
}

Result<uint32_t> Catalog::Unlist(const std::string& name) {
  QBD_ASSIGN_OR_RETURN(VolumesIndex idx, LoadIndex());
  uint32_t nr = idx.Find(name);
  if (nr == 0) return Status::NotFound(fmt::format("no volume named '{}'", name));
  idx.volumes.erase(name);
  idx.serial++;
  QBD_RETURN_IF_ERROR(WriteIndex(idx));
  return nr;
}

Status Catalog::RemoveFiles(uint32_t nr) {
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
