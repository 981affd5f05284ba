#include "qbd/master.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "qbd/log.h"
#include "qbd/volume_files.h"

namespace qbd {

// The exports of the open volumes; read by NBD connection threads, written by the main thread.
namespace {

// The `listen` address other masters use to reach this one (the lease record's nbd): as written,
// with a wildcard host replaced by the host name; "" for a unix socket or port 0.
std::string AdvertisedNbd(const std::string& listen, const std::string& host) {
  auto a = ParseListenAddress(listen);
  if (!a.ok() || a->kind == ListenAddress::Kind::kUnix || a->port == 0) return "";
  if (a->kind == ListenAddress::Kind::kAny || a->host == "0.0.0.0" || a->host == "::") {
    return fmt::format("{}:{}", host, a->port);
  }
  return listen;
}

}  // namespace

class Master::Registry : public ExportRegistry {
 public:
  explicit Registry(std::string default_export) : default_(std::move(default_export)) {}

  std::vector<std::string> List() const override {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<std::string> names;
    for (const auto& [name, e] : exports_) names.push_back(name);
    return names;
  }

  std::shared_ptr<const Export> Find(std::string_view name) const override {
    std::lock_guard<std::mutex> l(mu_);
    std::string n(name);
    if (n.empty()) {
      if (!default_.empty()) {
        n = default_;
      } else if (!exports_.empty()) {
        n = exports_.begin()->first;
      }
    }
    auto it = exports_.find(n);
    return it == exports_.end() ? nullptr : it->second;
  }

  void Set(const std::string& name, std::shared_ptr<const Export> e) {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<std::weak_ptr<const Export>>& pub = published_[name];
    std::erase_if(pub, [](const auto& w) { return w.expired(); });
    pub.push_back(e);
    exports_[name] = std::move(e);
  }
  // NBD connections to the export `name`: every connection holds the Export it was given until it
  // ends (an export republished after a .meta change leaves the old one to its connections).
  int Connections(const std::string& name) const {
    std::lock_guard<std::mutex> l(mu_);
    auto p = published_.find(name);
    if (p == published_.end()) return 0;
    long n = 0;
    for (const auto& w : p->second) n += w.use_count();
    if (exports_.count(name)) --n;  // the registry's own reference
    return static_cast<int>(std::max(0L, n));
  }
  void Remove(const std::string& name) {
    std::lock_guard<std::mutex> l(mu_);
    exports_.erase(name);
  }

