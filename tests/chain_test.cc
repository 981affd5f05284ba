// Tests of include/qbd/chain.h, the layer order of a volume's request chain (after nbdkit's
// test-layers.c): for every combination of the optional layers (lease, memory cache, SSD cache)
// over a MemDisk bottom, the effects of requests show the order
//   Stats -> Qos -> [Fence] -> [Cache] -> [SsdCache] -> bottom:
// Stats counts what the client sees, QoS throttles cache hits and refused requests too, the fence
// refuses before any cache answers, the memory cache answers before the SSD cache, and the SSD
// cache before the bottom. Also: the SSD log replay that
// BuildChain runs before serving, and its failure.
#include "qbd/chain.h"

#include <doctest/doctest.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "testutil/mem_backend.h"
#include "testutil/mem_disk.h"
#include "testutil/random_bytes.h"

namespace qbd::test {
namespace {

constexpr uint32_t kBs = 4096;
constexpr uint32_t kVol = 9;
constexpr uint64_t kDiskSize = 1 << 20;
constexpr uint64_t kLeaseMs = 1000;

// Which optional layers a chain has.
struct Combo {
  bool lease = false;
  bool cache = false;
  bool ssd = false;
};

std::vector<Combo> AllCombos() {
  std::vector<Combo> all;
  for (int m = 0; m < 8; ++m) all.push_back({(m & 1) != 0, (m & 2) != 0, (m & 4) != 0});
  return all;
}

std::string Describe(const Combo& c) {
  return std::string("Stats -> Qos") + (c.lease ? " -> Fence" : "") + (c.cache ? " -> Cache" : "") +
         (c.ssd ? " -> SsdCache" : "") + " -> MemDisk";
}

SsdCacheOptions SmallLog(bool write_back = false) {
  SsdCacheOptions o;
  o.log_size = 8 * (kBs / 32) * kBs;  // 8 segments
  o.write_back = write_back;
  o.destage_delay_ms = 3600000;  // no background destaging during a test
  return o;
}

// A chain built by BuildChain over a MemDisk, with the inputs of its optional layers. Members are
// declared so that the chain goes first.
class Fixture {
 public:
  explicit Fixture(const Combo& c) : combo_(c) {
    auto disk = std::make_unique<MemDisk>(kDiskSize);
    disk_ = disk.get();
    ChainOptions o;
    o.volume = "v";
    o.volnr = kVol;
    o.block_size = kBs;
    o.qos_clock = &qos_clock_;
    if (c.lease) {
      o.lease_valid_until = &valid_until_;
      o.clock = &clock_;
    }
    if (c.cache) o.cache = &cache_;
    if (c.ssd) {
      o.ssd_dir = &ssd_dir_;
      o.ssd = SmallLog();
    }
    auto r = BuildChain(std::move(disk), o);
    REQUIRE(r.ok());
    chain_ = std::move(r).value();
    REQUIRE(chain_.top != nullptr);
    REQUIRE(chain_.stats != nullptr);
    REQUIRE((chain_.ssd_cache != nullptr) == c.ssd);
    REQUIRE(chain_.qos != nullptr);
    // A throttled request moves the QoS clock on instead of sleeping.
    chain_.qos->TEST_SetSleep([this](uint64_t ms) { qos_clock_.Advance(ms); });
  }

  BlockHandler& top() { return *chain_.top; }
  MemDisk& disk() { return *disk_; }
  const VolumeMetrics& stats() const { return chain_.stats->metrics(); }
  BlockCache& cache() { return cache_; }
  uint64_t cache_hits() const { return cache_.counters().hits.load(); }
  uint64_t ssd_hits() const { return combo_.ssd ? chain_.ssd_cache->counters().hits.load() : 0; }
  uint64_t ssd_fills() const { return combo_.ssd ? chain_.ssd_cache->counters().fills.load() : 0; }
  QosLayer& qos() { return *chain_.qos; }
  uint64_t qos_clock_ms() const { return qos_clock_.NowMs(); }
  // The lease is no longer known valid (without a Fence layer this changes nothing).
  void ExpireLease() { clock_.Advance(kLeaseMs); }

