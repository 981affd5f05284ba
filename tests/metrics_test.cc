#include "qbd/metrics.h"

#include <doctest/doctest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "qbd/cache.h"
#include "qbd/chain.h"
#include "qbd/volume.h"
#include "testutil/mem_backend.h"
#include "testutil/mem_disk.h"

namespace qbd::test {
namespace {

VolumeMeta Meta() {
  VolumeMeta m;
  m.name = "vol1";
  m.number = 4;
  m.geometry.size = 8 << 20;
  m.geometry.block_size = 4096;
  m.geometry.chunk_size = 1 << 20;
  m.replicas = 3;
  return m;
}

struct Parts {
  MemBackend a{"a"}, b{"b"}, c{"c"};
  std::vector<StorageBackend*> all() { return {&a, &b, &c}; }
};

// The value of the sample `series` (its name and labels, as the text format writes them) in
// `text`; -1 when it is absent.
double Sample(const std::string& text, const std::string& series) {
  const std::string line = "\n" + series + " ";
  const size_t at = ("\n" + text).find(line);
  if (at == std::string::npos) return -1;
  return std::strtod(text.c_str() + at + line.size() - 1, nullptr);
}

}  // namespace

TEST_SUITE("metrics") {
TEST_CASE("Text names every series of a volume and its parts with their labels") {
  Metrics m;
  auto v = m.ForVolume("vol1", 2);
  REQUIRE(v->parts.size() == 2);
  const std::string t = m.Text();
  for (const char* op : {"read", "write", "flush", "trim", "zero"}) {
    const std::string l = std::string("{op=\"") + op + "\",volume=\"vol1\"}";
    CAPTURE(op);
    CHECK(Sample(t, "qbd_volume_requests_total" + l) == 0);
    CHECK(Sample(t, "qbd_volume_request_bytes_total" + l) == 0);
    CHECK(Sample(t, "qbd_volume_request_errors_total" + l) == 0);
    CHECK(Sample(t, "qbd_volume_request_duration_seconds_count" + l) == 0);
  }
  CHECK(t.find("# TYPE qbd_volume_request_duration_seconds histogram") != std::string::npos);
  for (const char* name : {"qbd_volume_cache_hits_total", "qbd_volume_cache_misses_total",
                           "qbd_volume_ssd_cache_hits_total", "qbd_volume_ssd_cache_misses_total",
                           "qbd_volume_qos_throttled_seconds_total",
                           "qbd_volume_read_repairs_total", "qbd_volume_lease_held"}) {
    CAPTURE(name);
    CHECK(Sample(t, std::string(name) + "{volume=\"vol1\"}") == 0);
  }
  CHECK(Sample(t, "qbd_part_state{part=\"a\",state=\"up\",volume=\"vol1\"}") == 1);
  CHECK(Sample(t, "qbd_part_state{part=\"b\",state=\"down\",volume=\"vol1\"}") == 0);
  CHECK(Sample(t, "qbd_part_state_code{part=\"b\",volume=\"vol1\"}") == 0);
  for (const char* name :
       {"qbd_part_dirty_bytes", "qbd_part_resync_bytes_total", "qbd_part_errors_total",
        "qbd_part_checksum_failures_total", "qbd_part_read_repairs_total"}) {
    CAPTURE(name);
    CHECK(Sample(t, std::string(name) + "{part=\"b\",volume=\"vol1\"}") == 0);
  }
  CHECK(Sample(t, "qbd_part_io_duration_seconds_count{op=\"write\",part=\"a\",volume=\"vol1\"}") ==
        0);
  CHECK(Sample(t, "qbd_nbd_connections") == 0);
  CHECK(Sample(t, "qbd_nbd_memory_used_bytes") == 0);
  CHECK(Sample(t, "qbd_part_state{part=\"c\",state=\"up\",volume=\"vol1\"}") == -1);
}

TEST_CASE("ForVolume gives the same series to a volume opened again, with parts added") {
  Metrics m;
  auto first = m.ForVolume("v", 1);
  first->write.requests->Increment();
  auto again = m.ForVolume("v", 3);
  CHECK(again->write.requests == first->write.requests);
  CHECK(again->parts.size() == 3);
  CHECK(first->parts.size() == 1);  // a copy: what the first caller holds does not change
  CHECK(Sample(m.Text(), "qbd_volume_requests_total{op=\"write\",volume=\"v\"}") == 1);
}

TEST_CASE("a collector runs before each Text and no more once removed") {
  Metrics m;
  int runs = 0;
  const uint64_t id = m.AddCollector([&] { m.nbd_connections().Set(++runs); });
  CHECK(Sample(m.Text(), "qbd_nbd_connections") == 1);
  CHECK(Sample(m.Text(), "qbd_nbd_connections") == 2);
  m.RemoveCollector(id);
  CHECK(Sample(m.Text(), "qbd_nbd_connections") == 2);
  CHECK(runs == 2);
}

TEST_CASE("the series of a volume change as requests go through it") {
  Metrics m;
  Parts p;
  VolumeOpenOptions o;
  o.start_resync_thread = false;
  o.metrics = &m;
  auto v = Volume::Open(Meta(), p.all(), o);
  REQUIRE(v.ok());
  BlockHandler& h = *(*v)->handler();
  std::vector<std::byte> buf(8192, std::byte{0x5a});
  REQUIRE(h.Write(0, buf, /*fua=*/false).ok());
  REQUIRE(h.Write(8192, buf, /*fua=*/false).ok());
  REQUIRE(h.Read(0, buf).ok());
  REQUIRE(h.Flush().ok());
  REQUIRE(h.Trim(1 << 20, 4096, false).ok());
  REQUIRE(h.WriteZeroes(2 << 20, 8192, false, false).ok());
  std::string t = m.Text();
  CHECK(Sample(t, "qbd_volume_requests_total{op=\"write\",volume=\"vol1\"}") == 2);
  CHECK(Sample(t, "qbd_volume_request_bytes_total{op=\"write\",volume=\"vol1\"}") == 16384);
  CHECK(Sample(t, "qbd_volume_requests_total{op=\"read\",volume=\"vol1\"}") == 1);
  CHECK(Sample(t, "qbd_volume_request_bytes_total{op=\"read\",volume=\"vol1\"}") == 8192);
  CHECK(Sample(t, "qbd_volume_requests_total{op=\"flush\",volume=\"vol1\"}") == 1);
  CHECK(Sample(t, "qbd_volume_request_bytes_total{op=\"trim\",volume=\"vol1\"}") == 4096);
  CHECK(Sample(t, "qbd_volume_request_bytes_total{op=\"zero\",volume=\"vol1\"}") == 8192);
  CHECK(Sample(t, "qbd_volume_request_duration_seconds_count{op=\"write\",volume=\"vol1\"}") == 2);
  CHECK(
      Sample(
          t,
          "qbd_volume_request_duration_seconds_bucket{op=\"write\",volume=\"vol1\",le=\"+Inf\"}") ==
      2);
  CHECK(Sample(t, "qbd_part_io_duration_seconds_count{op=\"write\",part=\"c\",volume=\"vol1\"}") >=
        2);
  CHECK(
      Sample(t, "qbd_part_io_duration_seconds_count{op=\"read\",part=\"a\",volume=\"vol1\"}") +
          Sample(t, "qbd_part_io_duration_seconds_count{op=\"read\",part=\"b\",volume=\"vol1\"}") +
          Sample(t, "qbd_part_io_duration_seconds_count{op=\"read\",part=\"c\",volume=\"vol1\"}") >=
      1);
  CHECK(Sample(t, "qbd_volume_lease_held{volume=\"vol1\"}") == 1);  // no lease: not fenced

  SUBCASE("and a part marked down shows in its state, its errors and its dirty bytes") {
    (*v)->quorum().MarkPartDown(1, Status::IOError("gone"));
    REQUIRE(h.Write(4 << 20, buf, /*fua=*/false).ok());
    t = m.Text();
    CHECK(Sample(t, "qbd_part_state{part=\"b\",state=\"down\",volume=\"vol1\"}") == 1);
    CHECK(Sample(t, "qbd_part_state{part=\"b\",state=\"up\",volume=\"vol1\"}") == 0);
    CHECK(Sample(t, "qbd_part_state_code{part=\"b\",volume=\"vol1\"}") == 2);
    CHECK(Sample(t, "qbd_part_state{part=\"a\",state=\"up\",volume=\"vol1\"}") == 1);
    CHECK(Sample(t, "qbd_part_errors_total{part=\"b\",volume=\"vol1\"}") == 1);
    CHECK(Sample(t, "qbd_part_dirty_bytes{part=\"b\",volume=\"vol1\"}") > 0);
    CHECK(Sample(t, "qbd_part_dirty_bytes{part=\"a\",volume=\"vol1\"}") == 0);

    SUBCASE("then resync copies the bytes back and counts them") {
      (*v)->quorum().TEST_SetPartUp(1, true);
      // Up again but dirty: resync copies its regions (TEST_SetPartUp skips the resyncing state).
      CHECK((*v)->quorum().ResyncOnce() > 0);
      t = m.Text();
      CHECK(Sample(t, "qbd_part_resync_bytes_total{part=\"b\",volume=\"vol1\"}") > 0);
      CHECK(Sample(t, "qbd_part_dirty_bytes{part=\"b\",volume=\"vol1\"}") == 0);
    }
  }

  SUBCASE("and the volume's close stops its collector") {
    REQUIRE((*v)->Close().ok());
    (*v).reset();
    t = m.Text();  // would read the closed engine otherwise
    CHECK(Sample(t, "qbd_volume_lease_held{volume=\"vol1\"}") == 0);
    CHECK(Sample(t, "qbd_volume_requests_total{op=\"write\",volume=\"vol1\"}") == 2);
  }
}

TEST_CASE("a failed request counts an error and no bytes") {
  Metrics m;
  auto disk = std::make_unique<MemDisk>(1 << 20);
  MemDisk* d = disk.get();
  ChainOptions c;
  c.volume = "f";
  c.metrics = m.ForVolume("f", 0);
  auto chain = BuildChain(std::move(disk), c);
  REQUIRE(chain.ok());
  d->FailNext(Status::IOError("injected"));
  std::vector<std::byte> buf(4096);
  CHECK(chain->top->Write(0, buf, false).IsIOError());
  const std::string t = m.Text();
  CHECK(Sample(t, "qbd_volume_requests_total{op=\"write\",volume=\"f\"}") == 1);
  CHECK(Sample(t, "qbd_volume_request_errors_total{op=\"write\",volume=\"f\"}") == 1);
  CHECK(Sample(t, "qbd_volume_request_bytes_total{op=\"write\",volume=\"f\"}") == 0);
}

TEST_CASE("the memory cache counts a volume's hits and misses in blocks") {
  Metrics m;
  BlockCache cache(1 << 20);
  ChainOptions c;
  c.volume = "h";
  c.volnr = 9;
  c.cache = &cache;
  c.metrics = m.ForVolume("h", 0);
  auto chain = BuildChain(std::make_unique<MemDisk>(1 << 20), c);
  REQUIRE(chain.ok());
  std::vector<std::byte> buf(8192);
  REQUIRE(chain->top->Read(0, buf).ok());  // 2 misses, then cached
  REQUIRE(chain->top->Read(0, buf).ok());  // 2 hits
  const std::string t = m.Text();
  CHECK(Sample(t, "qbd_volume_cache_misses_total{volume=\"h\"}") == 2);
  CHECK(Sample(t, "qbd_volume_cache_hits_total{volume=\"h\"}") == 2);
}
}  // TEST_SUITE("metrics")

}  // namespace qbd::test