 private:
  const std::string default_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<const Export>> exports_;  // GUARDED_BY(mu_)
  std::map<std::string, std::vector<std::weak_ptr<const Export>>> published_;  // GUARDED_BY(mu_)
};

Result<std::unique_ptr<Master>> Master::Start(const Config& config, const MasterOptions& options) {
  // The whole configuration is checked on this host before anything is opened, locked or written
  // (qbd-master's main checked it too; a library caller may not have).
  HostCheck hc;
  hc.local_addresses = true;
  hc.backend_dirs = options.create_volume.empty();  // the demo's parts are created
  QBD_RETURN_IF_ERROR(CheckConfigOnHost(config, hc));
  std::unique_ptr<Master> m(new Master());
  m->config_ = config;
  // One process at a time writes this configuration's volumes (an offline qbd-repair, or us).
  auto lock = ProcessLock::Acquire(config.admin_socket + ".lock", "qbd-master");
  if (!lock.ok() && lock.status().IsUnavailable()) {
    return Status::Unavailable(fmt::format("{}: another qbd-master or an offline qbd-repair runs on this "
                                           "configuration ({})", config.file, lock.status().message()));
  }
  if (!lock.ok()) {
    return lock.status().WithContext(fmt::format("{}: the lock of admin_socket {}", config.file, config.admin_socket));
  }
  m->lock_ = std::move(lock).value();
  std::error_code ec;
  const auto config_path = std::filesystem::absolute(config.file, ec);
  m->identity_ = LeaseIdentity::ForThisProcess(ec ? config.file : config_path.lexically_normal().string(),
                                               config.admin_socket);
  m->identity_.nbd = AdvertisedNbd(config.listen, m->identity_.host);
  m->qos_scheduler_ = std::make_unique<QosScheduler>(config.qos_slots, SteadyClock());
  if (config.cache_size > 0) {
    m->cache_ = std::make_unique<BlockCache>(config.cache_size);
    QBD_LOG_INFO("memory cache: {} (write-through)", FormatSize(config.cache_size));
  }
  if (!config.cache_dir.empty()) {
    auto dir = NewLocalDirBackend(config.cache_dir, /*create_if_missing=*/true);
    if (!dir.ok()) {
      return dir.status().WithContext(fmt::format("{}: cache_dir {}", config.file, config.cache_dir));
    }
    m->ssd_dir_ = std::move(dir).value();
    QBD_LOG_INFO("SSD cache: {}, {} per volume, {}", config.cache_dir, FormatSize(config.cache_dir_size),
                 config.cache_write_back ? "write-back" : "write-through");
  }
  QBD_ASSIGN_OR_RETURN(m->catalog_, Catalog::Open(config, /*create_missing=*/!options.create_volume.empty()));
  // Two parts on one disk or one NFS export die together: refused unless the config says so.
  std::vector<std::string> shared = m->catalog_->SharedFailureDomains();
  if (!shared.empty() && !config.allow_shared_failure_domain) {
    return Status::InvalidArgument(
        fmt::format("{}:{}: {}; losing it loses all their copies. Put each part on its own disk or NFS export, "
                    "or set allow_shared_failure_domain = true",
                    config.file, config.Line("parts"), fmt::join(shared, "; ")));
  }
  for (const std::string& line : shared) {
    QBD_LOG_WARN("{}: losing it loses all their copies (allowed by allow_shared_failure_domain)", line);
  }
  if (!options.create_volume.empty()) {
    auto found = m->catalog_->Find(options.create_volume);
    if (found.status().IsNotFound()) {
      CreateVolumeOptions o;
      o.name = options.create_volume;
      o.size = options.create_size;
      QBD_ASSIGN_OR_RETURN(VolumeMeta made, m->catalog_->Create(o));
      QBD_LOG_INFO("created volume {} ({}, {} replicas)", made.name, FormatSize(made.geometry.size), made.replicas);
    } else if (!found.ok()) {
      return found.status();
    }
  }
  m->registry_ = std::make_unique<Registry>(config.default_export);
  // Every volume is checked and opened before the first client is accepted; a refusal (no good
  // majority of a metadata file) comes before anything is written.
  QBD_RETURN_IF_ERROR(CheckVolumeFiles(*m->catalog_));
  QBD_ASSIGN_OR_RETURN(VolumesIndex idx, m->catalog_->LoadIndex(/*reconcile=*/true));
  std::vector<VolumeMeta> metas;
  for (const auto& [name, nr] : idx.volumes) {
    QBD_ASSIGN_OR_RETURN(VolumeMeta meta, m->catalog_->LoadMeta(nr, /*reconcile=*/true));
    if (meta.name != name) {
      return Status::Corruption(fmt::format("volume number {} is '{}' in .volumesmeta but '{}' in its .meta", nr, name,
                                            meta.name));
    }
    // Before any lease or epoch is written: a volume in format 1 stops the start.
    QBD_RETURN_IF_ERROR(CheckServableFormat(meta));
    metas.push_back(std::move(meta));
  }
  for (auto& served : m->OpenVolumes(metas)) {
    QBD_RETURN_IF_ERROR(served.status());  // false: another master holds it; Poll watches it
  }
  NbdServerOptions so;
  so.threads_per_connection = config.threads_per_connection;
  so.memory_budget = config.nbd_memory;
  so.client_timeout_ms = static_cast<int>(config.client_timeout_ms);
  so.max_connections = config.max_connections;
  m->server_ = std::make_unique<NbdServer>(*m->registry_, so);
  m->nbd_collector_ = m->metrics_->AddCollector([mp = m.get()] {
    mp->metrics_->nbd_connections().Set(static_cast<double>(mp->server_->Connections()));
    mp->metrics_->nbd_memory_used().Set(static_cast<double>(mp->server_->MemoryUsed()));
    mp->metrics_->nbd_memory_limit().Set(static_cast<double>(mp->server_->MemoryLimit()));
  });
  QBD_RETURN_IF_ERROR(m->server_->Listen(config.listen));
  for (auto& [name, vol] : m->volumes_) {
    auto it = config.volume_listen.find(name);
    if (it != config.volume_listen.end()) {
      QBD_RETURN_IF_ERROR(m->server_->Listen(it->second, name));
      m->listening_[name] = true;
    }
  }
  // Before the API answers (and systemd hears READY): the devices of the state file have their
  // connections back and their LVM stacks active, so whoever waits for the daemon finds them so.
  m->ResumeForwarding();
  m->ReattachDevices();
  m->ActivateLvmStacks();
  ApiOptions ao;
  if (!config.api_token_file.empty()) {
    auto token = ReadApiToken(config.api_token_file);
    if (!token.ok()) {
      return Status::InvalidArgument(fmt::format("{}:{}: api_token_file {}", config.file,
                                                 config.Line("api_token_file"), token.status().message()));
    }
    ao.token = *token;
  }
  ao.metrics = [mp = m.get()] { return mp->metrics_->Text(); };
  // Without a token, changes are for root and this daemon's user.
  ao.change_uids = {0, static_cast<uint32_t>(::geteuid())};
  m->api_router_ = std::make_unique<ApiRouter>(*m, std::move(ao));
  auto api = ApiServer::Start(config.api_listen, *m->api_router_);
  if (!api.ok()) return api.status();
  m->api_ = std::move(api).value();
  for (const std::string& a : m->server_->BoundAddresses()) QBD_LOG_INFO("qbd-master: listening on {}", a);
  QBD_LOG_INFO("qbd-master: REST API on http://{}/v1/{}", m->api_->address(),
               config.api_token_file.empty() ? "" : " (bearer token required)");
  m->AddAttachMetrics();
  return m;
}

Master::~Master() { Stop().IgnoreError(); }

int Master::ConnectionsTo(const std::string& name) const { return registry_ ? registry_->Connections(name) : 0; }

std::vector<std::string> Master::BoundAddresses() const { return server_->BoundAddresses(); }

namespace {

// Chunk files each part keeps open: a sixteenth of the file limit (qbd-master raises its soft
// limit to the hard one), from 64 to 1024. A part that has to close files syncs them first, so a
// stream wider than this (4 GiB at the default chunk size) pays a sync per chunk.
size_t OpenFilesPerPart() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 1024;
  return std::clamp<size_t>(rl.rlim_cur / 16, 64, 1024);
}

}  // namespace

