// Torn writes (layout-spec.md §4.5): a block's data and its slot pair are separate writes, so a
// crash can fall between any two storage operations of a write, a trim or a flush. These tests
// crash at every such step and check that each block then reads as its old or its new contents,
// never as an error, on one part (PartStore) and through the engine on single-part and replicated
// volumes. Two crash models:
//  - the process dies (SIGKILL): the operation at step k and every later one never reach storage,
//    what reached it stays (FaultyBackend failing everything from step k on);
//  - the power fails: the same, then every file reverts to its last sync
//  (MemBackend::DropUnsynced).
#include <doctest/doctest.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "qbd/part_store.h"
#include "qbd/volume.h"
#include "testutil/backend_envs.h"
#include "testutil/mem_backend.h"
#include "testutil/tagged_blocks.h"

namespace qbd::test {
namespace {

constexpr uint32_t kBs = 4096;
constexpr uint32_t kVol = 9;

Geometry Geo() {
  Geometry g;
  g.size = 4ull << 20;
  g.block_size = kBs;
  g.chunk_size = 1 << 20;
  return g;
}

// Counts the operations of one or more FaultyBackends and, from the `kill_at`th on, fails all of
// them: the process stopped there.
class Killer {
 public:
  explicit Killer(std::vector<FaultyBackend*> backends) : backends_(std::move(backends)) {
    for (FaultyBackend* b : backends_) {
      b->SetHook([this](FaultyBackend::Op, std::string_view) {
        if (++ops_ == kill_at_) {
          for (FaultyBackend* x : backends_) x->FailMatching("");
        }
      });
    }
  }
  ~Killer() {
    for (FaultyBackend* b : backends_) b->SetHook({});
  }
  void Arm(uint64_t kill_at) {
    ops_ = 0;
    kill_at_ = kill_at;
  }
  bool Fired() const { return kill_at_ != 0 && ops_ >= kill_at_; }
  void Disarm() {
    kill_at_ = 0;
    for (FaultyBackend* b : backends_) b->ClearFaults();
  }

 private:
  std::vector<FaultyBackend*> backends_;
  std::atomic<uint64_t> ops_{0};
  std::atomic<uint64_t> kill_at_{0};
};

enum class Crash { kProcess, kPower };

// For each of the first `n` blocks of `got`, the index of the version in `versions` whose same
// block it equals, or -1 when it equals none.
std::vector<int> MatchVersions(std::span<const std::byte> got,
                               const std::vector<std::vector<std::byte>>& versions, uint64_t n) {
  std::vector<int> which(n, -1);
  for (uint64_t b = 0; b < n; ++b) {
    for (size_t v = 0; v < versions.size() && which[b] < 0; ++v) {
      if (std::equal(got.begin() + b * kBs, got.begin() + (b + 1) * kBs,
                     versions[v].begin() + b * kBs)) {
        which[b] = static_cast<int>(v);
      }
    }
  }
  return which;
}

// One part: blocks 0..7 of chunk 0 hold version A (generation 1, settled). Then `change` runs
// (a write of B to blocks 2..5 and a flush, or a trim and a flush) and the process crashes at step
// `kill_at`. After a restart (a new PartStore), every block must read back as A or as what the
// change made it, and a later write must work and read back.
struct OnePart {
  // `remote`: a backend that says it is remote, as NFS does (PartStore then keeps each chunk's
  // slot pairs in memory for its writes).
  explicit OnePart(bool remote)
      : owned(remote ? std::make_unique<RemoteMemBackend>("m") : std::make_unique<MemBackend>("m")),
        mem(*owned),
        faulty(mem) {
    Init();
  }
  std::unique_ptr<MemBackend> owned;
  MemBackend& mem;
  FaultyBackend faulty;
  std::vector<std::byte> a = TaggedBlocks(1, 8, kBs);
  std::vector<std::byte> b = TaggedBlocks(2, 8, kBs);

