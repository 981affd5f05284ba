// Api: qbd-master's REST API (README.md "REST API"): JSON over HTTP on `api_listen`.
//
// Two pieces. ApiRouter is pure: it takes one request (method, path, query, body, Authorization
// header), checks the token, routes it, validates the JSON body and calls the ApiService; it
// returns the status and the JSON reply. Unit tests drive it with a fake service, no sockets.
// ApiServer puts a router behind cpp-httplib's server (its own threads): the HTTP parsing is the
// library's.
//
// Errors are {"error": "message"} with a status that says what went wrong, from the Status the
// service returned (ApiHttpStatus): 400 bad input, 401 no or a wrong bearer token, 404 unknown
// volume or path, 405 a method the path does not take, 409 a conflict, 503 no quorum (backends out
// of reach), 500 the rest.
//
// Master implements ApiService (master.h). A service method runs on an HTTP server thread, several
// at once: the service serializes what must be.
//
// Thread-safety: ApiRouter::Handle is safe for concurrent calls when the service's methods are.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/catalog.h"
#include "qbd/quorum.h"
#include "qbd/status.h"

namespace qbd {

// What PATCH /v1/volumes/NAME changes; unset fields stay as they are.
struct VolumeUpdate {
  std::optional<uint64_t> size;  // grows (never shrinks)
  std::optional<bool> read_only;
  std::optional<bool> append_only;
  std::optional<std::string> qos;  // compact JSON (VolumeMeta::qos)
};

// What the API asks of the daemon. A failure's Status code picks the HTTP status (ApiHttpStatus):
// NotFound for an unknown volume, InvalidArgument for bad values, InvalidArgument with errno
// EEXIST or EBUSY for a conflict, Unavailable or IOError when backends are out of reach.
class ApiService {
 public:
  virtual ~ApiService() = default;
  // {"volumes": [summary...]}
  virtual Result<nlohmann::json> ListVolumes() = 0;
  // One volume: policy, state, parts, resync and repair progress, lease holder.
  virtual Result<nlohmann::json> GetVolume(const std::string& name) = 0;
  // Creates the volume and serves it before returning; its GetVolume.
  virtual Result<nlohmann::json> CreateVolume(const CreateVolumeOptions& options) = 0;
  // Applies `update`, effective for the running volume before returning; its GetVolume.
  virtual Result<nlohmann::json> UpdateVolume(const std::string& name,
                                              const VolumeUpdate& update) = 0;
  // Unexports and deletes the volume. Without `force`, a conflict while clients are connected.
  virtual Status DeleteVolume(const std::string& name, bool force) = 0;
  // {"status": "ok"|"degraded"|"data_lost", "problems": [...], "volumes": [...]}
  virtual Result<nlohmann::json> Health() = 0;
  // Starts an online repair of every chunk of the volume (a conflict when one runs); its state.
  virtual Result<nlohmann::json> StartRepair(const std::string& name) = 0;
  // Repairs one chunk (0-based) now, under the volume's region locks, and returns its report
  // (RepairReportJson): qbd-repair's online mode.
  virtual Result<nlohmann::json> RepairChunk(const std::string& name, uint64_t chunk,
                                             const RepairOptions& options) = 0;
  // The daemon: {"pid", "version", "config", "started", "nbd_listen": [...], "api_listen"}.
  virtual Result<nlohmann::json> Daemon() = 0;
  // Every backend checked: {"backends": [...], "warnings": [...]} (qbdctl backends).
  virtual Result<nlohmann::json> Backends() = 0;
  // Every part's copy of the block at device byte `offset` (qbdctl block; FormatBlockJson).
  virtual Result<nlohmann::json> Block(const std::string& name, uint64_t offset) = 0;
  // Attaches the volume as a kernel NBD device (nbd_attach.h) with `connections` sockets:
  // {"volume", "device", "index", "connections", "backend", "link"}, and with `lvm_thin` (or when
  // the volume's .meta asks for it) its LVM thin stack (lvm_thin.h), provisioned on first use and
  // activated: then also {"lvm": {"vg", "thinpool", "pv_uuid"}}. InvalidArgument with EEXIST when
  // it is attached already, with EBUSY when the device holds something that is not qbd's;
  // NotSupported where the daemon cannot attach. With `migration` (a VM moving to this node
  // while it still runs on the node whose master serves the volume), the device works at once:
  // its requests go through the serving master until that one lets go (Master::StartForwarding);
  // then {"forwarded_to": holder} too.
  virtual Result<nlohmann::json> AttachVolume(const std::string& name, int connections,
                                              bool lvm_thin, bool migration) {
    (void)name, (void)connections, (void)lvm_thin, (void)migration;
    return Status::NotSupported("attach is not supported here");
  }
  // Serves the volume on this daemon, asking the master that serves it to hand it over
  // (Master::AcquireVolume); its GetVolume. With `migration`, a volume whose holder has clients
  // is served here at once by forwarding to the holder until it lets go (Master::StartForwarding):
  // then its GetVolume has "forwarded_to".
  virtual Result<nlohmann::json> AcquireVolume(const std::string& name, uint64_t timeout_ms,
                                               bool migration = false) {
    (void)timeout_ms, (void)migration;
    return GetVolume(name);
  }
  // Disconnects the volume's device. NotFound when it is not attached.
  virtual Status DetachVolume(const std::string& name) {
    return Status::NotFound("volume " + name + " is not attached");
  }
  // {"attachments": [...]} (Attacher::List).
  virtual Result<nlohmann::json> Attachments() {
    return nlohmann::json{{"attachments", nlohmann::json::array()}};
  }
};

struct ApiRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // decoded, without the query
  std::map<std::string, std::string> query;
  std::string body;
  std::string authorization;  // the Authorization header, "" when absent
  // Who sent it, when it came over loopback: the owner of the client's socket (ApiServer finds it
  // in /proc/net/tcp and tcp6). Unset for another address, or when it cannot be told.
  std::optional<uint32_t> peer_uid;
};

