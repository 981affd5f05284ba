// Master's handing of volumes between masters of one set of backends (master.h): the request
// file "<volnr>/.handoff" on the volume's parts, the release by the serving master, the take-over
// by the asking one (POST /v1/volumes/NAME/acquire, and attach).
#include <fmt/format.h>

#include <chrono>
#include <thread>

#include "qbd/chunk_format.h"
#include "qbd/log.h"
#include "qbd/master.h"
#include "qbd/nbd_remote.h"
#include "qbd/nbd_wire.h"

namespace qbd {

using nlohmann::json;

namespace {

std::string HandoffPath(uint32_t volnr) { return fmt::format("{}/.handoff", volnr); }

uint64_t NowMs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// The request on the parts: the first non-empty .handoff a part holds ("" when none).
std::string ReadRequest(const std::vector<StorageBackend*>& parts, uint32_t volnr) {
  for (StorageBackend* b : parts) {
    auto text = ReadSmallFile(*b, HandoffPath(volnr));
    if (text.ok() && !text->empty()) return *text;
  }
  return "";
}

// The value of "KEY = VALUE" in a request, `otherwise` when it has none: "owner" (the asking
// master's owner id, hex) and "by" (who it is, for messages).
std::string RequestField(const std::string& request, const std::string& key,
                         const std::string& otherwise = "") {
  const std::string k = key + " = ";
  size_t p = request.find(k);
  if (p == std::string::npos) return otherwise;
  size_t e = request.find('\n', p);
  return request.substr(p + k.size(), e == std::string::npos ? std::string::npos : e - p - k.size());
}

std::string RequestOwner(const std::string& request) { return RequestField(request, "owner"); }

std::string RequestBy(const std::string& request) {
  return RequestField(request, "by", "another qbd-master");
}

// "[::ffff:A.B.C.D]:P" (an IPv4 client of an IPv6 listener) as "A.B.C.D:P".
std::string NormalizePeer(const std::string& p) {
  const std::string mapped = "[::ffff:";
  if (p.rfind(mapped, 0) != 0) return p;
  size_t close = p.find("]:");
  if (close == std::string::npos || p.find('.') == std::string::npos) return p;
  return p.substr(mapped.size(), close - mapped.size()) + p.substr(close + 1);
}

// The connections a migration request forwards from its master ("peers = A,B"), of `peers`.
int ForwardedFrom(const std::string& request, const std::vector<std::string>& peers) {
  if (RequestField(request, "mode") != "migration") return 0;
  const std::string listed = "," + RequestField(request, "peers") + ",";
  int n = 0;
  for (const std::string& p : peers) {
    if (listed.find("," + NormalizePeer(p) + ",") != std::string::npos) ++n;
  }
  return n;
}

}  // namespace

bool Master::HandoffAsked(const VolumeMeta& meta) {
  const std::string request = ReadRequest(catalog_->BackendsFor(meta), meta.number);
  if (request.empty() || RequestOwner(request) == fmt::format("{:016x}", identity_.owner)) return false;
  HandoffState& st = handoffs_[meta.name];
  if (st.request == request) return false;  // answered already (a stale request stays answered)
  // The connections forwarded from the asking master (a live migration) are its clients, not ours.
  const int forwarded = server_ ? ForwardedFrom(request, server_->Peers(meta.name)) : 0;
  const int clients = ConnectionsTo(meta.name) - forwarded;
  if (clients > 0 || !RefuseIfAttached(meta.name).ok()) {
    if (st.busy_logged != request) {
      QBD_LOG_WARN("volume {}: {} asks for it{}, but {} client(s) use it here{}: kept until they leave",
                   meta.name, RequestBy(request),
                   forwarded > 0 ? fmt::format(" (a live migration: {} connection(s) forwarded from it)", forwarded)
                                 : "",
                   clients, RefuseIfAttached(meta.name).ok() ? "" : " (attached as a kernel device)");
      st.busy_logged = request;
    }
    return false;
  }
  st.request = request;
  if (forwarded > 0) {
    QBD_LOG_INFO("volume {}: no client of ours left: its {} forwarded connection(s) close and {} takes it over",
                 meta.name, forwarded, RequestBy(request));
  }
  return true;
}

void Master::HandOff(const std::string& name) {
  HandoffState& st = handoffs_[name];
  Unexport(name);
  {
    std::lock_guard<std::mutex> l(volumes_mu_);
    auto it = volumes_.find(name);
    if (it != volumes_.end()) {
      Status s = it->second->Close();  // flushes, then removes our .owner where it names us
      if (!s.ok()) QBD_LOG_ERROR("volume {}: handed over, but its close: {}", name, s.ToString());
      volumes_.erase(it);
    }
  }
  leases_.erase(name);
  // Not taken again until the asking master had time to take it (its polls, a lease round).
  st.until_ms = NowMs() + 2 * (uint64_t{config_.lease_ms} + config_.lease_renew_ms) +
                4 * uint64_t{config_.volume_poll_ms};
  QBD_LOG_INFO("volume {}: handed over to {} at its request (unexported, lease released)", name,
               RequestBy(st.request));
}

bool Master::HandedOff(const std::string& name) {
  auto it = handoffs_.find(name);
  return it != handoffs_.end() && NowMs() < it->second.until_ms;
}

void Master::ClearHandoff(const VolumeMeta& meta) {
  const std::vector<StorageBackend*> parts = catalog_->BackendsFor(meta);
  const std::string request = ReadRequest(parts, meta.number);
  if (request.empty() || RequestOwner(request) != fmt::format("{:016x}", identity_.owner)) return;
  for (StorageBackend* b : parts) b->Remove(HandoffPath(meta.number)).IgnoreError();
  handoffs_.erase(meta.name);
}

Result<json> Master::AcquireVolume(const std::string& name, uint64_t timeout_ms, bool migration) {
  std::string holder;
  {
    std::lock_guard<std::mutex> ops(ops_mu_);
    if (stopped_) return Status::Unavailable("qbd-master is stopping");
    QBD_ASSIGN_OR_RETURN(VolumeMeta meta, catalog_->Find(name));  // NotFound
    if (volumes_.count(name) || forwarded_.count(name)) return VolumeJson(name);
    if (migration) {
      QBD_ASSIGN_OR_RETURN(bool forwarding, StartForwarding(meta, 2));
      if (forwarding) return VolumeJson(name);
    }
    handoffs_.erase(name);  // we want it now, whatever we handed over before
    QBD_RETURN_IF_ERROR(WriteRequest(meta, ""));
    if (auto r = refused_.find(name); r != refused_.end()) holder = r->second;
    QBD_LOG_INFO("volume {}: asked {} to hand it over", name, holder.empty() ? "its holder" : holder);
  }
  const uint64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::lock_guard<std::mutex> ops(ops_mu_);
    if (stopped_) return Status::Unavailable("qbd-master is stopping");
    PollLocked().IgnoreError();  // takes the lease as soon as it is free (logged by it)
    if (volumes_.count(name)) return VolumeJson(name);
    if (NowMs() < deadline) continue;
    // Withdrawn, so that the holder does not release it later for nobody.
    if (auto meta = catalog_->Find(name); meta.ok()) {
      for (StorageBackend* b : catalog_->BackendsFor(*meta)) b->Remove(HandoffPath(meta->number)).IgnoreError();
    }
    if (auto r = refused_.find(name); r != refused_.end()) holder = r->second;
    return Status::InvalidArgument(
        fmt::format("volume {} is served by {}, which did not hand it over within {} ms: clients "
                    "use it there (detach it there, or stop them)",
                    name, holder.empty() ? "another qbd-master" : holder, timeout_ms),
        EBUSY);
  }
}

