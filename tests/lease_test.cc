// Tests of include/qbd/lease.h and include/qbd/fence.h: the volume lease on MemBackend parts with a
// hand-driven clock (no sleeps, parts read and written in turn), and the fence layer.
#include "qbd/lease.h"

#include <doctest/doctest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "qbd/fence.h"
#include "qbd/volume.h"
#include "testutil/mem_backend.h"
#include "testutil/mem_disk.h"

namespace qbd::test {
namespace {

constexpr uint32_t kVol = 7;
constexpr uint32_t kL = 3000;  // lease_ms
constexpr uint32_t kR = 500;   // lease_renew_ms

LeaseIdentity Who(uint64_t owner, const std::string& host) {
  LeaseIdentity id;
  id.owner = owner;
  id.host = host;
  id.boot_id = "boot-" + host;
  id.pid = 100 + static_cast<int64_t>(owner);
  id.config = "/etc/qbd/" + host + ".conf";
  id.admin_socket = "/run/qbd/" + host + ".sock";
  id.started = "2024-01-01T00:00:00Z";
  return id;
}

struct Parts {
  MemBackend a{"a"}, b{"b"}, c{"c"};
  FaultyBackend fa{a}, fb{b}, fc{c};
  std::vector<StorageBackend*> all() { return {&fa, &fb, &fc}; }
  std::vector<MemBackend*> mem() { return {&a, &b, &c}; }
};

std::unique_ptr<VolumeLease> NewLease(Parts& p, const LeaseIdentity& who, Clock& clock) {
  LeaseOptions o;
  o.lease_ms = kL;
  o.renew_ms = kR;
  o.parallel = false;
  return std::make_unique<VolumeLease>(kVol, "v", p.all(), who, o, clock);
}

// The owner named by `.owner` on `b` (0: none or unreadable).
uint64_t OwnerOn(StorageBackend& b) {
  auto text = ReadSmallFile(b, LeasePath(kVol));
  if (!text.ok()) return 0;
  auto r = LeaseRecord::Parse(*text, "owner");
  return r.ok() ? r->who.owner : 0;
}

// Drives `lease` from observing to held (or not): Acquire, then Acquire again after the
// verification delay. Returns the last step.
VolumeLease::Progress AcquireFully(VolumeLease& lease, ManualClock& clock) {
  VolumeLease::Progress p = lease.Acquire();
  if (p.phase == VolumeLease::Phase::kVerifying) {
    clock.Advance(p.retry_at_ms - clock.NowMs());
    p = lease.Acquire();
  }
  return p;
}

}  // namespace

TEST_SUITE("lease") {
TEST_CASE("LeaseRecord encodes to the text of layout-spec.md 8 and parses back") {
  LeaseRecord r;
  r.who = Who(0x1234abcd, "node1");
  r.volnr = kVol;
  r.counter = 42;
  r.lease_ms = kL;
  r.renew_ms = kR;
  const std::string text = r.Encode();
  CHECK(text.find("owner = 000000001234abcd\n") != std::string::npos);
  CHECK(text.find("counter = 42\n") != std::string::npos);
  auto back = LeaseRecord::Parse(text, "7/.owner");
  REQUIRE(back.ok());
  CHECK(back->who.owner == 0x1234abcd);
  CHECK(back->who.host == "node1");
  CHECK(back->who.pid == r.who.pid);
  CHECK(back->who.config == r.who.config);
  CHECK(back->counter == 42);
  CHECK(back->lease_ms == kL);
  CHECK(back->renew_ms == kR);
  CHECK(back->volnr == kVol);
  auto bad = LeaseRecord::Parse("format = 1\nowner = xyz\n", "7/.owner");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find("7/.owner:2: owner") != std::string::npos);
  CHECK_FALSE(
      LeaseRecord::Parse("format = 1\nowner = 12\n", "7/.owner").ok());  // counter... missing
}

TEST_CASE(
    "Acquire takes free parts after reading its record back, and sets the deadline from the "
    "write's start") {
  Parts p;
  ManualClock clock;
  auto a = NewLease(p, Who(1, "node1"), clock);
  const uint64_t start = clock.NowMs();
  VolumeLease::Progress s = a->Acquire();
  REQUIRE(s.phase == VolumeLease::Phase::kVerifying);
  CHECK(s.retry_at_ms == start + kR / 2);
  CHECK_FALSE(a->held());
  CHECK(a->valid_until().load() == 0);
  clock.Advance(kR / 2);
  s = a->Acquire();
  REQUIRE(s.phase == VolumeLease::Phase::kHeld);
  CHECK(s.previous.empty());
  CHECK(s.waited_ms == 0);
  CHECK(a->valid_until().load() == start + kL - kR);
  for (MemBackend* m : p.mem()) CHECK(OwnerOn(*m) == 1);
}

TEST_CASE("Acquire refuses, naming the holder, for as long as the holder renews") {
  Parts p;
  ManualClock clock;
  auto a = NewLease(p, Who(1, "node1"), clock);
  REQUIRE(AcquireFully(*a, clock).phase == VolumeLease::Phase::kHeld);
  auto b = NewLease(p, Who(2, "node2"), clock);
  for (int i = 0; i < 40; ++i) {  // 10 leases long
    VolumeLease::Progress s = b->Acquire();
    REQUIRE(s.phase == VolumeLease::Phase::kObserving);
    CHECK(s.holder.find("host node1 (pid 101, config /etc/qbd/node1.conf") != std::string::npos);
    clock.Advance(kR);
    a->Renew();
    CHECK(a->valid_until().load() > clock.NowMs());
  }
  for (MemBackend* m : p.mem()) CHECK(OwnerOn(*m) == 1);
}

TEST_CASE(
    "Acquire takes over only after the holder's record stayed unchanged for lease_ms + "
    "lease_renew_ms") {
  Parts p;
  ManualClock clock;
  auto a = NewLease(p, Who(1, "node1"), clock);
  REQUIRE(AcquireFully(*a, clock).phase == VolumeLease::Phase::kHeld);
  auto b = NewLease(p, Who(2, "node2"), clock);
  // a stops renewing (it died). b's first read is the start of the wait.
  REQUIRE(b->Acquire().phase == VolumeLease::Phase::kObserving);
  clock.Advance(kL + kR - 1);
  VolumeLease::Progress s = b->Acquire();
  CHECK(s.phase == VolumeLease::Phase::kObserving);
  CHECK(s.retry_at_ms == clock.NowMs() + 1);
  clock.Advance(1);
  s = b->Acquire();
  REQUIRE(s.phase == VolumeLease::Phase::kVerifying);
  clock.Advance(kR / 2);
  s = b->Acquire();
  REQUIRE(s.phase == VolumeLease::Phase::kHeld);
  CHECK(s.waited_ms >= kL + kR);
  CHECK(s.previous.find("host node1") != std::string::npos);
  for (MemBackend* m : p.mem()) CHECK(OwnerOn(*m) == 2);
  SUBCASE("and the old holder, renewing again, finds it lost and overwrites nothing") {
    a->Renew();
    CHECK(a->lost());
    CHECK(a->lost_to().find("host node2") != std::string::npos);
    CHECK(a->valid_until().load() == 0);
    for (MemBackend* m : p.mem()) CHECK(OwnerOn(*m) == 2);
  }
  SUBCASE("and the old holder's Release removes nothing of the new holder's") {
    CHECK(a->Release().ok());
    for (MemBackend* m : p.mem()) CHECK(OwnerOn(*m) == 2);
  }
}

TEST_CASE("Acquire restarts the wait when the holder renews on any part of the majority") {
  Parts p;
  ManualClock clock;
  auto a = NewLease(p, Who(1, "node1"), clock);
  REQUIRE(AcquireFully(*a, clock).phase == VolumeLease::Phase::kHeld);
  auto b = NewLease(p, Who(2, "node2"), clock);
  REQUIRE(b->Acquire().phase == VolumeLease::Phase::kObserving);
  clock.Advance(kL);
  // One renewal reaching parts a and b only (c fails): b's wait restarts on a and b.
  p.fc.FailMatching(".owner", FaultyBackend::kMutatingOps);
  a->Renew();
  p.fc.ClearFaults();
  REQUIRE(b->Acquire().phase == VolumeLease::Phase::kObserving);
  clock.Advance(kR);
  CHECK(b->Acquire().phase == VolumeLease::Phase::kObserving);  // only c unchanged for L + R
  clock.Advance(kL);
  CHECK(AcquireFully(*b, clock).phase == VolumeLease::Phase::kHeld);
}

TEST_CASE("Acquire never takes the volume when only a minority of parts can be read") {
  Parts p;
  ManualClock clock;
  auto a = NewLease(p, Who(1, "node1"), clock);
  REQUIRE(AcquireFully(*a, clock).phase == VolumeLease::Phase::kHeld);
  auto b = NewLease(p, Who(2, "node2"), clock);
  p.fb.FailMatching(".owner");
  p.fc.FailMatching(".owner");
  for (int i = 0; i < 20; ++i) {
    CHECK(b->Acquire().phase == VolumeLease::Phase::kObserving);
    clock.Advance(kL);
  }
  // Free parts too: one readable empty part is not a majority.
  Parts q;
  auto c = NewLease(q, Who(3, "node3"), clock);
  q.fb.FailMatching(".owner");
  q.fc.FailMatching(".owner");
  VolumeLease::Progress s = c->Acquire();
  CHECK(s.phase == VolumeLease::Phase::kObserving);
  CHECK(s.holder.find("only 1 of 3 parts could be read") != std::string::npos);
}

TEST_CASE("Acquire backs off when another master's record replaced ours before the read-back") {
  Parts p;
  ManualClock clock;
  auto a = NewLease(p, Who(1, "node1"), clock);
  auto b = NewLease(p, Who(2, "node2"), clock);
  REQUIRE(a->Acquire().phase == VolumeLease::Phase::kVerifying);
  // b read the parts before a wrote them (two masters starting at once): it writes over a's.
  LeaseRecord other;
  other.who = Who(2, "node2");
  other.volnr = kVol;
  other.counter = 1;
  other.lease_ms = kL;
  other.renew_ms = kR;
  for (MemBackend* m : {&p.a, &p.b})
    REQUIRE(WriteFileAtomic(*m, LeasePath(kVol), other.Encode()).ok());
  clock.Advance(kR / 2);
  VolumeLease::Progress s = a->Acquire();
  CHECK(s.phase == VolumeLease::Phase::kObserving);
  CHECK(s.holder.find("host node2") != std::string::npos);
  CHECK_FALSE(a->held());
  CHECK(OwnerOn(p.c) == 0);  // a removed its own record where it was left, nothing else
  CHECK(OwnerOn(p.a) == 2);
}

TEST_CASE("A restart of the same configuration on the same boot takes its volumes back at once") {
  Parts p;
  ManualClock clock;
  auto a = NewLease(p, Who(1, "node1"), clock);
  REQUIRE(AcquireFully(*a, clock).phase == VolumeLease::Phase::kHeld);
  LeaseIdentity again = Who(9, "node1");  // new process, same host, boot and admin socket
  auto b = NewLease(p, again, clock);
  VolumeLease::Progress s = AcquireFully(*b, clock);
  CHECK(s.phase == VolumeLease::Phase::kHeld);
  SUBCASE("but another configuration on that host waits") {
    LeaseIdentity other = Who(10, "node1");
    other.admin_socket = "/run/qbd/other.sock";
    auto c = NewLease(p, other, clock);
    CHECK(c->Acquire().phase == VolumeLease::Phase::kObserving);
  }
}

TEST_CASE("Renew keeps the deadline at the start of the last renewal that reached a majority") {
  Parts p;
  ManualClock clock;
  auto a = NewLease(p, Who(1, "node1"), clock);
  REQUIRE(AcquireFully(*a, clock).phase == VolumeLease::Phase::kHeld);
  clock.Advance(kR);
  // Every part operation takes 20 ms: the deadline counts from the round's start.
  p.fa.SetHook([&](FaultyBackend::Op, std::string_view) { clock.Advance(20); });
  const uint64_t start = clock.NowMs();
  a->Renew();
  CHECK(clock.NowMs() > start);
  CHECK(a->valid_until().load() == start + kL - kR);
  SUBCASE("a round longer than lease_renew_ms / 2 does not count") {
    p.fa.SetHook([&](FaultyBackend::Op, std::string_view) { clock.Advance(kR); });
    clock.Advance(kR);
    a->Renew();
    CHECK(a->valid_until().load() == start + kL - kR);
  }
}

TEST_CASE(
    "A holder that renews on a minority only is fenced at its deadline and recovers after a "
    "read-back") {
  Parts p;
  ManualClock clock;
  auto a = NewLease(p, Who(1, "node1"), clock);
  REQUIRE(AcquireFully(*a, clock).phase == VolumeLease::Phase::kHeld);
  const uint64_t deadline = a->valid_until().load();
  p.fb.FailMatching(".owner");
  p.fc.FailMatching(".owner");
  while (clock.NowMs() < deadline + 2 * kR) {
    a->Renew();
    CHECK(a->valid_until().load() == deadline);  // never extended by a minority
    clock.Advance(kR);
  }
  CHECK(clock.NowMs() >= a->valid_until().load());  // fenced
  CHECK_FALSE(a->lost());
  p.fb.ClearFaults();
  p.fc.ClearFaults();
  const uint64_t start = clock.NowMs();
  const uint64_t verify_at = a->Renew();
  CHECK(verify_at == start + kR / 2);
  CHECK(a->valid_until().load() == deadline);  // not before the read-back
  clock.Advance(kR / 2);
  a->Renew();
  CHECK(a->valid_until().load() == start + kL - kR);
}

TEST_CASE("Volume::Close removes .running and .owner only where .owner names it") {
  VolumeMeta m;
  m.name = "v";
  m.number = kVol;
  m.geometry.size = 8 << 20;
  m.replicas = 3;
  Parts p;
  ManualClock clock;
  std::shared_ptr<VolumeLease> a = NewLease(p, Who(1, "node1"), clock);
  REQUIRE(AcquireFully(*a, clock).phase == VolumeLease::Phase::kHeld);
  VolumeOpenOptions o;
  o.start_resync_thread = false;
  o.lease = a;
  auto v = Volume::Open(m, p.all(), o);
  REQUIRE(v.ok());
  const std::string running = std::to_string(kVol) + "/.running";
  for (MemBackend* b : p.mem()) REQUIRE(b->Exists(running));
  std::vector<std::byte> buf(4096, std::byte{7});
  CHECK((*v)->handler()->Write(0, buf, false).ok());
  SUBCASE("its own lease: both removed") {
    CHECK((*v)->Close().ok());
    for (MemBackend* b : p.mem()) {
      CHECK_FALSE(b->Exists(running));
      CHECK(OwnerOn(*b) == 0);
    }
  }
  SUBCASE("taken over by another master: both stay, and requests fail with ESHUTDOWN") {
    auto b = NewLease(p, Who(2, "node2"), clock);
    REQUIRE(b->Acquire().phase == VolumeLease::Phase::kObserving);
    clock.Advance(kL + kR);
    REQUIRE(AcquireFully(*b, clock).phase == VolumeLease::Phase::kHeld);
    Status s = (*v)->handler()->Write(0, buf, false);
    CHECK(s.IsUnavailable());
    CHECK(s.Errno() == ESHUTDOWN);
    CHECK((*v)->Close().ok());
    for (MemBackend* mb : p.mem()) {
      CHECK(mb->Exists(running));
      CHECK(OwnerOn(*mb) == 2);
    }
  }
}

TEST_CASE("Open refuses a volume whose lease is not held") {
  VolumeMeta m;
  m.name = "v";
  m.number = kVol;
  m.geometry.size = 8 << 20;
  m.replicas = 3;
  Parts p;
  ManualClock clock;
  VolumeOpenOptions o;
  o.lease = NewLease(p, Who(1, "node1"), clock);
  auto v = Volume::Open(m, p.all(), o);
  CHECK(v.status().IsUnavailable());
  for (MemBackend* b : p.mem()) CHECK(b->FilePaths().empty());  // nothing written
}

TEST_CASE("ForeignLease names another master's record and ignores this configuration's") {
  Parts p;
  ManualClock clock;
  auto a = NewLease(p, Who(1, "node1"), clock);
  CHECK_FALSE(ForeignLease(kVol, p.all(), Who(2, "node2")).has_value());
  REQUIRE(AcquireFully(*a, clock).phase == VolumeLease::Phase::kHeld);
  auto f = ForeignLease(kVol, p.all(), Who(2, "node2"));
  REQUIRE(f.has_value());
  CHECK(f->who.host == "node1");
  CHECK_FALSE(
      ForeignLease(kVol, p.all(), Who(5, "node1")).has_value());  // a later run of node1's config
}
}  // TEST_SUITE("lease")

