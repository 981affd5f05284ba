// Master's kernel NBD devices (include/qbd/nbd_attach.h): POST /v1/volumes/NAME/attach and
// detach, GET /v1/attachments, and the re-attach of the state file's devices at start and on
// every Poll.
#include <fmt/format.h>

#include <filesystem>

#include "qbd/log.h"
#include "qbd/lvm_thin.h"
#include "qbd/master.h"
#include "qbd/nbd_attach.h"

namespace qbd {

using json = nlohmann::json;

Result<Attacher*> Master::AttacherLocked(bool create) {
  if (attacher_) return attacher_.get();
  std::error_code ec;
  if (!create &&
      !std::filesystem::exists(std::filesystem::path(config_.state_dir) / "attachments.json", ec)) {
    return static_cast<Attacher*>(nullptr);
  }
  AttachOptions o;
  o.state_dir = config_.state_dir;
  o.nbd_listen = config_.listen;
  o.owner = config_.file;
  o.interface = config_.attach_interface;
  o.timeout_s = config_.attach_timeout_s;
  o.dead_conn_timeout_s = config_.attach_dead_timeout_s;
  QBD_ASSIGN_OR_RETURN(attacher_, Attacher::Open(o));
  return attacher_.get();
}

void Master::ReattachDevices() {
  std::lock_guard<std::mutex> l(attach_mu_);
  auto a = AttacherLocked(false);
  Status s = a.ok() ? (*a == nullptr ? Status::OK() : (*a)->ReconnectAll()) : a.status();
  const std::string msg = s.ok() ? std::string() : s.ToString();
  if (msg != attach_error_) {
    if (s.ok()) {
      QBD_LOG_INFO("attached devices: every connection is back");
    } else {
      QBD_LOG_WARN("attached devices: {} (tried again at every volume poll)", msg);
    }
    attach_error_ = msg;
  }
}

Status Master::RefuseIfAttached(const std::string& name) {
  std::lock_guard<std::mutex> l(attach_mu_);
  auto a = AttacherLocked(false);
  if (!a.ok() || *a == nullptr || !(*a)->IsAttached(name)) return Status::OK();
  return Status::InvalidArgument(
      fmt::format("volume {} is attached as a kernel device: qbdctl detach {} first", name, name),
      EBUSY);
}

json Master::AttachmentOf(const std::string& name) {
  std::lock_guard<std::mutex> l(attach_mu_);
  auto a = AttacherLocked(false);
  if (!a.ok() || *a == nullptr) return json();
  return (*a)->Entry(name);
}

void Master::PrepareAttachedStop() {
  std::lock_guard<std::mutex> l(attach_mu_);
  if (attacher_) attacher_->PrepareStop();
}

void Master::AddAttachMetrics() {
  auto& family = prometheus::BuildGauge()
                     .Name("qbd_attached_connections")
                     .Help(
                         "Connections of a volume attached as a kernel NBD device: kind=\"live\" "
                         "the kernel still uses, kind=\"configured\" it was attached with")
                     .Register(metrics_->registry());
  auto shown = std::make_shared<std::map<std::string, prometheus::Gauge*>>();
  attach_collector_ = metrics_->AddCollector([this, &family, shown] {
    auto list = Attachments();
    std::map<std::string, prometheus::Gauge*> now;
    if (list.ok()) {
      for (const json& a : (*list)["attachments"]) {
        const std::string vol = a.value("volume", ""), dev = a.value("device", "");
        for (const char* kind : {"live", "configured"}) {
          prometheus::Gauge& g = family.Add({{"volume", vol}, {"device", dev}, {"kind", kind}});
          g.Set(a.value(std::string(kind) == "live" ? "live" : "connections", 0));
          now[vol + "|" + dev + "|" + kind] = &g;
        }
      }
    }
    for (const auto& [key, g] : *shown) {
      if (!now.count(key)) family.Remove(g);
    }
    *shown = std::move(now);
  });
}

Result<json> Master::AttachVolume(const std::string& name, int connections, bool lvm_thin,
                                  bool migration) {
  bool served = false;
  {
    std::lock_guard<std::mutex> l(volumes_mu_);
    served = volumes_.count(name) != 0;
  }
  QBD_ASSIGN_OR_RETURN(VolumeMeta meta, catalog_->Find(name));
  const bool lvm = lvm_thin || meta.lvm_thin;
  bool forwarding = false;
  if (!served && migration) {
    if (lvm) {
      return Status::InvalidArgument(fmt::format(
          "volume {}: its LVM thin stack is node-local (Proxmox lvmthin): it does not migrate live", name));
    }
    std::lock_guard<std::mutex> ops(ops_mu_);
    if (forwarded_.count(name)) {
      forwarding = true;  // a previous attempt's forwarding, still waiting for its device
    } else {
      QBD_ASSIGN_OR_RETURN(forwarding, StartForwarding(meta, connections));
    }
  }
  if (!served && !forwarding) {
    // Another master serves it (a VM moving to this node): it hands it over once no client
    // uses it there.
    const uint64_t wait_ms = 2 * (uint64_t{config_.lease_ms} + config_.lease_renew_ms) +
                             4 * uint64_t{config_.volume_poll_ms} + 5000;
    QBD_RETURN_IF_ERROR(AcquireVolume(name, wait_ms).status());
  }
  Result<Attachment> attached = Status::Unavailable("not attached");
  {
    std::lock_guard<std::mutex> l(attach_mu_);
    auto a = AttacherLocked(true);
    attached = a.ok() ? (*a)->Attach(name, connections, forwarding) : a.status();
  }
  if (!attached.ok()) {
    if (forwarding) {
      std::lock_guard<std::mutex> ops(ops_mu_);
      StopForwarding(name, fmt::format("volume {}: the attach failed", name));
    }
    return attached.status();
  }
  const Attachment& at = *attached;
  json out = {{"volume", at.volume},   {"device", at.Device()},
              {"index", at.index},     {"connections", at.connections},
              {"backend", at.backend}, {"link", "/dev/qbd/" + at.volume}};
  if (forwarding) {
    std::lock_guard<std::mutex> ops(ops_mu_);
    if (auto f = forwarded_.find(name); f != forwarded_.end()) out["forwarded_to"] = f->second.holder;
    QBD_LOG_INFO("volume {}: attached as {} for a live migration: forwarded to {} until it lets go", name,
                 at.Device(), out.value("forwarded_to", std::string("its holder")));
  }
  if (!lvm) return out;
  std::lock_guard<std::mutex> l(attach_mu_);
  QBD_ASSIGN_OR_RETURN(Attacher * a, AttacherLocked(true));
  ProcessRunner runner;
  LvmThin stack(runner, name);
  std::string pv_uuid = meta.lvm_pv_uuid;
  Status s = ProvisionLvm(stack, at.Device(), meta, &pv_uuid);
  if (!s.ok()) {
    // Nothing of ours stays on a device we refused or failed to provision.
    a->Detach(name).IgnoreError();
    QBD_LOG_ERROR("volume {}: LVM thin stack on {}: {}", name, at.Device(), s.ToString());
    if (s.IsInvalidArgument()) return Status::InvalidArgument(s.message(), EBUSY);
    return s;
  }
  QBD_LOG_INFO("volume {}: attached as {} with its LVM thin pool {}", name, at.Device(),
               stack.pool_path());
  out["lvm"] = {{"vg", stack.vg()}, {"thinpool", LvmThin::kPoolName}, {"pv_uuid", pv_uuid}};
  return out;
}

Status Master::ProvisionLvm(LvmThin& stack, const std::string& device, const VolumeMeta& meta,
                            std::string* pv_uuid) {
  std::string why, found_uuid;
  QBD_ASSIGN_OR_RETURN(LvmThin::Ownership o, stack.Inspect(device, &why, &found_uuid));
  if (o == LvmThin::Ownership::kForeign) {
    return Status::InvalidArgument(
        fmt::format("volume {}: refusing to touch it: {}", meta.name, why));
  }
  if (o == LvmThin::Ownership::kOurs) *pv_uuid = found_uuid;
  if (pv_uuid->empty()) *pv_uuid = NewPvUuid();
  // Recorded before the PV is written: a provision cut short finds its own PV again.
  if (!meta.lvm_thin || meta.lvm_pv_uuid != *pv_uuid) {
    QBD_RETURN_IF_ERROR(catalog_->SetLvmThin(meta.name, *pv_uuid));
  }
  QBD_RETURN_IF_ERROR(stack.Provision(device, *pv_uuid));
  return stack.Activate();
}

Status Master::DetachVolume(const std::string& name) {
  {
    std::lock_guard<std::mutex> l(attach_mu_);
    QBD_ASSIGN_OR_RETURN(Attacher * a, AttacherLocked(false));
    if (a == nullptr || !a->IsAttached(name)) return Status::NotFound("volume " + name + " is not attached");
    auto meta = catalog_->Find(name);
    if (meta.ok() && meta->lvm_thin) {
      // Its LVs closed first: a VM still using one keeps the device (EBUSY).
      ProcessRunner runner;
      LvmThin stack(runner, name);
      Status s = stack.Deactivate();
      if (!s.ok()) {
        return Status::InvalidArgument(
            fmt::format("volume {}: its volume group {} cannot be deactivated: {}", name, stack.vg(),
                        s.message()),
            EBUSY);
      }
    }
    QBD_RETURN_IF_ERROR(a->Detach(name));
  }
  // A migration that ends here (aborted: the VM stays on the other node) stops forwarding.
  std::lock_guard<std::mutex> ops(ops_mu_);
  if (forwarded_.count(name)) StopForwarding(name, fmt::format("volume {}: detached here", name));
  // The source of a live migration: a master waiting for the volume gets it now, not at the next
  // poll.
  PollLocked().IgnoreError();
  return Status::OK();
}

void Master::ActivateLvmStacks() {
  std::lock_guard<std::mutex> l(attach_mu_);
  auto a = AttacherLocked(false);
  if (!a.ok() || *a == nullptr) return;
  const json list = (*a)->List();  // kept: a range over a temporary's member would dangle
  for (const json& e : list["attachments"]) {
    const std::string name = e.value("volume", "");
    auto meta = catalog_->Find(name);
    if (!meta.ok() || !meta->lvm_thin) continue;
    ProcessRunner runner;
    LvmThin stack(runner, name);
    Status s = stack.Activate();
    if (s.ok()) {
      QBD_LOG_INFO("volume {}: volume group {} activated", name, stack.vg());
    } else {
      QBD_LOG_ERROR("volume {}: volume group {} not activated: {}", name, stack.vg(), s.ToString());
    }
  }
}

Status Master::GrowAttached(const std::string& name, uint64_t size) {
  std::lock_guard<std::mutex> l(attach_mu_);
  auto a = AttacherLocked(false);
  if (!a.ok() || *a == nullptr) return Status::OK();
  std::optional<Attachment> at = (*a)->Find(name);
  if (!at) return Status::OK();
  QBD_RETURN_IF_ERROR((*a)->Resize(name, size));
  auto meta = catalog_->Find(name);
  if (!meta.ok() || !meta->lvm_thin) return Status::OK();
  ProcessRunner runner;
  LvmThin stack(runner, name);
  QBD_RETURN_IF_ERROR(stack.Grow(at->Device()));
  QBD_LOG_INFO("volume {}: PV and thin pool {} grown with the volume", name, stack.pool_path());
  return Status::OK();
}

Result<json> Master::Attachments() {
  json list;
  {
    std::lock_guard<std::mutex> l(attach_mu_);
    QBD_ASSIGN_OR_RETURN(Attacher * a, AttacherLocked(false));
    if (a == nullptr) return json{{"attachments", json::array()}};
    list = a->List();
  }
  std::lock_guard<std::mutex> ops(ops_mu_);
  for (json& e : list["attachments"]) {
    auto f = forwarded_.find(e.value("volume", ""));
    if (f != forwarded_.end()) e["forwarded_to"] = f->second.holder;
  }
  return list;
}

}  // namespace qbd
