// Tests of the SSD cache tier (include/qbd/ssd_cache.h): read fills and hits, write-back with
// replay after a crash (MemBackend's DropUnsynced plays the power cut), the checkpoint that keeps
// destaged copies from being replayed over newer data, torn log entries, a random differential test
// against a plain vector, coherence under concurrent overlapping requests, and the fallback to the
// parts when the log fails or its directory is removed.
#include "qbd/ssd_cache.h"

#include <doctest/doctest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <random>
#include <thread>
#include <vector>

#include "testutil/random_bytes.h"
#include "testutil/mem_backend.h"
#include "testutil/mem_disk.h"
#include "testutil/temp_dir.h"

namespace qbd::test {
namespace {

constexpr uint32_t kBs = 4096;
constexpr uint32_t kVol = 7;
// Slots per segment for 4 KiB blocks: one header block of 128 entries, the first for the segment.
constexpr uint64_t kSpp = kBs / 32 - 1;

// Forwards to a disk that outlives the layer, so that a test can "crash" the layer and recover
// onto the same disk.
class Borrowed : public BlockHandler {
 public:
  explicit Borrowed(MemDisk& d) : d_(d) {}
  uint64_t Size() const override { return d_.Size(); }
  Status Read(uint64_t off, std::span<std::byte> out) override {
    Status s = d_.Read(off, out);
    if (after_read) after_read();
    return s;
  }
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override { return d_.Write(off, in, fua); }
  Status Flush() override { return d_.Flush(); }
  Status Trim(uint64_t off, uint64_t len, bool fua) override { return d_.Trim(off, len, fua); }
  Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) override {
    return d_.WriteZeroes(off, len, may_trim, fua);
  }
  Result<std::vector<Extent>> BlockStatus(uint64_t off, uint64_t len) override { return d_.BlockStatus(off, len); }

  // Runs after each read reached the disk (a test holds a read there).
  std::function<void()> after_read;

