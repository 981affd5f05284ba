// Implements include/qbd/api.h. Library code does not throw: JSON is parsed without exceptions
// and every field's type is checked before it is read.
#include "qbd/api.h"

#include <fmt/format.h>
#include <httplib.h>

#include <cerrno>
#include <set>
#include <thread>
#include <vector>

#include "qbd/config.h"
#include "qbd/log.h"

namespace qbd {

using nlohmann::json;

namespace {

// Text of a JSON value; bytes that are not UTF-8 (from a file name, a message) become U+FFFD.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

ApiResponse Reply(int status, const json& body) { return ApiResponse{status, Dump(body) + "\n"}; }

ApiResponse Error(int status, std::string_view message) {
  return Reply(status, json{{"error", std::string(message)}});
}

ApiResponse Failed(const Status& s) { return Error(ApiHttpStatus(s), s.message()); }

ApiResponse FromResult(Result<json> r, int ok_status = 200) {
  if (!r.ok()) return Failed(r.status());
  return Reply(ok_status, *r);
}

// A size field: a number of bytes, or a string with K, M, G, T ("10G").
Result<uint64_t> SizeField(const json& v, std::string_view field) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_string()) {
    auto n = ParseSize(v.get<std::string>());
    if (!n.ok()) return Status::InvalidArgument(fmt::format("{}: {}", field, n.status().message()));
    return *n;
  }
  return Status::InvalidArgument(
      fmt::format("{}: a number of bytes or a string like \"10G\"", field));
}

Result<uint32_t> CountField(const json& v, std::string_view field, uint32_t min, uint32_t max) {
  if (!v.is_number_unsigned() || v.get<uint64_t>() < min || v.get<uint64_t>() > max) {
    return Status::InvalidArgument(fmt::format("{}: a whole number {}..{}", field, min, max));
  }
  return static_cast<uint32_t>(v.get<uint64_t>());
}

Result<bool> BoolField(const json& v, std::string_view field) {
  if (!v.is_boolean()) return Status::InvalidArgument(fmt::format("{}: true or false", field));
  return v.get<bool>();
}

// The qos object as .meta stores it: compact ASCII JSON with '#' escaped (VolumeMeta::qos).
Result<std::string> QosField(const json& v) {
  if (v.is_null()) return std::string();
  if (!v.is_object()) return Status::InvalidArgument("qos: a JSON object");
  std::string text = v.dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace);
  std::string out;
  for (char c : text) out += c == '#' ? std::string("\\u0023") : std::string(1, c);
  QBD_RETURN_IF_ERROR(CheckQosText(out));
  return out;
}

// The request's JSON object; InvalidArgument for anything else or a field not in `known`.
Result<json> BodyObject(const std::string& body, const std::set<std::string>& known) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::InvalidArgument("the body is not valid JSON");
  if (!j.is_object()) return Status::InvalidArgument("the body must be a JSON object");
  for (const auto& [key, value] : j.items()) {
    if (!known.count(key)) {
      std::string list;
      for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
      return Status::InvalidArgument(fmt::format("unknown field '{}' ({})", key, list));
    }
  }
  return j;
}

Result<CreateVolumeOptions> ParseCreate(const std::string& body) {
  QBD_ASSIGN_OR_RETURN(
      json j, BodyObject(body, {"name", "size", "replicas", "ec", "block_size", "chunk_size",
                                "write_quorum", "read_only", "qos"}));
  CreateVolumeOptions o;
  if (!j.contains("name") || !j["name"].is_string())
    return Status::InvalidArgument("name: a string is required");
  o.name = j["name"].get<std::string>();
  QBD_RETURN_IF_ERROR(ValidateVolumeName(o.name));
  if (!j.contains("size"))
    return Status::InvalidArgument("size is required (bytes, or like \"10G\")");
  QBD_ASSIGN_OR_RETURN(o.size, SizeField(j["size"], "size"));
  if (j.contains("ec")) {
    return Status::InvalidArgument("ec: erasure coding is not supported yet; use replicas");
  }
  if (j.contains("replicas")) {
    QBD_ASSIGN_OR_RETURN(o.replicas, CountField(j["replicas"], "replicas", 1, 26));
  }
  if (j.contains("write_quorum")) {
    QBD_ASSIGN_OR_RETURN(o.write_quorum, CountField(j["write_quorum"], "write_quorum", 1, 26));
  }
  if (j.contains("block_size")) {
    QBD_ASSIGN_OR_RETURN(uint64_t b, SizeField(j["block_size"], "block_size"));
    if (b > UINT32_MAX) return Status::InvalidArgument("block_size: too large");
    o.block_size = static_cast<uint32_t>(b);
  }
  if (j.contains("chunk_size")) {
    QBD_ASSIGN_OR_RETURN(o.chunk_size, SizeField(j["chunk_size"], "chunk_size"));
  }
  if (j.contains("read_only")) {
    QBD_ASSIGN_OR_RETURN(o.read_only, BoolField(j["read_only"], "read_only"));
  }
  if (j.contains("qos")) {
    QBD_ASSIGN_OR_RETURN(o.qos, QosField(j["qos"]));
  }
  return o;
}

