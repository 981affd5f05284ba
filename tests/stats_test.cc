#include "qbd/stats.h"

#include <doctest/doctest.h>

#include <vector>

#include "testutil/mem_disk.h"

namespace qbd::test {

TEST_SUITE("stats") {
TEST_CASE("StatsLayer counts operations and bytes and forwards to the next layer") {
  auto disk = std::make_unique<MemDisk>(1 << 20);
  MemDisk* d = disk.get();
  StatsLayer s(std::move(disk), VolumeMetrics::Standalone("v", 0));
  std::vector<std::byte> buf(8192, std::byte{7});
  REQUIRE(s.Write(4096, buf, /*fua=*/true).ok());
  REQUIRE(s.Read(0, buf).ok());
  REQUIRE(s.Flush().ok());
  REQUIRE(s.Trim(0, 4096, false).ok());
  CHECK(s.metrics().write.requests->Value() == 1);
  CHECK(s.metrics().write.bytes->Value() == 8192);
  CHECK(s.metrics().read.requests->Value() == 1);
  CHECK(s.metrics().flush.requests->Value() == 1);
  CHECK(s.metrics().trim.bytes->Value() == 4096);
  CHECK(d->writes() == 1);
  CHECK(d->fua_writes() == 1);
  CHECK(s.Size() == (1u << 20));
  CHECK(s.Summary().find("writes 1 (8 KiB, 0 errors") != std::string::npos);
}

TEST_CASE("StatsLayer counts an error and no bytes when the next layer fails") {
  auto disk = std::make_unique<MemDisk>(1 << 20);
  MemDisk* d = disk.get();
  StatsLayer s(std::move(disk), VolumeMetrics::Standalone("v", 0));
  d->FailNext(Status::IOError("injected"));
  std::vector<std::byte> buf(4096);
  Status st = s.Read(0, buf);
  CHECK(st.IsIOError());
  CHECK(s.metrics().read.requests->Value() == 1);
  CHECK(s.metrics().read.errors->Value() == 1);
  CHECK(s.metrics().read.bytes->Value() == 0);
}
}  // TEST_SUITE("stats")

}  // namespace qbd::test
