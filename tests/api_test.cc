// Tests of include/qbd/api.h: ApiRouter's routing, validation, status codes and token check
// against a fake ApiService (no sockets), and the api_listen / api_token_file keys of qbd.conf.
#include "qbd/api.h"

#include <doctest/doctest.h>

#include <cerrno>
#include <fstream>
#include <string>
#include <vector>

#include "qbd/config.h"
#include "qbd/volume_meta.h"
#include "testutil/temp_dir.h"

namespace qbd::test {
namespace {

using nlohmann::json;

// Records what the router asked and answers with what the test set.
class FakeService : public ApiService {
 public:
  Result<json> ListVolumes() override { return json{{"volumes", json::array()}}; }
  Result<json> GetVolume(const std::string& name) override {
    if (name != "v") return Status::NotFound("no volume named '" + name + "'");
    return json{{"name", "v"}};
  }
  Result<json> CreateVolume(const CreateVolumeOptions& o) override {
    created.push_back(o);
    if (o.name == "exists")
      return Status::InvalidArgument("volume 'exists' already exists", EEXIST);
    return json{{"name", o.name}};
  }
  Result<json> UpdateVolume(const std::string& name, const VolumeUpdate& u) override {
    updates.push_back(u);
    if (name != "v") return Status::NotFound("no volume");
    return json{{"name", name}};
  }
  Status DeleteVolume(const std::string& name, bool force) override {
    deleted.emplace_back(name, force);
    if (name == "busy" && !force) return Status::InvalidArgument("connected", EBUSY);
    return Status::OK();
  }
  Result<json> Health() override {
    if (no_quorum) return Status::Unavailable("quorum lost");
    return json{{"status", "ok"}};
  }
  Result<json> StartRepair(const std::string& name) override { return json{{"name", name}}; }
  Result<json> RepairChunk(const std::string& name, uint64_t chunk,
                           const RepairOptions& o) override {
    repairs.push_back({name, chunk, o});
    if (name != "v") return Status::NotFound("no volume");
    ChunkRepairReport r;
    r.chunk = chunk + 1;
    r.lost = {1, 2, 3, 9};
    return RepairReportJson(r);
  }
  Result<json> Daemon() override { return json{{"pid", 1}}; }
  Result<json> Backends() override { return json{{"ok", true}}; }
  Result<json> Block(const std::string& name, uint64_t offset) override {
    return json{{"name", name}, {"offset", offset}};
  }