TEST_SUITE("fence") {
TEST_CASE(
    "FenceLayer passes requests while the lease is valid and refuses them with ESHUTDOWN after") {
  ManualClock clock;
  std::atomic<uint64_t> until{clock.NowMs() + 100};
  auto disk = std::make_unique<MemDisk>(1 << 20);
  MemDisk* d = disk.get();
  FenceLayer f(std::move(disk), "v", until, clock);
  std::vector<std::byte> buf(4096, std::byte{3});
  CHECK(f.Write(0, buf, false).ok());
  CHECK(f.Flush().ok());
  clock.Advance(100);
  for (Status s : {f.Write(4096, buf, false), f.Flush(), f.Read(0, buf), f.Trim(0, 4096, false),
                   f.WriteZeroes(0, 4096, false, false), f.BlockStatus(0, 4096).status()}) {
    CHECK(s.IsUnavailable());
    CHECK(s.Errno() == ESHUTDOWN);
  }
  CHECK(f.refused() == 6);
  std::vector<std::byte> got(4096);
  REQUIRE(d->Read(4096, got).ok());
  CHECK(got[0] == std::byte{0});  // the refused write never reached the disk
  until = clock.NowMs() + 1;
  CHECK(f.Write(4096, buf, false).ok());
}

TEST_CASE("FenceLayer does not acknowledge a write that completes after the deadline") {
  ManualClock clock;
  std::atomic<uint64_t> until{clock.NowMs() + 100};
  // The layer below takes 150 ms of the clock to answer.
  class Slow : public Layer {
   public:
    Slow(std::unique_ptr<BlockHandler> next, ManualClock& c) : Layer(std::move(next)), c_(c) {}
    Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override {
      c_.Advance(150);
      return next().Write(off, in, fua);
    }
    ManualClock& c_;
  };
  FenceLayer f(std::make_unique<Slow>(std::make_unique<MemDisk>(1 << 20), clock), "v", until,
               clock);
  std::vector<std::byte> buf(4096);
  Status s = f.Write(0, buf, false);
  CHECK(s.Errno() == ESHUTDOWN);
}
}  // TEST_SUITE("fence")
}  // namespace qbd::test
