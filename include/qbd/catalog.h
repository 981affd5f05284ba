// Catalog: the volumes of one qbd.conf — `.volumesmeta` on every backend and each volume's
// `.meta` on the backends of its parts (layout-spec.md §1-§2). qbdctl's offline mode and
// qbd-master use it; the REST API will too.
//
// Copies are written to every backend (atomically: temp, sync, rename, sync dir). Reads take the
// copy with the largest serial and report backends that disagree or lack a copy; a malformed
// copy is an error naming the file and line.
//
// Thread-safety: not for concurrent mutation from several processes at once (qbdctl is run by
// one admin); reads are safe alongside the daemon.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "qbd/backend.h"
#include "qbd/config.h"
#include "qbd/volume_meta.h"

namespace qbd {

// Opens the backend at `location` (a directory, later nfs:// URLs). A missing local directory
// is created only with `create_missing`, else NotFound.
Result<std::unique_ptr<StorageBackend>> OpenBackend(const BackendConfig& config, bool create_missing);

// One line per failure domain (file system, NFS server and export) that holds two or more of
// `parts` (part 'a' + i is parts[i]; null entries are skipped): "parts a (LOC), b (LOC) share D".
std::vector<std::string> SharedFailureDomains(const std::vector<const StorageBackend*>& parts);

struct CreateVolumeOptions {
  std::string name;
  uint64_t size = 0;
  uint32_t replicas = 0;  // 0: every configured part
  uint32_t block_size = 4096;
  uint64_t chunk_size = 4ull << 20;
  uint32_t write_quorum = 0;  // 0: the config's, else majority
};

class Catalog {
 public:
  // Opens every backend that holds a part. Errors name the backend. Missing local backend
  // directories are created only with `create_missing` (qbdctl create, --create-default).
  static Result<std::unique_ptr<Catalog>> Open(const Config& config, bool create_missing = false);

  const Config& config() const { return config_; }
  size_t part_count() const { return backends_.size(); }
  // The backend of part 'a' + i.
  StorageBackend& part_backend(size_t i) { return *backends_[i]; }
  std::vector<StorageBackend*> BackendsFor(const VolumeMeta& meta);
  // qbd::SharedFailureDomains of this catalog's parts.
  std::vector<std::string> SharedFailureDomains() const;

  // The newest `.volumesmeta`; an empty index when no backend has one yet. Copies that are
  // missing or older are reported (once per change); with `reconcile` they are rewritten.
  Result<VolumesIndex> LoadIndex(bool reconcile = false);
  // The newest `<volnr>/.meta` among the volume's parts, reported and reconciled likewise.
  // NotFound when none has it.
  Result<VolumeMeta> LoadMeta(uint32_t volnr, bool reconcile = false);
  Result<VolumeMeta> Find(const std::string& name);

  Result<VolumeMeta> Create(const CreateVolumeOptions& options);
  // Grows the volume; InvalidArgument when `size` is smaller or not a block multiple.
  Status Resize(const std::string& name, uint64_t size);
  // flag: "read-only" or "append-only".
  Status SetFlag(const std::string& name, const std::string& flag, bool on);
  // Removes the volume from the index, then its files from every backend.
  Status Delete(const std::string& name);

  // The epoch file of a volume: "<volnr>/.epoch" (layout-spec.md §4.2).
  static std::string EpochPath(uint32_t volnr);
  // The epoch an epoch file's text holds (0 when it has no `epoch` line). InvalidArgument naming
  // `file` and the line when the file or the number is malformed.
  static Result<uint64_t> ParseEpoch(std::string_view text, std::string_view file);

 private:
  explicit Catalog(Config config) : config_(std::move(config)) {}
  Status WriteIndex(const VolumesIndex& index);
  Status WriteMeta(const VolumeMeta& meta);

  // Every backend's copy of one metadata file: its text (absent when missing or unreadable) and,
  // once parsed, its serial (-1 missing, kUnreadable when it could not be read).
  struct Copies {
    std::vector<std::optional<std::string>> texts;
    std::vector<int64_t> serials;
    Status unreadable;  // the last read error, OK when every copy was read or missing
  };
  Copies ReadCopies(const std::string& path);
  // serials[i] is backend i's copy; `best` the newest.
  void SettleCopies(const std::string& path, const std::vector<int64_t>& serials, size_t best,
                    const std::string& best_text, bool reconcile);

  Config config_;
  std::vector<std::unique_ptr<StorageBackend>> backends_;
  std::mutex report_mu_;
  std::map<std::string, std::string> last_report_;  // GUARDED_BY(report_mu_): path -> last divergence
};

}  // namespace qbd
