// Tests of src/engine/chunk_presence.h: which parts lack a chunk's file, and the known bits.
#include "engine/chunk_presence.h"

#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "testutil/mem_backend.h"

namespace qbd::test {
namespace {

constexpr uint32_t kVol = 9;
constexpr uint32_t kBs = 4096;
constexpr uint64_t kChunk = 64 << 10;

struct Fixture {
  Fixture() {
    for (int i = 0; i < 3; ++i) {
      mem.push_back(std::make_unique<MemBackend>(std::string(1, 'a' + i)));
      REQUIRE(mem[i]->MkDirs(std::to_string(kVol)).ok());
      stores.push_back(std::make_unique<PartStore>(*mem[i], kVol, static_cast<char>('a' + i),
                                                   Geometry{4 * kChunk, kBs, kChunk}));
    }
    presence = std::make_unique<ChunkPresence>(
        std::vector<PartStore*>{stores[0].get(), stores[1].get(), stores[2].get()}, 4);
  }
  void WriteBlock(int p, uint64_t chunk) {
    std::vector<std::byte> data(kBs, std::byte{7});
    BlockMeta m{(1ull << 40) + 1, BlockChecksum(data)};
    bool created = false;
    REQUIRE(stores[p]->Write(chunk, 0, data, std::span(&m, 1), /*sync=*/true, &created).ok());
  }
  std::vector<std::unique_ptr<MemBackend>> mem;
  std::vector<std::unique_ptr<PartStore>> stores;
  std::unique_ptr<ChunkPresence> presence;
};

TEST_SUITE("chunk_presence") {
TEST_CASE("a chunk with no file anywhere is new, not lost") {
  Fixture f;
  CHECK(f.presence->LostOn(1, {0, 1, 2}).empty());
  CHECK_FALSE(f.presence->AnyFile(1, {0, 1, 2}));
  CHECK(f.presence->Incomplete(1, {0, 2}) == std::vector<int>{0, 2});
}

TEST_CASE("a part lacking a file the others hold has lost it") {
  Fixture f;
  f.WriteBlock(0, 2);
  f.WriteBlock(1, 2);
  CHECK(f.presence->LostOn(2, {0, 1, 2}) == std::vector<size_t>{2});
  CHECK(f.presence->LostOn(2, {2}).empty());  // no part in `live` holds it
  CHECK(f.presence->AnyFile(2, {2, 1}));
  CHECK(f.presence->Incomplete(2, {0, 1, 2}) == std::vector<int>{2});
}

TEST_CASE("known bits are kept when the volume grows, and chunks past the end are never known") {
  Fixture f;
  f.presence->SetKnown(3);
  f.presence->SetKnown(9);
  CHECK(f.presence->Known(3));
  CHECK_FALSE(f.presence->Known(9));
  f.presence->Grow(16);
  CHECK(f.presence->Known(3));
  CHECK_FALSE(f.presence->Known(9));
  f.presence->SetKnown(9);
  CHECK(f.presence->Known(9));
  CHECK(&f.presence->CreateLock(1) == &f.presence->CreateLock(65));
}
}  // TEST_SUITE("chunk_presence")

}  // namespace
}  // namespace qbd::test
