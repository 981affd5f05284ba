// Tests of src/engine/repair_worker.h on its own, over the engine's pieces built by hand (no
// QuorumSet): the first-access comparison rewrites a stale copy and leaves a lost block as it is,
// judged reads of a chunk not compared yet, and resync copying a dirty region back. Three parts
// of volume 8 on MemBackends; a 1 MiB volume of 64 KiB chunks, 4 KiB blocks, 64 KiB regions.
#include "engine/repair_worker.h"

#include <doctest/doctest.h>

#include <atomic>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "engine/part_health.h"
#include "engine/redundancy.h"
#include "engine/replicated_maps.h"
#include "engine/sequencer.h"
#include "qbd/log.h"
#include "qbd/part_store.h"
#include "qbd/scrub.h"
#include "testutil/mem_backend.h"
#include "testutil/tagged_blocks.h"

namespace qbd::test {
namespace {

constexpr uint32_t kVol = 8;
constexpr uint32_t kBs = 4096;
constexpr uint64_t kChunk = 64 << 10;
constexpr uint64_t kN = kChunk / kBs;
constexpr uint64_t kChunks = 16;
constexpr int kParts = 3;

Geometry Geo() { return Geometry{kChunks * kChunk, kBs, kChunk}; }
char Letter(int p) { return static_cast<char>('a' + p); }

std::vector<std::byte> Blocks(uint64_t tag, uint64_t n) { return TaggedBlocks(tag, n, kBs); }

std::vector<BlockMeta> MetasFor(std::span<const std::byte> data, uint64_t gen) { return TaggedMetas(data, gen, kBs); }


// The engine's pieces, by hand. Chunks are written straight through the PartStores; Start()
// builds the worker once the chunk map holds what the test wrote (as at an open).
struct Fixture {
  Fixture() {
    options.volume = "vol";
    options.volnr = kVol;
    options.geometry = Geo();
    options.geometry.size = 0;  // the size is `size`
    options.region_size = static_cast<uint32_t>(kChunk);
    for (int i = 0; i < kParts; ++i) {
      mem.push_back(std::make_unique<MemBackend>(std::string(1, Letter(i))));
      REQUIRE(mem[i]->MkDirs(std::to_string(kVol)).ok());
      stores.push_back(std::make_unique<PartStore>(*mem[i], kVol, Letter(i), Geo()));
    }
    for (int h = 0; h < kParts; ++h) {
      for (int p = 0; p < kParts; ++p) {
        if (p != h) {
          REQUIRE(WriteFileAtomic(*mem[h], DirtyMap::PathFor(kVol, Letter(p)),
                                  DirtyMap(kChunk, kChunks).Encode())
                      .ok());
        }
      }
    }
    health = std::make_unique<PartHealth>(
        "vol", kVol, std::vector<char>{'a', 'b', 'c'},
        std::vector<StorageBackend*>{mem[0].get(), mem[1].get(), mem[2].get()});
    maps = std::make_unique<ReplicatedMaps>(
        "vol", kVol, Stores(), *health, static_cast<uint32_t>(kChunk), kChunks,
        std::vector<std::unique_ptr<DirtyMap>>{}, kChunk, kChunks, nullptr, [] {});
    redundancy = std::make_unique<Replicate>(*health, *maps);
  }
  std::vector<PartStore*> Stores() { return {stores[0].get(), stores[1].get(), stores[2].get()}; }
  // Writes all of `chunk` on the parts of `parts` (bit p) with a new generation; returns it.
  uint64_t Write(uint32_t parts, uint64_t chunk, uint64_t tag) {
    const uint64_t gen = seq.NextGeneration();
    std::vector<std::byte> data = Blocks(tag, kN);
    for (int p = 0; p < kParts; ++p) {
      if (!(parts & (1u << p))) continue;
      bool created = false;
      REQUIRE(stores[p]->Write(chunk, 0, data, MetasFor(data, gen), /*sync=*/true, &created).ok());
    }
    REQUIRE(maps->RecordChunkWritten(chunk, /*durable=*/true).ok());
    return gen;
  }
  void Start() {
    worker = std::make_unique<RepairWorker>(RepairWorker::Pieces{
        .options = options,
        .region_size = static_cast<uint32_t>(kChunk),
        .size = size,
        .resize_mu = resize_mu,
        .seq = seq,
        .health = *health,
        .maps = *maps,
        .stores = Stores(),
        .redundancy = *redundancy,
        .request_pool = pool,
        .counters = counters,
        .metrics = *metrics,
        .read_blocks =
            [this](const std::vector<int>& order, uint64_t chunk, uint64_t first,
                   std::span<std::byte> data, std::span<BlockMeta> metas) {
              std::vector<uint64_t> bad;
              return stores[order.front()]->Read(chunk, first, data, metas, &bad);
            },
    });
  }
  PartCopy Copy(int p, uint64_t chunk) {
    return ReadCopy(*mem[p], kVol, Letter(p), Geo(), chunk, 0, kN);
  }
  uint64_t Compare(uint64_t chunk) {
    std::shared_lock<std::shared_mutex> l(resize_mu);  // CompareChunk's REQUIRES
    return worker->CompareChunk(chunk);
  }

