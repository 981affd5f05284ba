// Master's kernel NBD devices (include/qbd/nbd_attach.h): POST /v1/volumes/NAME/attach and
// detach, GET /v1/attachments, and the re-attach of the state file's devices at start and on
// every Poll.
#include <fmt/format.h>

#include <filesystem>

#include "qbd/log.h"
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

Result<json> Master::AttachVolume(const std::string& name, int connections) {
  {
    std::lock_guard<std::mutex> l(volumes_mu_);
    if (volumes_.count(name) == 0) {
      return Status::NotFound(fmt::format(
          "volume {} is not served by this qbd-master (no such volume, or another master holds "
          "its lease)",
          name));
    }
  }
  std::lock_guard<std::mutex> l(attach_mu_);
  QBD_ASSIGN_OR_RETURN(Attacher * a, AttacherLocked(true));
  QBD_ASSIGN_OR_RETURN(Attachment at, a->Attach(name, connections));
  return json{{"volume", at.volume},   {"device", at.Device()},
              {"index", at.index},     {"connections", at.connections},
              {"backend", at.backend}, {"link", "/dev/qbd/" + at.volume}};
}

Status Master::DetachVolume(const std::string& name) {
  std::lock_guard<std::mutex> l(attach_mu_);
  QBD_ASSIGN_OR_RETURN(Attacher * a, AttacherLocked(false));
  if (a == nullptr) return Status::NotFound("volume " + name + " is not attached");
  return a->Detach(name);
}

Result<json> Master::Attachments() {
  std::lock_guard<std::mutex> l(attach_mu_);
  QBD_ASSIGN_OR_RETURN(Attacher * a, AttacherLocked(false));
  if (a == nullptr) return json{{"attachments", json::array()}};
  return a->List();
}

}  // namespace qbd
