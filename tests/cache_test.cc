// Tests of the memory cache (include/qbd/cache.h): S3-FIFO eviction keeps the working set through a
// scan; CacheLayer over MemDisk serves exactly what a plain vector holds under random operations,
// and stays coherent with the disk under concurrent overlapping reads and writes.
#include "qbd/cache.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "testutil/random_bytes.h"
#include "testutil/mem_disk.h"

namespace qbd::test {
namespace {

constexpr uint32_t kBs = 4096;

// Lets other threads run before and after each call reaches the disk, so that overlapping
// requests interleave in every order (no sleeps: yields).
class Shuffler : public Layer {
 public:
  using Layer::Layer;
  Status Read(uint64_t off, std::span<std::byte> out) override { return Around([&] { return next().Read(off, out); }); }
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override {
    return Around([&] { return next().Write(off, in, fua); });
  }
  Status Trim(uint64_t off, uint64_t len, bool fua) override { return Around([&] { return next().Trim(off, len, fua); }); }

 private:
  template <typename Fn>
  Status Around(Fn fn) {
    thread_local std::mt19937 rng(std::hash<std::thread::id>{}(std::this_thread::get_id()));
    for (int i = rng() % 50; i > 0; --i) std::this_thread::yield();
    Status s = fn();
    for (int i = rng() % 50; i > 0; --i) std::this_thread::yield();
    return s;
  }
};

// Holds one chosen call after it reached the disk until the test releases it, so that a race's
// interleaving is produced exactly (no sleeps).
class Gate : public Layer {
 public:
  using Layer::Layer;
  enum class What { kNone, kRead, kWrite };
  void HoldNext(What w) {
    std::lock_guard<std::mutex> l(mu_);
    hold_ = w;
    held_ = released_ = false;
  }
  void WaitHeld() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return held_; });
  }
  void Release() {
    std::lock_guard<std::mutex> l(mu_);
    released_ = true;
    cv_.notify_all();
  }
  Status Read(uint64_t off, std::span<std::byte> out) override { return Hold(What::kRead, next().Read(off, out)); }
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override {
    return Hold(What::kWrite, next().Write(off, in, fua));
  }

 private:
  Status Hold(What w, Status s) {
    std::unique_lock<std::mutex> l(mu_);
    if (hold_ != w) return s;
    hold_ = What::kNone;
    held_ = true;
    cv_.notify_all();
    cv_.wait(l, [&] { return released_; });
    return s;
  }
  std::mutex mu_;
  std::condition_variable cv_;
  What hold_ = What::kNone;
  bool held_ = false, released_ = false;
};

// A CacheLayer over a MemDisk of `size` bytes; `disk` stays reachable for checks.
struct Stack {
  explicit Stack(uint64_t size, uint64_t cache_bytes, bool shuffle = false) : cache(cache_bytes) {
    auto d = std::make_unique<MemDisk>(size);
    disk = d.get();
    std::unique_ptr<BlockHandler> below = std::move(d);
    if (shuffle) below = std::make_unique<Shuffler>(std::move(below));
    layer = std::make_unique<CacheLayer>(std::move(below), cache, /*volnr=*/3, kBs);
  }
  BlockCache cache;
  MemDisk* disk = nullptr;
  std::unique_ptr<CacheLayer> layer;
};

}  // namespace

