// Tests of include/qbd/nbd_attach.h that need no kernel nbd module: the state file (read, refused
// when malformed), the client handshake against qbd's own NBD server, the attach routes of the
// REST API and the attach keys of qbd.conf. Attaching itself runs in the test VM
// (tests/vm/guest/attach_*.sh through tests/integration/test_vm.sh).
#include "qbd/nbd_attach.h"

#include <doctest/doctest.h>
#include <sys/socket.h>

#include <cerrno>
#include <fstream>
#include <string>

#include "common/coding.h"
#include "qbd/api.h"
#include "qbd/config.h"
#include "qbd/nbd_server.h"
#include "qbd/nbd_wire.h"
#include "testutil/mem_disk.h"
#include "testutil/temp_dir.h"

namespace qbd::test {
namespace {

using nlohmann::json;

class AttachService : public ApiService {
 public:
  Result<json> ListVolumes() override { return json::object(); }
  Result<json> GetVolume(const std::string&) override { return json::object(); }
  Result<json> CreateVolume(const CreateVolumeOptions&) override { return json::object(); }
  Result<json> UpdateVolume(const std::string&, const VolumeUpdate&) override {
    return json::object();
  }
  Status DeleteVolume(const std::string&, bool) override { return Status::OK(); }
  Result<json> Health() override { return json::object(); }
  Result<json> StartRepair(const std::string&) override { return json::object(); }
  Result<json> RepairChunk(const std::string&, uint64_t, const RepairOptions&) override {
    return json::object();
  }
  Result<json> Daemon() override { return json::object(); }
  Result<json> Backends() override { return json::object(); }
  Result<json> Block(const std::string&, uint64_t) override { return json::object(); }
  Result<json> AttachVolume(const std::string& name, int connections, bool lvm_thin, bool migration) override {
    (void)lvm_thin;
    attached.emplace_back(name, connections);
    migrations.push_back(migration);
    if (name == "twice") return Status::InvalidArgument("already attached", EEXIST);
    return json{{"volume", name}, {"device", "/dev/nbd3"}};
  }
  Status DetachVolume(const std::string& name) override {
    if (name != "v") return Status::NotFound("not attached");
    return Status::OK();
  }
  Result<json> Attachments() override {
    return json{{"attachments", json::array({json{{"volume", "v"}}})}};
  }

  std::vector<std::pair<std::string, int>> attached;
  std::vector<bool> migrations;
};

class OneExport : public ExportRegistry {
 public:
  explicit OneExport(std::shared_ptr<Export> e) : e_(std::move(e)) {}
  std::vector<std::string> List() const override { return {e_->name}; }
  std::shared_ptr<const Export> Find(std::string_view name) const override {
    return name == e_->name ? e_ : nullptr;
  }

 private:
  std::shared_ptr<const Export> e_;
};

ApiRequest Post(std::string path, std::string body = "") {
  ApiRequest r;
  r.method = "POST";
  r.path = std::move(path);
  r.body = std::move(body);
  r.peer_uid = 0;
  return r;
}

}  // namespace

TEST_SUITE("nbd_attach") {
TEST_CASE("the attach routes pass connections, map conflicts to 409 and list attachments") {
  AttachService s;
  ApiRouter router(s, ApiOptions{});
  ApiResponse r = router.Handle(Post("/v1/volumes/v/attach", R"({"connections": 4})"));
  CHECK(r.status == 201);
  REQUIRE(s.attached.size() == 1);
  CHECK(s.attached[0] == std::pair<std::string, int>("v", 4));
  CHECK(router.Handle(Post("/v1/volumes/v/attach")).status == 201);
  CHECK(s.attached.back().second == 1);
  CHECK(router.Handle(Post("/v1/volumes/twice/attach")).status == 409);
  CHECK(router.Handle(Post("/v1/volumes/v/attach", R"({"connections": 0})")).status == 400);
  CHECK(router.Handle(Post("/v1/volumes/v/attach", R"({"connections": 17})")).status == 400);
  CHECK(router.Handle(Post("/v1/volumes/v/attach", R"({"sockets": 2})")).status == 400);
  CHECK(s.migrations.back() == false);
  CHECK(router.Handle(Post("/v1/volumes/v/attach", R"({"migration": true})")).status == 201);
  CHECK(s.migrations.back() == true);
  CHECK(router.Handle(Post("/v1/volumes/v/attach", R"({"migration": "yes"})")).status == 400);
  CHECK(router.Handle(Post("/v1/volumes/v/detach")).status == 200);
  CHECK(router.Handle(Post("/v1/volumes/w/detach")).status == 404);
  ApiRequest get = Post("/v1/volumes/v/attach");
  get.method = "GET";
  CHECK(router.Handle(get).status == 405);
  get.path = "/v1/attachments";
  ApiResponse list = router.Handle(get);
  CHECK(list.status == 200);
  CHECK(json::parse(list.body)["attachments"][0]["volume"] == "v");
}

TEST_CASE("Attacher reads its state file and refuses a malformed one") {
  TempDir dir;
  AttachOptions o;
  o.state_dir = dir.path() + "/state";
  o.dev_dir = dir.path() + "/dev";
  {
    auto a = Attacher::Open(o);  // no directory, no file: no attachments
    REQUIRE(a.ok());
    CHECK((*a)->List()["attachments"].empty());
    CHECK_FALSE((*a)->IsAttached("v"));
    CHECK((*a)->Detach("v").IsNotFound());
  }
  {
    std::ofstream f(o.state_dir + "/attachments.json");
    f << R"({"attachments": [{"volume": "v", "index": 5, "cookie": "c", "backend": "qbd:v:c",
                              "connections": 2}]})";
  }
  auto a = Attacher::Open(o);
  REQUIRE(a.ok());
  CHECK((*a)->IsAttached("v"));
  json l = (*a)->List();
  REQUIRE(l["attachments"].size() == 1);
  CHECK(l["attachments"][0]["device"] == "/dev/nbd5");
  CHECK(l["attachments"][0]["connections"] == 2);
  CHECK(l["attachments"][0]["backend"] == "qbd:v:c");
  // A second attach of the same volume is a conflict, before any socket is made.
  auto twice = (*a)->Attach("v", 1);
  REQUIRE_FALSE(twice.ok());
  CHECK(twice.status().Errno() == EEXIST);
  {
    // Another configuration's entries are not ours: not listed, kept in the file.
    std::ofstream(o.state_dir + "/attachments.json", std::ios::trunc) << R"({"attachments": [
        {"volume": "w", "index": 6, "backend": "qbd:w:d", "config": "/other.conf"},
        {"volume": "v", "index": 5, "backend": "qbd:v:c", "config": "/mine.conf"}]})";
    AttachOptions mine = o;
    mine.owner = "/mine.conf";
    auto m = Attacher::Open(mine);
    REQUIRE(m.ok());
    CHECK((*m)->IsAttached("v"));
    CHECK_FALSE((*m)->IsAttached("w"));
    AttachOptions other = o;
    other.owner = "/other.conf";
    auto t = Attacher::Open(other);
    REQUIRE(t.ok());
    CHECK((*t)->IsAttached("w"));
    CHECK_FALSE((*t)->IsAttached("v"));
  }
  for (const std::string bad :
       {"{", R"({"attachments": {}})", R"({"attachments": [{"volume": "v"}]})",
        R"({"attachments": [{"volume": "v", "index": -1, "backend": "b"}]})"}) {
    CAPTURE(bad);
    std::ofstream(o.state_dir + "/attachments.json", std::ios::trunc) << bad;
    auto r = Attacher::Open(o);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().IsCorruption());
  }
}

