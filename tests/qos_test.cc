// Tests of include/qbd/qos.h: the settings parser, the QoS layer's token buckets on a ManualClock
// (throttled requests advance the clock instead of sleeping, so every rate is exact and no test
// sleeps), live changes of the limits, the throttled-time metric, and the scheduler of
// reservations (its decisions driven step by step, and its slots with threads).
#include "qbd/qos.h"

#include <doctest/doctest.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "testutil/mem_disk.h"

namespace qbd::test {
namespace {

using nlohmann::json;

constexpr uint64_t kDiskSize = 4 << 20;

Result<QosSettings> Parse(const char* text) { return ParseQosText(text); }

// Parsing `text` fails with InvalidArgument holding `words`.
void CheckRejects(const char* text, const std::string& words) {
  CAPTURE(text);
  auto q = Parse(text);
  REQUIRE_FALSE(q.ok());
  CHECK(q.status().IsInvalidArgument());
  CHECK_MESSAGE(q.status().message().find(words) != std::string::npos, q.status().message());
}

// A QosLayer over a MemDisk whose waits advance a ManualClock.
class Fixture {
 public:
  explicit Fixture(const QosSettings& q = {}, QosScheduler* scheduler = nullptr) {
    auto disk = std::make_unique<MemDisk>(kDiskSize);
    disk_ = disk.get();
    layer_ = std::make_unique<QosLayer>(std::move(disk), q, clock_, scheduler, metrics_);
    layer_->TEST_SetSleep([this](uint64_t ms) { clock_.Advance(ms); });
  }

  QosLayer& layer() { return *layer_; }
  MemDisk& disk() { return *disk_; }
  ManualClock& clock() { return clock_; }
  uint64_t now() const { return clock_.NowMs(); }
  double throttled() const { return metrics_->qos_throttled_seconds->Value(); }

  Status Read(uint64_t bytes = 4096) {
    buf_.resize(bytes);
    return layer_->Read(0, buf_);
  }
  Status Write(uint64_t bytes = 4096) {
    buf_.resize(bytes);
    return layer_->Write(0, buf_, /*fua=*/false);
  }
  // Requests made by `op` that were admitted before `end_ms` (each one's admission is the clock
  // after it returns).
  template <typename F>
  uint64_t CountUntil(uint64_t end_ms, F op) {
    uint64_t n = 0;
    for (;;) {
      REQUIRE(op().ok());
      if (now() >= end_ms) return n;
      ++n;
    }
  }

