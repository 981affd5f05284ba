// Master's side of the REST API (ApiService, api.h): the volumes' JSON, their lifecycle state,
// the health view and online repairs. Changes go through the Catalog functions qbdctl uses, then
// through PollLocked, the one path by which the daemon opens, resizes and closes volumes.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <ctime>
#include <set>
#include <thread>

#include "qbd/backend_check.h"
#include "qbd/chunk_format.h"
#include "qbd/inspect.h"
#include "qbd/log.h"
#include "qbd/master.h"
#include "qbd/views.h"

namespace qbd {

using nlohmann::json;

// One online repair: every chunk of a volume through QuorumSet::RepairChunk, in order.
struct Master::RepairJob {
  std::thread thread;
  std::atomic<bool> stop{false};
  std::atomic<bool> running{true};
  std::atomic<uint64_t> chunks_done{0};
  uint64_t chunks_total = 0;
  std::atomic<uint64_t> repaired{0};  // repair actions done (a chunk file or blocks rewritten)
  std::atomic<uint64_t> lost_blocks{0};
  std::atomic<uint64_t> unknown_blocks{0};
  std::atomic<uint64_t> failed_chunks{0};
  std::string started;
  std::mutex mu;
  std::string error;  // GUARDED_BY(mu): the last chunk's failure, or why it ended early
};

namespace {

std::string NowUtc() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

}  // namespace

void Master::SetTransient(const std::string& name, const std::string& state) {
  std::lock_guard<std::mutex> l(state_mu_);
  if (state.empty()) {
    transient_.erase(name);
  } else {
    transient_[name] = state;
  }
}

std::string Master::VolumeState(const std::string& name, Volume* v) {
  {
    std::lock_guard<std::mutex> l(state_mu_);
    auto t = transient_.find(name);
    if (t != transient_.end()) return t->second;
    auto r = repairs_.find(name);
    if (r != repairs_.end() && r->second->running.load()) return "repairing";
  }
  if (v != nullptr) {
    QuorumSet& q = v->quorum();
    const uint32_t nr = v->meta().number;
    for (size_t i = 0; i < q.part_count(); ++i) {
      if (q.PartState(i) != "up" || q.DirtyRegions(i) != 0) return "degraded";
      // As Health sees it: a part directory that went away, before any request finds out.
      auto dir = catalog_->part_backend(i).Stat(PartDir(nr, static_cast<char>('a' + i)));
      if (!dir.ok() || !dir->is_dir) return "degraded";
    }
    if (ConnectionsTo(name) > 0) return "in use";
  }
  return "ready";
}

Result<json> Master::VolumeJson(const std::string& name) {
  QBD_ASSIGN_OR_RETURN(VolumeMeta m, catalog_->Find(name));
  json j = VolumeBaseJson(m, *catalog_);
  auto it = volumes_.find(name);
  Volume* v = it == volumes_.end() ? nullptr : it->second.get();
  j["state"] = VolumeState(name, v);
  j["served"] = v != nullptr;
  j["connections"] = ConnectionsTo(name);
  if (auto f = forwarded_.find(name); f != forwarded_.end()) j["forwarded_to"] = f->second.holder;
  if (v != nullptr) {
    j["lease"] = {{"holder", LeaseRecord{identity_, m.number, 0, 0, 0}.Describe()}, {"ours", true}};
  } else if (auto r = refused_.find(name); r != refused_.end()) {
    j["lease"] = {{"holder", r->second}, {"ours", false}};
  } else {
    j["lease"] = nullptr;
  }
  uint64_t dirty_total = 0;
  for (uint32_t i = 0; i < m.replicas; ++i) {
    json& p = j["parts"][i];
    if (v != nullptr) {
      QuorumSet& q = v->quorum();
      const uint64_t dirty =
          std::min<uint64_t>(q.DirtyRegions(i) * q.region_size(), m.geometry.size);
      dirty_total += dirty;
      p["state"] = q.PartState(i);
      p["dirty_bytes"] = dirty;
    } else {
      p["state"] = "not served";
      p["dirty_bytes"] = nullptr;
    }
  }
  if (v != nullptr) {
    const QuorumCounters& c = v->quorum().counters();
    j["resync"] = {{"dirty_bytes", dirty_total},
                   {"resynced_bytes", c.resynced_bytes.load()},
                   {"chunks_to_compare", v->quorum().ChunksToReconcile()}};
  } else {
    j["resync"] = nullptr;
  }
  std::shared_ptr<RepairJob> job;
  {
    std::lock_guard<std::mutex> l(state_mu_);
    if (auto r = repairs_.find(name); r != repairs_.end()) job = r->second;
  }
  if (job) {
    std::lock_guard<std::mutex> l(job->mu);
    j["repair"] = {{"running", job->running.load()},
                   {"started", job->started},
                   {"chunks_done", job->chunks_done.load()},
                   {"chunks_total", job->chunks_total},
                   {"repaired", job->repaired.load()},
                   {"lost_blocks", job->lost_blocks.load()},
                   {"unknown_blocks", job->unknown_blocks.load()},
                   {"failed_chunks", job->failed_chunks.load()},
                   {"error", job->error}};
  } else {
    j["repair"] = nullptr;
  }
  return j;
}

Result<json> Master::ListVolumes() {
  std::lock_guard<std::mutex> ops(ops_mu_);
  QBD_ASSIGN_OR_RETURN(VolumesIndex idx, catalog_->LoadIndex());
  json list = json::array();
  for (const auto& [name, nr] : idx.volumes) {
    auto m = catalog_->LoadMeta(nr);
    if (!m.ok()) {
      list.push_back({{"name", name}, {"number", nr}, {"error", m.status().message()}});
      continue;
    }
    auto it = volumes_.find(name);
    list.push_back(VolumeSummaryJson(
        *m, VolumeState(name, it == volumes_.end() ? nullptr : it->second.get()),
        it != volumes_.end()));
  }
  return json{{"volumes", std::move(list)}};
}

Result<json> Master::GetVolume(const std::string& name) {
  std::lock_guard<std::mutex> ops(ops_mu_);
  return VolumeJson(name);
}

Result<json> Master::CreateVolume(const CreateVolumeOptions& options) {
  std::lock_guard<std::mutex> ops(ops_mu_);
  if (stopped_) return Status::Unavailable("qbd-master is stopping");
  SetTransient(options.name, "creating");
  auto made = catalog_->Create(options);
  if (made.ok()) {
    QBD_LOG_INFO("volume {}: created through the API ({}, {} replicas)", made->name,
                 FormatSize(made->geometry.size), made->replicas);
    PollLocked().IgnoreError();  // logged by it; the reply says whether the volume is served
  }
  SetTransient(options.name, "");
  if (!made.ok()) return made.status();
  return VolumeJson(options.name);
}

Result<json> Master::UpdateVolume(const std::string& name, const VolumeUpdate& u) {
  std::lock_guard<std::mutex> ops(ops_mu_);
  if (stopped_) return Status::Unavailable("qbd-master is stopping");
  QBD_ASSIGN_OR_RETURN(VolumeMeta m, catalog_->Find(name));
  Status s;
  if (u.size && *u.size != m.geometry.size) {
    SetTransient(name, "resizing");
    s = catalog_->Resize(name, *u.size);
  }
  if (s.ok() && u.read_only && *u.read_only != m.read_only)
    s = catalog_->SetFlag(name, "read-only", *u.read_only);
  if (s.ok() && u.append_only && *u.append_only != m.append_only) {
    s = catalog_->SetFlag(name, "append-only", *u.append_only);
  }
  if (s.ok() && u.qos) s = catalog_->SetQos(name, *u.qos);
  // What was written applies to the running volume now, even when a later change failed.
  PollLocked().IgnoreError();  // logged by it
  if (s.ok() && u.size && *u.size > m.geometry.size) {
    // Its kernel device and LVM stack, when attached, grow with it.
    Status g = GrowAttached(name, *u.size);
    if (!g.ok()) {
      QBD_LOG_ERROR("volume {}: grown, but not its attached device: {}", name, g.ToString());
      s = Status::IOError(fmt::format(
          "volume {} grew to {} bytes, but its attached device did not follow: {}", name, *u.size,
          g.message()));
    }
  }
  SetTransient(name, "");
  if (!s.ok()) return s;
  return VolumeJson(name);
}

Status Master::DeleteVolume(const std::string& name, bool force) {
  std::lock_guard<std::mutex> ops(ops_mu_);
  if (stopped_) return Status::Unavailable("qbd-master is stopping");
  QBD_RETURN_IF_ERROR(catalog_->Find(name).status());  // NotFound
  QBD_RETURN_IF_ERROR(RefuseIfAttached(name));         // even forced: detach first
  const int clients = ConnectionsTo(name);
  if (clients > 0 && !force) {
    return Status::InvalidArgument(
        fmt::format(
            "volume {} has {} connected client(s); disconnect them, or DELETE with ?force=1", name,
            clients),
        EBUSY);
  }
  SetTransient(name, "deleting");
  StopRepair(name);
  // Unlisted first, so the poll unexports and closes it; then its files go.
  auto nr = catalog_->Unlist(name);
  Status s = nr.status();
  if (nr.ok()) {
    PollLocked().IgnoreError();  // logged by it
    s = catalog_->RemoveFiles(*nr);
    QBD_LOG_INFO("volume {}: deleted through the API{}", name,
                 clients > 0 ? fmt::format(" (forced, {} client(s) were connected)", clients) : "");
  }
  SetTransient(name, "");
  {
    std::lock_guard<std::mutex> l(state_mu_);
    repairs_.erase(name);
  }
  return s;
}

void Master::StopRepair(const std::string& name) {
  std::shared_ptr<RepairJob> job;
  {
    std::lock_guard<std::mutex> l(state_mu_);
    auto it = repairs_.find(name);
    if (it == repairs_.end()) return;
    job = it->second;
  }
  job->stop.store(true);
  if (job->thread.joinable() && job->thread.get_id() != std::this_thread::get_id())
    job->thread.join();
}

Result<json> Master::StartRepair(const std::string& name) {
  std::lock_guard<std::mutex> ops(ops_mu_);
  if (stopped_) return Status::Unavailable("qbd-master is stopping");
  QBD_RETURN_IF_ERROR(catalog_->Find(name).status());  // NotFound
  auto it = volumes_.find(name);
  if (it == volumes_.end()) {
    return Status::InvalidArgument(
        fmt::format("volume {} is not served by this qbd-master (its lease holder repairs it)",
                    name),
        EBUSY);
  }
  {
    std::lock_guard<std::mutex> l(state_mu_);
    auto r = repairs_.find(name);
    if (r != repairs_.end() && r->second->running.load()) {
      return Status::InvalidArgument(fmt::format("volume {}: a repair is already running", name),
                                     EBUSY);
    }
  }
  StopRepair(name);  // joins the finished one's thread
  auto job = std::make_shared<RepairJob>();
  job->chunks_total = it->second->quorum().ChunkCount();
  job->started = NowUtc();
  {
    std::lock_guard<std::mutex> l(state_mu_);
    repairs_[name] = job;
  }
  QBD_LOG_INFO("volume {}: online repair of {} chunk(s) started through the API", name,
               job->chunks_total);
  RepairJob* jp = job.get();
  job->thread = std::thread([this, name, jp] {
    for (uint64_t c = 0; c < jp->chunks_total && !jp->stop.load(); ++c) {
      // Under volumes_mu_ as the admin socket's repair: the volume cannot close meanwhile.
      std::lock_guard<std::mutex> l(volumes_mu_);
      auto v = volumes_.find(name);
      if (v == volumes_.end()) {
        std::lock_guard<std::mutex> e(jp->mu);
        jp->error = "the volume was closed";
        break;
      }
      auto r = v->second->quorum().RepairChunk(c, RepairOptions{});
      if (!r.ok()) {
        jp->failed_chunks++;
        std::lock_guard<std::mutex> e(jp->mu);
        jp->error = fmt::format("chunk {}: {}", c, r.status().ToString());
      } else {
        jp->repaired += r->actions.size();
        jp->lost_blocks += r->lost.size();
        jp->unknown_blocks += r->unknown.size();
      }
      jp->chunks_done = c + 1;
    }
    if (jp->stop.load()) {
      std::lock_guard<std::mutex> e(jp->mu);
      if (jp->error.empty()) jp->error = "stopped";
    }
    QBD_LOG_INFO(
        "volume {}: online repair ended: {} of {} chunk(s), {} repair(s), {} lost block(s), {} "
        "failed chunk(s)",
        name, jp->chunks_done.load(), jp->chunks_total, jp->repaired.load(), jp->lost_blocks.load(),
        jp->failed_chunks.load());
    jp->running.store(false);
  });
  return VolumeJson(name);
}

Result<json> Master::RepairChunk(const std::string& name, uint64_t chunk,
                                 const RepairOptions& options) {
  // Not under ops_mu_: a chunk repair takes a while and needs only its volume to stay open.
  std::lock_guard<std::mutex> l(volumes_mu_);
  auto it = volumes_.find(name);
  if (it == volumes_.end()) {
    QBD_RETURN_IF_ERROR(catalog_->Find(name).status());  // NotFound
    return Status::InvalidArgument(
        fmt::format("volume {} is not served by this qbd-master (its lease holder repairs it)",
                    name),
        EBUSY);
  }
  QuorumSet& q = it->second->quorum();
  if (chunk >= q.ChunkCount()) {
    return Status::InvalidArgument(fmt::format("volume {} has {} chunk(s): chunk {} is past its end",
                                               name, q.ChunkCount(), chunk));
  }
  QBD_ASSIGN_OR_RETURN(ChunkRepairReport r, q.RepairChunk(chunk, options));
  return RepairReportJson(r);
}

Result<json> Master::Daemon() {
  json listen = json::array();
  if (server_) {
    for (const std::string& a : server_->BoundAddresses()) listen.push_back(a);
  }
  return json{{"service", "qbd-master"},
              {"pid", ::getpid()},
              {"config", identity_.config},
              {"started", identity_.started},
              {"nbd_listen", std::move(listen)},
              {"api_listen", ApiAddress()},
              {"connections", server_ ? server_->Connections() : 0}};
}

Result<json> Master::Backends() { return CheckBackends(config_); }

Result<json> Master::Block(const std::string& name, uint64_t offset) {
  std::lock_guard<std::mutex> ops(ops_mu_);
  QBD_ASSIGN_OR_RETURN(VolumeMeta m, catalog_->Find(name));
  QBD_ASSIGN_OR_RETURN(BlockView v, InspectBlock(m, catalog_->BackendsFor(m), offset));
  json j = json::parse(FormatBlockJson(v), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Status::IOError("the block's JSON did not parse");
  // qbdctl prints it as it would offline; a client reads the fields.
  j["text"] = FormatBlockText(v);
  j["readable"] = v.Readable();
  return j;
}

Result<json> Master::Health() {
  std::lock_guard<std::mutex> ops(ops_mu_);
  std::set<std::string> seen;  // keys of the problems found now
  // One problem: its key (for `since`), what, where, what to do.
  auto problem = [&](const std::string& key, const std::string& status, const std::string& what,
                     const std::string& part, const std::string& backend,
                     const std::string& action) {
    seen.insert(key);
    std::string since;
    {
      std::lock_guard<std::mutex> l(state_mu_);
      auto [it, added] = since_.emplace(key, NowUtc());
      since = it->second;
    }
    return Problem(status, what, part, backend, since, action);
  };
  const std::string conf = config_.file;
  int overall = 0;
  json daemon_problems = json::array();
  json vols = json::array();
  auto idx = catalog_->LoadIndex();
  if (!idx.ok()) {
    daemon_problems.push_back(
        problem("index", "degraded", idx.status().message(), "", "",
                fmt::format("qbd-verify --config {}; then qbd-repair --config {}", conf, conf)));
    overall = 1;
  }
  for (const auto& [name, nr] : idx.ok() ? idx->volumes : std::map<std::string, uint32_t>{}) {
    Problems problems;
    auto add = [&](json p) { problems.Add(std::move(p)); };
    const std::string verify = fmt::format("qbd-verify --config {} {}", conf, name);
    const std::string repair = fmt::format("qbd-repair --config {} {}", conf, name);
    auto m = catalog_->LoadMeta(nr);
    auto it = volumes_.find(name);
    if (!m.ok()) {
      add(problem(name + "|meta", "degraded", m.status().message(), "", "",
                  fmt::format("{}; {} rewrites the bad copies", verify, repair)));
    } else if (it != volumes_.end()) {
      QuorumSet& q = it->second->quorum();
      size_t up = 0;
      for (uint32_t i = 0; i < m->replicas && i < q.part_count(); ++i) {
        const std::string part(1, static_cast<char>('a' + i));
        StorageBackend& b = catalog_->part_backend(i);
        const std::string where = b.Describe();
        const std::string state = q.PartState(i);
        // A part's directory that went away shows here even before a request touches it.
        auto dir = b.Stat(fmt::format("{}/{}", nr, part));
        if (state != "up" && state != "resyncing") {
          add(problem(
              name + "|" + part + "|state", "degraded", fmt::format("part {} is {}", part, state),
              part, where,
              fmt::format(
                  "bring back backend {} (mount, NFS server, space); qbd-master resyncs the part "
                  "when it answers again; then {}",
                  where, verify)));
        } else {
          ++up;
          if (!dir.ok() || !dir->is_dir) {
            add(problem(
                name + "|" + part + "|dir", "degraded",
                fmt::format("part {}'s directory {}/{}/{} is gone: {}", part, where, nr, part,
                            dir.ok() ? "not a directory" : dir.status().message()),
                part, where,
                fmt::format(
                    "restore it (is the disk mounted?); if it is lost for good, {} rebuilds it",
                    repair)));
          }
        }
        const uint64_t dirty = q.DirtyRegions(i);
        if (dirty != 0) {
          add(problem(
              name + "|" + part + "|dirty", "degraded",
              fmt::format("part {}: {} region(s) ({} bytes) of writes await resync", part, dirty,
                          dirty * q.region_size()),
              part, where,
              fmt::format(
                  "none while the part is up: qbd-master resyncs it (resync_mb_per_s); if it "
                  "stays, {}",
                  repair)));
        }
      }
      if (up < m->EffectiveWriteQuorum()) {
        add(problem(name + "|quorum", "degraded",
                    fmt::format("{} of {} parts up, write quorum {}: writes fail", up, m->replicas,
                                m->EffectiveWriteQuorum()),
                    "", "", "bring back the parts named above"));
      }
      if (up == 0) {
        add(problem(name + "|noparts", "data_lost",
                    "no part of the volume is in reach: its data cannot be read", "", "",
                    "bring back the parts named above; then " + verify));
      }
    }
    {
      std::shared_ptr<RepairJob> job;
      {
        std::lock_guard<std::mutex> l(state_mu_);
        if (auto r = repairs_.find(name); r != repairs_.end()) job = r->second;
      }
      if (job && !job->running.load() && job->lost_blocks.load() > 0) {
        add(problem(
            name + "|lost", "data_lost",
            fmt::format("the last repair found {} block(s) without a good copy on any part",
                        job->lost_blocks.load()),
            "", "",
            fmt::format("restore them from a backup, or accept the loss: qbd-repair --config {} "
                        "--accept-loss {}",
                        conf, name)));
      }
    }
    const json attached = AttachmentOf(name);  // null: not attached as a kernel device
    if (!attached.is_null() && (!attached.value("connected", false) ||
                                attached.value("live", 0) < attached.value("connections", 0))) {
      add(problem(name + "|attach", "degraded",
                  fmt::format("{} has {} of its {} connections", attached.value("device", ""),
                              attached.value("live", 0), attached.value("connections", 0)),
                  "", "", "qbd-master reconnects it at every volume poll: see its log"));
    }
    if (auto f = forwarded_.find(name); f != forwarded_.end()) {
      auto remote = f->second.handler->remote();
      if (remote && remote->Live() == 0) {
        add(problem(name + "|forward", "degraded",
                    fmt::format("forwarded for a live migration, but its connections to {} at {} ended; "
                                "{} request(s) wait for it to be taken over",
                                f->second.holder, f->second.address, f->second.handler->Waiting()),
                    "", "",
                    "it is taken over once the holder released it (its clients gone), or its lease "
                    "ran out: see both masters' logs"));
      }
    }
    overall = std::max(overall, problems.severity);
    json vj = {{"name", name},
               {"status", HealthStatusName(problems.severity)},
               {"problems", std::move(problems.list)}};
    vj["served"] = it != volumes_.end();
    if (!attached.is_null()) vj["attachment"] = attached;
    if (it == volumes_.end()) {
      if (auto r = refused_.find(name); r != refused_.end()) vj["served_by"] = r->second;
      if (auto f = forwarded_.find(name); f != forwarded_.end()) vj["forwarded_to"] = f->second.holder;
    }
    vols.push_back(std::move(vj));
  }
  {
    std::lock_guard<std::mutex> l(state_mu_);
    std::erase_if(since_, [&](const auto& kv) { return !seen.count(kv.first); });
  }
  return json{{"status", HealthStatusName(overall)},
              {"pid", ::getpid()},
              {"problems", std::move(daemon_problems)},
              {"volumes", std::move(vols)}};
}

}  // namespace qbd