  void Init() {
    PartStore s(faulty, kVol, 'a', Geo());
    bool created = false;
    REQUIRE(s.Write(0, 0, a, TaggedMetas(a, 1ull << 40 | 1, kBs), false, &created).ok());
    REQUIRE(s.Flush().ok());
  }
};

}  // namespace

TEST_SUITE("torn_write") {
TEST_CASE(
    "a write, trim or flush crashed at any step leaves each block its old or its new contents on "
    "one part") {
  QuietLog quiet(LogLevel::kOff);  // the crashed runs log every failed operation
  for (bool remote : {false, true})
    for (Crash crash : {Crash::kProcess, Crash::kPower}) {
      for (int kind = 0; kind < 3; ++kind) {  // 0: write, 1: trim, 2: two writes, the second torn
        bool completed = false;
        for (uint64_t k = 1; !completed && k < 200; ++k) {
          CAPTURE(remote);
          CAPTURE(static_cast<int>(crash));
          CAPTURE(kind);
          CAPTURE(k);
          OnePart p(remote);
          std::vector<std::byte> zeros(8 * kBs);
          std::vector<std::byte> c = TaggedBlocks(3, 8, kBs);
          {
            Killer killer({&p.faulty});
            PartStore s(p.faulty, kVol, 'a', Geo());
            bool created = false;
            if (kind == 2) {
              // A first write of B completes unflushed (its pairs stay pending), then C is torn.
              REQUIRE(s.Write(0, 2, std::span(p.b).subspan(2 * kBs, 4 * kBs),
                              TaggedMetas(std::span(p.b).subspan(2 * kBs, 4 * kBs), 2ull << 40 | 1,
                                          kBs),
                              false, &created)
                          .ok());
            }
            killer.Arm(k);
            if (kind == 1) {
              s.Unwrite(0, 2, 4, false, &created).IgnoreError();  // fails once killed
            } else {
              const auto& data = kind == 0 ? p.b : c;
              s.Write(0, 2, std::span(data).subspan(2 * kBs, 4 * kBs),
                      TaggedMetas(std::span(data).subspan(2 * kBs, 4 * kBs), 2ull << 40 | 2, kBs),
                      false, &created)
                  .IgnoreError();
            }
            s.Flush().IgnoreError();
            completed = !killer.Fired();
            killer.Disarm();
            // The store is dropped as a dead process's would be: its last syncs fail... or, when
            // the crash came after everything, succeed.
            p.faulty.FailMatching("");
          }
          p.faulty.ClearFaults();
          if (crash == Crash::kPower) REQUIRE(p.faulty.DropUnsynced().ok());
          PartStore after(p.mem, kVol, 'a', Geo());
          std::vector<std::byte> got(8 * kBs);
          std::vector<BlockMeta> metas(8);
          std::vector<uint64_t> bad;
          Status r = after.Read(0, 0, got, metas, &bad);
          CHECK_MESSAGE(r.ok(), r.ToString());
          CHECK(bad.empty());
          std::vector<std::vector<std::byte>> versions = {p.a, kind == 1   ? zeros
                                                               : kind == 0 ? p.b
                                                                           : c};
          if (kind == 2) versions.push_back(p.b);
          std::vector<int> which = MatchVersions(got, versions, 8);
          for (uint64_t blk = 0; blk < 8; ++blk) {
            CAPTURE(blk);
            if (blk < 2 || blk >= 6) {
              CHECK(which[blk] == 0);  // untouched
            } else {
              CHECK(which[blk] >= 0);  // old or new, never neither
            }
          }
          if (completed && crash == Crash::kProcess) {
            for (uint64_t blk = 2; blk < 6; ++blk) CHECK(which[blk] == 1);  // all of it landed
          }
          // The part keeps working: a new write over the torn blocks, a crash-free flush, reads
          // back.
          std::vector<std::byte> d = TaggedBlocks(4, 8, kBs);
          bool created = false;
          REQUIRE(after.Write(0, 0, d, TaggedMetas(d, 3ull << 40 | 1, kBs), false, &created).ok());
          REQUIRE(after.Flush().ok());
          REQUIRE(after.Read(0, 0, got, metas, nullptr).ok());
          CHECK(got == d);
          // Every pair is settled after the flush: slot 1 empty.
          auto raw = p.mem.Contents(ChunkPath(kVol, 'a', 0));
          REQUIRE(raw.ok());
          for (uint64_t blk = 0; blk < 8; ++blk) {
            CHECK(SlotEmpty(raw->data() + Geo().MetaOffset(blk) + kSlotSize));
          }
        }
        CHECK(completed);  // the loop reached a step past the end of the sequence
      }
    }
}

TEST_CASE(
    "a write crashed at any step reads as the old or the new contents through single-part and "
    "replicated volumes") {
  QuietLog quiet(LogLevel::kOff);  // the crashed runs log every failed operation
  for (uint32_t replicas : {1u, 3u}) {
    for (Crash crash : {Crash::kProcess, Crash::kPower}) {
      bool completed = false;
      for (uint64_t k = 1; !completed && k < 400; ++k) {
        CAPTURE(replicas);
        CAPTURE(static_cast<int>(crash));
        CAPTURE(k);
        VolumeMeta meta;
        meta.name = "torn";
        meta.number = kVol;
        meta.geometry = Geo();
        meta.replicas = replicas;
        std::vector<std::unique_ptr<MemBackend>> mem;
        std::vector<std::unique_ptr<FaultyBackend>> faulty;
        std::vector<StorageBackend*> backends, bases;
        std::vector<FaultyBackend*> fs;
        for (uint32_t i = 0; i < replicas; ++i) {
          mem.push_back(std::make_unique<MemBackend>(std::string(1, static_cast<char>('a' + i))));
          faulty.push_back(std::make_unique<FaultyBackend>(*mem.back()));
          backends.push_back(faulty.back().get());
          bases.push_back(mem.back().get());
          fs.push_back(faulty.back().get());
        }
        VolumeOpenOptions o;
        o.start_resync_thread = false;
        std::vector<std::byte> a = TaggedBlocks(1, 6, kBs), b = TaggedBlocks(2, 6, kBs);
        const uint64_t off = (1 << 20) - 2 * kBs;  // across the first chunk boundary
        {
          auto v = Volume::Open(meta, backends, o);
          REQUIRE(v.ok());
          REQUIRE((*v)->handler()->Write(off, a, false).ok());
          REQUIRE((*v)->handler()->Flush().ok());
          Killer killer(fs);
          killer.Arm(k);
          (*v)->handler()
              ->Write(off + kBs, std::span(b).subspan(kBs, 4 * kBs), false)
              .IgnoreError();
          (*v)->handler()->Flush().IgnoreError();
          completed = !killer.Fired();
          killer.Disarm();
          for (FaultyBackend* f : fs) f->FailMatching("");  // dead: its close reaches nothing
          (*v)->Close().IgnoreError();
        }
        for (size_t i = 0; i < faulty.size(); ++i) {
          faulty[i]->ClearFaults();
          if (crash == Crash::kPower) REQUIRE(faulty[i]->DropUnsynced().ok());
        }
        auto v = Volume::Open(meta, bases, o);
        REQUIRE(v.ok());
        std::vector<std::byte> got(6 * kBs);
        Status r = (*v)->handler()->Read(off, got);
        CHECK_MESSAGE(r.ok(), r.ToString());
        std::vector<std::byte> newer = a;
        std::copy(b.begin() + kBs, b.begin() + 5 * kBs, newer.begin() + kBs);
        std::vector<int> which = MatchVersions(got, {a, newer}, 6);
        CHECK(which[0] == 0);
        CHECK(which[5] == 0);
        for (int blk = 1; blk < 5; ++blk) {
          CAPTURE(blk);
          CHECK(which[blk] >= 0);
          if (completed && crash == Crash::kProcess) CHECK(which[blk] == 1);
        }
        // A second read agrees with the first (no copy flips between reads).
        std::vector<std::byte> again(6 * kBs);
        REQUIRE((*v)->handler()->Read(off, again).ok());
        CHECK(again == got);
        CHECK((*v)->Close().ok());
      }
      CHECK(completed);
    }
  }
}
}  // TEST_SUITE("torn_write")

}  // namespace qbd::test