  QuorumOptions options;
  std::atomic<uint64_t> size{kChunks * kChunk};
  std::shared_mutex resize_mu;
  Sequencer seq{"vol", 1};
  std::vector<std::unique_ptr<MemBackend>> mem;
  std::vector<std::unique_ptr<PartStore>> stores;
  std::unique_ptr<PartHealth> health;
  std::unique_ptr<ReplicatedMaps> maps;
  std::unique_ptr<Redundancy> redundancy;
  ThreadPool pool{kParts};
  QuorumCounters counters;
  std::shared_ptr<VolumeMetrics> metrics = VolumeMetrics::Standalone("v", kParts);
  std::unique_ptr<RepairWorker> worker;
};

TEST_SUITE("repair_worker") {
TEST_CASE("CompareChunk rewrites a stale copy from the newest good copy, once") {
  QuietLog quiet;
  Fixture f;
  f.Write(0b111, 2, /*tag=*/1);
  const uint64_t gen2 =
      f.Write(0b011, 2, /*tag=*/2);  // part c missed it (no dirty bit: lost writes)
  f.Start();
  REQUIRE(f.worker->ChunksToReconcile() == 1);
  REQUIRE_FALSE(f.worker->Compared(2));
  CHECK(f.worker->Compared(3));  // never written: nothing to compare

  SUBCASE("a read before the comparison is judged: the stale copy is never served") {
    std::vector<std::byte> data(kN * kBs);
    std::vector<BlockMeta> metas(kN);
    REQUIRE(f.worker->ReadJudged(2, 0, data, metas).ok());
    CHECK(data == Blocks(2, kN));
    CHECK(metas[0].generation == gen2);
  }

  CHECK(f.Compare(2) == kParts * kN * Geo().RecordSize());
  const PartCopy c = f.Copy(2, 2);
  REQUIRE(c.state == CopyState::kPresent);
  for (uint64_t b = 0; b < kN; ++b) CHECK(c.metas[b].generation == gen2);
  CHECK(c.records == f.Copy(0, 2).records);
  CHECK(f.worker->Compared(2));
  CHECK(f.worker->ChunksToReconcile() == 0);
  CHECK(f.Compare(2) == 0);  // compared already: nothing read
}

TEST_CASE(
    "CompareChunk leaves a block with no good copy as it is on every part, and reads of it fail") {
  QuietLog quiet;
  Fixture f;
  f.Write(0b111, 5, /*tag=*/3);
  for (int p = 0; p < kParts; ++p) {
    REQUIRE(FlipByte(*f.mem[p], ChunkPath(kVol, Letter(p), 5), Geo().DataOffset(3) + 10).ok());
  }
  std::vector<std::vector<std::byte>> before;
  auto file = [&f](int p) {
    auto r = ReadWholeFile(*f.mem[p], ChunkPath(kVol, Letter(p), 5));
    REQUIRE(r.ok());
    return std::move(r).value();
  };
  for (int p = 0; p < kParts; ++p) before.push_back(file(p));
  f.Start();

  std::vector<std::byte> one(kBs);
  BlockMeta meta;
  CHECK(f.worker->ReadJudged(5, 3, one, std::span(&meta, 1)).IsCorruption());
  CHECK(f.worker->ReadJudged(5, 2, one, std::span(&meta, 1)).ok());

  f.Compare(5);
  for (int p = 0; p < kParts; ++p) {
    CAPTURE(p);
    CHECK(file(p) == before[p]);
  }
  auto report = f.worker->RepairChunk(5, RepairOptions{});
  REQUIRE(report.ok());
  CHECK(report->lost == std::vector<uint64_t>{3});
  CHECK(report->actions.empty());
  CHECK(f.worker->ReadJudged(5, 3, one, std::span(&meta, 1)).IsCorruption());
}

TEST_CASE("ResyncOnce copies a part's dirty region from a clean part and clears it") {
  QuietLog quiet;
  Fixture f;
  f.Write(0b111, 1, /*tag=*/4);
  const uint64_t gen = f.Write(0b011, 1, /*tag=*/5);
  REQUIRE(f.maps->MarkDirty(2, 1, 1, /*durable=*/true, "test").ok());  // part c missed the write
  f.options.compare_on_first_access = false;
  f.Start();
  CHECK(f.worker->ResyncOnce() == 1);
  CHECK(f.maps->dirty(2).CountSet() == 0);
  CHECK(f.counters.resynced_regions.load() == 1);
  const PartCopy c = f.Copy(2, 1);
  REQUIRE(c.state == CopyState::kPresent);
  CHECK(c.metas[0].generation == gen);
  CHECK(c.records == f.Copy(0, 1).records);
}
}  // TEST_SUITE("repair_worker")

}  // namespace
}  // namespace qbd::test
