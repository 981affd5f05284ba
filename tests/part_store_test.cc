// Tests of include/qbd/part_store.h: one part's chunk files, record layout and checksums
// (layout-spec.md §4), over MemBackend and over a real LocalDirBackend in a temporary directory.
#include "qbd/part_store.h"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "qbd/backend.h"
#include "qbd/chunk_format.h"
#include "testutil/backend_envs.h"
#include "testutil/mem_backend.h"
#include "testutil/temp_dir.h"

namespace qbd::test {
namespace {

constexpr uint32_t kVol = 7;
constexpr uint32_t kBs = 4096;

Geometry Geo() { return Geometry{4ull << 20, kBs, 1ull << 20}; }  // 4 chunks of 256 blocks
// Asks ChunkFile::Detached() at every call, so that a file removed behind the store is noticed
// at once.
constexpr std::chrono::milliseconds kRecheckEveryCall{0};

// Blocks whose every byte depends on `tag` and the position, so that no two blocks match.
std::vector<std::byte> Blocks(uint64_t tag, uint64_t n) {
  std::vector<std::byte> out(n * kBs);
  for (size_t i = 0; i < out.size(); ++i) out[i] = std::byte((tag * 131 + i * 7 + i / kBs) % 253);
  return out;
}

std::vector<BlockMeta> MetasFor(std::span<const std::byte> data, uint64_t gen) {
  std::vector<BlockMeta> metas(data.size() / kBs);
  for (size_t i = 0; i < metas.size(); ++i) {
    metas[i] = BlockMeta{gen, BlockChecksum(data.subspan(i * kBs, kBs))};
  }
  return metas;
}

bool AllZero(std::span<const std::byte> b) {
  return std::all_of(b.begin(), b.end(), [](std::byte x) { return x == std::byte{0}; });
}

void PutLE64(std::byte* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = std::byte((v >> (8 * i)) & 0xff);
}

using SlotBytes = std::array<std::byte, kSlotSize>;

// A format-2 slot of volume kVol as layout-spec.md §4.2 defines it, computed here rather than
// through EncodeSlot: the generation (u64 LE), then the content checksum XOR the address key,
// the XXH3-64 (BlockChecksum) of volnr, chunk, block and generation as u64 LE.
SlotBytes Slot(uint64_t chunk, uint64_t block, uint64_t gen, uint64_t checksum) {
  std::byte key[32];
  PutLE64(key, kVol);
  PutLE64(key + 8, chunk);
  PutLE64(key + 16, block);
  PutLE64(key + 24, gen);
  SlotBytes out{};
  PutLE64(out.data(), gen);
  PutLE64(out.data() + 8, checksum ^ BlockChecksum(key));
  return out;
}
// The slot of data `block_data` written under `gen` at `block` of `chunk`.
SlotBytes SlotOf(uint64_t chunk, uint64_t block, uint64_t gen, std::span<const std::byte> block_data) {
  return Slot(chunk, block, gen, BlockChecksum(block_data));
}
// The "zeros" slot: generation 0, the check of an all-zero block.
SlotBytes ZerosSlot(uint64_t chunk, uint64_t block) {
  return Slot(chunk, block, 0, BlockChecksum(std::vector<std::byte>(kBs)));
}
constexpr SlotBytes kEmptySlot{};

// Slot 0 or 1 of block `block`'s pair in the raw bytes of a chunk file.
SlotBytes StoredSlot(std::span<const std::byte> raw, uint64_t block, int slot) {
  SlotBytes out{};
  std::memcpy(out.data(), raw.data() + Geo().MetaOffset(block) + slot * kSlotSize, kSlotSize);
  return out;
}
std::span<const std::byte> StoredData(std::span<const std::byte> raw, uint64_t block) {
  return raw.subspan(Geo().DataOffset(block), kBs);
}

// A machine crash under a store on `faulty` (over `mem`): from this moment the old process
// changes nothing (its writes and syncs fail: it is gone, even when the test destroys it later),
// and `mem` keeps only what was durable.
void Crash(FaultyBackend& faulty, MemBackend& mem) {
  faulty.FailMatching("", FaultyBackend::kMutatingOps);
  mem.DropUnsynced();
}


// Writes blocks [first, first + n) of `chunk` with Blocks(tag, n) under generation `gen`.
std::vector<std::byte> WriteTagged(PartStore& store, uint64_t chunk, uint64_t first, uint64_t n,
                                   uint64_t tag, uint64_t gen, bool sync = false) {
  std::vector<std::byte> data = Blocks(tag, n);
  std::vector<BlockMeta> metas = MetasFor(data, gen);
  bool created = false;
  Status s = store.Write(chunk, first, data, metas, sync, &created);
  REQUIRE(s.ok());
  return data;
}

}  // namespace

TEST_SUITE("part_store") {
TEST_CASE_TEMPLATE("Read returns the blocks and metas that Write stored", E, MemEnv, RemoteMemEnv, LocalEnv) {
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo());
  std::vector<std::byte> data = Blocks(1, 3);
  std::vector<BlockMeta> metas = MetasFor(data, 42);
  bool created = false;
  REQUIRE(store.Write(2, 5, data, metas, /*sync=*/false, &created).ok());
  CHECK(created);

  std::vector<std::byte> got(3 * kBs);
  std::vector<BlockMeta> got_metas(3);
  std::vector<uint64_t> bad;
  REQUIRE(store.Read(2, 5, got, got_metas, &bad).ok());
  CHECK(got == data);
  CHECK(got_metas == metas);
  CHECK(bad.empty());

  SUBCASE("and a second write to the chunk does not create it again") {
    created = false;
    REQUIRE(
        store.Write(2, 0, std::span(data).first(kBs), std::span(metas).first(1), false, &created)
            .ok());
    CHECK_FALSE(created);
  }
}

TEST_CASE_TEMPLATE(
    "Write stores block i's data at i * block_size and its slot pair at chunk_size + i * 32, "
    "pending until a sync settles it",
    E, MemEnv, RemoteMemEnv, LocalEnv) {
  E env;
  const Geometry g = Geo();
  PartStore store(env.backend(), kVol, 'b', g);
  // Chunk 2 (the file 7/b/3), blocks 3 and 4: the slots are bound to that address.
  const uint64_t g1 = 0x0102030405ull;
  std::vector<std::byte> data = WriteTagged(store, 2, 3, 2, /*tag=*/9, g1);
  auto block = [&](const std::vector<std::byte>& d, uint64_t i) { return std::span(d).subspan(i * kBs, kBs); };
  auto raw_file = [&] {
    auto raw = ReadWholeFile(env.backend(), "7/b/3");
    REQUIRE(raw.ok());
    REQUIRE(raw->size() == g.ChunkFileSize());
    REQUIRE(raw->size() == (1ull << 20) + 256 * 32);
    return std::move(raw).value();
  };
  auto read_back = [&](uint64_t first, std::span<const std::byte> want, uint64_t gen) {
    std::vector<std::byte> got(want.size());
    std::vector<BlockMeta> metas(want.size() / kBs);
    REQUIRE(store.Read(2, first, got, metas, nullptr).ok());
    CHECK(std::equal(got.begin(), got.end(), want.begin(), want.end()));
    for (size_t i = 0; i < metas.size(); ++i) CHECK(metas[i] == BlockMeta{gen, BlockChecksum(want.subspan(i * kBs, kBs))});
  };

  std::vector<std::byte> raw = raw_file();
  for (uint64_t i = 0; i < 2; ++i) {
    CAPTURE(i);
    CHECK(g.DataOffset(3 + i) == (3 + i) * kBs);
    CHECK(g.MetaOffset(3 + i) == (1ull << 20) + (3 + i) * 32);
    CHECK(std::ranges::equal(StoredData(raw, 3 + i), block(data, i)));
    // Before a sync the pair is pending: the new slot, then the block's previous one (the zeros
    // slot of a block never written).
    CHECK(StoredSlot(raw, 3 + i, 0) == SlotOf(2, 3 + i, g1, block(data, i)));
    CHECK(StoredSlot(raw, 3 + i, 1) == ZerosSlot(2, 3 + i));
    CHECK(raw[g.MetaOffset(3 + i)] == std::byte{0x05});  // generation, little-endian
    CHECK(raw[g.MetaOffset(3 + i) + 4] == std::byte{0x01});
  }
  // Nothing else is written: the data around the blocks, the pairs around theirs.
  CHECK(AllZero(std::span(raw).first(g.DataOffset(3))));
  CHECK(AllZero(std::span(raw).subspan(g.DataOffset(5), g.chunk_size - g.DataOffset(5))));
  CHECK(AllZero(std::span(raw).subspan(g.chunk_size, g.MetaOffset(3) - g.chunk_size)));
  CHECK(AllZero(std::span(raw).subspan(g.MetaOffset(5))));
  read_back(3, data, g1);

  // A sync settles the pairs: the new slot, then an empty one.
  REQUIRE(store.Flush().ok());
  raw = raw_file();
  for (uint64_t i = 0; i < 2; ++i) {
    CAPTURE(i);
    CHECK(StoredSlot(raw, 3 + i, 0) == SlotOf(2, 3 + i, g1, block(data, i)));
    CHECK(StoredSlot(raw, 3 + i, 1) == kEmptySlot);
    CHECK(std::ranges::equal(StoredData(raw, 3 + i), block(data, i)));
  }
  CHECK(AllZero(std::span(raw).subspan(g.MetaOffset(5))));
  read_back(3, data, g1);

  // An overwrite of block 3: its pair holds the new slot beside the old one until the next sync.
  const uint64_t g2 = g1 + 1;
  std::vector<std::byte> data2 = WriteTagged(store, 2, 3, 1, /*tag=*/10, g2);
  raw = raw_file();
  CHECK(std::ranges::equal(StoredData(raw, 3), block(data2, 0)));
  CHECK(StoredSlot(raw, 3, 0) == SlotOf(2, 3, g2, block(data2, 0)));
  CHECK(StoredSlot(raw, 3, 1) == SlotOf(2, 3, g1, block(data, 0)));
  CHECK(StoredSlot(raw, 4, 0) == SlotOf(2, 4, g1, block(data, 1)));  // block 4 untouched
  CHECK(StoredSlot(raw, 4, 1) == kEmptySlot);
  read_back(3, data2, g2);

  bool by_flush = true;
  SUBCASE("settled by a Flush") { by_flush = true; }
  SUBCASE("settled by a later write with sync to the same file") { by_flush = false; }
  CAPTURE(by_flush);
  if (by_flush) {
    REQUIRE(store.Flush().ok());
  } else {
    std::vector<std::byte> data3 = WriteTagged(store, 2, 200, 1, /*tag=*/11, g2 + 1, /*sync=*/true);
    raw = raw_file();
    CHECK(StoredSlot(raw, 200, 0) == SlotOf(2, 200, g2 + 1, block(data3, 0)));
    CHECK(StoredSlot(raw, 200, 1) == kEmptySlot);
  }
  raw = raw_file();
  CHECK(StoredSlot(raw, 3, 0) == SlotOf(2, 3, g2, block(data2, 0)));
  CHECK(StoredSlot(raw, 3, 1) == kEmptySlot);
  read_back(3, data2, g2);

  // Unwrite stores the zeros slot beside the current one, then (after a sync) an empty pair.
  REQUIRE(store.Unwrite(2, 3, 1, /*sync=*/false, nullptr).ok());
  raw = raw_file();
  CHECK(AllZero(StoredData(raw, 3)));
  CHECK(StoredSlot(raw, 3, 0) == ZerosSlot(2, 3));
  CHECK(StoredSlot(raw, 3, 1) == SlotOf(2, 3, g2, block(data2, 0)));
  REQUIRE(store.Flush().ok());
  raw = raw_file();
  CHECK(AllZero(StoredData(raw, 3)));
  CHECK(StoredSlot(raw, 3, 0) == kEmptySlot);
  CHECK(StoredSlot(raw, 3, 1) == kEmptySlot);
  CHECK(StoredSlot(raw, 4, 0) == SlotOf(2, 4, g1, block(data, 1)));
  std::vector<std::byte> got(kBs);
  BlockMeta m{1, 1};
  REQUIRE(store.Read(2, 3, got, std::span(&m, 1), nullptr).ok());
  CHECK(AllZero(got));
  CHECK(m.IsUnwritten());
}

TEST_CASE("a write torn by a crash reads as its previous or its new version, never as corrupt") {
  MemBackend mem;
  FaultyBackend faulty(mem);
  const Geometry g = Geo();
  std::vector<std::byte> v1, v2, want;
  uint64_t want_gen = 0;
  {
    PartStore store(faulty, kVol, 'a', g);
    v1 = WriteTagged(store, 0, 4, 1, /*tag=*/1, /*gen=*/1);
    REQUIRE(store.Flush().ok());
    v2 = WriteTagged(store, 0, 4, 1, /*tag=*/2, /*gen=*/2);  // pending: {slot 2, slot 1}
    auto f = mem.Open("7/a/1");
    REQUIRE(f.ok());
    SUBCASE("the new slot reached the disk, the data did not") {
      REQUIRE((*f)->WriteAt(g.DataOffset(4), v1).ok());
      want = v1;
      want_gen = 1;
    }
    SUBCASE("the data reached the disk, the pair was not settled") {
      want = v2;
      want_gen = 2;
    }
    REQUIRE((*f)->Sync().ok());
    Crash(faulty, mem);
  }
  auto raw = mem.Contents("7/a/1");
  REQUIRE(raw.ok());
  REQUIRE(StoredSlot(*raw, 4, 0) == SlotOf(0, 4, 2, v2));
  REQUIRE(StoredSlot(*raw, 4, 1) == SlotOf(0, 4, 1, v1));
  PartStore store(mem, kVol, 'a', g);
  std::vector<std::byte> got(kBs);
  BlockMeta m;
  REQUIRE(store.Read(0, 4, got, std::span(&m, 1), nullptr).ok());
  CHECK(got == want);
  CHECK(m == BlockMeta{want_gen, BlockChecksum(want)});
  // The next write keeps, beside its new slot, the one the data on disk matches.
  std::vector<std::byte> v3 = WriteTagged(store, 0, 4, 1, /*tag=*/3, /*gen=*/3);
  raw = mem.Contents("7/a/1");
  REQUIRE(raw.ok());
  CHECK(StoredSlot(*raw, 4, 0) == SlotOf(0, 4, 3, v3));
  CHECK(StoredSlot(*raw, 4, 1) == SlotOf(0, 4, want_gen, want));
  REQUIRE(store.Flush().ok());
  raw = mem.Contents("7/a/1");
  REQUIRE(raw.ok());
  CHECK(StoredSlot(*raw, 4, 0) == SlotOf(0, 4, 3, v3));
  CHECK(StoredSlot(*raw, 4, 1) == kEmptySlot);
  REQUIRE(store.Read(0, 4, got, std::span(&m, 1), nullptr).ok());
  CHECK(got == v3);
  CHECK(m.generation == 3);
}

TEST_CASE_TEMPLATE("Write publishes a chunk file at full size and leaves no temporary file", E,
                   MemEnv, RemoteMemEnv, LocalEnv) {
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo());
  WriteTagged(store, 3, 0, 1, 1, 1);
  auto info = env.backend().Stat("7/a/4");
  REQUIRE(info.ok());
  CHECK(info->size == Geo().ChunkFileSize());
  auto names = env.backend().List("7/a");
  REQUIRE(names.ok());
  CHECK(*names == std::vector<std::string>{"4"});
}