TEST_SUITE("cache") {
TEST_CASE("BlockCache keeps a used working set when a long scan passes through") {
  BlockCache cache(256 * kBs, /*shards=*/1);
  std::vector<std::byte> block(kBs), got(kBs);
  // A working set of 100 blocks, each used again after it was cached.
  for (uint64_t b = 0; b < 100; ++b) {
    block = RandomBytes(b, kBs);
    cache.Insert(1, b, block);
  }
  for (uint64_t b = 0; b < 100; ++b) REQUIRE(cache.Lookup(1, b, got));
  // A scan of 10x the capacity, each block seen once.
  for (uint64_t b = 1000; b < 1000 + 2560; ++b) cache.Insert(1, b, RandomBytes(b, kBs));
  int kept = 0;
  for (uint64_t b = 0; b < 100; ++b) {
    if (cache.Lookup(1, b, got)) {
      ++kept;
      CHECK(got == RandomBytes(b, kBs));
    }
  }
  CHECK(kept == 100);
  CHECK(cache.used() <= cache.capacity());
  CHECK(cache.counters().evictions.load() >= 2560 - 256);
}

TEST_CASE("BlockCache never holds more than its capacity and drops a volume's blocks on EraseVolume") {
  BlockCache cache(64 * kBs, /*shards=*/4);
  for (uint64_t b = 0; b < 1000; ++b) {
    cache.Insert(b % 2 ? 1 : 2, b, RandomBytes(b, kBs));
    CHECK(cache.used() <= cache.capacity());
  }
  cache.EraseVolume(1);
  std::vector<std::byte> got(kBs);
  for (uint64_t b = 1; b < 1000; b += 2) CHECK_FALSE(cache.Lookup(1, b, got));
}

TEST_CASE("BlockCache with huge-page slabs keeps every block's own bytes as blocks of two sizes come and go") {
  // 32 MiB in one shard: block memory comes in 2 MiB huge slabs, reused as blocks are evicted.
  BlockCache cache(32 << 20, /*shards=*/1);
  const uint64_t n = 3 * (32 << 20) / kBs;  // three times the capacity
  std::vector<std::byte> got4(kBs), got1(1024);
  for (uint64_t b = 0; b < n; ++b) {
    // Volume 1 has 4 KiB blocks, volume 2 1 KiB ones (each size has its own free list).
    const bool small = b % 5 == 0;
    cache.Insert(small ? 2 : 1, b, RandomBytes(b, small ? 1024 : kBs));
    REQUIRE(cache.Lookup(small ? 2 : 1, b, small ? std::span(got1) : std::span(got4)));
    REQUIRE((small ? got1 : got4) == RandomBytes(b, small ? 1024 : kBs));
    REQUIRE(cache.used() <= cache.capacity());
  }
  // The newest blocks (a probation queue's worth) are all still there, with their own data.
  for (uint64_t b = n - 500; b < n; ++b) {
    const bool small = b % 5 == 0;
    REQUIRE(cache.Lookup(small ? 2 : 1, b, small ? std::span(got1) : std::span(got4)));
    CHECK((small ? got1 : got4) == RandomBytes(b, small ? 1024 : kBs));
  }
  CHECK(cache.counters().evictions.load() > n / 2);
}

TEST_CASE("CacheLayer reads what a plain vector holds under random reads, writes, trims and zeroes") {
  const uint64_t size = 1 << 20;
  const uint64_t seed = std::random_device{}();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  Stack s(size, 32 * kBs);  // smaller than the disk: evictions happen
  std::vector<std::byte> oracle(size);
  for (int op = 0; op < 3000; ++op) {
    const uint64_t off = rng() % size;
    const uint64_t len = 1 + rng() % std::min<uint64_t>(size - off, 3 * kBs);
    switch (rng() % 5) {
      case 0:
      case 1: {
        std::vector<std::byte> got(len);
        REQUIRE(s.layer->Read(off, got).ok());
        CHECK(std::equal(got.begin(), got.end(), oracle.begin() + off));
        break;
      }
      case 2: {
        std::vector<std::byte> data = RandomBytes(rng(), len);
        REQUIRE(s.layer->Write(off, data, false).ok());
        std::copy(data.begin(), data.end(), oracle.begin() + off);
        break;
      }
      case 3:
        REQUIRE(s.layer->Trim(off, len, false).ok());
        std::fill(oracle.begin() + off, oracle.begin() + off + len, std::byte{0});
        break;
      default:
        REQUIRE(s.layer->WriteZeroes(off, len, rng() % 2, false).ok());
        std::fill(oracle.begin() + off, oracle.begin() + off + len, std::byte{0});
        break;
    }
  }
  CHECK(s.cache.counters().hits.load() > 0);
}

TEST_CASE("CacheLayer serves repeated reads from memory and keeps the data when a write fails") {
  Stack s(1 << 20, 64 * kBs);
  std::vector<std::byte> data = RandomBytes(7, 8 * kBs), got(8 * kBs);
  REQUIRE(s.layer->Write(0, data, false).ok());
  const uint64_t reads = s.disk->reads();
  REQUIRE(s.layer->Read(0, got).ok());
  CHECK(got == data);
  CHECK(s.disk->reads() == reads);  // the write's whole blocks were cached
  // A failed write leaves the old data below; the cache must not serve the new.
  s.disk->FailNext(Status::IOError("test: write fails"));
  std::vector<std::byte> other = RandomBytes(8, kBs);
  CHECK_FALSE(s.layer->Write(0, other, false).ok());
  REQUIRE(s.layer->Read(0, got).ok());
  CHECK(got == data);
  // A trim drops the cached blocks: zeros come back.
  REQUIRE(s.layer->Trim(kBs, 2 * kBs, false).ok());
  REQUIRE(s.layer->Read(0, got).ok());
  CHECK(std::all_of(got.begin() + kBs, got.begin() + 3 * kBs, [](std::byte b) { return b == std::byte{0}; }));
  CHECK(std::equal(got.begin() + 3 * kBs, got.end(), data.begin() + 3 * kBs));
}

TEST_CASE("CacheLayer stays coherent with the disk when threads read and write the same blocks") {
  const uint64_t blocks = 16;
  Stack s(blocks * kBs, 8 * kBs, /*shuffle=*/true);
  std::vector<std::byte> got(kBs);
  // Many short rounds, each ending quiescent: at every end, what the cache serves is the disk.
  for (int round = 0; round < 40; ++round) {
    CAPTURE(round);
    std::atomic<bool> failed{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < 6; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(1000 * round + t);
        std::vector<std::byte> buf;
        for (int i = 0; i < 150; ++i) {
          const uint64_t b = rng() % blocks, n = 1 + rng() % 2;
          const uint64_t len = std::min<uint64_t>(n, blocks - b) * kBs;
          buf.resize(len);
          Status st;
          const uint64_t kind = rng() % 8;
          if (kind < 3) {
            for (auto& x : buf) x = std::byte(rng());
            st = s.layer->Write(b * kBs, buf, false);
          } else if (kind == 3) {
            st = s.layer->Trim(b * kBs, len, false);
          } else {
            st = s.layer->Read(b * kBs, buf);
          }
          if (!st.ok()) failed = true;
        }
      });
    }
    for (auto& th : threads) th.join();
    REQUIRE_FALSE(failed.load());
    for (uint64_t b = 0; b < blocks; ++b) {
      CAPTURE(b);
      REQUIRE(s.layer->Read(b * kBs, got).ok());
      REQUIRE(got == s.disk->Contents(b * kBs, kBs));
    }
  }
}
TEST_CASE("CacheLayer does not cache a read's old data when a write lands while the read returns") {
  BlockCache cache(64 * kBs);
  auto d = std::make_unique<MemDisk>(64 * kBs);
  MemDisk* disk = d.get();
  auto g = std::make_unique<Gate>(std::move(d));
  Gate* gate = g.get();
  CacheLayer layer(std::move(g), cache, 3, kBs);
  std::vector<std::byte> old_data = RandomBytes(1, kBs), new_data = RandomBytes(2, kBs), got(kBs);
  REQUIRE(disk->Write(0, old_data, false).ok());  // below the cache: nothing cached yet
  gate->HoldNext(Gate::What::kRead);
  std::thread reader([&] { CHECK(layer.Read(0, got).ok()); });
  gate->WaitHeld();  // the read has the old data and has not cached it yet
  REQUIRE(layer.Write(0, new_data, false).ok());
  gate->Release();
  reader.join();
  CHECK(got == old_data);  // it was read before the write
  std::vector<std::byte> again(kBs);
  REQUIRE(layer.Read(0, again).ok());
  CHECK(again == new_data);
}

TEST_CASE("CacheLayer does not cache a write that an overlapping write may have overtaken") {
  BlockCache cache(64 * kBs);
  auto d = std::make_unique<MemDisk>(64 * kBs);
  auto g = std::make_unique<Gate>(std::move(d));
  Gate* gate = g.get();
  CacheLayer layer(std::move(g), cache, 3, kBs);
  std::vector<std::byte> first = RandomBytes(3, kBs), second = RandomBytes(4, kBs), got(kBs);
  gate->HoldNext(Gate::What::kWrite);
  std::thread w1([&] { CHECK(layer.Write(0, first, false).ok()); });
  gate->WaitHeld();  // the first write is on the disk, not yet answered
  REQUIRE(layer.Write(0, second, false).ok());  // lands after it
  gate->Release();
  w1.join();
  REQUIRE(layer.Read(0, got).ok());
  CHECK(got == second);
}
}  // TEST_SUITE("cache")

}  // namespace qbd::test
