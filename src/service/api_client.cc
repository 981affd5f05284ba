// Implements include/qbd/api_client.h with cpp-httplib's client.
#include "qbd/api_client.h"

#include <fmt/format.h>
#include <httplib.h>

#include <cerrno>
#include <filesystem>

#include "qbd/process_lock.h"

namespace qbd {

using nlohmann::json;

struct ApiClient::Impl {
  Impl(const std::string& host, int port) : client(host, port) {}
  httplib::Client client;
  std::string token;
};

ApiClient::ApiClient() = default;
ApiClient::~ApiClient() = default;

Status ApiError(const ApiReply& r) {
  std::string msg = r.body.is_object() && r.body.contains("error") && r.body["error"].is_string()
                        ? r.body["error"].get<std::string>()
                        : fmt::format("HTTP status {}: {}", r.status, r.text.substr(0, 200));
  switch (r.status) {
    case 400: return Status::InvalidArgument(msg);
    case 401:
    case 403: return Status::InvalidArgument(msg, EACCES);
    case 404: return Status::NotFound(msg);
    case 409: return Status::InvalidArgument(msg, EBUSY);
    case 503: return Status::Unavailable(msg);
    default: return Status::IOError(msg);
  }
}

Result<std::unique_ptr<ApiClient>> ApiClient::Find(const Config& config) {
  const std::string lock = config.admin_socket + ".lock";
  std::optional<std::string> holder = ProcessLock::HeldBy(lock);
  if (!holder) return std::unique_ptr<ApiClient>();
  auto a = ParseListenAddress(config.api_listen);
  if (!a.ok()) return a.status();
  std::string host = a->host;
  if (a->kind == ListenAddress::Kind::kAny || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  std::unique_ptr<ApiClient> c(new ApiClient());
  c->impl_ = std::make_unique<Impl>(host, a->port);
  c->base_ = a->kind == ListenAddress::Kind::kIPv6 ? fmt::format("http://[{}]:{}", host, a->port)
                                                   : fmt::format("http://{}:{}", host, a->port);
  c->impl_->client.set_connection_timeout(5, 0);
  c->impl_->client.set_read_timeout(600, 0);  // a chunk repair or a resize may take a while
  c->impl_->client.set_write_timeout(60, 0);
  if (!config.api_token_file.empty()) {
    auto token = ReadApiToken(config.api_token_file);
    if (!token.ok()) {
      return Status::Unavailable(fmt::format(
          "{} runs, but its api_token_file cannot be read here: {}", *holder,
          token.status().message()));
    }
    c->impl_->token = *token;
  }
  auto d = c->Call("GET", "/v1/daemon");
  if (!d.ok() || d->status != 200 || !d->body.is_object()) {
    const std::string why = d.ok() ? fmt::format("HTTP {}", d->status) : d.status().message();
    if (holder->rfind("qbd-master", 0) != 0) {  // an offline qbd-repair, qbdctl convert, ...
      return Status::Unavailable(fmt::format(
          "{} is held by {}, and no qbd-master answers at {} ({}): wait for it to finish; is "
          "qbd-master starting or stopping?",
          lock, *holder, c->base_, why));
    }
    return Status::Unavailable(fmt::format(
        "{} is held by {}, but its REST API at {} does not answer ({}); is qbd-master starting "
        "or stopping?",
        lock, *holder, c->base_, why));
  }
  // The same configuration file, compared by what it is rather than how it was named.
  std::error_code e1;
  const std::string theirs = d->body.value("config", std::string());
  if (!std::filesystem::equivalent(theirs, config.file, e1) || e1) {
    return Status::Unavailable(fmt::format(
        "the REST API at {} serves {}, not {}: two configurations share api_listen", c->base_,
        theirs.empty() ? std::string("another configuration") : theirs, config.file));
  }
  c->daemon_ = std::move(d->body);
  return c;
}

Result<ApiReply> ApiClient::Call(const std::string& method, const std::string& path,
                                 const std::optional<json>& body) {
  httplib::Headers h;
  if (!impl_->token.empty()) h.emplace("Authorization", "Bearer " + impl_->token);
  const std::string text = body ? body->dump() : std::string();
  httplib::Client& cl = impl_->client;
  auto send = [&]() -> httplib::Result {
    if (method == "GET") return cl.Get(path, h);
    if (method == "POST") return cl.Post(path, h, text, "application/json");
    if (method == "PATCH") return cl.Patch(path, h, text, "application/json");
    return cl.Delete(path, h, text, "application/json");
  };
  if (method != "GET" && method != "POST" && method != "PATCH" && method != "DELETE")
    return Status::InvalidArgument("ApiClient: unknown method " + method);
  httplib::Result res = send();
  if (!res) {
    return Status::IOError(fmt::format("{} {}{}: {}", method, base_, path,
                                       httplib::to_string(res.error())));
  }
  ApiReply r;
  r.status = res->status;
  r.text = res->body;
  r.body = json::parse(r.text, nullptr, /*allow_exceptions=*/false);
  if (r.body.is_discarded()) r.body = nullptr;
  return r;
}

Result<json> ApiClient::Do(const std::string& method, const std::string& path,
                           const std::optional<json>& body) {
  QBD_ASSIGN_OR_RETURN(ApiReply r, Call(method, path, body));
  if (r.status < 200 || r.status > 299) return ApiError(r);
  return std::move(r.body);
}

}  // namespace qbd