TEST_CASE_TEMPLATE("Read returns NotFound when the chunk file is absent", E, MemEnv, RemoteMemEnv, LocalEnv) {
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo());
  std::vector<std::byte> got(kBs);
  std::vector<BlockMeta> metas(1);
  CHECK(store.Read(0, 0, got, metas, nullptr).IsNotFound());
  auto state = store.CheckChunk(0);
  REQUIRE(state.ok());
  CHECK(*state == PartStore::ChunkState::kAbsent);
}

TEST_CASE_TEMPLATE("Read returns zeros and all-zero metas when blocks were never written", E,
                   MemEnv, RemoteMemEnv, LocalEnv) {
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo());
  WriteTagged(store, 1, 0, 1, 1, 1);
  std::vector<std::byte> got(4 * kBs, std::byte{0xEE});
  std::vector<BlockMeta> metas(4, BlockMeta{9, 9});
  REQUIRE(store.Read(1, 252, got, metas, nullptr).ok());
  CHECK(AllZero(got));
  for (const BlockMeta& m : metas) CHECK(m.IsUnwritten());
}

TEST_CASE_TEMPLATE("Read returns Corruption listing exactly the damaged block when a byte flipped",
                   E, MemEnv, RemoteMemEnv, LocalEnv) {
  const Geometry g = Geo();
  const struct {
    std::string where;
    uint64_t offset;
  } flips[] = {
      {"data of block 5", g.DataOffset(5) + 100},
      {"first byte of block 5", g.DataOffset(5)},
      {"last byte of block 5", g.DataOffset(5) + kBs - 1},
      {"check of block 5", g.MetaOffset(5) + 12},
      {"generation of block 5", g.MetaOffset(5) + 2},
  };
  for (const auto& flip : flips) {
    CAPTURE(flip.where);
    E env;
    PartStore store(env.backend(), kVol, 'a', Geo());
    std::vector<std::byte> data = WriteTagged(store, 0, 0, 8, 3, 17);
    REQUIRE(store.Flush().ok());
    REQUIRE(FlipByte(env.backend(), "7/a/1", flip.offset, std::byte{0x40}).ok());

    std::vector<std::byte> got(8 * kBs);
    std::vector<BlockMeta> metas(8);
    std::vector<uint64_t> bad;
    if (std::is_same_v<E, RemoteMemEnv> && flip.offset >= g.MetaOffset(0)) {
      // A remote part checks the data against the pairs it stored (kept in memory): a damaged
      // pair beside intact data is left to verify, and the read delivers the right data.
      REQUIRE(store.Read(0, 0, got, metas, &bad).ok());
      CHECK(got == data);
      CHECK(bad.empty());
      // A new store (a restart) reads the stored pairs once and sees the damage.
      PartStore fresh(env.backend(), kVol, 'a', Geo());
      CHECK(fresh.Read(0, 0, got, metas, &bad).IsCorruption());
      CHECK(bad == std::vector<uint64_t>{5});
      continue;
    }
    CHECK(store.Read(0, 0, got, metas, &bad).IsCorruption());
    CHECK(bad == std::vector<uint64_t>{5});
    // The other blocks are valid and delivered.
    CHECK(std::memcmp(got.data(), data.data(), 5 * kBs) == 0);
    CHECK(std::memcmp(got.data() + 6 * kBs, data.data() + 6 * kBs, 2 * kBs) == 0);

    // `bad` holds block-in-chunk indices when the read starts later.
    bad.clear();
    CHECK(store.Read(0, 4, std::span(got).first(3 * kBs), std::span(metas).first(3), &bad)
              .IsCorruption());
    CHECK(bad == std::vector<uint64_t>{5});
    // A read that avoids the block is OK.
    CHECK(store.Read(0, 6, std::span(got).first(2 * kBs), std::span(metas).first(2), nullptr).ok());
  }
}