  std::vector<CreateVolumeOptions> created;
  std::vector<VolumeUpdate> updates;
  std::vector<std::pair<std::string, bool>> deleted;
  struct Repair {
    std::string name;
    uint64_t chunk;
    RepairOptions options;
  };
  std::vector<Repair> repairs;
  bool no_quorum = false;
};

ApiRequest Req(std::string method, std::string path, std::string body = "") {
  ApiRequest r;
  r.method = std::move(method);
  r.path = std::move(path);
  r.body = std::move(body);
  r.peer_uid = 0;  // root on loopback, unless a test says otherwise
  return r;
}

// The reply's {"error": ...}; fails the test when the body is not such an object.
std::string ErrorOf(const ApiResponse& r) {
  json j = json::parse(r.body, nullptr, false);
  REQUIRE(j.is_object());
  REQUIRE(j.contains("error"));
  REQUIRE(j["error"].is_string());
  return j["error"].get<std::string>();
}

TEST_SUITE("api") {
TEST_CASE("POST /v1/volumes passes every field to the service and answers 201") {
  FakeService s;
  ApiRouter router(s, {});
  ApiResponse r =
      router.Handle(Req("POST", "/v1/volumes",
                        R"({"name": "vm1", "size": "10G", "replicas": 2, "block_size": "8K",
                                        "chunk_size": 1048576, "write_quorum": 1, "read_only": true,
                                        "qos": {"max_iops": 100, "max_write_bps": "10M"}})"));
  CHECK(r.status == 201);
  CHECK(r.content_type == "application/json");
  REQUIRE(s.created.size() == 1);
  const CreateVolumeOptions& o = s.created[0];
  CHECK(o.name == "vm1");
  CHECK(o.size == (uint64_t{10} << 30));
  CHECK(o.replicas == 2);
  CHECK(o.block_size == 8192);
  CHECK(o.chunk_size == 1048576);
  CHECK(o.write_quorum == 1);
  CHECK(o.read_only);
  SUBCASE("and qos is stored as compact JSON that .meta can hold") {
    CHECK(CheckQosText(o.qos).ok());
    CHECK(o.qos.find('#') == std::string::npos);
    CHECK(json::parse(o.qos) == json{{"max_iops", 100}, {"max_write_bps", "10M"}});
  }
}

TEST_CASE("POST /v1/volumes answers 400 for bad input without calling the service") {
  FakeService s;
  ApiRouter router(s, {});
  for (const char* body :
       {R"({"name": "bad name", "size": "1G"})", R"({"name": "x", "size": "12Q"})",
        R"({"name": "x", "size": -5})", R"({"name": "x", "size": 1.5})", R"({"name": "x"})",
        R"({"size": "1G"})", R"({"name": 7, "size": "1G"})", R"({"name": "x", "size": "1G")",
        R"([1, 2])", R"("x")", "", R"({"name": "x", "size": "1G", "bogus": 1})",
        R"({"name": "x", "size": "1G", "replicas": 0})",
        R"({"name": "x", "size": "1G", "replicas": 27})",
        R"({"name": "x", "size": "1G", "ec": {"k": 2}})",
        R"({"name": "x", "size": "1G", "read_only": 1})",
        R"({"name": "x", "size": "1G", "qos": [1]})",
        R"({"name": "x", "size": "1G", "qos": {"iops": 100}})",
        R"({"name": "x", "size": "1G", "qos": {"max_iops": -1}})",
        R"({"name": "x", "size": "1G", "qos": {"max_bps": "fast"}})"}) {
    CAPTURE(body);
    ApiResponse r = router.Handle(Req("POST", "/v1/volumes", body));
    CHECK(r.status == 400);
    CHECK_FALSE(ErrorOf(r).empty());
  }
  CHECK(s.created.empty());
}

TEST_CASE("service failures map onto HTTP statuses") {
  FakeService s;
  ApiRouter router(s, {});
  SUBCASE("an existing volume is 409") {
    ApiResponse r =
        router.Handle(Req("POST", "/v1/volumes", R"({"name": "exists", "size": "1M"})"));
    CHECK(r.status == 409);
    CHECK(ErrorOf(r).find("already exists") != std::string::npos);
  }
  SUBCASE("an unknown volume is 404") {
    CHECK(router.Handle(Req("GET", "/v1/volumes/nope")).status == 404);
    CHECK(router.Handle(Req("PATCH", "/v1/volumes/nope", R"({"read_only": true})")).status == 404);
  }
  SUBCASE("a lost quorum is 503") {
    CHECK(router.Handle(Req("GET", "/v1/health")).status == 200);
    s.no_quorum = true;
    CHECK(router.Handle(Req("GET", "/v1/health")).status == 503);
  }
  SUBCASE("the codes for the other statuses") {
    CHECK(ApiHttpStatus(Status::InvalidArgument("x")) == 400);
    CHECK(ApiHttpStatus(Status::InvalidArgument("x", EBUSY)) == 409);
    CHECK(ApiHttpStatus(Status::IOError("x")) == 503);
    CHECK(ApiHttpStatus(Status::Corruption("x")) == 500);
  }
}

TEST_CASE("DELETE passes force from the query and a connected volume is 409 without it") {
  FakeService s;
  ApiRouter router(s, {});
  CHECK(router.Handle(Req("DELETE", "/v1/volumes/busy")).status == 409);
  ApiRequest forced = Req("DELETE", "/v1/volumes/busy");
  forced.query["force"] = "1";
  CHECK(router.Handle(forced).status == 200);
  forced.query["force"] = "maybe";
  CHECK(router.Handle(forced).status == 400);
  REQUIRE(s.deleted.size() == 2);
  CHECK(s.deleted[0] == std::pair<std::string, bool>("busy", false));
  CHECK(s.deleted[1] == std::pair<std::string, bool>("busy", true));
}

TEST_CASE("PATCH takes size, read_only, append_only and qos, and refuses an empty change") {
  FakeService s;
  ApiRouter router(s, {});
  CHECK(router.Handle(Req("PATCH", "/v1/volumes/v", R"({"size": "2G", "append_only": true})"))
            .status == 200);
  REQUIRE(s.updates.size() == 1);
  CHECK(s.updates[0].size == (uint64_t{2} << 30));
  CHECK(s.updates[0].append_only == true);
  CHECK_FALSE(s.updates[0].read_only.has_value());
  CHECK(router.Handle(Req("PATCH", "/v1/volumes/v", "{}")).status == 400);
  CHECK(router.Handle(Req("PATCH", "/v1/volumes/v", R"({"grow": "2G"})")).status == 400);
  CHECK(router.Handle(Req("PATCH", "/v1/volumes/v", R"({"read_only": "on"})")).status == 400);
  CHECK(router.Handle(Req("PATCH", "/v1/volumes/v", R"({"qos": {"max_iops": 1.5}})")).status == 400);
  CHECK(s.updates.size() == 1);
  CHECK(router.Handle(Req("PATCH", "/v1/volumes/v", R"({"qos": {"max_iops": 200}})")).status == 200);
  REQUIRE(s.updates.size() == 2);
  CHECK(s.updates[1].qos == R"({"max_iops":200})");
}

TEST_CASE("routing answers 404 for unknown paths, 405 for wrong methods, 202 for a repair") {
  FakeService s;
  ApiRouter router(s, {});
  CHECK(router.Handle(Req("GET", "/v1/volumes")).status == 200);
  CHECK(router.Handle(Req("GET", "/v1/volumes/")).status == 200);
  CHECK(router.Handle(Req("GET", "/v2/volumes")).status == 404);
  CHECK(router.Handle(Req("GET", "/v1/volumes/v/snapshots")).status == 404);
  CHECK(router.Handle(Req("GET", "/v1/volumes/.x")).status == 400);
  CHECK(router.Handle(Req("PUT", "/v1/volumes")).status == 405);
  CHECK(router.Handle(Req("GET", "/v1/volumes/v/repair")).status == 405);
  CHECK(router.Handle(Req("POST", "/v1/volumes/v/repair")).status == 202);
  CHECK(router.Handle(Req("GET", "/metrics")).status == 404);  // no registry given
}

TEST_CASE("GET /metrics serves the given text as Prometheus text format") {
  FakeService s;
  ApiOptions o;
  o.metrics = [] { return std::string("qbd_up 1\n"); };
  ApiRouter router(s, o);
  ApiResponse r = router.Handle(Req("GET", "/metrics"));
  CHECK(r.status == 200);
  CHECK(r.body == "qbd_up 1\n");
  CHECK(r.content_type == "text/plain; version=0.0.4");
}

TEST_CASE("with a token every request needs Authorization: Bearer TOKEN") {
  FakeService s;
  ApiOptions o;
  o.token = "s3cret";
  ApiRouter router(s, o);
  ApiRequest r = Req("GET", "/v1/volumes");
  CHECK(router.Handle(r).status == 401);
  for (const char* bad :
       {"Bearer s3cre", "Bearer s3cretX", "bearer s3cret", "Basic s3cret", "Bearer "}) {
    CAPTURE(bad);
    r.authorization = bad;
    CHECK(router.Handle(r).status == 401);
  }
  r.authorization = "Bearer s3cret";
  CHECK(router.Handle(r).status == 200);
  SUBCASE("also for unknown paths, which say nothing before the token is checked") {
    ApiRequest u = Req("GET", "/nothing");
    CHECK(router.Handle(u).status == 401);
  }
}

TEST_CASE("without a token, local users may read; only root and the daemon's user may change") {
  FakeService s;
  ApiOptions o;
  o.change_uids = {0, 998};
  ApiRouter router(s, o);
  ApiRequest get = Req("GET", "/v1/volumes");
  get.peer_uid = 1000;
  CHECK(router.Handle(get).status == 200);
  get.peer_uid.reset();  // not told (another address)
  CHECK(router.Handle(get).status == 200);
  for (const char* method : {"POST", "PATCH", "DELETE"}) {
    CAPTURE(method);
    ApiRequest r = Req(method, "/v1/volumes/v", R"({"read_only": true})");
    r.peer_uid = 1000;
    ApiResponse a = router.Handle(r);
    CHECK(a.status == 403);
    CHECK(ErrorOf(a).find("uid 1000") != std::string::npos);
    r.peer_uid.reset();
    CHECK(router.Handle(r).status == 403);
  }
  CHECK(s.deleted.empty());
  CHECK(s.updates.empty());
  ApiRequest d = Req("DELETE", "/v1/volumes/v");
  d.peer_uid = 998;
  CHECK(router.Handle(d).status == 200);
  CHECK(s.deleted.size() == 1);
}

TEST_CASE("POST /v1/volumes/NAME/chunks/N/repair passes the options and returns the report") {
  FakeService s;
  ApiRouter router(s, {});
  ApiResponse r = router.Handle(Req("POST", "/v1/volumes/v/chunks/7/repair",
                                    R"({"dry_run": true, "parts": "bc", "accept_loss": true})"));
  REQUIRE(r.status == 200);
  REQUIRE(s.repairs.size() == 1);
  CHECK(s.repairs[0].chunk == 7);
  CHECK(s.repairs[0].options.dry_run);
  CHECK(s.repairs[0].options.accept_loss);
  CHECK(s.repairs[0].options.targets == 0b110u);
  auto report = RepairReportFromJson(json::parse(r.body));
  REQUIRE(report.ok());
  CHECK(report->chunk == 8);
  CHECK(report->lost == std::vector<uint64_t>{1, 2, 3, 9});
  CHECK(json::parse(r.body)["lost"] == "1-3,9");
  // No body: every part, no dry run.
  REQUIRE(router.Handle(Req("POST", "/v1/volumes/v/chunks/0/repair")).status == 200);
  CHECK(s.repairs[1].options.targets == ~0u);
  CHECK_FALSE(s.repairs[1].options.dry_run);
  CHECK(router.Handle(Req("POST", "/v1/volumes/nope/chunks/0/repair")).status == 404);
  for (const char* bad : {"/v1/volumes/v/chunks/x/repair", "/v1/volumes/v/chunks/-1/repair",
                          "/v1/volumes/v/chunks/18446744073709551616/repair"}) {
    CAPTURE(bad);
    CHECK(router.Handle(Req("POST", bad)).status == 400);
  }
  CHECK(router.Handle(Req("POST", "/v1/volumes/v/chunks/0/repair", R"({"parts": "B"})")).status ==
        400);
  CHECK(router.Handle(Req("POST", "/v1/volumes/v/chunks/0/repair", R"({"what": 1})")).status ==
        400);
  CHECK(router.Handle(Req("GET", "/v1/volumes/v/chunks/0/repair")).status == 405);
  CHECK(router.Handle(Req("POST", "/v1/volumes/v/chunks/0/scrub")).status == 404);
  CHECK(s.repairs.size() == 3);
}

TEST_CASE("a repair report survives JSON both ways; a malformed one is Corruption") {
  ChunkRepairReport r;
  r.chunk = 3;
  r.bytes_read = 100;
  r.bytes_written = 50;
  RepairAction a;
  a.target = 'b';
  a.sources = "ac";
  a.whole_file = true;
  a.reason = "missing";
  a.blocks = {0, 1, 2, 5};
  a.error = "";
  r.actions.push_back(a);
  r.unknown = {7};
  r.notes = {"part c is down"};
  auto back = RepairReportFromJson(RepairReportJson(r));
  REQUIRE(back.ok());
  CHECK(back->chunk == 3);
  CHECK(back->bytes_read == 100);
  REQUIRE(back->actions.size() == 1);
  CHECK(back->actions[0].target == 'b');
  CHECK(back->actions[0].sources == "ac");
  CHECK(back->actions[0].whole_file);
  CHECK(back->actions[0].blocks == std::vector<uint64_t>{0, 1, 2, 5});
  CHECK(back->unknown == std::vector<uint64_t>{7});
  CHECK(back->notes == r.notes);
  json j = RepairReportJson(r);
  for (const char* key : {"chunk", "lost", "actions", "notes"}) {
    CAPTURE(key);
    json broken = j;
    broken.erase(key);
    CHECK(RepairReportFromJson(broken).status().IsCorruption());
  }
  json bad_target = j;
  bad_target["actions"][0]["target"] = "bb";
  CHECK(RepairReportFromJson(bad_target).status().IsCorruption());
  CHECK(RepairReportFromJson(json::array()).status().IsCorruption());
}

TEST_CASE("GET /v1/daemon, /v1/backends and /v1/volumes/NAME/blocks/OFFSET reach the service") {
  FakeService s;
  ApiRouter router(s, {});
  CHECK(router.Handle(Req("GET", "/v1/daemon")).status == 200);
  CHECK(router.Handle(Req("GET", "/v1/backends")).status == 200);
  ApiResponse b = router.Handle(Req("GET", "/v1/volumes/v/blocks/8K"));
  REQUIRE(b.status == 200);
  CHECK(json::parse(b.body)["offset"] == 8192);
  CHECK(router.Handle(Req("GET", "/v1/volumes/v/blocks/zz")).status == 400);
  CHECK(router.Handle(Req("POST", "/v1/daemon")).status == 405);
  CHECK(router.Handle(Req("DELETE", "/v1/volumes/v/blocks/0")).status == 405);
}
}  // TEST_SUITE("api")

TEST_SUITE("config") {
TEST_CASE("api_listen defaults to 127.0.0.1:10810 and is parsed like listen") {
  auto c = ParseConfig("parts = a\n[backend a]\npath = /a\n", "q.conf", "/base");
  REQUIRE(c.ok());
  CHECK(c->api_listen == "127.0.0.1:10810");
  c = ParseConfig("parts = a\napi_listen = 127.0.0.1:99999\n[backend a]\npath = /a\n", "q.conf",
                  "/base");
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().message().find("q.conf:2: api_listen") == 0);
  c = ParseConfig("parts = a\napi_listen = unix:/x.sock\n[backend a]\npath = /a\n", "q.conf",
                  "/base");
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().message().find("q.conf:2:") == 0);
  c = ParseConfig(
      "listen = 127.0.0.1:7000\nparts = a\napi_listen = 127.0.0.1:7000\n[backend a]\npath = /a\n",
      "q.conf", "/base");
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().message().find("q.conf:3:") == 0);
}