 private:
  MemDisk& d_;
};

SsdCacheOptions WriteBack(uint32_t delay_ms = 3600000) {
  SsdCacheOptions o;
  o.write_back = true;
  o.log_size = 8 * (kSpp + 1) * kBs;  // 8 segments
  o.destage_delay_ms = delay_ms;      // no background destaging unless memory or the log runs short
  return o;
}

// Recovers, then opens a layer over `disk`, as qbd-master does when it opens a volume.
std::unique_ptr<SsdCacheLayer> Open(StorageBackend& dir, MemDisk& disk, const SsdCacheOptions& o,
                                    SsdReplay* replay = nullptr) {
  auto r = SsdCacheLayer::Recover(dir, kVol, kBs, disk);
  REQUIRE(r.ok());
  if (replay != nullptr) *replay = *r;
  return std::make_unique<SsdCacheLayer>(std::make_unique<Borrowed>(disk), dir, kVol, kBs, o, *r);
}

std::vector<std::byte> ReadBack(BlockHandler& h, uint64_t off, size_t len) {
  std::vector<std::byte> out(len);
  REQUIRE(h.Read(off, out).ok());
  return out;
}

TEST_CASE("SSD cache, write-through: a read fills the log, the next read is served from it") {
  MemBackend dir("cache");
  MemDisk disk(1 << 20);
  const auto data = RandomBytes(1, 64 * 1024);
  REQUIRE(disk.Write(0, data, false).ok());
  SsdCacheOptions o;
  o.log_size = 8 * (kSpp + 1) * kBs;
  auto c = Open(dir, disk, o);
  CHECK(ReadBack(*c, 0, data.size()) == data);
  const uint64_t reads = disk.reads();
  CHECK(ReadBack(*c, 0, data.size()) == data);
  CHECK(ReadBack(*c, 4096 + 100, 5000) == std::vector<std::byte>(data.begin() + 4196, data.begin() + 9196));
  CHECK(disk.reads() == reads);
  CHECK(c->counters().hits.load() >= 16);
  // A write goes to the disk and replaces the cached copy.
  const auto w = RandomBytes(2, 8192);
  REQUIRE(c->Write(4096, w, false).ok());
  std::vector<std::byte> on_disk(8192);
  REQUIRE(disk.Read(4096, on_disk).ok());
  CHECK(on_disk == w);
  CHECK(ReadBack(*c, 4096, 8192) == w);
  // TRIM and WRITE_ZEROES drop what they cover.
  REQUIRE(c->Trim(0, 8192, false).ok());
  CHECK(ReadBack(*c, 0, 8192) == std::vector<std::byte>(8192));
  REQUIRE(c->WriteZeroes(8192, 4096, true, false).ok());
  CHECK(ReadBack(*c, 8192, 4096) == std::vector<std::byte>(4096));
  CHECK(c->healthy());
}

TEST_CASE("SSD cache, write-back: writes wait in the log and memory until destaged, FLUSH syncs only the log") {
  MemBackend dir("cache");
  MemDisk disk(1 << 20);
  auto c = Open(dir, disk, WriteBack());
  const auto w = RandomBytes(3, 32 * 1024);
  REQUIRE(c->Write(65536, w, false).ok());
  CHECK(disk.writes() == 0);
  CHECK(ReadBack(*c, 65536, w.size()) == w);
  CHECK(ReadBack(*c, 65536 - 4096, 8192) ==
        [&] {
          std::vector<std::byte> v(4096);
          v.insert(v.end(), w.begin(), w.begin() + 4096);
          return v;
        }());
  const uint64_t syncs = dir.file_syncs();
  REQUIRE(c->Flush().ok());
  CHECK(dir.file_syncs() == syncs + 1);
  CHECK(disk.flushes() == 0);
  CHECK(c->dirty_bytes() == w.size());
  REQUIRE(c->Drain().ok());
  CHECK(c->dirty_bytes() == 0);
  std::vector<std::byte> on_disk(w.size());
  REQUIRE(disk.Read(65536, on_disk).ok());
  CHECK(on_disk == w);
  CHECK(disk.flushes() >= 1);
  CHECK(c->counters().destaged.load() == 8);
}

TEST_CASE("SSD cache, write-back: a crash after FLUSH loses no write; unflushed ones may go") {
  MemBackend mem("cache");
  MemDisk disk(1 << 20);
  const auto a = RandomBytes(4, 3 * kBs), b = RandomBytes(5, kBs), f = RandomBytes(6, kBs);
  {
    auto c = Open(mem, disk, WriteBack());
    REQUIRE(c->Write(0, a, false).ok());
    REQUIRE(c->Flush().ok());
    REQUIRE(c->Write(10 * kBs, f, /*fua=*/true).ok());
    REQUIRE(c->Write(20 * kBs, b, false).ok());  // never flushed
    c->AbandonForTest();
  }
  mem.DropUnsynced();  // the power cut
  CHECK(disk.writes() == 0);
  SsdReplay replay;
  auto c = Open(mem, disk, WriteBack(), &replay);
  CHECK(replay.blocks == 4);
  std::vector<std::byte> got(3 * kBs);
  REQUIRE(disk.Read(0, got).ok());
  CHECK(got == a);
  got.resize(kBs);
  REQUIRE(disk.Read(10 * kBs, got).ok());
  CHECK(got == f);
  REQUIRE(disk.Read(20 * kBs, got).ok());
  CHECK(got == std::vector<std::byte>(kBs));
  CHECK(disk.flushes() >= 1);
  // Replayed once: the checkpoint moved past it, and a second recovery has nothing to do.
  c.reset();
  auto again = SsdCacheLayer::Recover(mem, kVol, kBs, disk);
  REQUIRE(again.ok());
  CHECK(again->blocks == 0);
}

TEST_CASE("SSD cache, write-back: a process kill (no power cut) loses nothing written") {
  MemBackend mem("cache");
  MemDisk disk(1 << 20);
  const auto w = RandomBytes(7, 16 * kBs);
  {
    auto c = Open(mem, disk, WriteBack());
    REQUIRE(c->Write(4 * kBs, w, false).ok());
    c->AbandonForTest();
  }
  SsdReplay replay;
  auto c = Open(mem, disk, WriteBack(), &replay);
  CHECK(replay.blocks == 16);
  std::vector<std::byte> got(w.size());
  REQUIRE(disk.Read(4 * kBs, got).ok());
  CHECK(got == w);
}

// The log's files as they are now, in a fresh backend: what a process kill at this moment leaves.
void CopyLog(StorageBackend& from, MemBackend& to) {
  REQUIRE(to.MkDirs(std::to_string(kVol)).ok());
  for (const std::string name : {"log", "checkpoint"}) {
    const std::string path = std::to_string(kVol) + "/" + name;
    auto data = ReadWholeFile(from, path);
    if (!data.ok()) continue;
    auto f = to.Create(path);
    REQUIRE(f.ok());
    REQUIRE((*f)->WriteAt(0, *data).ok());
  }
}

TEST_CASE("SSD cache, write-back: a write acknowledged while its segment's first append is under way survives a kill") {
  // A fresh log: the segment's header entry is written by the append of its first slot. Here that
  // append is held before it writes anything while a second write, in the segment's next slot,
  // is acknowledged; the process is killed then. The acknowledged write must be replayed.
  MemBackend mem("cache");
  FaultyBackend faulty(mem);
  std::mutex mu;
  std::condition_variable cv;
  bool held = false, release = false;
  int log_writes = 0;
  faulty.SetHook([&](FaultyBackend::Op op, std::string_view path) {
    if (op != FaultyBackend::kWrite || path != "7/log") return;
    std::unique_lock l(mu);
    if (log_writes++ != 0) return;  // only the very first write to the log waits
    held = true;
    cv.notify_all();
    cv.wait(l, [&] { return release; });
  });
  MemDisk disk(1 << 20);
  const auto first = RandomBytes(21, kBs), second = RandomBytes(22, kBs);
  MemBackend killed("killed");
  {
    auto c = Open(faulty, disk, WriteBack());
    auto a = std::async(std::launch::async, [&] { return c->Write(0, first, false); });
    {
      std::unique_lock l(mu);
      cv.wait(l, [&] { return held; });
    }
    REQUIRE(c->Write(8 * kBs, second, false).ok());  // acknowledged
    CopyLog(mem, killed);                             // the kill
    {
      std::lock_guard l(mu);
      release = true;
    }
    cv.notify_all();
    CHECK(a.get().ok());
    c->AbandonForTest();
  }
  SsdReplay replay;
  auto c = Open(killed, disk, WriteBack(), &replay);
  CHECK(replay.blocks == 1);
  std::vector<std::byte> got(kBs);
  REQUIRE(disk.Read(8 * kBs, got).ok());
  CHECK(got == second);
}

TEST_CASE("SSD cache, write-back: destaged copies are not replayed over a later partial write or trim") {
  MemBackend mem("cache");
  MemDisk disk(1 << 20);
  const auto old = RandomBytes(8, 2 * kBs), patch = RandomBytes(9, 100);
  std::vector<std::byte> expect = old;
  std::memcpy(expect.data() + 10, patch.data(), patch.size());
  std::fill(expect.begin() + kBs, expect.end(), std::byte{0});
  {
    auto c = Open(mem, disk, WriteBack());
    REQUIRE(c->Write(0, old, false).ok());
    REQUIRE(c->Write(10, patch, false).ok());  // partial: destages everything, then goes to the disk
    REQUIRE(c->Trim(kBs, kBs, false).ok());
    REQUIRE(c->Flush().ok());
    CHECK(ReadBack(*c, 0, 2 * kBs) == expect);
    c->AbandonForTest();
  }
  mem.DropUnsynced();
  SsdReplay replay;
  auto c = Open(mem, disk, WriteBack(), &replay);
  CHECK(replay.blocks == 0);
  CHECK(ReadBack(*c, 0, 2 * kBs) == expect);
}

TEST_CASE("SSD cache, write-back: a torn newest copy in the log gives way to the older flushed one") {
  MemBackend mem("cache");
  FaultyBackend dir(mem);
  MemDisk disk(1 << 20);
  const auto v1 = RandomBytes(10, kBs), v2 = RandomBytes(11, kBs);
  {
    auto c = Open(dir, disk, WriteBack());
    REQUIRE(c->Write(0, v1, true).ok());  // slot 0
    REQUIRE(c->Write(0, v2, true).ok());  // slot 1
    c->AbandonForTest();
  }
  // Slot 1's data is the third block of segment 0 (after the header block and slot 0).
  dir.FlipBitOnRead(std::to_string(kVol) + "/log", 2 * kBs + 77, 3);
  SsdReplay replay;
  auto c = Open(dir, disk, WriteBack(), &replay);
  CHECK(replay.blocks == 1);
  CHECK(replay.skipped == 1);
  CHECK(ReadBack(*c, 0, kBs) == v1);
}

TEST_CASE("SSD cache, write-back: a malformed checkpoint stops recovery and names the file and line") {
  MemBackend mem("cache");
  MemDisk disk(1 << 20);
  {
    auto c = Open(mem, disk, WriteBack());
    REQUIRE(c->Write(0, RandomBytes(12, kBs), true).ok());
    c->AbandonForTest();
  }
  REQUIRE(WriteFileAtomic(mem, std::to_string(kVol) + "/checkpoint", "# x\nseq twelve\n").ok());
  auto r = SsdCacheLayer::Recover(mem, kVol, kBs, disk);
  REQUIRE(!r.ok());
  CHECK(r.status().ToString().find("7/checkpoint line 2") != std::string::npos);
  CHECK(disk.writes() == 0);
}

TEST_CASE("SSD cache: random operations read back exactly what a plain vector holds, across crashes") {
  constexpr uint64_t kSize = 256 * kBs;
  for (bool write_back : {false, true}) {
    CAPTURE(write_back);
    MemBackend mem("cache");
    MemDisk disk(kSize);
    std::vector<std::byte> model(kSize);
    SsdCacheOptions o = write_back ? WriteBack(/*delay_ms=*/5) : SsdCacheOptions{};
    o.log_size = 3 * (kSpp + 1) * kBs;  // smaller than the device: the log wraps many times
    o.dirty_max = 40 * kBs;
    std::mt19937_64 rng(write_back ? 99 : 98);
    auto c = Open(mem, disk, o);
    for (int step = 0; step < 3000; ++step) {
      const int op = static_cast<int>(rng() % 100);
      const bool aligned = rng() % 4 != 0;
      uint64_t off = rng() % kSize, len = 1 + rng() % (16 * kBs);
      if (aligned) {
        off -= off % kBs;
        len = kBs * (1 + len / kBs);
      }
      len = std::min(len, kSize - off);
      if (op < 40) {
        const auto d = RandomBytes(rng(), len);
        REQUIRE(c->Write(off, d, rng() % 10 == 0).ok());
        std::memcpy(model.data() + off, d.data(), len);
      } else if (op < 80) {
        CHECK(ReadBack(*c, off, len) == std::vector<std::byte>(model.begin() + off, model.begin() + off + len));
      } else if (op < 85) {
        REQUIRE(c->Trim(off, len, false).ok());
        std::fill(model.begin() + off, model.begin() + off + len, std::byte{0});
      } else if (op < 90) {
        REQUIRE(c->WriteZeroes(off, len, rng() % 2 == 0, false).ok());
        std::fill(model.begin() + off, model.begin() + off + len, std::byte{0});
      } else if (op < 99) {
        REQUIRE(c->Flush().ok());
      } else {
        // A crash right after a FLUSH: what the disk and the log hold must give back the model.
        REQUIRE(c->Flush().ok());
        c->AbandonForTest();
        c.reset();
        mem.DropUnsynced();
        c = Open(mem, disk, o);
      }
    }
    CHECK(ReadBack(*c, 0, kSize) == model);
    // A range just read comes from the log (or memory) the second time: every block a hit.
    CHECK(ReadBack(*c, 40 * kBs, 64 * kBs) == std::vector<std::byte>(model.begin() + 40 * kBs, model.begin() + 104 * kBs));
    const uint64_t hits = c->counters().hits.load();
    CHECK(ReadBack(*c, 40 * kBs, 64 * kBs) == std::vector<std::byte>(model.begin() + 40 * kBs, model.begin() + 104 * kBs));
    CHECK_MESSAGE(c->counters().hits.load() == hits + 64, c->Summary());
    REQUIRE(c->Drain().ok());
    std::vector<std::byte> on_disk(kSize);
    REQUIRE(disk.Read(0, on_disk).ok());
    CHECK(on_disk == model);
    CHECK(c->healthy());
  }
}

TEST_CASE("SSD cache: concurrent overlapping reads and writes leave no stale block behind") {
  constexpr uint64_t kBlocks = 8;
  for (bool write_back : {false, true}) {
    CAPTURE(write_back);
    MemBackend mem("cache");
    MemDisk disk(kBlocks * kBs);
    SsdCacheOptions o = write_back ? WriteBack(/*delay_ms=*/1) : SsdCacheOptions{};
    o.log_size = 2 * (kSpp + 1) * kBs;
    auto c = Open(mem, disk, o);
    std::atomic<uint64_t> seed{1000};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(t);
        std::vector<std::byte> buf(2 * kBs);
        for (int i = 0; i < 2000; ++i) {
          const uint64_t b = rng() % (kBlocks - 1);
          if (t % 2 == 0) {
            const auto d = RandomBytes(seed++, 2 * kBs);
            REQUIRE(c->Write(b * kBs, d, false).ok());
          } else {
            REQUIRE(c->Read(b * kBs, buf).ok());
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    // Quiet now: the cache must agree with the disk once everything reached it.
    REQUIRE(c->Drain().ok());
    std::vector<std::byte> on_disk(kBlocks * kBs);
    REQUIRE(disk.Read(0, on_disk).ok());
    CHECK(ReadBack(*c, 0, on_disk.size()) == on_disk);
    for (uint64_t b = 0; b < kBlocks; ++b) {
      CHECK(ReadBack(*c, b * kBs, kBs) == std::vector<std::byte>(on_disk.begin() + b * kBs, on_disk.begin() + (b + 1) * kBs));
    }
  }
}

TEST_CASE("SSD cache: a read's fill does not put back data that a TRIM replaced while it read") {
  MemBackend dir("cache");
  MemDisk disk(1 << 20);
  const auto d = RandomBytes(20, kBs);
  REQUIRE(disk.Write(0, d, false).ok());
  auto below = std::make_unique<Borrowed>(disk);
  Borrowed* gate = below.get();
  SsdCacheOptions o;
  o.log_size = 8 * (kSpp + 1) * kBs;
  SsdCacheLayer c(std::move(below), dir, kVol, kBs, o, SsdReplay{});
  std::promise<void> read_done, go;
  std::atomic<bool> armed{true};
  gate->after_read = [&] {
    if (!armed.exchange(false)) return;
    read_done.set_value();
    go.get_future().wait();
  };
  std::vector<std::byte> got(kBs);
  std::thread reader([&] { REQUIRE(c.Read(0, got).ok()); });
  read_done.get_future().wait();  // the read has the old data and has not filled the log yet
  REQUIRE(c.Trim(0, kBs, false).ok());
  go.set_value();
  reader.join();
  CHECK(got == d);
  CHECK(ReadBack(c, 0, kBs) == std::vector<std::byte>(kBs));
}

TEST_CASE("SSD cache: a failing log turns the cache off without a client error") {
  MemBackend mem("cache");
  FaultyBackend dir(mem);
  MemDisk disk(1 << 20);
  auto c = Open(dir, disk, WriteBack());
  const auto a = RandomBytes(13, 4 * kBs), b = RandomBytes(14, 4 * kBs);
  REQUIRE(c->Write(0, a, false).ok());
  dir.FailMatching("/log", FaultyBackend::kWrite | FaultyBackend::kRead | FaultyBackend::kSync);
  CHECK(c->Write(8 * kBs, b, false).ok());  // the log fails: destaged, then written to the disk
  CHECK_FALSE(c->healthy());
  std::vector<std::byte> got(4 * kBs);
  REQUIRE(disk.Read(0, got).ok());
  CHECK(got == a);
  REQUIRE(disk.Read(8 * kBs, got).ok());
  CHECK(got == b);
  CHECK(ReadBack(*c, 0, got.size()) == a);
  CHECK(c->Flush().ok());
  CHECK(c->Summary().find("off (failed or removed)") != std::string::npos);
}

TEST_CASE("SSD cache: its directory removed while running: writes and reads go on against the parts") {
  TempDir tmp("qbd-ssd");
  auto dir = NewLocalDirBackend(tmp.path());
  REQUIRE(dir.ok());
  MemDisk disk(1 << 20);
  auto c = Open(**dir, disk, WriteBack());
  const auto a = RandomBytes(15, 8 * kBs);
  REQUIRE(c->Write(0, a, false).ok());
  std::filesystem::remove_all(tmp.path() + "/" + std::to_string(kVol));
  for (int i = 0; i < 100 && c->healthy(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK_FALSE(c->healthy());
  const auto b = RandomBytes(16, 8 * kBs);
  REQUIRE(c->Write(8 * kBs, b, true).ok());
  REQUIRE(c->Flush().ok());
  std::vector<std::byte> got(8 * kBs);
  REQUIRE(disk.Read(0, got).ok());
  CHECK(got == a);
  REQUIRE(disk.Read(8 * kBs, got).ok());
  CHECK(got == b);
  CHECK(ReadBack(*c, 0, 16 * kBs) == [&] {
    std::vector<std::byte> v = a;
    v.insert(v.end(), b.begin(), b.end());
    return v;
  }());
}

}  // namespace
}  // namespace qbd::test