std::vector<Result<bool>> Master::OpenVolumes(const std::vector<VolumeMeta>& metas) {
  std::vector<std::shared_ptr<VolumeLease>> leases;
  std::vector<VolumeLease::Progress> progress;
  for (const VolumeMeta& meta : metas) {
    std::shared_ptr<VolumeLease>& lease = leases_[meta.name];
    if (!lease) {
      LeaseOptions lo;
      lo.lease_ms = config_.lease_ms;
      lo.renew_ms = config_.lease_renew_ms;
      lease = std::make_shared<VolumeLease>(meta.number, meta.name, catalog_->BackendsFor(meta), identity_, lo,
                                            SteadyClock());
    }
    leases.push_back(lease);
    progress.push_back(lease->Acquire());
  }
  for (;;) {
    // Our records are written: each is read back lease_renew_ms / 2 later, all in one wait.
    uint64_t until = 0;
    for (const auto& p : progress) {
      if (p.phase == VolumeLease::Phase::kVerifying) until = std::max(until, p.retry_at_ms);
    }
    if (until == 0) break;
    const uint64_t now = SteadyClock().NowMs();
    if (until > now) std::this_thread::sleep_for(std::chrono::milliseconds(until - now));
    for (size_t i = 0; i < metas.size(); ++i) {
      if (progress[i].phase == VolumeLease::Phase::kVerifying) progress[i] = leases[i]->Acquire();
    }
  }
  std::vector<Result<bool>> out;
  for (size_t i = 0; i < metas.size(); ++i) out.push_back(FinishOpen(metas[i], leases[i], progress[i]));
  return out;
}