TEST_CASE(
    "NbdClientConnect leaves a socket in the transmission phase with the export's size and flags") {
  TempDir dir;
  auto disk = std::make_shared<MemDisk>(1 << 20);
  auto e = std::make_shared<Export>();
  e->name = "v";
  e->handler = disk;
  OneExport registry(e);
  NbdServer server(registry, NbdServerOptions{});
  const std::string listen = "unix:" + dir.path() + "/nbd.sock";
  REQUIRE(server.Listen(listen).ok());
  NbdExportInfo info;
  auto fd = NbdClientConnect(listen, "v", &info);
  REQUIRE(fd.ok());
  CHECK(info.size == (1u << 20));
  CHECK((info.flags & nbd::kFlagHasFlags) != 0);
  CHECK((info.flags & nbd::kFlagSendFlush) != 0);
  // A READ of 4 KiB at 0 goes through: the socket is past the handshake, as the kernel needs it.
  std::byte req[28];
  EncodeBE32(req, nbd::kRequestMagic);
  EncodeBE16(req + 4, 0);
  EncodeBE16(req + 6, 0);  // NBD_CMD_READ
  EncodeBE64(req + 8, 42);
  EncodeBE64(req + 16, 0);
  EncodeBE32(req + 24, 4096);
  REQUIRE(::send(fd->get(), req, sizeof req, MSG_NOSIGNAL) == sizeof req);
  std::byte reply[16 + 4096];
  size_t got = 0;
  while (got < sizeof reply) {
    ssize_t r = ::recv(fd->get(), reply + got, sizeof reply - got, 0);
    REQUIRE(r > 0);
    got += static_cast<size_t>(r);
  }
  CHECK(DecodeBE32(reply) == nbd::kSimpleReplyMagic);
  CHECK(DecodeBE32(reply + 4) == 0);
  CHECK(DecodeBE64(reply + 8) == 42);
  NbdExportInfo none;
  auto unknown = NbdClientConnect(listen, "nope", &none);
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.status().IsNotFound());
  server.Stop();
}

TEST_CASE("NbdClientConnect fails cleanly when nothing listens") {
  NbdExportInfo info;
  auto r = NbdClientConnect("127.0.0.1:1", "v", &info, 1000);
  CHECK_FALSE(r.ok());
}

TEST_CASE("ParseConfig reads state_dir and the attach timeouts") {
  const std::string base = "parts = a\n[backend a]\npath = /x\n";
  auto d = ParseConfig(base, "q.conf", "/etc/qbd");
  REQUIRE(d.ok());
  CHECK(d->state_dir == "/var/lib/qbd");
  CHECK(d->attach_timeout_s == 10);
  CHECK(d->attach_dead_timeout_s == 120);
  CHECK(d->attach_interface == "auto");
  auto c = ParseConfig(
      "state_dir = st\nattach_timeout_s = 3\nattach_dead_timeout_s = 600\n"
      "attach_interface = ioctl\n" +
          base,
      "q.conf", "/etc/qbd");
  REQUIRE(c.ok());
  CHECK(c->state_dir == "/etc/qbd/st");
  CHECK(c->attach_timeout_s == 3);
  CHECK(c->attach_dead_timeout_s == 600);
  CHECK(c->attach_interface == "ioctl");
  for (const std::string bad :
       {"state_dir =\n", "attach_timeout_s = 0\n", "attach_timeout_s = 3601\n",
        "attach_dead_timeout_s = 86401\n", "attach_interface = nl\n"}) {
    CAPTURE(bad);
    auto r = ParseConfig(bad + base, "q.conf", "/");
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find("q.conf:1") != std::string::npos);
  }
}
}  // TEST_SUITE("nbd_attach")
}  // namespace qbd::test
