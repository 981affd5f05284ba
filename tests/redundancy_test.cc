// Tests of src/engine/redundancy.h: Replicate's read plan (reachable and clean parts, least loaded
// first) and its judge (JudgeCopies, scrub.h). Three parts of volume 6 on MemBackends; a 1 MiB
// volume of 64 KiB chunks, 4 KiB blocks and 64 KiB dirty regions.
#include "engine/redundancy.h"

#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/part_health.h"
#include "engine/replicated_maps.h"
#include "qbd/log.h"
#include "qbd/part_store.h"
#include "testutil/mem_backend.h"
#include "testutil/tagged_blocks.h"

namespace qbd::test {
namespace {

constexpr uint32_t kVol = 6;
constexpr uint32_t kBs = 4096;
constexpr uint64_t kChunk = 64 << 10;
constexpr uint64_t kN = kChunk / kBs;
constexpr uint64_t kChunks = 16;
constexpr uint64_t kGen1 = (1ull << 40) + 1;
constexpr uint64_t kGen2 = (1ull << 40) + 2;

Geometry Geo() { return Geometry{kChunks * kChunk, kBs, kChunk}; }

std::vector<std::byte> Blocks(uint64_t tag, uint64_t n) { return TaggedBlocks(tag, n, kBs); }

std::vector<BlockMeta> MetasFor(std::span<const std::byte> data, uint64_t gen) { return TaggedMetas(data, gen, kBs); }

struct Fixture {
  Fixture() {
    for (int i = 0; i < 3; ++i) {
      mem.push_back(std::make_unique<MemBackend>(std::string(1, 'a' + i)));
      REQUIRE(mem[i]->MkDirs(std::to_string(kVol)).ok());
      stores.push_back(
          std::make_unique<PartStore>(*mem[i], kVol, static_cast<char>('a' + i), Geo()));
    }
    health = std::make_unique<PartHealth>(
        "vol", kVol, std::vector<char>{'a', 'b', 'c'},
        std::vector<StorageBackend*>{mem[0].get(), mem[1].get(), mem[2].get()});
    maps = std::make_unique<ReplicatedMaps>(
        "vol", kVol, std::vector<PartStore*>{stores[0].get(), stores[1].get(), stores[2].get()},
        *health, static_cast<uint32_t>(kChunk), kChunks, std::vector<std::unique_ptr<DirtyMap>>{},
        kChunk, kChunks, nullptr, [] {});
    redundancy = std::make_unique<Replicate>(*health, *maps);
  }
  void Write(int p, uint64_t chunk, uint64_t tag, uint64_t gen) {
    std::vector<std::byte> data = Blocks(tag, kN);
    bool created = false;
    REQUIRE(stores[p]->Write(chunk, 0, data, MetasFor(data, gen), /*sync=*/true, &created).ok());
  }
  std::vector<PartCopy> Copies(uint64_t chunk) {
    std::vector<PartCopy> copies;
    for (int p = 0; p < 3; ++p) {
      copies.push_back(ReadCopy(*mem[p], kVol, static_cast<char>('a' + p), Geo(), chunk, 0, kN));
      copies.back().dirty.assign(kN, maps->dirty(p).Test(chunk));
    }
    return copies;
  }
  std::vector<std::unique_ptr<MemBackend>> mem;
  std::vector<std::unique_ptr<PartStore>> stores;
  std::unique_ptr<PartHealth> health;
  std::unique_ptr<ReplicatedMaps> maps;
  std::unique_ptr<Redundancy> redundancy;
};

TEST_SUITE("redundancy") {
TEST_CASE("replicate places every chunk on every part") {
  Fixture f;
  CHECK(f.redundancy->PartsHolding(0) == 0b111);
  CHECK(f.redundancy->PartsHolding(kChunks - 1) == 0b111);
  CHECK(std::string(f.redundancy->Name()) == "replicate");
}

TEST_CASE("replicate plans a read over the reachable clean parts, least loaded first") {
  Fixture f;
  CHECK(f.redundancy->PlanRead(0, 3, -1) == std::vector<int>{0, 1, 2});
  SUBCASE("without the excluded part") {
    CHECK(f.redundancy->PlanRead(0, 3, 1) == std::vector<int>{0, 2});
  }
  SUBCASE("without a part that is down") {
    f.health->MarkDown(0, Status::IOError("test"));
    CHECK(f.redundancy->PlanRead(0, 3, -1) == std::vector<int>{1, 2});
  }
  SUBCASE("without a part dirty in the range, which still serves other regions") {
    REQUIRE(f.maps->MarkDirty(1, 2, 2, /*durable=*/false, "test").ok());
    CHECK(f.redundancy->PlanRead(0, 3, -1) == std::vector<int>{0, 2});
    CHECK(f.redundancy->PlanRead(3, 5, -1) == std::vector<int>{0, 1, 2});
  }
  SUBCASE("with the busy part last") {
    f.health->BeginIo(0);
    CHECK(f.redundancy->PlanRead(0, 3, -1) == std::vector<int>{1, 2, 0});
    f.health->EndIo(0);
  }
  SUBCASE("empty when no part is clean there") {
    for (size_t p = 0; p < 3; ++p)
      REQUIRE(f.maps->MarkDirty(p, 1, 1, /*durable=*/false, "test").ok());
    CHECK(f.redundancy->PlanRead(0, 3, -1).empty());
  }
}

TEST_CASE(
    "replicate judges copies as JudgeCopies does: a stale copy is named, the newest is the "
    "source") {
  Fixture f;
  for (int p = 0; p < 3; ++p) f.Write(p, 2, /*tag=*/1, kGen1);
  f.Write(0, 2, /*tag=*/2, kGen2);
  f.Write(1, 2, /*tag=*/2, kGen2);
  const std::vector<PartCopy> copies = f.Copies(2);
  const SliceVerdict v = f.redundancy->Judge(copies, /*chunk_written=*/true, kGen2);
  const SliceVerdict direct = JudgeCopies(copies, /*chunk_written=*/true, kGen2);
  CHECK(v.source == direct.source);
  CHECK(v.lost == direct.lost);
  CHECK(v.issue == direct.issue);
  for (uint64_t b = 0; b < kN; ++b) {
    CAPTURE(b);
    CHECK((v.source[b] == 0 || v.source[b] == 1));
    CHECK(v.issue[2][b] == BlockIssue::kStale);
    CHECK(v.issue[0][b] == BlockIssue::kNone);
  }
  SUBCASE("and a generation never issued is suspect, never the source") {
    const SliceVerdict s = f.redundancy->Judge(copies, /*chunk_written=*/true, kGen1);
    for (uint64_t b = 0; b < kN; ++b) CHECK(s.source[b] == 2);
  }
}
}  // TEST_SUITE("redundancy")

}  // namespace
}  // namespace qbd::test