Result<bool> Master::FinishOpen(const VolumeMeta& meta, std::shared_ptr<VolumeLease> lease,
                                 const VolumeLease::Progress& p) {
  if (p.phase != VolumeLease::Phase::kHeld) {
    if (refused_[meta.name] != p.holder) {
      QBD_LOG_WARN("volume {}: not served: its lease is held by {}; it is taken over once that lease stays "
                   "unchanged on a majority of the parts for lease_ms + lease_renew_ms",
                   meta.name, p.holder);
      refused_[meta.name] = p.holder;
    }
    return false;
  }
  refused_.erase(meta.name);
  if (!p.previous.empty()) {
    QBD_LOG_WARN("volume {}: lease taken over from {} after it stayed unchanged for {} ms by our clock (lease_ms {}, "
                 "lease_renew_ms {}); the epoch is bumped",
                 meta.name, p.previous, p.waited_ms, config_.lease_ms, config_.lease_renew_ms);
  }
  lease->StartRenewing();
  VolumeOpenOptions vo;
  vo.lease = lease;
  vo.max_open_files_per_part = OpenFilesPerPart();
  vo.resync_bytes_per_sec = uint64_t{config_.resync_mb_per_s} * 1000 * 1000;
  vo.compare_bytes_per_sec = uint64_t{config_.compare_mb_per_s} * 1000 * 1000;
  vo.cache = cache_.get();
  vo.metrics = metrics_.get();
  vo.qos_scheduler = qos_scheduler_.get();
  vo.ssd_dir = ssd_dir_.get();
  vo.ssd.log_size = config_.cache_dir_size;
  vo.ssd.write_back = config_.cache_write_back;
  vo.ssd.dirty_max = config_.cache_dirty_max;
  vo.ssd.destage_delay_ms = config_.cache_destage_delay_ms;
  auto vol = Volume::Open(meta, catalog_->BackendsFor(meta), vo);
  if (!vol.ok()) {
    lease->Release().IgnoreError();  // the open's error is what matters
    leases_.erase(meta.name);
    return vol.status();
  }
  PublishExport(meta.name, **vol);
  std::lock_guard<std::mutex> l(volumes_mu_);
  volumes_[meta.name] = std::move(vol).value();
  return true;
}

void Master::DropLostVolumes() {
  for (auto it = volumes_.begin(); it != volumes_.end();) {
    VolumeLease* lease = it->second->lease();
    if (lease == nullptr || !lease->lost()) {
      ++it;
      continue;
    }
    QBD_LOG_ERROR("volume {}: unexported: its lease went to {}", it->first, lease->lost_to());
    Unexport(it->first);
    std::lock_guard<std::mutex> l(volumes_mu_);
    it->second->Close().IgnoreError();  // writes nothing: the volume is another master's now
    leases_.erase(it->first);
    it = volumes_.erase(it);
  }
}

