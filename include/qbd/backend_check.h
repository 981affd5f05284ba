// BackendCheck: `qbdctl backends` and GET /v1/backends — every backend of a configuration opened
// and probed: reachable, writable (a small file written and removed), free space, the volumes its
// .volumesmeta lists, and parts that share a failure domain.
//
// Thread-safety: a function of one thread; opens its own backends, so it runs beside a daemon.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "qbd/config.h"

namespace qbd {

// {"ok": bool, "backends": [{"name", "part" (letter or null), "reachable", "writable" (null when
// unreachable), "free_bytes" (null when unknown), "location", "volumes": [{"name", "number"}],
// "error" (null or why it is unreachable, not writable, or its index unreadable)}],
// "failure_domains": [{"severity": "error"|"warning", "message"}]}. `ok` is false when a backend
// is unreachable or not writable, or parts share a failure domain that the configuration does not
// allow.
nlohmann::json CheckBackends(const Config& config);

// The table `qbdctl backends` prints, from CheckBackends's JSON.
std::string FormatBackendsText(const nlohmann::json& report);

}  // namespace qbd