TEST_CASE_TEMPLATE("Read returns Corruption with an empty bad list when the chunk file is short", E,
                   MemEnv, RemoteMemEnv, LocalEnv) {
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo());
  WriteTagged(store, 0, 0, 4, 1, 1);
  REQUIRE(store.Flush().ok());
  {
    auto f = env.backend().Open("7/a/1");
    REQUIRE(f.ok());
    // The cut is in the metadata area, in block 2's slot pair: the data area is whole.
    REQUIRE((*f)->Truncate(Geo().MetaOffset(2) + 10).ok());
  }
  std::vector<std::byte> got(4 * kBs);
  std::vector<BlockMeta> metas(4);
  std::vector<uint64_t> bad;
  if (std::is_same_v<E, RemoteMemEnv>) {
    // A remote part's reads take the pairs from memory (what this store wrote): the cut is seen
    // by the next store that opens the file (a restart), or by verify.
    CHECK(store.Read(0, 0, got, metas, &bad).ok());
    PartStore fresh(env.backend(), kVol, 'a', Geo());
    CHECK(fresh.Read(0, 0, got, metas, &bad).IsCorruption());
    CHECK(bad.empty());
    return;
  }
  CHECK(store.Read(0, 0, got, metas, &bad).IsCorruption());
  CHECK(bad.empty());
  SUBCASE("while the blocks whose slot pairs lie before the cut still read") {
    CHECK(store.Read(0, 0, std::span(got).first(2 * kBs), std::span(metas).first(2), &bad).ok());
  }
}