Result<VolumeUpdate> ParseUpdate(const std::string& body) {
  QBD_ASSIGN_OR_RETURN(json j, BodyObject(body, {"size", "read_only", "append_only", "qos"}));
  if (j.empty())
    return Status::InvalidArgument("nothing to change (size, read_only, append_only, qos)");
  VolumeUpdate u;
  if (j.contains("size")) {
    QBD_ASSIGN_OR_RETURN(u.size, SizeField(j["size"], "size"));
  }
  if (j.contains("read_only")) {
    QBD_ASSIGN_OR_RETURN(u.read_only, BoolField(j["read_only"], "read_only"));
  }
  if (j.contains("append_only")) {
    QBD_ASSIGN_OR_RETURN(u.append_only, BoolField(j["append_only"], "append_only"));
  }
  if (j.contains("qos")) {
    QBD_ASSIGN_OR_RETURN(u.qos, QosField(j["qos"]));
  }
  return u;
}

// Compares in time independent of where the strings differ.
bool SameToken(std::string_view a, std::string_view b) {
  unsigned diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
  return diff == 0 && !b.empty();
}

std::vector<std::string> Segments(std::string_view path) {
  std::vector<std::string> out;
  while (!path.empty()) {
    size_t slash = path.find('/');
    std::string_view s = path.substr(0, slash);
    if (!s.empty()) out.emplace_back(s);
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return out;
}

ApiResponse NotAllowed(const ApiRequest& r, std::string_view allowed) {
  return Error(405, fmt::format("{} {}: not allowed (allowed: {})", r.method, r.path, allowed));
}

}  // namespace

int ApiHttpStatus(const Status& s) {
  if (s.IsNotFound()) return 404;
  // Backends out of reach: the quorum of a metadata write or read is lost.
  if (s.IsUnavailable() || s.IsIOError()) return 503;
  if (s.IsInvalidArgument()) return s.Errno() == EEXIST || s.Errno() == EBUSY ? 409 : 400;
  if (s.IsNotSupported()) return 400;
  return 500;
}

ApiRouter::ApiRouter(ApiService& service, ApiOptions options)
    : service_(service), options_(std::move(options)) {}

ApiResponse ApiRouter::Handle(const ApiRequest& r) {
  if (!options_.token.empty()) {
    constexpr std::string_view kBearer = "Bearer ";
    std::string_view got = r.authorization;
    if (!got.starts_with(kBearer) || !SameToken(got.substr(kBearer.size()), options_.token)) {
      ApiResponse a = Error(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)");
      return a;
    }
  }
  const std::vector<std::string> seg = Segments(r.path);
  if (seg.size() == 1 && seg[0] == "metrics" && options_.metrics) {
    if (r.method != "GET") return NotAllowed(r, "GET");
    return ApiResponse{200, options_.metrics(), "text/plain; version=0.0.4"};
  }
  if (seg.size() >= 2 && seg[0] == "v1") {
    if (seg.size() == 2 && seg[1] == "health") {
      if (r.method != "GET") return NotAllowed(r, "GET");
      return FromResult(service_.Health());
    }
    if (seg[1] == "volumes") {
      if (seg.size() == 2) return Volumes(r);
      if (seg.size() == 3) return Volume(r, seg[2], "");
      if (seg.size() == 4) return Volume(r, seg[2], seg[3]);
    }
  }
  return Error(404, fmt::format("no such path: {} (see README.md, REST API)", r.path));
}

