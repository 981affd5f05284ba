// Tests of src/engine/replicated_maps.h: dirty bits reach the copies on the other parts before a
// durable MarkDirty returns, and chunk map bits reach every part's copy at PersistChunkMap.
#include "engine/replicated_maps.h"

#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/part_health.h"
#include "qbd/log.h"
#include "testutil/mem_backend.h"

namespace qbd::test {
namespace {

constexpr uint32_t kVol = 4;
constexpr uint32_t kRegion = 64 * 1024;
constexpr uint64_t kRegions = 64;
constexpr uint64_t kChunk = 1 << 20;
constexpr uint64_t kChunks = 4;

struct Fixture {
  Fixture() {
    const Geometry g{kChunks * kChunk, 4096, kChunk};
    for (int i = 0; i < 3; ++i) {
      mem.push_back(std::make_unique<MemBackend>(std::string(1, 'a' + i)));
      REQUIRE(mem[i]->MkDirs(std::to_string(kVol)).ok());
      stores.push_back(std::make_unique<PartStore>(*mem[i], kVol, static_cast<char>('a' + i), g));
    }
    for (int h = 0; h < 3; ++h) {
      for (int p = 0; p < 3; ++p) {
        if (p != h) {
          REQUIRE(WriteFileAtomic(*mem[h], DirtyMap::PathFor(kVol, static_cast<char>('a' + p)),
                                  DirtyMap(kRegion, kRegions).Encode())
                      .ok());
        }
      }
    }
    health = std::make_unique<PartHealth>("vol", kVol, std::vector<char>{'a', 'b', 'c'},
                                          std::vector<StorageBackend*>{mem[0].get(), mem[1].get(), mem[2].get()});
    maps = std::make_unique<ReplicatedMaps>("vol", kVol,
                                            std::vector<PartStore*>{stores[0].get(), stores[1].get(), stores[2].get()},
                                            *health, kRegion, kRegions, std::vector<std::unique_ptr<DirtyMap>>{},
                                            kChunk, kChunks, nullptr, [this] { ++marked; });
  }
  // Part p's dirty map as stored on holder h.
  std::unique_ptr<DirtyMap> Stored(int h, int p) {
    auto text = ReadSmallFile(*mem[h], DirtyMap::PathFor(kVol, static_cast<char>('a' + p)));
    REQUIRE(text.ok());
    auto m = DirtyMap::Decode(std::as_bytes(std::span<const char>(*text)), kRegion, kRegions, "dirty");
    REQUIRE(m.ok());
    return std::move(m).value();
  }
  std::vector<std::unique_ptr<MemBackend>> mem;
  std::vector<std::unique_ptr<PartStore>> stores;
  std::unique_ptr<PartHealth> health;
  std::unique_ptr<ReplicatedMaps> maps;
  int marked = 0;
};

TEST_SUITE("replicated_maps") {
TEST_CASE("a durable MarkDirty writes the bits to the other parts' copies") {
  Fixture f;
  REQUIRE(f.maps->MarkDirty(1, 3, 5, /*durable=*/true, "test").ok());
  CHECK(f.marked == 1);
  CHECK(f.maps->dirty(1).CountSet() == 3);
  for (int h : {0, 2}) {
    auto m = f.Stored(h, 1);
    CHECK(m->Test(3));
    CHECK(m->Test(5));
    CHECK_FALSE(m->Test(6));
  }
  SUBCASE("and ClearDirty clears them there too") {
    f.maps->ClearDirty(1, 4);
    CHECK_FALSE(f.maps->dirty(1).Test(4));
    CHECK_FALSE(f.Stored(0, 1)->Test(4));
    CHECK(f.Stored(0, 1)->Test(3));
  }
}

TEST_CASE("a durable MarkDirty fails with Unavailable when no other part is reachable") {
  Fixture f;
  const LogLevel saved = GetLogLevel();
  SetLogLevel(LogLevel::kError);
  f.health->MarkDown(0, Status::IOError("gone"));
  f.health->MarkDown(2, Status::IOError("gone"));
  SetLogLevel(saved);
  CHECK(f.maps->MarkDirty(1, 0, 0, /*durable=*/true, "test").IsUnavailable());
  CHECK(f.maps->dirty(1).Test(0));  // in memory all the same: reads avoid the region
}

TEST_CASE("chunk map bits reach every part's copy at PersistChunkMap, not before") {
  Fixture f;
  REQUIRE(f.maps->RecordChunkWritten(2, /*durable=*/false).ok());
  CHECK(f.maps->ChunkWritten(2));
  CHECK(f.maps->ChunkMapPending());
  CHECK(f.mem[0]->Stat(DirtyMap::ChunkMapPath(kVol)).status().IsNotFound());
  REQUIRE(f.maps->PersistChunkMap().ok());
  CHECK_FALSE(f.maps->ChunkMapPending());
  for (auto& m : f.mem) {
    auto text = ReadSmallFile(*m, DirtyMap::ChunkMapPath(kVol));
    REQUIRE(text.ok());
    auto map = DirtyMap::Decode(std::as_bytes(std::span<const char>(*text)), kChunk, kChunks, "chunkmap",
                                kChunkMapMagic);
    REQUIRE(map.ok());
    CHECK((*map)->Test(2));
    CHECK_FALSE((*map)->Test(1));
  }
}
}  // TEST_SUITE("replicated_maps")

}  // namespace
}  // namespace qbd::test
