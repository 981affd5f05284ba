// Tests of include/qbd/catalog.h's volume changes shared by qbdctl and the REST API: create with
// flags and qos, SetQos, Unlist then RemoveFiles, OfflineState.
#include "qbd/catalog.h"

#include <doctest/doctest.h>

#include <cerrno>
#include <filesystem>
#include <memory>
#include <string>

#include "testutil/temp_dir.h"

namespace qbd::test {
namespace {

// Three local parts in a TempDir.
class Parts {
 public:
  Parts() {
    Config config;
    config.file = dir_.Sub("qbd.conf");
    for (char part : {'a', 'b', 'c'}) {
      BackendConfig b;
      b.name = std::string("disk-") + part;
      b.location = Root(part);
      config.parts.push_back(b.name);
      config.backends.push_back(b);
    }
    auto c = Catalog::Open(config, /*create_missing=*/true);
    REQUIRE_MESSAGE(c.ok(), c.status().ToString());
    catalog_ = std::move(c).value();
  }
  std::string Root(char part) const { return dir_.Sub(std::string("node-") + part); }
  Catalog& catalog() { return *catalog_; }

 private:
  TempDir dir_;
  std::unique_ptr<Catalog> catalog_;
};

TEST_SUITE("catalog") {
TEST_CASE("Create stores read_only and qos in .meta, and a second Create is EEXIST") {
  Parts p;
  CreateVolumeOptions o;
  o.name = "v";
  o.size = 8 << 20;
  o.read_only = true;
  o.qos = R"({"max_iops":100,"max_write_bps":"10M"})";
  auto m = p.catalog().Create(o);
  REQUIRE_MESSAGE(m.ok(), m.status().ToString());
  auto found = p.catalog().Find("v");
  REQUIRE(found.ok());
  CHECK(found->read_only);
  CHECK(found->qos == o.qos);
  auto again = p.catalog().Create(o);
  REQUIRE_FALSE(again.ok());
  CHECK(again.status().IsInvalidArgument());
  CHECK(again.status().Errno() == EEXIST);
  SUBCASE("SetQos replaces it and refuses what .meta cannot hold") {
    REQUIRE(p.catalog().SetQos("v", R"({"max_iops":5})").ok());
    CHECK(p.catalog().Find("v")->qos == R"({"max_iops":5})");
    CHECK(p.catalog().SetQos("v", R"({"iops":5})").IsInvalidArgument());  // ParseQos: unknown
    CHECK(p.catalog().SetQos("v", R"({"max_iops":-5})").IsInvalidArgument());
    CHECK(p.catalog().SetQos("v", "{\"a\":\"#\"}").IsInvalidArgument());
    CHECK(p.catalog().SetQos("v", "{\"a\":\"\n\"}").IsInvalidArgument());
    CHECK(p.catalog().SetQos("nope", "{}").IsNotFound());
  }
}

TEST_CASE("Unlist makes the volume absent while its files stay until RemoveFiles") {
  Parts p;
  CreateVolumeOptions o;
  o.name = "v";
  o.size = 8 << 20;
  auto m = p.catalog().Create(o);
  REQUIRE(m.ok());
  const std::string dir = p.Root('b') + "/" + std::to_string(m->number);
  auto nr = p.catalog().Unlist("v");
  REQUIRE(nr.ok());
  CHECK(*nr == m->number);
  CHECK(p.catalog().Find("v").status().IsNotFound());
  CHECK(std::filesystem::exists(dir));
  REQUIRE(p.catalog().RemoveFiles(*nr).ok());
  CHECK_FALSE(std::filesystem::exists(dir));
  CHECK(p.catalog().Unlist("v").status().IsNotFound());
}

TEST_CASE("OfflineState is ready, or degraded naming the part whose directory is gone") {
  Parts p;
  CreateVolumeOptions o;
  o.name = "v";
  o.size = 8 << 20;
  auto m = p.catalog().Create(o);
  REQUIRE(m.ok());
  CHECK(p.catalog().OfflineState(*m) == "ready");
  const std::string part_dir = p.Root('c') + "/" + std::to_string(m->number) + "/c";
  std::filesystem::rename(part_dir, part_dir + ".moved");
  const std::string state = p.catalog().OfflineState(*m);
  CAPTURE(state);
  CHECK(state.rfind("degraded (part c: ", 0) == 0);
  std::filesystem::rename(part_dir + ".moved", part_dir);
  CHECK(p.catalog().OfflineState(*m) == "ready");
}
}  // TEST_SUITE("catalog")

}  // namespace
}  // namespace qbd::test
