// Tests of src/engine/flush_coalescer.h: concurrent flushes share runs, and a flush is never
// answered by a run that started before it was called.
#include "engine/flush_coalescer.h"

#include <doctest/doctest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace qbd::test {
namespace {

TEST_SUITE("flush_coalescer") {
TEST_CASE("a lone flush runs once and returns the run's status") {
  FlushCoalescer f;
  int calls = 0;
  CHECK(f.Run([&] {
           ++calls;
           return Status::OK();
         }).ok());
  CHECK(f.Run([&] {
           ++calls;
           return Status::IOError("sync failed", 5);
         }).IsIOError());
  CHECK(calls == 2);
  CHECK(f.runs() == 2);
}

TEST_CASE("flushes that arrive during a run share one later run") {
  FlushCoalescer f;
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> started{0};
  std::atomic<int> calls{0};
  // The first run blocks until every waiter is queued behind it.
  auto run = [&] {
    const int n = calls.fetch_add(1);
    started.fetch_add(1);
    if (n == 0) {
      std::unique_lock<std::mutex> l(mu);
      cv.wait(l, [&] { return release; });
    }
    return Status::OK();
  };
  std::thread first([&] { CHECK(f.Run(run).ok()); });
  while (started.load() == 0) std::this_thread::yield();
  constexpr int kWaiters = 8;
  std::atomic<int> returned{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&] {
      CHECK(f.Run(run).ok());
      returned.fetch_add(1);
    });
  }
  // Give the waiters time to take their tickets; none may return before a run after theirs.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(returned.load() == 0);
  {
    std::lock_guard<std::mutex> l(mu);
    release = true;
  }
  cv.notify_all();
  first.join();
  for (auto& t : waiters) t.join();
  CHECK(returned.load() == kWaiters);
  // The blocked run, then one run for all the waiters that queued up behind it.
  CHECK(calls.load() == 2);
  CHECK(f.runs() == 2);
}

TEST_CASE("a flush that waited gets the status of the run that covered it") {
  FlushCoalescer f;
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> calls{0};
  auto run = [&]() -> Status {
    if (calls.fetch_add(1) == 0) {
      std::unique_lock<std::mutex> l(mu);
      cv.wait(l, [&] { return release; });
      return Status::OK();
    }
    return Status::Unavailable("quorum lost");
  };
  std::thread first([&] { CHECK(f.Run(run).ok()); });
  while (calls.load() == 0) std::this_thread::yield();
  Status second;
  std::thread waiter([&] { second = f.Run(run); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  {
    std::lock_guard<std::mutex> l(mu);
    release = true;
  }
  cv.notify_all();
  first.join();
  waiter.join();
  CHECK(second.IsUnavailable());
}
}  // TEST_SUITE("flush_coalescer")

}  // namespace
}  // namespace qbd::test
