// Master's handing of volumes between masters of one set of backends (master.h): the request
// file "<volnr>/.handoff" on the volume's parts, the release by the serving master, the take-over
// by the asking one (POST /v1/volumes/NAME/acquire, and attach).
#include <fmt/format.h>

#include <chrono>
#include <thread>

#include "qbd/chunk_format.h"
#include "qbd/log.h"
#include "qbd/master.h"

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

}  // namespace

bool Master::HandoffAsked(const VolumeMeta& meta) {
  const std::string request = ReadRequest(catalog_->BackendsFor(meta), meta.number);
  if (request.empty() || RequestOwner(request) == fmt::format("{:016x}", identity_.owner)) return false;
  HandoffState& st = handoffs_[meta.name];
  if (st.request == request) return false;  // answered already (a stale request stays answered)
  const int clients = ConnectionsTo(meta.name);
  if (clients > 0 || !RefuseIfAttached(meta.name).ok()) {
    if (st.busy_logged != request) {
      QBD_LOG_WARN("volume {}: {} asks for it, but {} client(s) use it here{}: kept", meta.name,
                   RequestBy(request), clients,
                   RefuseIfAttached(meta.name).ok() ? "" : " (attached as a kernel device)");
      st.busy_logged = request;
    }
    return false;
  }
  st.request = request;
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

Result<json> Master::AcquireVolume(const std::string& name, uint64_t timeout_ms) {
  std::string holder;
  {
    std::lock_guard<std::mutex> ops(ops_mu_);
    if (stopped_) return Status::Unavailable("qbd-master is stopping");
    QBD_ASSIGN_OR_RETURN(VolumeMeta meta, catalog_->Find(name));  // NotFound
    if (volumes_.count(name)) return VolumeJson(name);
    handoffs_.erase(name);  // we want it now, whatever we handed over before
    const std::string request =
        fmt::format("# qbd: a qbd-master asks the one serving this volume to hand it over\n"
                    "owner = {:016x}\nby = {}\n",
                    identity_.owner, LeaseRecord{identity_, meta.number, 0, 0, 0}.Describe());
    size_t written = 0;
    for (StorageBackend* b : catalog_->BackendsFor(meta)) {
      written += WriteFileAtomic(*b, HandoffPath(meta.number), request).ok() ? 1 : 0;
    }
    if (written == 0) return Status::Unavailable(fmt::format("volume {}: no part took the request", name));
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

}  // namespace qbd
