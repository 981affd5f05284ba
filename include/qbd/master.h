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
// It serves the REST API on `api_listen` (api.h) as its ApiService: volumes created, changed or
// deleted there go through the same Catalog functions as qbdctl's, then through Poll, so a
// created volume is served, a grown one has its new size, before the reply. Each volume has a
// lifecycle state (VolumeState): creating, ready, in use, resizing, repairing, degraded, deleting.
//
// Thread-safety: Start and Stop are called from the one main thread; Poll from it too, and from
// API threads. ops_mu_ serializes Poll with every API request (lock order: ops_mu_, volumes_mu_,
// state_mu_); an online repair's thread takes volumes_mu_ per chunk, as admin requests do.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "qbd/api.h"
#include "qbd/cache.h"
#include "qbd/catalog.h"
#include "qbd/config.h"
#include "qbd/forward.h"
#include "qbd/lease.h"
#include "qbd/lvm_thin.h"
#include "qbd/metrics.h"
#include "qbd/nbd_attach.h"
#include "qbd/nbd_server.h"
#include "qbd/process_lock.h"
#include "qbd/qos.h"
#include "qbd/volume.h"

namespace qbd {

struct MasterOptions {
  // Creates this volume (every part, `create_size` bytes) at start when it does not exist: the
  // demo volume of `make run`.
  std::string create_volume;
  uint64_t create_size = 1ull << 30;
};

class Master : public ApiService {
 public:
  // Opens the backends and every listed volume and starts listening. A malformed .meta or
  // .volumesmeta is an error naming the file and line.
  static Result<std::unique_ptr<Master>> Start(const Config& config, const MasterOptions& options = {});
  ~Master() override;

  Status Poll();
  // How long the main loop waits before the next Poll: volume_poll_ms, shorter (at most 200 ms)
  // while a volume is forwarded for a live migration, so that it is taken over soon after its
  // holder lets go.
  uint32_t PollIntervalMs();
  // Stops the NBD server (in-flight requests finish and are answered), then flushes and closes
  // every volume. OK when every volume flushed.
  Status Stop();
  std::vector<std::string> BoundAddresses() const;
  Catalog& catalog() { return *catalog_; }
  // The daemon's metrics registry: every volume, part and the NBD server report into it; its
  // Text() is what GET /metrics serves.
  Metrics& metrics() { return *metrics_; }

  // "HOST:PORT" of the REST API.
  std::string ApiAddress() const { return api_ ? api_->address() : std::string(); }

  // ApiService (api.h), from the API server's threads.
  Result<nlohmann::json> ListVolumes() override;
  Result<nlohmann::json> GetVolume(const std::string& name) override;
  Result<nlohmann::json> CreateVolume(const CreateVolumeOptions& options) override;
  Result<nlohmann::json> UpdateVolume(const std::string& name, const VolumeUpdate& update) override;
  Status DeleteVolume(const std::string& name, bool force) override;
  Result<nlohmann::json> Health() override;
  Result<nlohmann::json> StartRepair(const std::string& name) override;
  Result<nlohmann::json> RepairChunk(const std::string& name, uint64_t chunk,
                                     const RepairOptions& options) override;
  Result<nlohmann::json> Daemon() override;
  Result<nlohmann::json> Backends() override;
  Result<nlohmann::json> Block(const std::string& name, uint64_t offset) override;
  // Kernel NBD devices (nbd_attach.h; master_attach.cc).
  Result<nlohmann::json> AttachVolume(const std::string& name, int connections, bool lvm_thin,
                                      bool migration) override;
  Status DetachVolume(const std::string& name) override;
  Result<nlohmann::json> Attachments() override;