struct ApiResponse {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
};

// The HTTP status for a failed service call (see ApiService).
int ApiHttpStatus(const Status& s);

struct ApiOptions {
  // Every request must carry "Authorization: Bearer <token>" (401 otherwise). "": none needed to
  // read (GET); a request that changes something (POST, PATCH, DELETE) must then come from a
  // user of `change_uids` over loopback (403 otherwise): local users may look, not delete.
  std::string token;
  std::vector<uint32_t> change_uids = {0};
  // The Prometheus text served at GET /metrics; unset: no such route (404).
  std::function<std::string()> metrics;
};

// A chunk repair's report as JSON, and back. Block numbers are given as ranges ("0-511,700"):
// {"chunk": N, "bytes_read", "bytes_written", "actions": [{"target": "b", "sources": "ac",
// "whole_file", "reason", "blocks", "error"}], "lost", "unknown", "accepted", "notes": [...]}.
nlohmann::json RepairReportJson(const ChunkRepairReport& r);
// Corruption for anything that is not such a report (a field missing or of another type, a bad
// block range).
Result<ChunkRepairReport> RepairReportFromJson(const nlohmann::json& j);
// "0-3,7" -> {0, 1, 2, 3, 7}; "" or "-" -> {}. Corruption for a malformed range, a block past a
// chunk's largest possible block count (kMaxChunkSize / kMinBlockSize) or more blocks than that.
Result<std::vector<uint64_t>> ParseBlockRanges(std::string_view s);

class ApiRouter {
 public:
  // `service` must outlive the router.
  ApiRouter(ApiService& service, ApiOptions options);
  ApiResponse Handle(const ApiRequest& request);

 private:
  ApiResponse Volumes(const ApiRequest& r);
  ApiResponse Volume(const ApiRequest& r, const std::string& name, const std::string& action);
  ApiResponse Chunk(const ApiRequest& r, const std::string& name, const std::string& chunk,
                    const std::string& action);
  ApiResponse Attach(const ApiRequest& r, const std::string& name, const std::string& action);

  ApiService& service_;
  const ApiOptions options_;
};

class ApiServer {
 public:
  // Binds `listen` ("HOST:PORT", "[IPV6]:PORT", "*:PORT") and serves `router` from cpp-httplib's
  // thread pool. IOError naming the address when it cannot be bound. `router` must outlive the
  // server.
  static Result<std::unique_ptr<ApiServer>> Start(const std::string& listen, ApiRouter& router);
  ~ApiServer();  // stops accepting, waits for the requests being served
  // "HOST:PORT" as bound.
  const std::string& address() const { return address_; }

 private:
  struct Impl;
  ApiServer() = default;
  std::unique_ptr<Impl> impl_;
  std::string address_;
};

}  // namespace qbd
