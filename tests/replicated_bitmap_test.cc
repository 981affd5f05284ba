// Tests of include/qbd/replicated_bitmap.h: the copies of a chunk map and of a dirty map on three
// MemBackends, merged, one damaged each way (garbage, cut short, empty, missing), and a bad
// majority.
#include "qbd/replicated_bitmap.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "testutil/mem_backend.h"

namespace qbd::test {
namespace {

constexpr uint32_t kVol = 7;
constexpr uint64_t kChunk = 1 << 20;
constexpr uint64_t kChunks = 100;  // 13 bytes of bitmap

struct Three {
  MemBackend a{"a"}, b{"b"}, c{"c"};
  std::vector<StorageBackend*> all() { return {&a, &b, &c}; }
};

void PutMap(StorageBackend& b, const std::string& path, std::initializer_list<uint64_t> bits,
            uint64_t count = kChunks, uint32_t unit = kChunk, const char* magic = kChunkMapMagic) {
  DirtyMap m(unit, count);
  for (uint64_t bit : bits) m.Set(bit, bit);
  REQUIRE(b.MkDirs(std::to_string(kVol)).ok());
  REQUIRE(WriteFileAtomic(b, path, m.Encode(magic)).ok());
}

ReplicatedBitmap Chunks(Three& t) {
  return ReplicatedBitmap::LoadChunkMap(t.all(), kVol, kChunk, kChunks);
}

}  // namespace

TEST_SUITE("replicated_bitmap") {
TEST_CASE("LoadChunkMap merges the good copies: a bit set on any copy counts") {
  Three t;
  const std::string path = DirtyMap::ChunkMapPath(kVol);
  PutMap(t.a, path, {1, 5});
  PutMap(t.b, path, {5, 99});
  PutMap(t.c, path, {1, 5, 99});
  ReplicatedBitmap m = Chunks(t);
  CHECK(m.verdict().ok());
  CHECK(m.merged().CountSet() == 3);
  CHECK(m.Lacking(0) == 1);
  CHECK(m.Lacking(1) == 1);
  CHECK(m.Lacking(2) == 0);
  CHECK(m.Damaged(0));
  CHECK_FALSE(m.Damaged(2));
}

TEST_CASE(
    "LoadChunkMap uses the good copies and names the bad one when one copy of three is damaged") {
  Three t;
  const std::string path = DirtyMap::ChunkMapPath(kVol);
  for (StorageBackend* b : t.all()) PutMap(*b, path, {2, 3});
  MetaCopyState want = MetaCopyState::kMalformed;
  std::string words;
  auto bytes = ReadSmallFile(t.b, path);
  REQUIRE(bytes.ok());
  SUBCASE("garbage") {
    REQUIRE(WriteFileAtomic(t.b, path, "garbage that is long enough to hold a header\n").ok());
    words = "bad magic";
  }
  SUBCASE("zeroed") {
    REQUIRE(WriteFileAtomic(t.b, path, std::string(bytes->size(), '\0')).ok());
    words = "bad magic";
  }
  SUBCASE("cut short in the header") {
    REQUIRE(WriteFileAtomic(t.b, path, bytes->substr(0, 20)).ok());
    words = "cut short";
  }
  SUBCASE("cut short in the bitmap") {
    REQUIRE(WriteFileAtomic(t.b, path, bytes->substr(0, kDirtyHeaderSize + 5)).ok());
    words = "cut short";
  }
  SUBCASE("empty") {
    REQUIRE(WriteFileAtomic(t.b, path, "").ok());
    words = "empty";
  }
  SUBCASE("missing") {
    REQUIRE(t.b.Remove(path).ok());
    want = MetaCopyState::kMissing;
  }
  ReplicatedBitmap m = Chunks(t);
  CHECK(m.verdict().ok());
  CHECK(m.merged().CountSet() == 2);
  const FileCopy& bad = m.copies()[1];
  CHECK(bad.state == want);
  CAPTURE(bad.reason);
  if (want == MetaCopyState::kMalformed) {
    CHECK(bad.reason.rfind("mem:b/" + path, 0) == 0);
    CHECK(bad.reason.find(words) != std::string::npos);
  }
  CHECK(m.Damaged(1));
  CHECK(m.NeedsRewrite(1));
  CHECK_FALSE(m.NeedsRewrite(0));
  REQUIRE(m.Rewrite(1).ok());
  auto now = ReadSmallFile(t.b, path);
  REQUIRE(now.ok());
  CHECK(*now == *bytes);
}

TEST_CASE("LoadChunkMap refuses naming the file when two copies of three are malformed") {
  Three t;
  const std::string path = DirtyMap::ChunkMapPath(kVol);
  PutMap(t.a, path, {1});
  REQUIRE(t.b.MkDirs("7").ok());
  REQUIRE(t.c.MkDirs("7").ok());
  REQUIRE(WriteFileAtomic(t.b, path, std::string(40, '\0')).ok());
  REQUIRE(WriteFileAtomic(t.c, path, "x").ok());
  ReplicatedBitmap m = Chunks(t);
  REQUIRE_FALSE(m.verdict().ok());
  CHECK(m.verdict().IsCorruption());
  CHECK(m.verdict().message().rfind("mem:b/" + path + ": ", 0) == 0);
  SUBCASE("and all three: no good copy") {
    REQUIRE(WriteFileAtomic(t.a, path, "").ok());
    CHECK_FALSE(Chunks(t).verdict().ok());
  }
}

TEST_CASE("LoadDirtyMap reads a part's map on the other parts and survives one bad copy of two") {
  Three t;
  const uint32_t rs = 65536;
  const uint64_t regions = 160;
  const std::string path = DirtyMap::PathFor(kVol, 'a');
  PutMap(t.a, path, {9}, regions, rs, kDirtyMagic);  // not a holder of its own map: ignored
  PutMap(t.b, path, {3}, regions, rs, kDirtyMagic);
  PutMap(t.c, path, {3, 4}, regions, rs, kDirtyMagic);
  ReplicatedBitmap m = ReplicatedBitmap::LoadDirtyMap(t.all(), kVol, 'a', rs, regions);
  CHECK(m.verdict().ok());
  CHECK(m.copies()[0].state == MetaCopyState::kAbsent);
  CHECK(m.merged().CountSet() == 2);
  CHECK_FALSE(m.merged().Test(9));
  SUBCASE("one of the two copies garbage: the other is used (a minority of the three parts)") {
    REQUIRE(WriteFileAtomic(t.b, path, "QBDDIRTY garbage").ok());
    ReplicatedBitmap one = ReplicatedBitmap::LoadDirtyMap(t.all(), kVol, 'a', rs, regions);
    CHECK(one.verdict().ok());
    CHECK(one.copies()[1].state == MetaCopyState::kMalformed);
    CHECK(one.merged().CountSet() == 2);
  }
  SUBCASE("both copies garbage: refused") {
    REQUIRE(WriteFileAtomic(t.b, path, "garbage").ok());
    REQUIRE(WriteFileAtomic(t.c, path, "").ok());
    ReplicatedBitmap none = ReplicatedBitmap::LoadDirtyMap(t.all(), kVol, 'a', rs, regions);
    CHECK_FALSE(none.verdict().ok());
    CHECK(none.verdict().message().find("mem:b/" + path) != std::string::npos);
  }
  SUBCASE("a copy out of reach is not read") {
    ReplicatedBitmap down = ReplicatedBitmap::LoadDirtyMap(
        t.all(), kVol, 'a', rs, regions, {Status::OK(), Status::IOError("down"), Status::OK()});
    CHECK(down.copies()[1].state == MetaCopyState::kUnreachable);
    CHECK_FALSE(down.NeedsRewrite(1));
    CHECK(down.merged().CountSet() == 2);
  }
}
}  // TEST_SUITE("replicated_bitmap")

}  // namespace qbd::test