Status Master::WriteRequest(const VolumeMeta& meta, const std::string& extra) {
  const std::string request =
      fmt::format("# qbd: a qbd-master asks the one serving this volume to hand it over\n"
                  "owner = {:016x}\nby = {}\n{}",
                  identity_.owner, LeaseRecord{identity_, meta.number, 0, 0, 0}.Describe(), extra);
  size_t written = 0;
  for (StorageBackend* b : catalog_->BackendsFor(meta)) {
    written += WriteFileAtomic(*b, HandoffPath(meta.number), request).ok() ? 1 : 0;
  }
  if (written == 0) return Status::Unavailable(fmt::format("volume {}: no part took the request", meta.name));
  return Status::OK();
}

Result<bool> Master::StartForwarding(const VolumeMeta& meta, int connections) {
  std::optional<LeaseRecord> holder = ForeignLease(meta.number, catalog_->BackendsFor(meta), identity_);
  if (!holder) return false;  // free: taken the ordinary way
  const std::string who = holder->Describe();
  const std::string& address = holder->who.nbd;
  auto refuse = [&](const std::string& why) {
    return Status::InvalidArgument(fmt::format("volume {} is served by {}, {}", meta.name, who, why), EBUSY);
  };
  if (address.empty()) {
    return refuse(
        "which names no NBD listener other masters can reach (its listen is a unix socket, or it is an older "
        "qbd-master): it cannot be migrated live");
  }
  if (IsLoopbackListener(address) && holder->who.host != identity_.host) {
    return refuse(fmt::format(
        "whose NBD listener {} is on its loopback: for live migration, set listen to an address of the "
        "cluster network on every node",
        address));
  }
  auto remote = NbdRemote::Connect(address, meta.name, connections, 5000);
  if (!remote.ok() && remote.status().IsNotFound()) return false;  // it lets go of it right now
  if (!remote.ok()) {
    return refuse(fmt::format("which cannot be reached at {}: {}", address, remote.status().message()));
  }
  std::shared_ptr<NbdRemote> r = std::move(remote).value();
  QBD_RETURN_IF_ERROR(
      WriteRequest(meta, fmt::format("mode = migration\npeers = {}\n", fmt::join(r->LocalEndpoints(), ","))));
  auto handler =
      std::make_shared<ForwardHandler>(meta.name, r, uint64_t{config_.attach_dead_timeout_s} * 1000);
  auto e = std::make_shared<Export>();
  e->name = meta.name;
  e->description = fmt::format("qbd volume {} (forwarded to {})", meta.number, who);
  e->read_only = (r->info().flags & nbd::kFlagReadOnly) != 0;
  e->preferred_block = meta.geometry.block_size;
  e->handler = handler;
  SetExport(meta.name, std::move(e));
  handoffs_.erase(meta.name);
  forwarded_[meta.name] = Forwarded{handler, who, address, connections, NowMs(), 0};
  QBD_LOG_INFO("volume {}: served by {}: forwarded to it at {} ({} connection(s)) until it lets go", meta.name,
               who, address, connections);
  return true;
}