void Master::Unexport(const std::string& name) {
  registry_->Remove(name);
  if (!server_) return;
  // A handshake that found the export just before may still pick it: repeat until none is left.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  size_t closed = 0;
  while (ConnectionsTo(name) > 0 && std::chrono::steady_clock::now() < deadline) {
    closed += server_->Disconnect(name);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (closed > 0) QBD_LOG_INFO("volume {}: {} client connection(s) closed", name, closed);
  if (int left = ConnectionsTo(name); left > 0) {
    QBD_LOG_WARN("volume {}: {} connection(s) still open after 10 s", name, left);
  }
}

void Master::SetExport(const std::string& name, std::shared_ptr<const Export> e) {
  registry_->Set(name, std::move(e));
}

void Master::PublishExport(const std::string& name, Volume& volume) {
  auto e = std::make_shared<Export>();
  e->name = name;
  e->description = fmt::format("qbd volume {} ({} replicas)", volume.meta().number, volume.meta().replicas);
  e->read_only = volume.meta().read_only;
  e->min_block = 1;
  e->preferred_block = volume.meta().geometry.block_size;
  e->max_payload = kMaxPayload;
  e->handler = volume.handler();
  registry_->Set(name, std::move(e));
}

Status Master::Poll() {
  std::lock_guard<std::mutex> ops(ops_mu_);
  return PollLocked();
}

uint32_t Master::PollIntervalMs() {
  std::lock_guard<std::mutex> ops(ops_mu_);
  return forwarded_.empty() ? config_.volume_poll_ms : std::min<uint32_t>(config_.volume_poll_ms, 200);
}

Status Master::PollLocked() {
  if (stopped_) return Status::OK();
  ReattachDevices();
  DropLostVolumes();
  auto idx = catalog_->LoadIndex(/*reconcile=*/true);
  if (!idx.ok()) {
    QBD_LOG_WARN("volume poll: {}", idx.status().ToString());
    return idx.status();
  }
  // Volumes removed from the index: stop exporting them, then close them.
  for (auto it = volumes_.begin(); it != volumes_.end();) {
    if (idx->Find(it->first) == it->second->meta().number) {
      ++it;
      continue;
    }
    QBD_LOG_INFO("volume {}: no longer listed in .volumesmeta: unexported", it->first);
    const std::string name = it->first;
    Unexport(name);
    {
      std::lock_guard<std::mutex> l(volumes_mu_);
      it->second->Close().IgnoreError();  // its files are being deleted
      it = volumes_.erase(it);
    }
    // Its series go with it, unless a connection that would not end still holds its chain.
    if (ConnectionsTo(name) == 0) metrics_->RemoveVolume(name);
  }
  // Volumes awaited and no longer listed: nothing of ours is on their parts.
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (idx->Find(it->first) == 0 && volumes_.count(it->first) == 0) {
      refused_.erase(it->first);
      it = leases_.erase(it);
    } else {
      ++it;
    }
  }
  std::vector<VolumeMeta> to_open;
  std::vector<std::string> to_hand_off;
  for (const auto& [name, nr] : idx->volumes) {
    auto meta = catalog_->LoadMeta(nr, /*reconcile=*/true);
    if (!meta.ok()) {
      QBD_LOG_WARN("volume {}: {}", name, meta.status().ToString());
      continue;
    }
    auto it = volumes_.find(name);
    if (it == volumes_.end()) {
      Status f = CheckServableFormat(*meta);
      if (!f.ok()) {
        QBD_LOG_ERROR("{}", f.message());  // nothing of it written
        continue;
      }
      if (HandedOff(name)) continue;  // left to the master that asked for it, for a while
      to_open.push_back(std::move(*meta));  // opened together below
      continue;
    }
    if (HandoffAsked(*meta)) {
      to_hand_off.push_back(name);  // released below, after this loop
      continue;
    }
    Volume& v = *it->second;
    if (meta->serial != v.meta().serial) {
      bool ro_changed = meta->read_only != v.meta().read_only;
      v.ApplyMeta(*meta);
      if (ro_changed) {
        QBD_LOG_INFO("volume {}: read-only {} for new connections", name, meta->read_only ? "on" : "off");
      }
      PublishExport(name, v);
    }
    // Chunks first written since the last poll reach the chunk map copies on disk even when no
    // client flushes (logged by the call when it fails); not while fenced.
    const VolumeLease* lease = v.lease();
    if (lease == nullptr || lease->clock().NowMs() < lease->valid_until().load(std::memory_order_acquire)) {
      v.quorum().PersistChunkMap().IgnoreError();
    }
  }
  for (const std::string& name : to_hand_off) HandOff(name);
  std::vector<Result<bool>> served = OpenVolumes(to_open);
  for (size_t i = 0; i < to_open.size(); ++i) {
    const std::string& name = to_open[i].name;
    if (!served[i].ok()) {
      QBD_LOG_ERROR("volume {}: cannot open: {}", name, served[i].status().ToString());
      continue;
    }
    if (!*served[i]) continue;  // another master holds it
    QBD_LOG_INFO("volume {}: exported", name);
    ClearHandoff(to_open[i]);  // ours now: a request of ours is answered
    auto l = config_.volume_listen.find(name);
    if (l != config_.volume_listen.end() && !listening_[name]) {
      Status ls = server_->Listen(l->second, name);
      if (ls.ok()) {
        listening_[name] = true;
      } else {
        QBD_LOG_ERROR("volume {}: listen {}: {}", name, l->second, ls.ToString());
      }
    }
  }
  PollForwarded();
  return Status::OK();
}

Status Master::Stop() {
  // API requests end first: none may start a repair or a poll while the volumes close.
  api_.reset();
  std::vector<std::string> repairing;
  {
    std::lock_guard<std::mutex> l(state_mu_);
    for (const auto& [name, job] : repairs_) repairing.push_back(name);
  }
  for (const std::string& name : repairing) StopRepair(name);
  std::lock_guard<std::mutex> ops(ops_mu_);
  if (stopped_) return Status::OK();
  stopped_ = true;
  PrepareAttachedStop();
  if (server_) server_->Stop();
  if (nbd_collector_ != 0) metrics_->RemoveCollector(nbd_collector_);
  nbd_collector_ = 0;
  if (attach_collector_ != 0) metrics_->RemoveCollector(attach_collector_);
  attach_collector_ = 0;
  Status result;
  for (auto& [name, vol] : volumes_) {
    Status s = vol->Close();
    if (!s.ok()) {
      QBD_LOG_ERROR("volume {}: final flush failed: {}", name, s.ToString());
      if (result.ok()) result = s;
    }
  }
  {
    std::lock_guard<std::mutex> l(volumes_mu_);
    volumes_.clear();
  }
  leases_.clear();
  if (cache_) QBD_LOG_INFO("{}", cache_->Summary());
  return result;
}

}  // namespace qbd
