// Issue 16: a kernel NBD device resends a request that outlived its timeout on another
// connection while the first copy may still be running in qbd-master. Once the resent copy is
// answered the client writes the block again; the first copy must not land over that. The
// engine's region locks order overlapping writes, generations order the copies on the parts, and
// the memory cache keeps no copy of a write that a later one overtook. This drives a volume (with
// a memory cache) through that sequence: the first copy held inside one part's write, the resent
// copy beside it, the next write as soon as the resent copy is answered, then the first copy let
// go. Whatever the order, the next write is what reads back, from the cache and from the parts.
#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <vector>

#include "qbd/cache.h"
#include "qbd/volume.h"
#include "../testutil/mem_backend.h"

namespace qbd::test {
namespace {

VolumeMeta Meta() {
  VolumeMeta m;
  m.name = "v";
  m.number = 5;
  m.geometry.size = 8 << 20;
  m.geometry.block_size = 4096;
  m.geometry.chunk_size = 1 << 20;
  m.replicas = 3;
  return m;
}

// Holds the first data write to the chunk file of device chunk 1 (file 2: numbered from 1), on
// whichever part it comes, after Arm() until Release().
class Gate {
 public:
  void Arm() {
    std::lock_guard l(mu_);
    armed_ = true;
  }
  void Release() {
    std::lock_guard l(mu_);
    armed_ = false;
    cv_.notify_all();
  }
  void Hook(FaultyBackend::Op op, std::string_view path) {
    if (op != FaultyBackend::kWrite || (path != "5/a/2" && path != "5/b/2" && path != "5/c/2")) return;
    std::unique_lock l(mu_);
    if (!armed_ || held_ > 0) return;
    ++held_;
    cv_.notify_all();
    cv_.wait(l, [&] { return !armed_; });
  }
  void WaitHeld(int n) {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return held_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false;
  int held_ = 0;
};

}  // namespace

TEST_CASE("issue 16: a resent write waits for its first copy; the next write is what stays") {
  MemBackend a{"a"}, b{"b"}, c{"c"};
  FaultyBackend fa(a), fb(b), fc(c);
  Gate gate;
  for (FaultyBackend* f : {&fa, &fb, &fc}) {
    f->SetHook([&](FaultyBackend::Op op, std::string_view path) { gate.Hook(op, path); });
  }
  BlockCache cache(16 << 20);
  VolumeOpenOptions o;
  o.start_resync_thread = false;
  o.cache = &cache;
  auto v = Volume::Open(Meta(), {&fa, &fb, &fc}, o);
  REQUIRE(v.ok());
  BlockHandler& h = *(*v)->handler();
  const uint64_t off = (1 << 20) + 8192;  // chunk 1
  const std::vector<std::byte> old_data(4096, std::byte{0x0a}), first(4096, std::byte{0x1f}),
      next(4096, std::byte{0x2b});
  REQUIRE(h.Write(off, old_data, false).ok());  // the chunk exists: later writes are WriteAt only

  gate.Arm();
  auto original = std::async(std::launch::async, [&] { return h.Write(off, first, false); });
  gate.WaitHeld(1);  // the first copy is inside a part's write
  auto resent = std::async(std::launch::async, [&] { return h.Write(off, first, false); });
  // The wait only chooses which order is driven; neither can fail for time.
  if (resent.wait_for(std::chrono::milliseconds(300)) == std::future_status::ready) {
    // The resent copy was answered first: the client writes again, then the first copy lands.
    CHECK(resent.get().ok());
    REQUIRE(h.Write(off, next, false).ok());
    gate.Release();
    CHECK(original.get().ok());
  } else {
    // The resent copy waits behind the first one (its region is locked).
    gate.Release();
    CHECK(original.get().ok());
    CHECK(resent.get().ok());
    REQUIRE(h.Write(off, next, false).ok());
  }
  std::vector<std::byte> got(4096);
  REQUIRE(h.Read(off, got).ok());
  CHECK(got == next);
  REQUIRE((*v)->Close().ok());
  // And from the parts alone, without the cache.
  VolumeOpenOptions plain;
  plain.start_resync_thread = false;
  auto again = Volume::Open(Meta(), {&a, &b, &c}, plain);
  REQUIRE(again.ok());
  REQUIRE((*again)->handler()->Read(off, got).ok());
  CHECK(got == next);
  CHECK((*again)->Close().ok());
}

}  // namespace qbd::test
