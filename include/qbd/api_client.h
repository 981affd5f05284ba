// ApiClient: the tools' side of the REST API (api.h). qbdctl and qbd-repair find the running
// qbd-master of a configuration through it and send it their work, so that a change made while the
// daemon runs goes through the daemon (its locks, its open volumes) and never beside it.
//
// Finding the daemon: the lock "<admin_socket>.lock" says whether one runs; its API is at
// api_listen (a wildcard address is reached on loopback), with the bearer token of
// api_token_file when there is one. GET /v1/daemon must name the same configuration file, so that
// a daemon of another configuration on that port is never mistaken for ours.
//
// Thread-safety: one ApiClient per thread.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "qbd/config.h"
#include "qbd/status.h"

namespace qbd {

struct ApiReply {
  int status = 0;        // the HTTP status
  nlohmann::json body;   // the JSON answer (null when the body was not JSON)
  std::string text;      // the body as sent
};

// The Status of a failed reply (an HTTP status other than 2xx): NotFound for 404, InvalidArgument
// for 400, InvalidArgument with EEXIST or EBUSY for 409, Unavailable for 503, PermissionDenied
// (InvalidArgument with EACCES) for 401 and 403, IOError for the rest; its message is the reply's
// "error".
Status ApiError(const ApiReply& reply);

class ApiClient {
 public:
  // The running qbd-master of `config`: nullptr when none runs (its lock is free). Unavailable
  // when one holds the lock but its API does not answer (starting, stopping, api_listen
  // unreachable), or when what answers serves another configuration.
  static Result<std::unique_ptr<ApiClient>> Find(const Config& config);
  ~ApiClient();

  // One request; `body` is sent as JSON when set. IOError when the daemon cannot be reached.
  Result<ApiReply> Call(const std::string& method, const std::string& path,
                        const std::optional<nlohmann::json>& body = std::nullopt);
  // Call, then ApiError for a reply other than 2xx; the JSON answer.
  Result<nlohmann::json> Do(const std::string& method, const std::string& path,
                            const std::optional<nlohmann::json>& body = std::nullopt);

  // The daemon's GET /v1/daemon answer (pid, config, ...).
  const nlohmann::json& daemon() const { return daemon_; }
  // "http://HOST:PORT" as reached.
  const std::string& base() const { return base_; }

 private:
  struct Impl;
  ApiClient();
  std::unique_ptr<Impl> impl_;
  nlohmann::json daemon_;
  std::string base_;
};

}  // namespace qbd
