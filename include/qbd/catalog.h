// Catalog: the volumes of one qbd.conf — `.volumesmeta` on every backend and each volume's
// `.meta` on the backends of its parts (layout-spec.md §1-§2). qbdctl's offline mode and
// qbd-master use it; the REST API will too.
//
// Copies are written to every backend (atomically: temp, sync, rename, sync dir). Reads judge
// every copy (replicated_text.h): the newest good copy wins; missing, older and malformed copies
// are reported (one log line each, once); a malformed copy is an error naming the file and line
// only when the malformed copies are not a minority (replicated_file.h).
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
#include "qbd/replicated_text.h"
#include "qbd/volume_meta.h"

namespace qbd {

// Opens the backend at `location` (a directory or an nfs:// URL). A missing local directory
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
  bool read_only = false;
  std::string qos;  // VolumeMeta::qos; "" none
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
  // missing, older or malformed are reported (once per change); with `reconcile` the missing
  // and older ones are rewritten (a malformed copy is left as it is for the admin to see, until
  // qbd-repair rewrites it). Fails naming the file and line when the good copies are not enough
  // (replicated_file.h).
  Result<VolumesIndex> LoadIndex(bool reconcile = false);
  // The newest `<volnr>/.meta` among the volume's parts, reported and reconciled likewise.
  // NotFound when none has it.
  Result<VolumeMeta> LoadMeta(uint32_t volnr, bool reconcile = false);
  // Every backend's copy of `.volumesmeta`, judged; and of `<volnr>/.meta` on the backends of the
  // volume's parts (all backends when no copy can be parsed). Nothing is logged or written.
  ReplicatedText ReadIndexCopies();
  ReplicatedText ReadMetaCopies(uint32_t volnr);
  Result<VolumeMeta> Find(const std::string& name);

  Result<VolumeMeta> Create(const CreateVolumeOptions& options);
  // Grows the volume; InvalidArgument when `size` is smaller or not a block multiple.
  Status Resize(const std::string& name, uint64_t size);
  // flag: "read-only" or "append-only".
  Status SetFlag(const std::string& name, const std::string& flag, bool on);
  // Replaces the volume's stored QoS settings (VolumeMeta::qos; InvalidArgument when
  // CheckQosText refuses them).
  Status SetQos(const std::string& name, const std::string& qos);
  // Records that the volume carries qbd's LVM thin stack, with the PV UUID `pv_uuid`
  // (VolumeMeta::lvm_thin, lvm_pv_uuid). InvalidArgument for a malformed UUID.
  Status SetLvmThin(const std::string& name, const std::string& pv_uuid);
  // The lifecycle state of a volume that no qbd-master serves, as far as the backends tell:
  // "ready", or "degraded (...)" naming each part whose directory cannot be reached.
  std::string OfflineState(const VolumeMeta& meta);
  // Removes the volume from the index, then its files from every backend (Unlist, RemoveFiles).
  Status Delete(const std::string& name);
  // Removes the volume from the index and returns its number: from then on it does not exist
  // (a running qbd-master unexports it at its next poll). NotFound when it is not listed.
  Result<uint32_t> Unlist(const std::string& name);
  // Removes volume number `volnr`'s directory and files from every backend. REQUIRES: unlisted.
  Status RemoveFiles(uint32_t volnr);

  // The largest epoch an epoch file may hold: a generation is (epoch << kGenerationBits) + n,
  // and MaxGenerationOfEpoch(epoch) must fit 64 bits.
  static constexpr uint64_t kMaxEpoch = (uint64_t{1} << (64 - kGenerationBits)) - 2;
  // The epoch file of a volume: "<volnr>/.epoch" (layout-spec.md §4.2).
  static std::string EpochPath(uint32_t volnr);
  // The epoch an epoch file's text holds. InvalidArgument naming `file` and the line when the
  // file or the number is malformed or above kMaxEpoch, a key other than `epoch` appears, or
  // `epoch` is missing (a copy cut short).
  static Result<uint64_t> ParseEpoch(std::string_view text, std::string_view file);

 private:
  explicit Catalog(Config config) : config_(std::move(config)) {}
  Status WriteIndex(const VolumesIndex& index);
  Status WriteMeta(const VolumeMeta& meta);

  std::vector<StorageBackend*> AllBackends() const;
  // Reports each copy that is not good (once per change of what is wrong with it) and, with
  // `reconcile`, rewrites the missing and older ones with the chosen text.
  // REQUIRES: copies.chosen() >= 0.
  void SettleCopies(ReplicatedText& copies, bool reconcile);

  Config config_;
  std::vector<std::unique_ptr<StorageBackend>> backends_;
  std::mutex report_mu_;
  std::map<std::string, std::string> last_report_;  // GUARDED_BY(report_mu_): copy -> what was said
};

}  // namespace qbd
