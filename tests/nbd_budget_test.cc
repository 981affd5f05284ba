// Tests of src/nbd/budget.h: the payload budget shared by every NBD connection.
#include "nbd/budget.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace qbd::test {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// Waits (without a time limit that could fail the test) until `flag` is set.
void AwaitFlag(const std::atomic<bool>& flag) {
  while (!flag.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

}  // namespace

TEST_SUITE("nbd_budget") {
TEST_CASE("holds add up and Release gives back all of a hold") {
  PayloadBudget b(64 * kMiB, 32 * kMiB);
  PayloadBudget::Hold h1, h2;
  b.Take(h1, 4 * kMiB, false);
  b.Take(h1, 1 * kMiB, true);
  b.Take(h2, 2 * kMiB, false);
  CHECK(h1.bytes == 5 * kMiB);
  CHECK(b.used() == 7 * kMiB);
  b.Release(h1);
  CHECK(h1.bytes == 0);
  CHECK(b.used() == 2 * kMiB);
  b.Release(h2);
  CHECK(b.used() == 0);
}

TEST_CASE("a new request waits while the budget outside the reserve is spent, and goes on after a release") {
  PayloadBudget b(64 * kMiB, 32 * kMiB);
  PayloadBudget::Hold big;
  b.Take(big, 30 * kMiB, false);
  std::atomic<bool> started{false}, done{false};
  std::thread t([&] {
    PayloadBudget::Hold h;
    started = true;
    b.Take(h, 4 * kMiB, false);  // 34 MiB > 64 - 32
    done = true;
    b.Release(h);
  });
  AwaitFlag(started);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_FALSE(done.load());  // a correct budget never lets it through before the release
  b.Release(big);
  t.join();
  CHECK(done.load());
  CHECK(b.used() == 0);
}

TEST_CASE("a payload already begun finishes with the reserve when the rest is spent; one at a time") {
  PayloadBudget b(64 * kMiB, 32 * kMiB);
  PayloadBudget::Hold other, first, second;
  b.Take(other, 20 * kMiB, false);
  b.Take(first, 6 * kMiB, false);
  b.Take(second, 6 * kMiB, false);  // 32 MiB outside the reserve: spent
  b.Take(first, 26 * kMiB, true);   // the rest of a 32 MiB payload: from the reserve, no wait
  CHECK(first.reserve);
  CHECK(b.used() == 58 * kMiB);
  std::atomic<bool> done{false};
  std::thread t([&] {
    b.Take(second, 4 * kMiB, true);  // the reserve is taken: waits
    done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_FALSE(done.load());
  b.Release(first);  // the reserve's holder finished: the waiting payload goes on
  t.join();
  CHECK(done.load());
  CHECK(second.bytes == 10 * kMiB);
  b.Release(second);
  b.Release(other);
  CHECK(b.used() == 0);
}

TEST_CASE("many payloads taken piece by piece never wait for each other forever") {
  // 8 writers of 32 MiB payloads in 64 KiB..doubling pieces on a 64 MiB budget: without the
  // reserve they could spend it all half-way and each wait for the others.
  PayloadBudget b(64 * kMiB, 32 * kMiB);
  std::vector<std::thread> ts;
  std::atomic<int> finished{0};
  for (int w = 0; w < 8; ++w) {
    ts.emplace_back([&] {
      for (int round = 0; round < 4; ++round) {
        PayloadBudget::Hold h;
        for (uint64_t got = 0; got < 32 * kMiB;) {
          const uint64_t piece = std::min<uint64_t>(32 * kMiB - got, std::max<uint64_t>(64 * 1024, got));
          b.Take(h, piece, got > 0);
          got += piece;
          std::this_thread::yield();
        }
        b.Release(h);
      }
      ++finished;
    });
  }
  for (auto& t : ts) t.join();
  CHECK(finished.load() == 8);
  CHECK(b.used() == 0);
}
}  // TEST_SUITE("nbd_budget")

}  // namespace qbd::test