 private:
  class Registry;
  struct RepairJob;
  Status PollLocked();  // REQUIRES: ops_mu_ held
  // The volume's JSON (GetVolume). REQUIRES: ops_mu_ held.
  Result<nlohmann::json> VolumeJson(const std::string& name);
  // The lifecycle state of `name` (served as `v`, or nullptr). REQUIRES: ops_mu_ held.
  std::string VolumeState(const std::string& name, Volume* v);
  // NBD connections to the volume's export now.
  int ConnectionsTo(const std::string& name) const;
  void SetTransient(const std::string& name, const std::string& state);
  // Stops the volume's online repair, if one runs, and waits for its thread.
  void StopRepair(const std::string& name);
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
  // Exports `e` under `name` (a forwarded volume; PublishExport for a served one).
  void SetExport(const std::string& name, std::shared_ptr<const Export> e);
  // Stops exporting the volume and closes the connections that use it (a deleted volume, a lost
  // lease), waiting up to 10 s for them to end.
  void Unexport(const std::string& name);

  Config config_;
  // Declared first: outlives everything that reports into it. nbd_collector_ reads server_.
  std::unique_ptr<Metrics> metrics_ = std::make_unique<Metrics>();
  uint64_t nbd_collector_ = 0;
  std::unique_ptr<ProcessLock> lock_;  // held from the start to the end
  std::unique_ptr<Catalog> catalog_;
  std::unique_ptr<BlockCache> cache_;  // cache_size > 0; outlives the volumes (declared first)
  std::unique_ptr<StorageBackend> ssd_dir_;  // cache_dir; outlives the volumes
  // The QoS reservations of every volume (qos_slots); outlives the volumes (declared first).
  std::unique_ptr<QosScheduler> qos_scheduler_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<NbdServer> server_;
  // volumes_ changes only on the main thread, under volumes_mu_; API requests read it under it.
  std::mutex volumes_mu_;
  std::map<std::string, std::unique_ptr<Volume>> volumes_;  // by name
  std::unique_ptr<ApiRouter> api_router_;
  std::unique_ptr<ApiServer> api_;  // stopped first
  std::mutex ops_mu_;               // Poll and API requests, one at a time
  std::mutex state_mu_;
  std::map<std::string, std::string> transient_;  // GUARDED_BY(state_mu_): creating, resizing, deleting
  std::map<std::string, std::shared_ptr<RepairJob>> repairs_;  // GUARDED_BY(state_mu_): the last per volume
  std::map<std::string, std::string> since_;  // GUARDED_BY(state_mu_): health problem -> first seen (UTC)
  std::map<std::string, bool> listening_;                   // volumes with their own listener
  LeaseIdentity identity_;                                  // written into every `.owner`
  std::map<std::string, std::shared_ptr<VolumeLease>> leases_;  // by volume name: held or awaited
  std::map<std::string, std::string> refused_;              // volume -> the holder last logged
  bool stopped_ = false;
  // Attached devices: opened at start when state_dir holds a state file, else at the first attach.
  std::mutex attach_mu_;
  std::unique_ptr<Attacher> attacher_;  // GUARDED_BY(attach_mu_)
  std::string attach_error_;            // GUARDED_BY(attach_mu_): the last re-attach error logged
  // Opens attacher_ if needed (create: even without a state file). REQUIRES: attach_mu_ held.
  Result<Attacher*> AttacherLocked(bool create);
  // Gives every attached device whose connections died fresh ones; logs what fails, once.
  void ReattachDevices();
  // InvalidArgument (EBUSY) naming the device when `name` is attached.
  Status RefuseIfAttached(const std::string& name);
  // The volume's attachment (Attacher::Entry), null when it is not attached. For Health.
  nlohmann::json AttachmentOf(const std::string& name);
  // Attacher::PrepareStop, when there are attached devices.
  void PrepareAttachedStop();
  // Registers qbd_attached_connections and the collector that sets it at each scrape.
  void AddAttachMetrics();
  // At start, after ReattachDevices: activates the LVM thin stack (vgchange -ay) of every
  // attached volume whose .meta asks for one; failures are logged.
  void ActivateLvmStacks();
  // Handing a volume over to another master (master_handoff.cc). A master that wants a volume
  // another one serves (AcquireVolume) writes its identity into "<volnr>/.handoff" on the parts;
  // the serving master, at its next poll, releases the volume if no client is connected to it
  // there (its .owner removed, as at a clean stop) and leaves it alone for a while; the asking
  // master's poll then takes the free lease and removes .handoff.
  //
  // True when the parts hold a request by another master that this one has not answered yet,
  // and the volume has no client here (else logged, once per request). REQUIRES: ops_mu_ held.
  bool HandoffAsked(const VolumeMeta& meta);
  // Unexports and closes `name`, releasing its lease. REQUIRES: ops_mu_ held.
  void HandOff(const std::string& name);
  // True while `name` was handed off recently (it is not taken again meanwhile).
  bool HandedOff(const std::string& name);
  // Removes our own request for `meta`'s volume from its parts, if there is one.
  void ClearHandoff(const VolumeMeta& meta);
 public:
  // Serves `name` here, asking the master that serves it to hand it over (waits up to
  // `timeout_ms`). InvalidArgument with EBUSY, naming the holder, when it did not within that
  // time (it has clients there); NotFound for an unknown volume.
  // With `migration`: served here at once, forwarded to the holder until it lets go.
  Result<nlohmann::json> AcquireVolume(const std::string& name, uint64_t timeout_ms,
                                       bool migration = false) override;