void Master::PollForwarded() {
  for (auto it = forwarded_.begin(); it != forwarded_.end();) {
    const std::string name = it->first;
    Forwarded& f = it->second;
    Volume* v = nullptr;
    {
      std::lock_guard<std::mutex> l(volumes_mu_);
      if (auto vi = volumes_.find(name); vi != volumes_.end()) v = vi->second.get();
    }
    if (v != nullptr) {
      const int waiting = f.handler->Waiting();
      f.handler->SwitchTo(v->handler());
      QBD_LOG_INFO("volume {}: taken over from {}: served here, {} ms after forwarding started{}", name, f.holder,
                   NowMs() - f.since_ms,
                   f.lost_ms == 0 ? std::string()
                                  : fmt::format(", {} ms after its connections closed ({} request(s) waited)",
                                                NowMs() - f.lost_ms, waiting));
      {
        std::lock_guard<std::mutex> l(attach_mu_);
        if (attacher_) attacher_->SetMigration(name, false).IgnoreError();
      }
      it = forwarded_.erase(it);
      continue;
    }
    std::shared_ptr<NbdRemote> remote = f.handler->remote();
    if (remote && remote->Live() == 0) {
      if (f.lost_ms == 0) {
        f.lost_ms = NowMs();
        QBD_LOG_INFO("volume {}: {} closed the forwarded connections: taking the volume over", name, f.holder);
      }
      // Still held by a master that serves it (it restarted, its clients back): forward anew.
      auto meta = catalog_->Find(name);
      std::optional<LeaseRecord> holder =
          meta.ok() ? ForeignLease(meta->number, catalog_->BackendsFor(*meta), identity_) : std::nullopt;
      if (holder && !holder->who.nbd.empty()) {
        auto r = NbdRemote::Connect(holder->who.nbd, name, f.connections, 2000);
        if (r.ok()) {
          std::shared_ptr<NbdRemote> fresh = std::move(r).value();
          WriteRequest(*meta, fmt::format("mode = migration\npeers = {}\n", fmt::join(fresh->LocalEndpoints(), ",")))
              .IgnoreError();
          f.handler->SetRemote(fresh);
          f.holder = holder->Describe();
          f.address = holder->who.nbd;
          f.lost_ms = 0;
          QBD_LOG_INFO("volume {}: forwarded again to {} at {}", name, f.holder, f.address);
        }
      }
    }
    ++it;
  }
}

void Master::StopForwarding(const std::string& name, const std::string& why) {
  auto it = forwarded_.find(name);
  if (it == forwarded_.end()) return;
  it->second.handler->Fail(why);
  forwarded_.erase(it);
  bool served = false;
  {
    std::lock_guard<std::mutex> l(volumes_mu_);
    served = volumes_.count(name) != 0;
  }
  if (!served) Unexport(name);
  if (auto meta = catalog_->Find(name); meta.ok()) ClearHandoff(*meta);
  QBD_LOG_INFO("volume {}: forwarding ended: {}", name, why);
}

void Master::ResumeForwarding() {
  std::vector<std::pair<std::string, int>> wanted;
  {
    std::lock_guard<std::mutex> l(attach_mu_);
    auto a = AttacherLocked(false);
    if (!a.ok() || *a == nullptr) return;
    const nlohmann::json list = (*a)->List();
    for (const nlohmann::json& e : list["attachments"]) {
      if (e.value("migration", false)) wanted.emplace_back(e.value("volume", ""), e.value("connections", 1));
    }
  }
  std::lock_guard<std::mutex> ops(ops_mu_);
  for (const auto& [name, connections] : wanted) {
    bool served = false;
    {
      std::lock_guard<std::mutex> l(volumes_mu_);
      served = volumes_.count(name) != 0;
    }
    auto meta = catalog_->Find(name);
    if (served || !meta.ok()) {
      std::lock_guard<std::mutex> l(attach_mu_);
      if (attacher_) attacher_->SetMigration(name, false).IgnoreError();
      continue;
    }
    auto r = StartForwarding(*meta, connections);
    if (!r.ok()) QBD_LOG_WARN("volume {}: attached for a migration, not forwarded: {}", name, r.status().ToString());
  }
}

}  // namespace qbd
