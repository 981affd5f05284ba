// Tests of src/engine/part_health.h: the part states and their transitions, and the read order.
#include "engine/part_health.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "qbd/clock.h"
#include "qbd/log.h"
#include "testutil/mem_backend.h"
#include "testutil/tagged_blocks.h"

namespace qbd::test {
namespace {

struct Parts {
  MemBackend a{"a"}, b{"b"}, c{"c"};
  PartHealth health{"vol", 9, {'a', 'b', 'c'}, {&a, &b, &c}};
};

TEST_SUITE("part_health") {
TEST_CASE("every part starts up, reachable and in sync") {
  Parts p;
  for (size_t i = 0; i < 3; ++i) {
    CHECK(p.health.state(i) == PartHealth::State::kUp);
    CHECK(p.health.Reachable(i));
    CHECK(p.health.InSync(i));
  }
  CHECK(p.health.ReachableMask() == 0b111);
}

TEST_CASE("a resyncing part is reachable but not in sync, and becomes up once") {
  Parts p;
  p.health.SetInitial(1, PartHealth::State::kResyncing);
  CHECK(p.health.Reachable(1));
  CHECK_FALSE(p.health.InSync(1));
  CHECK(p.health.MarkInSync(1));
  CHECK(p.health.InSync(1));
  CHECK_FALSE(p.health.MarkInSync(1));  // up already
}

TEST_CASE("MarkDown reports only the first of an outage, and a down part is not made up by MarkInSync") {
  Parts p;
  const LogLevel saved = GetLogLevel();
  SetLogLevel(LogLevel::kError);
  CHECK(p.health.MarkDown(2, Status::IOError("disk gone", 5)));
  CHECK_FALSE(p.health.MarkDown(2, Status::IOError("disk gone", 5)));
  SetLogLevel(saved);
  CHECK_FALSE(p.health.Reachable(2));
  CHECK(p.health.ReachableMask() == 0b011);
  CHECK_FALSE(p.health.MarkInSync(2));
  CHECK(p.health.state(2) == PartHealth::State::kDown);
}

TEST_CASE("ProbePart brings a down part back as resyncing only when its volume directory exists") {
  Parts p;
  const LogLevel saved = GetLogLevel();
  SetLogLevel(LogLevel::kError);
  p.health.MarkDown(0, Status::IOError("gone", 5));
  SetLogLevel(saved);
  int back = 0;
  CHECK_FALSE(p.health.ProbePart(0, [&] { ++back; }));  // a bare backend: stays down
  CHECK(back == 0);
  REQUIRE(p.a.MkDirs("9").ok());
  CHECK(p.health.ProbePart(0, [&] { ++back; }));
  CHECK(back == 1);
  CHECK(p.health.state(0) == PartHealth::State::kResyncing);
  CHECK(p.health.ProbePart(0, [&] { ++back; }));  // reachable already: no second transition
  CHECK(back == 1);
}

TEST_CASE("MarkDown with ENOSPC makes a part full: readable, not written, and one transition only") {
  Parts p;
  QuietLog quiet;
  const Status nospace = Status::FromErrno("pwrite 9/b/1", ENOSPC);
  CHECK(p.health.MarkDown(1, nospace));
  CHECK_FALSE(p.health.MarkDown(1, nospace));  // writes in flight that fail too: no transition
  CHECK(p.health.state(1) == PartHealth::State::kFull);
  CHECK(p.health.Readable(1));
  CHECK_FALSE(p.health.Reachable(1));
  CHECK_FALSE(p.health.InSync(1));
  CHECK(p.health.DownErrno(1) == ENOSPC);
  CHECK(p.health.ReachableMask() == 0b101);
  CHECK(p.health.Describe(1) == "out of space: No space left on device");
  // Another error takes it down for good (until its directory is probed again).
  CHECK(p.health.MarkDown(1, Status::IOError("disk gone", EIO)));
  CHECK_FALSE(p.health.Readable(1));
  CHECK(p.health.Describe(1) == "down: Input/output error");
  // ENOSPC does not make a part that is down readable.
  CHECK_FALSE(p.health.MarkDown(1, nospace));
  CHECK(p.health.state(1) == PartHealth::State::kDown);
}

// A part on a FaultyBackend that can be made full, with a clock the test moves.
struct FullParts {
  MemBackend mem{"b"};
  FaultyBackend b{mem};
  ManualClock clock;
  PartHealth health{"vol", 9, {'a', 'b'}, {nullptr, &b}, /*min_free_bytes=*/64 << 10, &clock};
  FullParts() { REQUIRE(mem.MkDirs("9").ok()); }
};

TEST_CASE("a part out of space comes back only after its back-off, and only once it has room") {
  FullParts p;
  QuietLog quiet;
  p.b.SetOutOfSpace(true);
  REQUIRE(p.health.MarkDown(1, Status::FromErrno("pwrite", ENOSPC)));
  int back = 0;
  auto on_back = [&] { ++back; };
  SUBCASE("space returns within the back-off") {
    p.b.SetOutOfSpace(false);
    CHECK_FALSE(p.health.ProbePart(1, on_back));
    p.clock.Advance(PartHealth::kInitialBackoffMs - 1);
    CHECK_FALSE(p.health.ProbePart(1, on_back));
    p.clock.Advance(1);
    CHECK(p.health.ProbePart(1, on_back));
    CHECK(back == 1);
    CHECK(p.health.state(1) == PartHealth::State::kResyncing);
    CHECK_FALSE(p.mem.Exists("9/.space.tmp.1"));  // the trial file is gone
  }
  SUBCASE("still full after the back-off: FreeBytes says so, no trial file") {
    p.clock.Advance(PartHealth::kInitialBackoffMs);
    const uint64_t injected = p.b.injected();
    CHECK_FALSE(p.health.ProbePart(1, on_back));
    CHECK(p.b.injected() == injected);
    CHECK(p.health.state(1) == PartHealth::State::kFull);
    p.b.SetOutOfSpace(false);
    CHECK(p.health.ProbePart(1, on_back));
    CHECK(back == 1);
  }
}

TEST_CASE("the back-off doubles while a part keeps filling up, up to its cap, and resets once in sync") {
  FullParts p;
  QuietLog quiet;
  const Status nospace = Status::FromErrno("pwrite", ENOSPC);
  uint64_t want = PartHealth::kInitialBackoffMs;
  for (int round = 0; round < 8; ++round) {
    CAPTURE(round);
    REQUIRE(p.health.MarkDown(1, nospace));
    p.clock.Advance(want - 1);
    CHECK_FALSE(p.health.ProbePart(1));
    p.clock.Advance(1);
    CHECK(p.health.ProbePart(1));  // resyncing, and full again at the next round
    want = std::min(want * 2, PartHealth::kMaxBackoffMs);
  }
  CHECK(want == PartHealth::kMaxBackoffMs);
  CHECK(p.health.MarkInSync(1));
  REQUIRE(p.health.MarkDown(1, nospace));
  p.clock.Advance(PartHealth::kInitialBackoffMs);
  CHECK(p.health.ProbePart(1));
}

TEST_CASE("the read order puts the least loaded parts first and keeps ties in order") {
  Parts p;
  p.health.BeginIo(0);
  p.health.BeginIo(0);
  p.health.BeginIo(2);
  CHECK(p.health.LeastLoadedFirst({0, 1, 2}) == std::vector<int>{1, 2, 0});
  p.health.EndIo(0);
  p.health.EndIo(0);
  p.health.EndIo(2);
  CHECK(p.health.LeastLoadedFirst({2, 0, 1}) == std::vector<int>{2, 0, 1});
}
}  // TEST_SUITE("part_health")

}  // namespace
}  // namespace qbd::test