TEST_CASE_TEMPLATE("Unwrite makes blocks read as zeros with all-zero metas", E, MemEnv, RemoteMemEnv, LocalEnv) {
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo());
  std::vector<std::byte> data = WriteTagged(store, 0, 0, 10, 5, 3);
  bool sync = false;
  SUBCASE("without sync") { sync = false; }
  SUBCASE("with sync") { sync = true; }
  REQUIRE(store.Unwrite(0, 2, 3, sync, nullptr).ok());

  std::vector<std::byte> got(10 * kBs);
  std::vector<BlockMeta> metas(10);
  REQUIRE(store.Read(0, 0, got, metas, nullptr).ok());
  for (uint64_t i = 0; i < 10; ++i) {
    CAPTURE(i);
    std::span<const std::byte> block = std::span(got).subspan(i * kBs, kBs);
    if (i >= 2 && i < 5) {
      CHECK(AllZero(block));
      CHECK(metas[i].IsUnwritten());
    } else {
      CHECK(std::memcmp(block.data(), data.data() + i * kBs, kBs) == 0);
      CHECK(metas[i].generation == 3);
    }
  }
  REQUIRE(store.Flush().ok());
  auto raw = ReadWholeFile(env.backend(), "7/a/1");
  REQUIRE(raw.ok());
  // Their data and their slot pairs are zero (never written); their neighbours' are not.
  const Geometry g = Geo();
  CHECK(AllZero(std::span(*raw).subspan(g.DataOffset(2), 3 * kBs)));
  CHECK(AllZero(std::span(*raw).subspan(g.MetaOffset(2), 3 * kSlotPairSize)));
  CHECK_FALSE(AllZero(std::span(*raw).subspan(g.MetaOffset(1), kSlotPairSize)));
  CHECK_FALSE(AllZero(std::span(*raw).subspan(g.MetaOffset(5), kSlotPairSize)));
  CHECK(raw->size() == Geo().ChunkFileSize());  // punching keeps the size
}