TEST_CASE("a non-loopback api_listen without api_token_file is refused on the host") {
  TempDir dir;
  const std::string base = dir.path();
  std::filesystem::create_directories(base + "/a");
  auto c = ParseConfig("parts = a\napi_listen = 0.0.0.0:7001\n[backend a]\npath = a\n",
                       base + "/q.conf", base);
  REQUIRE(c.ok());
  Status s = CheckConfigOnHost(*c);
  REQUIRE_FALSE(s.ok());
  CHECK(s.message().find("q.conf:2: api_listen 0.0.0.0:7001 is not a loopback address") !=
        std::string::npos);
  SUBCASE("and accepted with a readable token file") {
    std::ofstream(base + "/tok") << "abc\n";
    c = ParseConfig(
        "parts = a\napi_listen = 0.0.0.0:7001\napi_token_file = tok\n[backend a]\npath = a\n",
        base + "/q.conf", base);
    REQUIRE(c.ok());
    CHECK(CheckConfigOnHost(*c).ok());
    CHECK(ReadApiToken(c->api_token_file).value() == "abc");
  }
  SUBCASE("an empty or missing token file is refused naming its line") {
    std::ofstream(base + "/empty") << "\n";
    c = ParseConfig("parts = a\napi_token_file = empty\n[backend a]\npath = a\n", base + "/q.conf",
                    base);
    REQUIRE(c.ok());
    s = CheckConfigOnHost(*c);
    CHECK(s.message().find("q.conf:2: api_token_file") != std::string::npos);
  }
}

TEST_CASE("IsLoopbackListener knows loopback addresses from the others") {
  CHECK(IsLoopbackListener("127.0.0.1:1"));
  CHECK(IsLoopbackListener("127.0.0.2:1"));
  CHECK(IsLoopbackListener("[::1]:1"));
  CHECK_FALSE(IsLoopbackListener("0.0.0.0:1"));
  CHECK_FALSE(IsLoopbackListener("*:1"));
  CHECK_FALSE(IsLoopbackListener("10.1.2.3:1"));
  CHECK_FALSE(IsLoopbackListener("[::]:1"));
}
}  // TEST_SUITE("config")

}  // namespace
}  // namespace qbd::test
