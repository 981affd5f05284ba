// Implements include/qbd/api.h. Library code does not throw: JSON is parsed without exceptions
// and every field's type is checked before it is read.
#include "qbd/api.h"

#include <fmt/format.h>
#include <httplib.h>

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "qbd/chunk_format.h"
#include "qbd/config.h"
#include "qbd/log.h"
#include "qbd/qos.h"
#include "qbd/scrub.h"

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
    QBD_ASSIGN_OR_RETURN(o.qos, QosMetaText(j["qos"]));
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
    QBD_ASSIGN_OR_RETURN(u.qos, QosMetaText(j["qos"]));
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
  } else if (r.method != "GET" && r.method != "HEAD") {
    const auto& ok = options_.change_uids;
    if (!r.peer_uid || std::find(ok.begin(), ok.end(), *r.peer_uid) == ok.end()) {
      return Error(403, fmt::format(
                            "{} {}: changes need root or qbd-master's user on this host{}, or "
                            "a bearer token (api_token_file)",
                            r.method, r.path,
                            r.peer_uid ? fmt::format(" (the request came from uid {})", *r.peer_uid)
                                       : std::string()));
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
    if (seg.size() == 2 && seg[1] == "daemon") {
      if (r.method != "GET") return NotAllowed(r, "GET");
      return FromResult(service_.Daemon());
    }
    if (seg.size() == 2 && seg[1] == "attachments") {
      if (r.method != "GET") return NotAllowed(r, "GET");
      return FromResult(service_.Attachments());
    }
    if (seg.size() == 2 && seg[1] == "backends") {
      if (r.method != "GET") return NotAllowed(r, "GET");
      return FromResult(service_.Backends());
    }
    if (seg[1] == "volumes") {
      if (seg.size() == 2) return Volumes(r);
      if (seg.size() == 3) return Volume(r, seg[2], "");
      if (seg.size() == 4) return Volume(r, seg[2], seg[3]);
      if (seg.size() == 5 && seg[3] == "blocks") {
        if (Status s = ValidateVolumeName(seg[2]); !s.ok()) return Failed(s);
        if (r.method != "GET") return NotAllowed(r, "GET");
        auto off = ParseSize(seg[4]);
        if (!off.ok()) return Error(400, fmt::format("offset: {}", off.status().message()));
        return FromResult(service_.Block(seg[2], *off));
      }
      if (seg.size() == 6 && seg[3] == "chunks") return Chunk(r, seg[2], seg[4], seg[5]);
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
  if (action == "acquire") {
    if (r.method != "POST") return NotAllowed(r, "POST");
    uint64_t timeout_ms = 30000;
    if (auto t = r.query.find("timeout_ms"); t != r.query.end()) {
      auto [end, ec] = std::from_chars(t->second.data(), t->second.data() + t->second.size(), timeout_ms);
      if (ec != std::errc() || end != t->second.data() + t->second.size() || timeout_ms > 600000)
        return Error(400, "timeout_ms: 0..600000");
    }
    bool migration = false;
    if (auto m = r.query.find("migration"); m != r.query.end()) {
      auto b = ParseBool(m->second);
      if (!b.ok()) return Error(400, "migration: " + b.status().message());
      migration = *b;
    }
    return FromResult(service_.AcquireVolume(name, timeout_ms, migration));
  }
  if (action == "repair") {
    if (r.method != "POST") return NotAllowed(r, "POST");
    return FromResult(service_.StartRepair(name), 202);
  }
  if (action == "attach" || action == "detach") return Attach(r, name, action);
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

// POST /v1/volumes/NAME/attach {"connections": N (default 1), "lvm_thin": bool, "migration": bool}, POST
// /v1/volumes/NAME/detach.
ApiResponse ApiRouter::Attach(const ApiRequest& r, const std::string& name, const std::string& action) {
  if (r.method != "POST") return NotAllowed(r, "POST");
  if (action == "detach") {
    Status s = service_.DetachVolume(name);
    if (!s.ok()) return Failed(s);
    return Reply(200, json{{"detached", name}});
  }
  int connections = 1;
  bool lvm_thin = false, migration = false;
  if (!r.body.empty()) {
    auto j = BodyObject(r.body, {"connections", "lvm_thin", "migration"});
    if (!j.ok()) return Failed(j.status());
    for (auto [key, field] : {std::pair{"lvm_thin", &lvm_thin}, std::pair{"migration", &migration}}) {
      if (!j->contains(key)) continue;
      auto b = BoolField((*j)[key], key);
      if (!b.ok()) return Failed(b.status());
      *field = *b;
    }
    if (j->contains("connections")) {
      const json& c = (*j)["connections"];
      if (!c.is_number_integer() || c.get<int64_t>() < 1 || c.get<int64_t>() > 16) {
        return Error(400, "connections: an integer 1..16");
      }
      connections = c.get<int>();
    }
  }
  return FromResult(service_.AttachVolume(name, connections, lvm_thin, migration), 201);
}

// POST /v1/volumes/NAME/chunks/N/repair {"dry_run": false, "parts": "ab", "accept_loss": false}
ApiResponse ApiRouter::Chunk(const ApiRequest& r, const std::string& name,
                             const std::string& chunk, const std::string& action) {
  if (Status s = ValidateVolumeName(name); !s.ok()) return Failed(s);
  if (action != "repair") return Error(404, fmt::format("no such path: {}", r.path));
  if (r.method != "POST") return NotAllowed(r, "POST");
  uint64_t c = 0;
  auto [end, ec] = std::from_chars(chunk.data(), chunk.data() + chunk.size(), c);
  if (ec != std::errc() || end != chunk.data() + chunk.size())
    return Error(400, fmt::format("chunk: '{}' is not a chunk number (0-based)", chunk));
  RepairOptions o;
  if (!r.body.empty()) {
    auto j = BodyObject(r.body, {"dry_run", "parts", "accept_loss"});
    if (!j.ok()) return Failed(j.status());
    if (j->contains("dry_run")) {
      auto b = BoolField((*j)["dry_run"], "dry_run");
      if (!b.ok()) return Failed(b.status());
      o.dry_run = *b;
    }
    if (j->contains("accept_loss")) {
      auto b = BoolField((*j)["accept_loss"], "accept_loss");
      if (!b.ok()) return Failed(b.status());
      o.accept_loss = *b;
    }
    if (j->contains("parts")) {
      const json& p = (*j)["parts"];
      if (!p.is_string() || p.get<std::string>().empty())
        return Error(400, "parts: the part letters that may be rewritten, like \"bc\"");
      o.targets = 0;
      for (char l : p.get<std::string>()) {
        if (l < 'a' || l > 'z') return Error(400, fmt::format("parts: '{}' is not a part letter", l));
        o.targets |= 1u << (l - 'a');
      }
    }
  }
  return FromResult(service_.RepairChunk(name, c, o));
}

// ---------------------------------------------------------------------------------------------
// Repair reports

namespace {

std::string Ranges(const std::vector<uint64_t>& blocks) {
  std::string s = FormatRanges(blocks);
  std::erase(s, ' ');
  return s;
}

Result<std::string> StringOf(const json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_string())
    return Status::Corruption(fmt::format("repair report: '{}' is not a string", key));
  return j[key].get<std::string>();
}

Result<uint64_t> NumberOf(const json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_number_unsigned())
    return Status::Corruption(fmt::format("repair report: '{}' is not a number", key));
  return j[key].get<uint64_t>();
}

Result<std::vector<uint64_t>> BlocksOf(const json& j, const char* key) {
  QBD_ASSIGN_OR_RETURN(std::string text, StringOf(j, key));
  return ParseBlockRanges(text);
}

}  // namespace

Result<std::vector<uint64_t>> ParseBlockRanges(std::string_view s) {
  std::vector<uint64_t> out;
  if (s == "-") return out;
  while (!s.empty()) {
    size_t comma = s.find(',');
    std::string_view item = s.substr(0, comma);
    s = comma == std::string_view::npos ? std::string_view() : s.substr(comma + 1);
    size_t dash = item.find('-');
    uint64_t a = 0, b = 0;
    auto num = [](std::string_view t, uint64_t* v) {
      auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), *v);
      return ec == std::errc() && end == t.data() + t.size();
    };
    if (!num(item.substr(0, dash), &a))
      return Status::Corruption(fmt::format("bad block range '{}'", item));
    b = a;
    if (dash != std::string_view::npos && !num(item.substr(dash + 1), &b)) {
      return Status::Corruption(fmt::format("bad block range '{}'", item));
    }
    // A chunk has at most 2^21 blocks (1 GiB of 512-byte blocks): no report names a block past
    // that or lists more. Bounding b also keeps the sum below and the loop after it from wrapping.
    constexpr uint64_t kMaxChunkBlocks = kMaxChunkSize / kMinBlockSize;
    if (b < a || b >= kMaxChunkBlocks || b - a + out.size() >= kMaxChunkBlocks) {
      return Status::Corruption(fmt::format("bad block range '{}'", item));
    }
    for (uint64_t x = a; x <= b; ++x) out.push_back(x);
  }
  return out;
}