 private:
  struct HandoffState {
    std::string request;     // the request answered (the .handoff text)
    uint64_t until_ms = 0;   // not taken again before this (steady clock)
    std::string busy_logged;  // the request last logged as refused for busy
  };
  std::map<std::string, HandoffState> handoffs_;  // GUARDED_BY(ops_mu_)

  // Live migration (master_handoff.cc). An attach with `migration` of a volume that another master
  // serves to clients forwards this node's requests to that master (ForwardHandler, exported here
  // under the volume's name), and asks for the volume with a request naming the forwarded
  // connections ("mode = migration", "peers = HOST:PORT,..."): the holder does not count them as
  // clients, so it lets go as soon as its own clients left (the source VM's disk detached there).
  // It then closes them and releases the lease; this master's poll takes the lease, opens the
  // volume and switches the handler over to it.
  struct Forwarded {
    std::shared_ptr<ForwardHandler> handler;
    std::string holder;  // LeaseRecord::Describe() of the master forwarded to
    std::string address;  // its NBD listener
    int connections = 1;
    uint64_t since_ms = 0;  // when forwarding started (steady clock)
    uint64_t lost_ms = 0;   // when its connections all ended (0: live)
  };
  std::map<std::string, Forwarded> forwarded_;  // GUARDED_BY(ops_mu_)
  // Starts forwarding `meta`'s volume to its holder with `connections` sockets. False when no
  // other master holds it (then it can be taken the ordinary way); InvalidArgument with EBUSY
  // when the holder cannot be reached from here. REQUIRES: ops_mu_ held.
  Result<bool> StartForwarding(const VolumeMeta& meta, int connections);
  // Writes our request for `meta`'s volume on its parts, with `extra` lines ("key = value\n").
  // REQUIRES: ops_mu_ held.
  Status WriteRequest(const VolumeMeta& meta, const std::string& extra);
  // From PollLocked: switches the forwarded volumes now opened here over to the local volume,
  // and reconnects those whose connections to the holder all ended (the holder restarted).
  void PollForwarded();
  // Ends forwarding `name` (detached, or the attach failed): waiting requests fail with `why`,
  // the export goes, our request is withdrawn. REQUIRES: ops_mu_ held.
  void StopForwarding(const std::string& name, const std::string& why);
  // At start: the attachments made for a migration whose volume another master still holds are
  // forwarded to it again.
  void ResumeForwarding();
  // On the attached `device` of `meta`'s volume: refuses a foreign device, else records the stack
  // in .meta (pv_uuid: the PV's UUID, chosen when empty), provisions it and activates it.
  Status ProvisionLvm(LvmThin& stack, const std::string& device, const VolumeMeta& meta,
                      std::string* pv_uuid);
  // After a volume grew: its attached device takes the new size, and its LVM thin stack (if any)
  // grows with it (pvresize, lvextend). OK when it is not attached.
  Status GrowAttached(const std::string& name, uint64_t size);
  uint64_t attach_collector_ = 0;
};

}  // namespace qbd