ApiResponse ApiRouter::Volumes(const ApiRequest& r) {
  if (r.method == "GET") return FromResult(service_.ListVolumes());
  if (r.method == "POST") {
    auto o = ParseCreate(r.body);
    if (!o.ok()) return Failed(o.status());
    return FromResult(service_.CreateVolume(*o), 201);
  }
  return NotAllowed(r, "GET, POST");
}

ApiResponse ApiRouter::Volume(const ApiRequest& r, const std::string& name,
                              const std::string& action) {
  if (Status s = ValidateVolumeName(name); !s.ok()) return Failed(s);
  if (action == "repair") {
    if (r.method != "POST") return NotAllowed(r, "POST");
    return FromResult(service_.StartRepair(name), 202);
  }
  if (!action.empty()) return Error(404, fmt::format("no such path: {}", r.path));
  if (r.method == "GET") return FromResult(service_.GetVolume(name));
  if (r.method == "PATCH") {
    auto u = ParseUpdate(r.body);
    if (!u.ok()) return Failed(u.status());
    return FromResult(service_.UpdateVolume(name, *u));
  }
  if (r.method == "DELETE") {
    bool force = false;
    if (auto f = r.query.find("force"); f != r.query.end()) {
      auto b = ParseBool(f->second);
      if (!b.ok()) return Error(400, "force: 1 or 0, true or false");
      force = *b;
    }
    Status s = service_.DeleteVolume(name, force);
    if (!s.ok()) return Failed(s);
    return Reply(200, json{{"deleted", name}});
  }
  return NotAllowed(r, "GET, PATCH, DELETE");
}

// ---------------------------------------------------------------------------------------------
// ApiServer

struct ApiServer::Impl {
  httplib::Server server;
  std::thread thread;
};

Result<std::unique_ptr<ApiServer>> ApiServer::Start(const std::string& listen, ApiRouter& router) {
  QBD_ASSIGN_OR_RETURN(ListenAddress a, ParseListenAddress(listen));
  if (a.kind == ListenAddress::Kind::kUnix)
    return Status::InvalidArgument("api_listen: HOST:PORT, not unix:");
  const std::string host = a.kind == ListenAddress::Kind::kAny ? std::string("0.0.0.0") : a.host;
  std::unique_ptr<ApiServer> s(new ApiServer());
  s->impl_ = std::make_unique<Impl>();
  httplib::Server& srv = s->impl_->server;
  auto serve = [&router](const httplib::Request& req, httplib::Response& res) {
    ApiRequest r;
    r.method = req.method;
    r.path = req.path;
    for (const auto& [k, v] : req.params) r.query[k] = v;
    r.body = req.body;
    r.authorization = req.get_header_value("Authorization");
    ApiResponse out = router.Handle(r);
    res.status = out.status;
    res.set_content(out.body, out.content_type.c_str());
  };
  for (const char* pattern : {R"(/.*)"}) {
    srv.Get(pattern, serve);
    srv.Post(pattern, serve);
    srv.Patch(pattern, serve);
    srv.Delete(pattern, serve);
    srv.Put(pattern, serve);
    srv.Options(pattern, serve);
  }
  // What the library refuses itself (a request it cannot parse, a POST without Content-Length)
  // gets a JSON error too.
  srv.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    ApiResponse out = Error(
        res.status, fmt::format("{} {}: {}", req.method, req.path,
                                res.status == 400 ? "malformed HTTP request (a POST, "
                                                    "PATCH or PUT needs a Content-Length)"
                                                  : fmt::format("HTTP status {}", res.status)));
    res.set_content(out.body, out.content_type.c_str());
  });
  srv.set_payload_max_length(1 << 20);
  srv.set_read_timeout(10, 0);
  srv.set_write_timeout(10, 0);
  if (!srv.bind_to_port(host, a.port)) {
    return Status::IOError(
        fmt::format("api_listen {}: cannot bind: {}", listen, std::strerror(errno)));
  }
  s->address_ = a.kind == ListenAddress::Kind::kIPv6 ? fmt::format("[{}]:{}", host, a.port)
                                                     : fmt::format("{}:{}", host, a.port);
  s->impl_->thread = std::thread([&srv] { srv.listen_after_bind(); });
  return s;
}

ApiServer::~ApiServer() {
  if (!impl_) return;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace qbd
