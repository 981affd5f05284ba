// Feeds arbitrary requests to the REST API's router (api.h) in front of a service that accepts
// everything, as cpp-httplib hands them over: the first line is "METHOD PATH", the rest the body;
// and the body alone, as JSON, to the repair report decoder qbd-repair uses. Nothing may crash,
// read out of bounds or allocate without bound; every reply is a JSON object (or the metrics
// text), and a report that decodes must encode to JSON that decodes to the same report.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "qbd/api.h"

namespace {

using nlohmann::json;

void Check(bool cond) {
  if (!cond) std::abort();
}

class AcceptAll : public qbd::ApiService {
 public:
  qbd::Result<json> ListVolumes() override { return json{{"volumes", json::array()}}; }
  qbd::Result<json> GetVolume(const std::string& n) override { return json{{"name", n}}; }
  qbd::Result<json> CreateVolume(const qbd::CreateVolumeOptions& o) override {
    Check(!o.name.empty());
    return json{{"name", o.name}};
  }
  qbd::Result<json> UpdateVolume(const std::string& n, const qbd::VolumeUpdate&) override {
    return json{{"name", n}};
  }
  qbd::Status DeleteVolume(const std::string&, bool) override { return qbd::Status::OK(); }
  qbd::Result<json> Health() override { return json{{"status", "ok"}}; }
  qbd::Result<json> StartRepair(const std::string& n) override { return json{{"name", n}}; }
  qbd::Result<json> RepairChunk(const std::string&, uint64_t chunk,
                                const qbd::RepairOptions&) override {
    qbd::ChunkRepairReport r;
    r.chunk = chunk;
    return qbd::RepairReportJson(r);
  }
  qbd::Result<json> Daemon() override { return json{{"pid", 1}}; }
  qbd::Result<json> Backends() override { return json{{"ok", true}}; }
  qbd::Result<json> Block(const std::string& n, uint64_t off) override {
    return json{{"name", n}, {"offset", off}};
  }
};

bool SameReport(const qbd::ChunkRepairReport& a, const qbd::ChunkRepairReport& b) {
  if (a.actions.size() != b.actions.size()) return false;
  for (size_t i = 0; i < a.actions.size(); ++i) {
    const auto &x = a.actions[i], &y = b.actions[i];
    if (x.target != y.target || x.sources != y.sources || x.whole_file != y.whole_file ||
        x.reason != y.reason || x.blocks != y.blocks || x.error != y.error)
      return false;
  }
  return a.chunk == b.chunk && a.lost == b.lost && a.accepted == b.accepted &&
         a.unknown == b.unknown && a.notes == b.notes && a.bytes_read == b.bytes_read &&
         a.bytes_written == b.bytes_written;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const size_t nl = text.find('\n');
  const std::string_view first = text.substr(0, nl);
  const std::string body(nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1));
  const size_t sp = first.find(' ');
  qbd::ApiRequest r;
  r.method = std::string(first.substr(0, sp));
  r.path = sp == std::string_view::npos ? "/" : std::string(first.substr(sp + 1));
  r.body = body;
  r.peer_uid = size % 2 == 0 ? 0u : 1000u;
  static AcceptAll service;
  qbd::ApiOptions o;
  o.metrics = [] { return std::string("qbd_up 1\n"); };
  static qbd::ApiRouter router(service, o);
  qbd::ApiResponse reply = router.Handle(r);
  Check(reply.status >= 200 && reply.status < 600);
  if (reply.content_type == "application/json") {
    json j = json::parse(reply.body, nullptr, false);
    Check(j.is_object());
    if (reply.status >= 400) Check(j.contains("error"));
  }
  json j = json::parse(body, nullptr, false);
  if (!j.is_discarded()) {
    auto rep = qbd::RepairReportFromJson(j);
    if (rep.ok()) {
      auto again = qbd::RepairReportFromJson(qbd::RepairReportJson(*rep));
      Check(again.ok() && SameReport(*rep, *again));
    }
  }
  return 0;
}