TEST_CASE("Unwrite writes zeros when the backend cannot punch holes") {
  MemBackend mem;
  mem.SetPunchHoleSupported(false);
  PartStore store(mem, kVol, 'a', Geo());
  WriteTagged(store, 0, 0, 256, 5, 3);  // the whole chunk
  REQUIRE(store.Unwrite(0, 0, 256, /*sync=*/true, nullptr).ok());
  auto raw = mem.Contents("7/a/1");
  REQUIRE(raw.ok());
  CHECK(raw->size() == Geo().ChunkFileSize());
  CHECK(AllZero(*raw));
}

TEST_CASE_TEMPLATE("Unwrite returns OK and creates nothing when the chunk file is absent", E,
                   MemEnv, RemoteMemEnv, LocalEnv) {
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo());
  CHECK(store.Unwrite(1, 0, 8, true, nullptr).ok());
  CHECK(env.backend().Stat("7/a/2").status().IsNotFound());
}

TEST_CASE_TEMPLATE("Read and Write return InvalidArgument when blocks run past the chunk", E,
                   MemEnv, RemoteMemEnv, LocalEnv) {
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo());
  std::vector<std::byte> data = Blocks(1, 2);
  std::vector<BlockMeta> metas = MetasFor(data, 1);
  CHECK(store.Write(0, 255, data, metas, false, nullptr).IsInvalidArgument());
  CHECK(
      store.Write(0, 0, std::span(data).first(kBs + 1), metas, false, nullptr).IsInvalidArgument());
  CHECK(store.Read(0, 255, data, metas, nullptr).IsInvalidArgument());
  CHECK(store.Unwrite(0, 250, 7, false, nullptr).IsInvalidArgument());
  CHECK(env.backend().Stat("7/a/1").status().IsNotFound());  // nothing was created
}

TEST_CASE("Flush makes written blocks survive a crash while unflushed ones revert") {
  MemBackend mem;
  FaultyBackend faulty(mem);
  std::vector<std::byte> v1, v2, other;
  {
    PartStore store(faulty, kVol, 'a', Geo());
    v1 = WriteTagged(store, 0, 0, 2, /*tag=*/1, /*gen=*/1);
    REQUIRE(store.Flush().ok());
    v2 = WriteTagged(store, 0, 1, 1, /*tag=*/2, /*gen=*/2);     // overwrite, not flushed
    other = WriteTagged(store, 1, 0, 1, /*tag=*/3, /*gen=*/3);  // new chunk, not flushed
    Crash(faulty, mem);
  }
  PartStore store(mem, kVol, 'a', Geo());
  std::vector<std::byte> got(2 * kBs);
  std::vector<BlockMeta> metas(2);
  REQUIRE(store.Read(0, 0, got, metas, nullptr).ok());
  CHECK(got == v1);  // block 1 is back at the flushed version
  CHECK(metas[1].generation == 1);
  SUBCASE("and a chunk created but not flushed is absent, as never written") {
    // Its name, like its data, becomes durable at the next Flush: never a short file.
    CHECK(store.Read(1, 0, std::span(got).first(kBs), std::span(metas).first(1), nullptr).IsNotFound());
    CHECK(mem.List("7/a").value().size() == 1);  // 7/a/1 only: no temporary file left either
  }
}

