// Tests of src/engine/sequencer.h: generations per epoch (layout-spec.md §4.2) and the order in
// which region guards take their lock stripes.
#include "engine/sequencer.h"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "qbd/chunk_format.h"

namespace qbd::test {
namespace {

TEST_SUITE("sequencer") {
TEST_CASE("generations start at (epoch << 40) + 1 and grow by one") {
  Sequencer s("vol", 3);
  CHECK(s.MaxGeneration() == (3ull << kGenerationBits));
  CHECK(s.NextGeneration() == (3ull << kGenerationBits) + 1);
  CHECK(s.NextGeneration() == (3ull << kGenerationBits) + 2);
  CHECK(s.MaxGeneration() == (3ull << kGenerationBits) + 2);
}

TEST_CASE("TryNextGeneration fails with Unavailable when the epoch's generations are used up") {
  Sequencer s("vol", 5);
  const uint64_t last = MaxGenerationOfEpoch(5);
  s.TEST_SetNextGeneration(last);
  auto g = s.TryNextGeneration();
  REQUIRE(g.ok());
  CHECK(*g == last);
  auto over = s.TryNextGeneration();
  CHECK(over.status().IsUnavailable());
  // Nothing was consumed: no generation of the next epoch is ever handed out.
  CHECK(s.MaxGeneration() == last);
}

TEST_CASE("a guard takes its stripes in ascending order, each once") {
  using V = std::vector<size_t>;
  CHECK(Sequencer::StripesOf(5, 5) == V{5});
  CHECK(Sequencer::StripesOf(3, 6) == V{3, 4, 5, 6});
  // Regions that wrap around the stripes: ascending stripes, not ascending regions.
  const uint64_t k = Sequencer::kStripes;
  CHECK(Sequencer::StripesOf(k - 1, k + 1) == V{0, 1, k - 1});
  // A range of kStripes regions or more takes every stripe.
  CHECK(Sequencer::StripesOf(7, 7 + k).size() == k);
  CHECK(Sequencer::StripesOf(0, k - 1).size() == k);
}

TEST_CASE("guards over overlapping wrapped ranges never deadlock") {
  Sequencer s("vol", 1);
  const uint64_t k = Sequencer::kStripes;
  std::atomic<int> inside{0};
  std::atomic<bool> overlap{false};
  // Both ranges hold stripes 0 and k - 1, reached in opposite region order.
  auto worker = [&](uint64_t r0, uint64_t r1) {
    for (int i = 0; i < 2000; ++i) {
      Sequencer::RegionGuard g(s, r0, r1);
      if (inside.fetch_add(1) != 0) overlap = true;
      inside.fetch_sub(1);
    }
  };
  std::thread a(worker, k - 1, k);   // regions k-1, k: stripes k-1 then 0
  std::thread b(worker, 0, k - 1);   // every stripe
  std::thread c(worker, 2 * k - 1, 2 * k);
  a.join();
  b.join();
  c.join();
  CHECK_FALSE(overlap.load());
}
}  // TEST_SUITE("sequencer")

}  // namespace
}  // namespace qbd::test