 private:
  const Combo combo_;
  ManualClock clock_;
  ManualClock qos_clock_;  // the QoS layer's, apart from the lease's
  std::atomic<uint64_t> valid_until_{clock_.NowMs() + kLeaseMs};
  BlockCache cache_{256 * kBs, /*shards=*/1};
  MemBackend ssd_dir_{"ssd"};
  MemDisk* disk_ = nullptr;  // owned by chain_
  Chain chain_;
};

std::vector<std::byte> ReadBlock(BlockHandler& h, uint64_t block) {
  std::vector<std::byte> out(kBs);
  REQUIRE(h.Read(block * kBs, out).ok());
  return out;
}

}  // namespace

TEST_SUITE("chain") {
TEST_CASE(
    "a read is answered by the topmost layer holding its block: Cache, then SsdCache, then the "
    "bottom") {
  for (const Combo& c : AllCombos()) {
    CAPTURE(Describe(c));
    Fixture f(c);
    const auto data = RandomBytes(1, kBs);
    REQUIRE(f.disk().Write(3 * kBs, data, false).ok());
    CHECK(ReadBlock(f.top(), 3) == data);  // a miss everywhere: fills the caches on its way up
    CHECK(f.disk().reads() == 1);

    CHECK(ReadBlock(f.top(), 3) == data);
    // The memory cache answers first; the SSD cache only when the memory cache does not.
    CHECK(f.cache_hits() == (c.cache ? 1 : 0));
    CHECK(f.ssd_hits() == (c.ssd && !c.cache ? 1 : 0));
    CHECK(f.disk().reads() == (c.cache || c.ssd ? 1 : 2));

    // Without the block in memory, the SSD cache (below the memory cache) still has it.
    f.cache().Erase(kVol, 3);
    const uint64_t reads = f.disk().reads(), ssd_hits = f.ssd_hits();
    CHECK(ReadBlock(f.top(), 3) == data);
    CHECK(f.disk().reads() == reads + (c.ssd ? 0 : 1));
    CHECK(f.ssd_hits() == ssd_hits + (c.ssd ? 1 : 0));
  }
}

TEST_CASE("a fenced chain refuses requests before any cache or the bottom answers them") {
  for (const Combo& c : AllCombos()) {
    CAPTURE(Describe(c));
    Fixture f(c);
    const auto data = RandomBytes(2, kBs);
    REQUIRE(f.top().Write(5 * kBs, data, false).ok());
    CHECK(ReadBlock(f.top(), 5) == data);  // now in every cache there is
    const uint64_t reads = f.disk().reads(), writes = f.disk().writes();
    const uint64_t cache_hits = f.cache_hits(), ssd_hits = f.ssd_hits(), ssd_fills = f.ssd_fills();

    f.ExpireLease();
    std::vector<std::byte> got(kBs);
    Status r = f.top().Read(5 * kBs, got);
    Status w = f.top().Write(6 * kBs, data, false);
    if (c.lease) {
      CHECK(r.IsUnavailable());
      CHECK(r.Errno() == ESHUTDOWN);
      CHECK(w.Errno() == ESHUTDOWN);
      // Nothing below the fence saw the requests: no cache answered, nothing was written.
      CHECK(f.cache_hits() == cache_hits);
      CHECK(f.ssd_hits() == ssd_hits);
      CHECK(f.ssd_fills() == ssd_fills);
      CHECK(f.disk().reads() == reads);
      CHECK(f.disk().writes() == writes);
    } else {
      CHECK(r.ok());
      CHECK(w.ok());
      CHECK(got == data);
      CHECK(f.disk().writes() == writes + 1);
    }
  }
}

TEST_CASE(
    "Stats counts every request the client sent, those a cache answered and those the fence "
    "refused") {
  for (const Combo& c : AllCombos()) {
    CAPTURE(Describe(c));
    Fixture f(c);
    const auto data = RandomBytes(3, kBs);
    REQUIRE(f.top().Write(0, data, /*fua=*/true).ok());
    for (int i = 0; i < 3; ++i) CHECK(ReadBlock(f.top(), 0) == data);
    REQUIRE(f.top().Flush().ok());
    CHECK(f.stats().write.requests->Value() == 1);
    CHECK(f.stats().read.requests->Value() == 3);
    CHECK(f.stats().read.bytes->Value() == 3 * kBs);
    CHECK(f.stats().flush.requests->Value() == 1);
    // Every layer writes through to the bottom, which the top's size comes from.
    CHECK(f.disk().Contents(0, kBs) == data);
    CHECK(f.top().Size() == kDiskSize);

    f.ExpireLease();
    std::vector<std::byte> got(kBs);
    f.top().Read(0, got).IgnoreError();  // refused with a lease, a cache hit or a read without
    CHECK(f.stats().read.requests->Value() == 4);
    CHECK(f.stats().read.errors->Value() == (c.lease ? 1 : 0));
  }
}

TEST_CASE(
    "QoS limits cache hits and refused requests too: it sits above the fence and the caches") {
  for (const Combo& c : AllCombos()) {
    CAPTURE(Describe(c));
    Fixture f(c);
    const auto data = RandomBytes(4, kBs);
    REQUIRE(f.top().Write(7 * kBs, data, false).ok());
    CHECK(ReadBlock(f.top(), 7) == data);  // now in every cache there is
    const uint64_t reads = f.disk().reads();
    QosSettings q;
    q.max_iops = 10;  // a bucket of one request, refilled every 100 ms
    f.qos().SetSettings(q);
    const uint64_t start = f.qos_clock_ms();
    for (int i = 0; i < 5; ++i) CHECK(ReadBlock(f.top(), 7) == data);
    // The first one took the full bucket; the other four each waited 100 ms, cache hits or not.
    CHECK(f.qos_clock_ms() - start == 400);
    CHECK(f.stats().qos_throttled_seconds->Value() == doctest::Approx(0.4));
    CHECK(f.disk().reads() == reads + (c.cache || c.ssd ? 0 : 5));

    f.ExpireLease();
    std::vector<std::byte> got(kBs);
    f.top().Read(7 * kBs, got).IgnoreError();  // refused with a lease: throttled all the same
    CHECK(f.qos_clock_ms() - start == 500);
    CHECK(f.stats().read.requests->Value() == 7);
  }
}

TEST_CASE(
    "BuildChain replays a crashed write-back SSD log onto the bottom before the chain serves") {
  MemBackend ssd_dir("ssd");
  const auto data = RandomBytes(4, 2 * kBs);
  ChainOptions o;
  o.volume = "v";
  o.volnr = kVol;
  o.block_size = kBs;
  o.ssd_dir = &ssd_dir;
  o.ssd = SmallLog(/*write_back=*/true);
  {
    auto first = BuildChain(std::make_unique<MemDisk>(kDiskSize), o);
    REQUIRE(first.ok());
    REQUIRE(first->top->Write(8 * kBs, data, /*fua=*/true).ok());  // in the log only
    first->ssd_cache->AbandonForTest();                            // the crash
  }
  auto disk = std::make_unique<MemDisk>(kDiskSize);
  MemDisk* d = disk.get();
  auto second = BuildChain(std::move(disk), o);
  REQUIRE(second.ok());
  CHECK(d->Contents(8 * kBs, data.size()) == data);  // on the bottom before any request
  CHECK(d->flushes() >= 1);
}

TEST_CASE("BuildChain fails, naming the volume and its log, when the SSD log cannot be replayed") {
  MemBackend ssd_dir("ssd");
  ChainOptions o;
  o.volume = "v";
  o.volnr = kVol;
  o.block_size = kBs;
  o.ssd_dir = &ssd_dir;
  o.ssd = SmallLog(/*write_back=*/true);
  {
    auto first = BuildChain(std::make_unique<MemDisk>(kDiskSize), o);
    REQUIRE(first.ok());
    REQUIRE(first->top->Write(0, RandomBytes(5, kBs), /*fua=*/true).ok());
    first->ssd_cache->AbandonForTest();
  }
  auto disk = std::make_unique<MemDisk>(kDiskSize);
  disk->FailNext(Status::IOError("pwrite part a", EIO));
  auto second = BuildChain(std::move(disk), o);
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().IsIOError());
  CHECK(second.status().ToString().find("volume v: replaying its SSD cache log mem:ssd/9/log") !=
        std::string::npos);
}
}  // TEST_SUITE("chain")
}  // namespace qbd::test