TEST_CASE("Write with sync survives a crash without Flush") {
  MemBackend mem;
  FaultyBackend faulty(mem);
  std::vector<std::byte> v;
  {
    PartStore store(faulty, kVol, 'c', Geo());
    v = WriteTagged(store, 2, 7, 3, 4, 4, /*sync=*/true);
    Crash(faulty, mem);
  }
  PartStore store(mem, kVol, 'c', Geo());
  std::vector<std::byte> got(3 * kBs);
  std::vector<BlockMeta> metas(3);
  REQUIRE(store.Read(2, 7, got, metas, nullptr).ok());
  CHECK(got == v);
}

TEST_CASE("Flush syncs handles evicted from the open-file cache") {
  MemBackend mem;
  FaultyBackend faulty(mem);
  std::vector<std::vector<std::byte>> written;
  {
    PartStore store(faulty, kVol, 'a', Geo(), /*max_open_files=*/2);
    for (uint64_t c = 0; c < 4; ++c) written.push_back(WriteTagged(store, c, 0, 1, c + 10, 1));
    REQUIRE(store.Flush().ok());
    Crash(faulty, mem);
  }
  PartStore store(mem, kVol, 'a', Geo());
  for (uint64_t c = 0; c < 4; ++c) {
    CAPTURE(c);
    std::vector<std::byte> got(kBs);
    std::vector<BlockMeta> metas(1);
    REQUIRE(store.Read(c, 0, got, metas, nullptr).ok());
    CHECK(got == written[c]);
  }
}

TEST_CASE("open chunk files keep their slot pairs in memory within a budget, and beyond it read them") {
  // 256 MiB chunks: 2 MiB of pairs each, so that 16 open files spend the budget.
  const Geometry g{24ull << 28, kBs, 256ull << 20};
  const uint64_t area = g.BlocksPerChunk() * kSlotPairSize;
  REQUIRE(PartStore::kPairCacheBudget / area == 16);
  LocalEnv env;
  PartStore store(env.backend(), kVol, 'a', g);
  std::vector<std::vector<std::byte>> written;
  for (uint64_t c = 0; c < 24; ++c) {
    CAPTURE(c);
    WriteTagged(store, c, 3, 2, c + 100, 1);
    CHECK(store.PairCacheBytes() == std::min(c + 1, uint64_t{16}) * area);
  }
  // Overwrites need each block's current slot: from memory for the first 16 files, from the
  // file for the others. Every block reads as the last write, before and after a flush.
  for (uint64_t c = 0; c < 24; ++c) written.push_back(WriteTagged(store, c, 3, 2, c + 200, 2));
  for (int flushed = 0; flushed < 2; ++flushed) {
    for (uint64_t c = 0; c < 24; ++c) {
      CAPTURE(c);
      std::vector<std::byte> got(2 * kBs);
      std::vector<BlockMeta> metas(2);
      REQUIRE(store.Read(c, 3, got, metas, nullptr).ok());
      CHECK(got == written[c]);
      CHECK(metas[0].generation == 2);
    }
    REQUIRE(store.Flush().ok());
  }
  CHECK(store.PairCacheBytes() == 16 * area);
  REQUIRE(store.CloseAll().ok());
  CHECK(store.PairCacheBytes() == 0);  // closed files give their bytes back
}

TEST_CASE("Flush syncs only the files written since the last Flush") {
  MemBackend mem;
  PartStore store(mem, kVol, 'a', Geo());
  for (uint64_t c = 0; c < 4; ++c) WriteTagged(store, c, 0, 1, c + 20, 1);
  REQUIRE(store.Flush().ok());
  const uint64_t before = mem.file_syncs();
  WriteTagged(store, 2, 3, 1, 30, 2);
  WriteTagged(store, 2, 4, 1, 31, 2);  // the same file again: still one sync
  REQUIRE(store.Flush().ok());
  CHECK(mem.file_syncs() == before + 1);
  SUBCASE("and nothing when nothing was written") {
    REQUIRE(store.Flush().ok());
    CHECK(mem.file_syncs() == before + 1);
  }
  SUBCASE("and a write after that Flush is synced by the next one") {
    std::vector<std::byte> v = WriteTagged(store, 2, 5, 1, 32, 3);
    REQUIRE(store.Flush().ok());
    CHECK(mem.file_syncs() == before + 2);
    mem.DropUnsynced();
    PartStore reopened(mem, kVol, 'a', Geo());
    std::vector<std::byte> got(kBs);
    std::vector<BlockMeta> metas(1);
    REQUIRE(reopened.Read(2, 5, got, metas, nullptr).ok());
    CHECK(got == v);
  }
}

TEST_CASE_TEMPLATE(
    "A cached chunk file is looked up again by name only once the recheck interval passed", E,
    MemEnv, RemoteMemEnv, LocalEnv) {
  // The lookup costs a path walk per request and part; between two of them a removed file is
  // still served from its open handle (the bytes are intact), as on an NFS backend.
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo(), 256, std::chrono::hours(1));
  std::vector<std::byte> v = WriteTagged(store, 0, 0, 1, 1, 1);
  std::vector<std::byte> got(kBs);
  std::vector<BlockMeta> metas(1);
  REQUIRE(env.backend().Remove("7/a/1").ok());
  REQUIRE(store.Read(0, 0, got, metas, nullptr).ok());
  CHECK(got == v);
  SUBCASE("and DropReplaced makes the next call open the name again") {
    store.DropReplaced(0);
    CHECK(store.Read(0, 0, got, metas, nullptr).IsNotFound());
  }
}

