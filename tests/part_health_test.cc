// Tests of src/engine/part_health.h: the part states and their transitions, and the read order.
#include "engine/part_health.h"

#include <doctest/doctest.h>

#include <vector>

#include "qbd/log.h"
#include "testutil/mem_backend.h"

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
