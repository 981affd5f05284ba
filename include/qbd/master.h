// Master: the service behind qbd-master — the catalog, every open volume, the NBD server and its
// listeners, and the export registry that maps export names onto volumes.
//
// Poll() re-reads .volumesmeta and the open volumes' .meta: new volumes are opened and exported,
// deleted ones are unexported and closed, grown ones get their new size, and read-only changes
// apply to new connections.
//
// A volume is opened only under its lease (lease.h, layout-spec.md §8): one that another master
// holds is not served; Poll watches it and opens it once its lease can be taken over, and closes
// (unexports) a volume whose lease went to another master.
//
// It holds the configuration's ProcessLock and serves the admin socket (admin.h): qbd-repair has
// chunks repaired by the running daemon, under its region locks.
//
// Thread-safety: Start, Poll and Stop are called from the one main thread.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "qbd/admin.h"
#include "qbd/cache.h"
#include "qbd/catalog.h"
#include "qbd/config.h"
#include "qbd/lease.h"
#include "qbd/metrics.h"
#include "qbd/nbd_server.h"
#include "qbd/volume.h"

namespace qbd {

struct MasterOptions {
  // Creates this volume (every part, `create_size` bytes) at start when it does not exist: the
  // demo volume of `make run`.
  std::string create_volume;
  uint64_t create_size = 1ull << 30;
};

class Master {
 public:
  // Opens the backends and every listed volume and starts listening. A malformed .meta or
  // .volumesmeta is an error naming the file and line.
  static Result<std::unique_ptr<Master>> Start(const Config& config, const MasterOptions& options = {});
  ~Master();

  Status Poll();
  // Stops the NBD server (in-flight requests finish and are answered), then flushes and closes
  // every volume. OK when every volume flushed.
  Status Stop();
  std::vector<std::string> BoundAddresses() const;
  Catalog& catalog() { return *catalog_; }
  // The daemon's metrics registry: every volume, part and the NBD server report into it; its
  // Text() is the admin socket's `stats` answer (and what GET /metrics serves).
  Metrics& metrics() { return *metrics_; }

 private:
  class Registry;
  Master() = default;
  // Takes the volumes' leases and opens them: per volume, true when it is served, false when
  // another master holds it (logged once per holder; Poll tries again). The leases are taken side
  // by side, so their read-back waits overlap: one lease_renew_ms / 2 for them all.
  std::vector<Result<bool>> OpenVolumes(const std::vector<VolumeMeta>& metas);
  // The rest of OpenVolumes for one volume whose lease attempt ended in `p`.
  Result<bool> FinishOpen(const VolumeMeta& meta, std::shared_ptr<VolumeLease> lease, const VolumeLease::Progress& p);
  // Unexports and closes the open volumes whose lease went to another master.
  void DropLostVolumes();
  void PublishExport(const std::string& name, Volume& volume);
  // The admin socket's requests (admin.h), from its connection threads.
  Result<std::string> HandleAdmin(const std::vector<std::string>& words);

  Config config_;
  // Declared first: outlives everything that reports into it. nbd_collector_ reads server_.
  std::unique_ptr<Metrics> metrics_ = std::make_unique<Metrics>();
  uint64_t nbd_collector_ = 0;
  std::unique_ptr<ProcessLock> lock_;  // held from the start to the end
  std::unique_ptr<Catalog> catalog_;
  std::unique_ptr<BlockCache> cache_;  // cache_size > 0; outlives the volumes (declared first)
  std::unique_ptr<StorageBackend> ssd_dir_;  // cache_dir; outlives the volumes
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<NbdServer> server_;
  // volumes_ changes only on the main thread, under volumes_mu_; admin requests read it under it.
  std::mutex volumes_mu_;
  std::map<std::string, std::unique_ptr<Volume>> volumes_;  // by name
  std::unique_ptr<AdminServer> admin_;  // stopped before the volumes close
  std::map<std::string, bool> listening_;                   // volumes with their own listener
  LeaseIdentity identity_;                                  // written into every `.owner`
  std::map<std::string, std::shared_ptr<VolumeLease>> leases_;  // by volume name: held or awaited
  std::map<std::string, std::string> refused_;              // volume -> the holder last logged
  bool stopped_ = false;
};

}  // namespace qbd