TEST_CASE("Flush returns the IOError and retries the chunk at the next Flush when a sync fails") {
  MemBackend mem;
  FaultyBackend faulty(mem);
  std::vector<std::byte> v;
  {
    PartStore store(faulty, kVol, 'a', Geo());
    v = WriteTagged(store, 0, 0, 1, 1, 1);
    faulty.FailNth(1, FaultyBackend::kSync);
    Status s = store.Flush();
    CHECK(s.IsIOError());
    CHECK(s.Errno() == EIO);
    REQUIRE(store.Flush().ok());
    Crash(faulty, mem);
  }
  PartStore store(mem, kVol, 'a', Geo());
  std::vector<std::byte> got(kBs);
  std::vector<BlockMeta> metas(1);
  REQUIRE(store.Read(0, 0, got, metas, nullptr).ok());
  CHECK(got == v);
}

TEST_CASE("Write and Read return IOError with EIO when the backend fails") {
  MemBackend mem;
  FaultyBackend faulty(mem);
  PartStore store(faulty, kVol, 'a', Geo());
  std::vector<std::byte> data = Blocks(1, 1);
  std::vector<BlockMeta> metas = MetasFor(data, 1);
  SUBCASE("a failing pwrite") {
    faulty.FailMatching("7/a/1", FaultyBackend::kWrite);
    Status s = store.Write(0, 0, data, metas, false, nullptr);
    CHECK(s.IsIOError());
    CHECK(s.Errno() == EIO);
    CHECK(s.message().find("part a") != std::string::npos);
  }
  SUBCASE("a failing chunk-file creation") {
    faulty.FailMatching("", FaultyBackend::kCreate);
    CHECK(store.Write(0, 0, data, metas, false, nullptr).IsIOError());
    CHECK_FALSE(mem.Exists("7/a/1"));
  }
  SUBCASE("a failing pread") {
    REQUIRE(store.Write(0, 0, data, metas, false, nullptr).ok());
    faulty.FailMatching("7/a/1", FaultyBackend::kRead);
    std::vector<std::byte> got(kBs);
    Status s = store.Read(0, 0, got, metas, nullptr);
    CHECK(s.IsIOError());
    CHECK(s.Errno() == EIO);
  }
}

TEST_CASE("Read reports Corruption for the block whose bits flip on the way back") {
  MemBackend mem;
  FaultyBackend faulty(mem);
  PartStore store(faulty, kVol, 'a', Geo());
  WriteTagged(store, 0, 0, 4, 1, 1);
  uint64_t at = 0;
  SUBCASE("in the data") { at = Geo().DataOffset(2) + 17; }
  SUBCASE("in the slot pair") { at = Geo().MetaOffset(2) + 9; }
  faulty.FlipBitOnRead("7/a/1", at, 3);
  std::vector<std::byte> got(4 * kBs);
  std::vector<BlockMeta> metas(4);
  std::vector<uint64_t> bad;
  CHECK(store.Read(0, 0, got, metas, &bad).IsCorruption());
  CHECK(bad == std::vector<uint64_t>{2});
  faulty.ClearFaults();
  bad.clear();
  CHECK(store.Read(0, 0, got, metas, &bad).ok());  // the stored bytes were never damaged
}

TEST_CASE_TEMPLATE("Read returns NotFound when the chunk file was deleted behind the store", E,
                   MemEnv, RemoteMemEnv, LocalEnv) {
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo(), 256, kRecheckEveryCall);
  WriteTagged(store, 0, 0, 1, 1, 1);
  std::vector<std::byte> got(kBs);
  std::vector<BlockMeta> metas(1);
  REQUIRE(store.Read(0, 0, got, metas, nullptr).ok());  // the handle is cached now
  REQUIRE(env.backend().Remove("7/a/1").ok());

  CHECK(store.Read(0, 0, got, metas, nullptr).IsNotFound());
  auto state = store.CheckChunk(0);
  REQUIRE(state.ok());
  CHECK(*state == PartStore::ChunkState::kAbsent);

  SUBCASE("and the next write creates it again") {
    bool created = false;
    std::vector<std::byte> data = Blocks(2, 1);
    std::vector<BlockMeta> m = MetasFor(data, 2);
    REQUIRE(store.Write(0, 0, data, m, false, &created).ok());
    CHECK(created);
    REQUIRE(store.Read(0, 0, got, metas, nullptr).ok());
    CHECK(got == data);
  }
}

