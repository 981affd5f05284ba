// Views: the JSON that describes volumes and their health, and its text for qbdctl.
//
// One model for both paths: qbd-master's REST API answers with this JSON (adding what only a
// running daemon knows: live part states, dirty bytes, connections, repairs), and qbdctl without a
// daemon builds the same documents from the backends. qbdctl prints either through the same
// Format* functions, so its output has one form whether the daemon runs or not (`--json` prints
// the documents themselves).
//
// Thread-safety: pure functions, except the Offline* ones, which read the backends.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "qbd/catalog.h"
#include "qbd/config.h"
#include "qbd/volume_meta.h"

namespace qbd {

// A volume in GET /v1/volumes: name, number, size, replicas, block and chunk size, flags, state.
nlohmann::json VolumeSummaryJson(const VolumeMeta& m, const std::string& state, bool served);

// What .meta and the configuration say of a volume (GET /v1/volumes/NAME without the live
// fields): name, number, size, block_size, chunk_size, chunks, created, policy, qos, and per part
// its letter and backend.
nlohmann::json VolumeBaseJson(const VolumeMeta& m, Catalog& catalog);

// The same documents without a daemon. The state is "ready", or "degraded" when a part's
// directory is missing (its part says why); nothing is served.
nlohmann::json OfflineVolumeJson(const VolumeMeta& m, Catalog& catalog);
nlohmann::json OfflineVolumeList(Catalog& catalog);
// GET /v1/health's document as far as the backends tell without a daemon: the daemon's absence
// is itself a problem (degraded), then each volume's metadata and part directories.
nlohmann::json OfflineHealth(Catalog& catalog);

// "problem" JSON objects as Health builds them.
nlohmann::json Problem(const std::string& status, const std::string& what, const std::string& part,
                       const std::string& backend, const std::string& since,
                       const std::string& action);

// "ok" 0, "degraded" 1, "data_lost" 2, and back: a health status's severity, which is also the
// exit status of `qbdctl status` (as qbd-verify's).
int HealthSeverity(const std::string& status);
const char* HealthStatusName(int severity);
int HealthExitCode(const nlohmann::json& health);

// One volume's (or the daemon's) problems and the worst status among them.
struct Problems {
  nlohmann::json list = nlohmann::json::array();
  int severity = 0;
  void Add(nlohmann::json problem);
};

// The text of `qbdctl list`, `info`, `status`.
std::string FormatVolumeList(const nlohmann::json& list);
std::string FormatVolumeInfo(const nlohmann::json& volume);
std::string FormatHealth(const nlohmann::json& health);
// GET /v1/attachments as a table: VOLUME DEVICE CONNECTIONS STATE LINK.
std::string FormatAttachments(const nlohmann::json& attachments);

}  // namespace qbd