 private:
  ManualClock clock_;
  std::shared_ptr<VolumeMetrics> metrics_ = VolumeMetrics::Standalone("v", 0);
  MemDisk* disk_ = nullptr;  // owned by layer_
  std::unique_ptr<QosLayer> layer_;
  std::vector<std::byte> buf_;
};

// The scheduler's decisions with every client always waiting, one slot freed each millisecond
// for `ms` milliseconds: the requests each client got.
std::map<uint64_t, uint64_t> Simulate(QosScheduler& s, const std::vector<uint64_t>& clients,
                                      uint64_t ms) {
  uint64_t now = 1000;
  for (uint64_t c : clients) {
    for (int i = 0; i < 4; ++i) s.TEST_Push(c, 4096, now);
  }
  std::map<uint64_t, uint64_t> got;
  for (uint64_t t = 0; t < ms; ++t, ++now) {
    const uint64_t c = s.TEST_Pop(now);
    REQUIRE(c != 0);
    ++got[c];
    s.TEST_Push(c, 4096, now);  // stays backlogged
  }
  return got;
}

}  // namespace

TEST_SUITE("qos") {
TEST_CASE("ParseQos reads every key, sizes as numbers or strings, and null or \"\" as none") {
  auto q = Parse(
      R"({"max_iops": 1000, "max_read_iops": 800, "max_write_iops": 600, "max_bps": "100M",
          "max_read_bps": 1048576, "max_write_bps": "64K", "burst_iops": 2000,
          "burst_bps": "200M", "burst_seconds": 10, "min_iops": 100, "min_bps": "10M"})");
  REQUIRE_MESSAGE(q.ok(), q.status().ToString());
  CHECK(q->max_iops == 1000);
  CHECK(q->max_read_iops == 800);
  CHECK(q->max_write_iops == 600);
  CHECK(q->max_bps == 100 << 20);
  CHECK(q->max_read_bps == 1 << 20);
  CHECK(q->max_write_bps == 64 << 10);
  CHECK(q->burst_iops == 2000);
  CHECK(q->burst_bps == 200 << 20);
  CHECK(q->burst_seconds == 10);
  CHECK(q->min_iops == 100);
  CHECK(q->min_bps == 10 << 20);
  CHECK(q->Limited());
  CHECK(q->Reserved());
  CHECK(DescribeQos(*q).find("max_iops 1000") != std::string::npos);

  for (const char* none : {"", "null", "{}"}) {
    CAPTURE(none);
    auto n = Parse(none);
    REQUIRE(n.ok());
    CHECK(*n == QosSettings{});
    CHECK_FALSE(n->Limited());
    CHECK(DescribeQos(*n) == "none");
  }
  auto zero = Parse(R"({"max_iops": 0})");  // 0: no limit
  REQUIRE(zero.ok());
  CHECK_FALSE(zero->Limited());
  CHECK(ParseQos(json{{"min_iops", 5}})->Reserved());
}

TEST_CASE("ParseQos rejects bad settings with a message naming the key") {
  CheckRejects(R"({"max_iops": 5, "note": "x"})", "qos: unknown key 'note' (known: max_iops");
  CheckRejects(R"({"max_iops": -1})", "qos: max_iops: must not be negative");
  CheckRejects(R"({"max_bps": -1.5})", "qos: max_bps: must not be negative");
  CheckRejects(R"({"max_bps": "-1M"})", "qos: max_bps: must not be negative");
  CheckRejects(R"({"max_iops": 1.5})", "qos: max_iops: a whole number");
  CheckRejects(R"({"max_iops": "100"})", "qos: max_iops: a whole number");
  CheckRejects(R"({"max_iops": true})", "qos: max_iops: a whole number");
  CheckRejects(R"({"max_bps": "fast"})", "qos: max_bps: size 'fast'");
  CheckRejects(R"({"max_bps": [1]})", "qos: max_bps: bytes per second");
  CheckRejects(R"({"max_iops": 1125899906842625})", "qos: max_iops: at most");
  CheckRejects(R"({"burst_iops": 100})", "qos: burst_iops: a burst of max_iops, which is not set");
  CheckRejects(R"({"max_iops": 100, "burst_iops": 50})", "qos: burst_iops: below max_iops (100)");
  CheckRejects(R"({"max_bps": "10M", "burst_bps": "1M"})", "qos: burst_bps: below max_bps");
  CheckRejects(R"({"max_iops": 100, "burst_iops": 200, "burst_seconds": 0})",
               "qos: burst_seconds: at least 1");
  CheckRejects(R"({"max_iops": 100, "burst_seconds": 5})",
               "qos: burst_seconds: the length of a burst, and neither");
  CheckRejects(R"({"max_iops": 100, "min_iops": 200})", "qos: min_iops: above max_iops (100)");
  CheckRejects(R"({"max_bps": "1M", "min_bps": "2M"})", "qos: min_bps: above max_bps");
  CheckRejects(R"([1])", "qos: a JSON object");
  CheckRejects(R"(5)", "qos: a JSON object");
  CheckRejects(R"({"max_iops": )", "qos: not valid JSON");
}

TEST_CASE("the QoS layer holds a volume to max_iops over ten seconds") {
  QosSettings q;
  q.max_iops = 100;
  Fixture f(q);
  const uint64_t start = f.now();
  const uint64_t n = f.CountUntil(start + 10000, [&] { return f.Read(); });
  // A full bucket (a tenth of a second: 10 requests) plus 100 a second.
  CHECK(n <= 10 + 100 * 10);
  CHECK(n >= 100 * 10);
  CHECK(f.disk().reads() == n + 1);
}

TEST_CASE("the QoS layer holds a volume to max_bps, counting bytes") {
  QosSettings q;
  q.max_bps = 1 << 20;
  Fixture f(q);
  const uint64_t start = f.now();
  const uint64_t n = f.CountUntil(start + 10000, [&] { return f.Write(64 << 10); });
  const uint64_t bytes = n * (64 << 10);
  CHECK(bytes <= (uint64_t{10} << 20) + (1 << 20) / 10 + (64 << 10));
  CHECK(bytes >= (uint64_t{10} << 20) - (64 << 10));
}

TEST_CASE("combined and per-direction limits both apply") {
  QosSettings q;
  q.max_iops = 100;
  q.max_write_iops = 20;
  Fixture f(q);
  SUBCASE("writes alone go at max_write_iops") {
    const uint64_t n = f.CountUntil(f.now() + 10000, [&] { return f.Write(); });
    CHECK(n <= 2 + 20 * 10);
    CHECK(n >= 20 * 10);
  }
  SUBCASE("reads are held by max_iops only") {
    const uint64_t n = f.CountUntil(f.now() + 10000, [&] { return f.Read(); });
    CHECK(n <= 10 + 100 * 10);
    CHECK(n >= 100 * 10);
  }
  SUBCASE("reads and writes together share max_iops") {
    bool write = false;
    const uint64_t n = f.CountUntil(f.now() + 10000, [&] {
      write = !write;
      return write ? f.Write() : f.Read();
    });
    // Alternating, the writes' 20 a second hold the reads to as many.
    CHECK(n <= 2 * (2 + 20 * 10));
    CHECK(n >= 2 * 20 * 10 - 2);
  }
}

TEST_CASE("a read limit leaves writes alone") {
  QosSettings q;
  q.max_read_iops = 10;
  Fixture f(q);
  const uint64_t start = f.now();
  for (int i = 0; i < 100; ++i) REQUIRE(f.Write().ok());
  CHECK(f.now() == start);
  for (int i = 0; i < 3; ++i) REQUIRE(f.Read().ok());
  CHECK(f.now() == start + 200);  // one from the full bucket (1 request), then 100 ms each
}

TEST_CASE("a burst runs at burst_iops until its bucket is spent, then at max_iops") {
  QosSettings q;
  q.max_iops = 100;
  q.burst_iops = 1000;
  q.burst_seconds = 2;
  Fixture f(q);
  const uint64_t start = f.now();
  // The first second: at the burst rate (its own bucket holds a tenth of a second: 100).
  const uint64_t first = f.CountUntil(start + 1000, [&] { return f.Read(); });
  CHECK(first <= 100 + 1000);
  CHECK(first >= 1000);
  // The bucket of 2000 drains at 900 a second: by 5 s the volume is back at max_iops.
  f.CountUntil(start + 5000, [&] { return f.Read(); });
  const uint64_t steady = f.CountUntil(start + 10000, [&] { return f.Read(); });
  CHECK(steady <= 100 * 5 + 1);
  CHECK(steady >= 100 * 5 - 1);
  SUBCASE("and an idle volume earns its burst back") {
    f.clock().Advance(60000);
    const uint64_t again = f.CountUntil(f.now() + 1000, [&] { return f.Read(); });
    CHECK(again >= 1000);
  }
}

TEST_CASE("a request larger than its bucket goes when the bucket is full, leaving it in debt") {
  QosSettings q;
  q.max_bps = 100 << 10;  // a bucket of 10 KiB
  Fixture f(q);
  const uint64_t start = f.now();
  REQUIRE(f.Write(1 << 20).ok());  // 1 MiB: a full bucket lets it go at once
  CHECK(f.now() == start);
  CHECK(f.disk().writes() == 1);
  // The next request waits for the debt: (1 MiB - 10 KiB + 4 KiB) at 100 KiB a second.
  REQUIRE(f.Write(4096).ok());
  const uint64_t want = ((1 << 20) - (10 << 10) + 4096) * 1000 / (100 << 10);
  CHECK(f.now() - start >= want);
  CHECK(f.now() - start <= want + 2);
  SUBCASE("and so does one larger than a burst") {
    QosSettings b;
    b.max_bps = 100 << 10;
    b.burst_bps = 200 << 10;
    f.layer().SetSettings(b);
    f.clock().Advance(60000);  // full again
    const uint64_t t = f.now();
    REQUIRE(f.Write(4 << 20).ok());
    CHECK(f.now() == t);
  }
}

TEST_CASE("flush, trim and write-zeroes cost one write request and no bytes") {
  SUBCASE("a bandwidth limit never holds them") {
    QosSettings q;
    q.max_bps = 4096;
    Fixture f(q);
    const uint64_t start = f.now();
    for (int i = 0; i < 10; ++i) {
      REQUIRE(f.layer().Flush().ok());
      REQUIRE(f.layer().Trim(0, kDiskSize, false).ok());
      REQUIRE(f.layer().WriteZeroes(0, kDiskSize, true, false).ok());
    }
    CHECK(f.now() == start);
    CHECK(f.disk().flushes() == 10);
  }
  SUBCASE("an IOPS limit counts each of them") {
    QosSettings q;
    q.max_write_iops = 10;
    Fixture f(q);
    const uint64_t start = f.now();
    REQUIRE(f.layer().Flush().ok());  // the full bucket
    REQUIRE(f.layer().Trim(0, 4096, false).ok());
    REQUIRE(f.layer().WriteZeroes(0, 4096, false, false).ok());
    CHECK(f.now() == start + 200);
    CHECK(f.throttled() == doctest::Approx(0.2));
  }
}

TEST_CASE("throttled time is counted into qbd_volume_qos_throttled_seconds_total") {
  QosSettings q;
  q.max_iops = 10;
  Fixture f(q);
  for (int i = 0; i < 11; ++i) REQUIRE(f.Read().ok());
  CHECK(f.throttled() == doctest::Approx(1.0));
  SUBCASE("and nothing without limits") {
    f.layer().SetSettings({});
    for (int i = 0; i < 100; ++i) REQUIRE(f.Read().ok());
    CHECK(f.throttled() == doctest::Approx(1.0));
  }
}

TEST_CASE("new limits apply at once") {
  QosSettings slow;
  slow.max_iops = 10;
  Fixture f(slow);
  const uint64_t a = f.CountUntil(f.now() + 2000, [&] { return f.Read(); });
  CHECK(a <= 1 + 20);
  QosSettings fast;
  fast.max_iops = 1000;
  f.layer().SetSettings(fast);
  CHECK(f.layer().settings() == fast);
  const uint64_t b = f.CountUntil(f.now() + 2000, [&] { return f.Read(); });
  CHECK(b >= 1990);
  CHECK(b <= 100 + 2000);
  SUBCASE("and without limits nothing waits") {
    f.layer().SetSettings({});
    const uint64_t t = f.now();
    for (int i = 0; i < 10000; ++i) REQUIRE(f.Read().ok());
    CHECK(f.now() == t);
  }
  SUBCASE("a lower limit keeps the debt, never grants a fresh bucket") {
    f.layer().SetSettings(slow);
    const uint64_t t = f.now();
    REQUIRE(f.Read().ok());
    CHECK(f.now() > t);
  }
}

TEST_CASE("a waiting request re-evaluates when the limits change") {
  // Real waiting here (no sleep hook), on a clock that never moves: only SetSettings ends it.
  ManualClock clock;
  QosSettings q;
  q.max_iops = 1;
  QosLayer layer(std::make_unique<MemDisk>(kDiskSize), q, clock, nullptr,
                 VolumeMetrics::Standalone("v", 0));
  std::vector<std::byte> buf(4096);
  REQUIRE(layer.Read(0, buf).ok());  // the bucket's one request
  std::atomic<bool> done{false};
  std::thread t([&] {
    std::vector<std::byte> b(4096);
    CHECK(layer.Read(0, b).ok());
    done = true;
  });
  while (layer.TEST_Waiting() == 0) std::this_thread::yield();
  CHECK_FALSE(done.load());
  layer.SetSettings({});
  t.join();
  CHECK(done.load());
}

TEST_CASE("an error from below passes through the QoS layer") {
  QosSettings q;
  q.max_iops = 10;
  Fixture f(q);
  f.disk().FailNext(Status::IOError("disk gone", EIO));
  Status s = f.Read();
  CHECK(s.IsIOError());
  CHECK(s.Errno() == EIO);
  f.disk().FailNext(Status::Unavailable("quorum lost"));
  CHECK(f.Write().IsUnavailable());
}

TEST_CASE("the scheduler shares slots round-robin when no volume has a reservation") {
  ManualClock clock;
  QosScheduler s(4, clock);
  const uint64_t a = s.Register(), b = s.Register(), c = s.Register();
  CHECK_FALSE(s.Engaged());
  auto got = Simulate(s, {a, b}, 10000);
  CHECK(got[a] == 5000);
  CHECK(got[b] == 5000);
  s.TEST_Push(c, 4096, clock.NowMs());
  got = Simulate(s, {a, b, c}, 9000);
  CHECK(got[a] + got[b] + got[c] == 9000);
  for (uint64_t id : {a, b, c}) CHECK(got[id] >= 2999);
}

TEST_CASE("the scheduler gives a saturating volume at least its reservation") {
  ManualClock clock;
  QosScheduler s(4, clock);
  const uint64_t a = s.Register(), b = s.Register(), c = s.Register();
  SUBCASE("700 of 1000 a second against one other volume") {
    s.SetReservation(a, /*min_iops=*/700, 0);
    CHECK(s.Engaged());
    auto got = Simulate(s, {a, b}, 10000);
    CHECK(got[a] >= 6990);
    CHECK(got[b] >= 2500);  // the rest is not starved
    CHECK(got[a] + got[b] == 10000);
  }
  SUBCASE("500 of 1000 a second against two others, which share the rest") {
    s.SetReservation(a, 500, 0);
    auto got = Simulate(s, {a, b, c}, 10000);
    CHECK(got[a] >= 4990);
    CHECK(got[b] >= 2000);
    CHECK(got[c] >= 2000);
    CHECK(got[b] - std::min(got[b], got[c]) <= 2);
    CHECK(got[c] - std::min(got[b], got[c]) <= 2);
  }
  SUBCASE("a reservation below the fair share changes nothing: it is a floor") {
    s.SetReservation(a, 100, 0);
    auto got = Simulate(s, {a, b}, 10000);
    CHECK(got[a] >= 4990);
    CHECK(got[a] <= 5010);
  }
  SUBCASE("a bandwidth reservation counts bytes") {
    s.SetReservation(a, 0, /*min_bps=*/600 * 4096);  // 600 requests of 4 KiB a second
    auto got = Simulate(s, {a, b, c}, 10000);
    CHECK(got[a] >= 600 * 10 - 10);
  }
  SUBCASE("and the scheduler disengages when the reservation goes") {
    s.SetReservation(a, 100, 0);
    CHECK(s.Engaged());
    s.Unregister(a);
    CHECK_FALSE(s.Engaged());
  }
}

TEST_CASE("the scheduler never engages with 0 slots") {
  ManualClock clock;
  QosScheduler s(0, clock);
  s.SetReservation(s.Register(), 100, 0);
  CHECK_FALSE(s.Engaged());
}

TEST_CASE("below saturation nothing waits for a slot; at it a request waits for a Release") {
  ManualClock clock;
  QosScheduler s(2, clock);
  const uint64_t a = s.Register(), b = s.Register();
  s.SetReservation(a, 100, 0);
  CHECK(s.Acquire(a, 4096) == 0);
  CHECK(s.Acquire(b, 4096) == 0);
  CHECK(s.TEST_InFlight() == 2);
  std::atomic<bool> done{false};
  std::thread t([&] {
    s.Acquire(b, 4096);
    done = true;
  });
  clock.Advance(5);
  s.Release();  // the slot passes to the waiting request
  t.join();
  CHECK(done.load());
  CHECK(s.TEST_InFlight() == 2);
  s.Release();
  s.Release();
  CHECK(s.TEST_InFlight() == 0);
}

TEST_CASE("a volume's requests take scheduler slots only while the scheduler is engaged") {
  ManualClock clock;
  QosScheduler s(1, clock);
  Fixture f({}, &s);
  REQUIRE(f.Read().ok());
  CHECK(s.TEST_InFlight() == 0);
  QosSettings q;
  q.min_iops = 10;
  f.layer().SetSettings(q);
  CHECK(s.Engaged());
  REQUIRE(f.Read().ok());  // a slot taken and given back
  CHECK(s.TEST_InFlight() == 0);
  f.layer().SetSettings({});
  CHECK_FALSE(s.Engaged());
}
}  // TEST_SUITE("qos")

}  // namespace qbd::test