TEST_CASE_TEMPLATE("Read sees the new file when the chunk file was replaced by a rename", E, MemEnv,
                   LocalEnv) {
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo(), 256, kRecheckEveryCall);
  WriteTagged(store, 0, 0, 1, 1, 1);
  REQUIRE(store.Flush().ok());
  std::vector<std::byte> got(kBs);
  std::vector<BlockMeta> metas(1);
  REQUIRE(store.Read(0, 0, got, metas, nullptr).ok());  // cached

  // A repair tool publishes a rebuilt copy under the same name.
  std::vector<std::byte> replacement(Geo().ChunkFileSize());
  std::vector<std::byte> data = Blocks(77, 1);
  std::memcpy(replacement.data() + Geo().DataOffset(0), data.data(), kBs);
  const SlotBytes slot = SlotOf(0, 0, 9, data);
  std::memcpy(replacement.data() + Geo().MetaOffset(0), slot.data(), kSlotSize);
  REQUIRE(WriteWholeFile(env.backend(), "7/a/.1.repair", replacement).ok());
  REQUIRE(env.backend().Rename("7/a/.1.repair", "7/a/1").ok());

  REQUIRE(store.Read(0, 0, got, metas, nullptr).ok());
  CHECK(got == data);
  CHECK(metas[0].generation == 9);
}
TEST_CASE_TEMPLATE("Read sees the new file when the chunk file was moved aside and replaced", E,
                   MemEnv, RemoteMemEnv, LocalEnv) {
  E env;
  PartStore store(env.backend(), kVol, 'a', Geo(), 256, kRecheckEveryCall);
  WriteTagged(store, 0, 0, 1, 1, 1);
  REQUIRE(store.Flush().ok());
  std::vector<std::byte> got(kBs);
  std::vector<BlockMeta> metas(1);
  REQUIRE(store.Read(0, 0, got, metas, nullptr).ok());  // cached

  // A repair tool quarantines the bad copy, then publishes a rebuilt one.
  REQUIRE(env.backend().Rename("7/a/1", "7/a/1.bad").ok());
  std::vector<std::byte> replacement(Geo().ChunkFileSize());
  std::vector<std::byte> data = Blocks(78, 1);
  std::memcpy(replacement.data() + Geo().DataOffset(0), data.data(), kBs);
  const SlotBytes slot = SlotOf(0, 0, 9, data);
  std::memcpy(replacement.data() + Geo().MetaOffset(0), slot.data(), kSlotSize);
  REQUIRE(WriteWholeFile(env.backend(), "7/a/.1.repair", replacement).ok());
  REQUIRE(env.backend().Rename("7/a/.1.repair", "7/a/1").ok());

  REQUIRE(store.Read(0, 0, got, metas, nullptr).ok());
  CHECK(got == data);
  CHECK(metas[0].generation == 9);
}

TEST_CASE("a replacement chunk file appears under its name only when committed") {
  MemBackend mem;
  PartStore store(mem, kVol, 'a', Geo(), 256, kRecheckEveryCall);
  std::vector<std::byte> data(kBs, std::byte{0x5A});
  BlockMeta m{7, BlockChecksum(data)};
  bool created = false;
  REQUIRE(store.Write(0, 3, data, std::span(&m, 1), /*sync=*/true, &created).ok());
  // The replacement holds block 3 at generation 8, the old file generation 7. A record as
  // rewrites take it: the data, then the settled slot pair (the slot, then an empty one).
  std::vector<std::byte> record(Geo().RecordSize());
  REQUIRE(record.size() == kBs + kSlotPairSize);
  std::copy(data.begin(), data.end(), record.begin());
  const SlotBytes slot8 = SlotOf(0, 3, 8, data);
  std::memcpy(record.data() + kBs, slot8.data(), kSlotSize);
  uint64_t want = 0;  // the generation read back
  {
    auto rw = store.BuildReplacement(0);
    REQUIRE(rw.ok());
    REQUIRE((*rw)->WriteRecords(3, record).ok());
    SUBCASE("an abandoned one is removed and the old file stays") {
      rw->reset();
      CHECK(mem.Stat(fmt::format("{}/a/.1.tmp", kVol)).status().IsNotFound());
      want = 7;
    }
    SUBCASE("a committed one replaces the old file, and the store reads the new one") {
      REQUIRE((*rw)->Commit().ok());
      rw->reset();
      CHECK(mem.Stat(fmt::format("{}/a/.1.tmp", kVol)).status().IsNotFound());
      // The record was split into the file's two areas; the rest is unwritten.
      auto raw = mem.Contents("7/a/1");
      REQUIRE(raw.ok());
      CHECK(raw->size() == Geo().ChunkFileSize());
      CHECK(std::ranges::equal(StoredData(*raw, 3), data));
      CHECK(StoredSlot(*raw, 3, 0) == slot8);
      CHECK(StoredSlot(*raw, 3, 1) == kEmptySlot);
      CHECK(AllZero(std::span(*raw).first(Geo().DataOffset(3))));
      CHECK(AllZero(std::span(*raw).subspan(Geo().DataOffset(4), Geo().chunk_size - Geo().DataOffset(4))));
      CHECK(AllZero(std::span(*raw).subspan(Geo().chunk_size, 3 * kSlotPairSize)));
      CHECK(AllZero(std::span(*raw).subspan(Geo().MetaOffset(4))));
      want = 8;
    }
  }
  std::vector<std::byte> got(kBs);
  BlockMeta gm;
  REQUIRE(store.Read(0, 3, got, std::span(&gm, 1), nullptr).ok());
  CHECK(got == data);
  CHECK(gm.generation == want);
  auto st = store.CheckChunk(0);
  REQUIRE(st.ok());
  CHECK(*st == PartStore::ChunkState::kComplete);
}

TEST_CASE("a rewrite in place fails with NotFound when the chunk file is absent") {
  MemBackend mem;
  PartStore store(mem, kVol, 'a', Geo(), 256, kRecheckEveryCall);
  CHECK(store.RewriteInPlace(2).status().IsNotFound());
}
}  // TEST_SUITE("part_store")

}  // namespace qbd::test