json RepairReportJson(const ChunkRepairReport& r) {
  json actions = json::array();
  for (const RepairAction& a : r.actions) {
    actions.push_back({{"target", std::string(1, a.target)},
                       {"sources", a.sources},
                       {"whole_file", a.whole_file},
                       {"reason", a.reason},
                       {"blocks", Ranges(a.blocks)},
                       {"error", a.error}});
  }
  return json{{"chunk", r.chunk},
              {"bytes_read", r.bytes_read},
              {"bytes_written", r.bytes_written},
              {"actions", std::move(actions)},
              {"lost", Ranges(r.lost)},
              {"unknown", Ranges(r.unknown)},
              {"accepted", Ranges(r.accepted)},
              {"notes", r.notes}};
}

Result<ChunkRepairReport> RepairReportFromJson(const json& j) {
  if (!j.is_object()) return Status::Corruption("repair report: not a JSON object");
  ChunkRepairReport r;
  QBD_ASSIGN_OR_RETURN(r.chunk, NumberOf(j, "chunk"));
  QBD_ASSIGN_OR_RETURN(r.bytes_read, NumberOf(j, "bytes_read"));
  QBD_ASSIGN_OR_RETURN(r.bytes_written, NumberOf(j, "bytes_written"));
  QBD_ASSIGN_OR_RETURN(r.lost, BlocksOf(j, "lost"));
  QBD_ASSIGN_OR_RETURN(r.unknown, BlocksOf(j, "unknown"));
  QBD_ASSIGN_OR_RETURN(r.accepted, BlocksOf(j, "accepted"));
  if (!j.contains("actions") || !j["actions"].is_array())
    return Status::Corruption("repair report: 'actions' is not a list");
  for (const json& a : j["actions"]) {
    if (!a.is_object()) return Status::Corruption("repair report: an action is not an object");
    RepairAction x;
    QBD_ASSIGN_OR_RETURN(std::string target, StringOf(a, "target"));
    if (target.size() != 1 || target[0] < 'a' || target[0] > 'z')
      return Status::Corruption(fmt::format("repair report: bad target '{}'", target));
    x.target = target[0];
    QBD_ASSIGN_OR_RETURN(x.sources, StringOf(a, "sources"));
    QBD_ASSIGN_OR_RETURN(x.reason, StringOf(a, "reason"));
    QBD_ASSIGN_OR_RETURN(x.error, StringOf(a, "error"));
    QBD_ASSIGN_OR_RETURN(x.blocks, BlocksOf(a, "blocks"));
    if (!a.contains("whole_file") || !a["whole_file"].is_boolean())
      return Status::Corruption("repair report: 'whole_file' is not true or false");
    x.whole_file = a["whole_file"].get<bool>();
    r.actions.push_back(std::move(x));
  }
  if (!j.contains("notes") || !j["notes"].is_array())
    return Status::Corruption("repair report: 'notes' is not a list");
  for (const json& n : j["notes"]) {
    if (!n.is_string()) return Status::Corruption("repair report: a note is not a string");
    r.notes.push_back(n.get<std::string>());
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// ApiServer

namespace {

// The owner of the TCP socket at local address (addr, port) connected to (peer, peer_port), from
// /proc/net/tcp or tcp6: both ends of a loopback connection are this host's sockets.
std::optional<uint32_t> SocketOwner(const std::string& addr, int port, const std::string& peer,
                                    int peer_port) {
  // The kernel prints each address as the 32-bit words of its network bytes, in host order.
  auto hex_of = [](const std::string& text) -> std::string {
    unsigned char b[16];
    std::string out;
    auto words = [&](int n) {
      for (int w = 0; w < n; ++w) {
        uint32_t v = 0;
        std::memcpy(&v, b + 4 * w, 4);
        out += fmt::format("{:08X}", v);
      }
    };
    if (::inet_pton(AF_INET, text.c_str(), b) == 1) {
      words(1);
    } else if (::inet_pton(AF_INET6, text.c_str(), b) == 1) {
      words(4);
    }
    return out;
  };
  const std::string local = fmt::format("{}:{:04X}", hex_of(addr), port);
  const std::string remote = fmt::format("{}:{:04X}", hex_of(peer), peer_port);
  if (local.size() < 6 || remote.size() < 6) return std::nullopt;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string sl, l, rem, st, queues, timer, retr;
      uint32_t uid = 0;
      if (!(ls >> sl >> l >> rem >> st >> queues >> timer >> retr >> uid)) continue;
      if (l == local && rem == remote) return uid;
    }
  }
  return std::nullopt;
}

bool IsLoopback(const std::string& addr) {
  return addr.rfind("127.", 0) == 0 || addr == "::1" || addr.rfind("::ffff:127.", 0) == 0;
}

}  // namespace

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
    if (req.method != "GET" && IsLoopback(req.remote_addr)) {
      r.peer_uid = SocketOwner(req.remote_addr, req.remote_port, req.local_addr, req.local_port);
    }
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
