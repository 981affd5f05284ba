// Tests of include/qbd/chunk_format.h: the BlockMeta record, the XXH3 checksum, VerifyBlock and
// the volume geometry (layout-spec.md §2-§4).
#include "qbd/chunk_format.h"

#include <doctest/doctest.h>

#include <array>
#include <cstring>
#include <string_view>
#include <vector>

namespace qbd::test {
namespace {

std::vector<std::byte> Bytes(std::string_view s) {
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

// i % 251 for i in [0, n): a pattern without a short period.
std::vector<std::byte> Pattern(size_t n) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = std::byte(i % 251);
  return out;
}

}  // namespace

TEST_SUITE("chunk_format") {
TEST_CASE("EncodeBlockMeta writes generation then checksum, little-endian") {
  const BlockMeta meta{0x0102030405060708ull, 0x1112131415161718ull};
  std::array<std::byte, kBlockMetaSize> out{};
  EncodeBlockMeta(meta, out.data());
  const std::array<std::byte, kBlockMetaSize> want = {
      std::byte{0x08}, std::byte{0x07}, std::byte{0x06}, std::byte{0x05},
      std::byte{0x04}, std::byte{0x03}, std::byte{0x02}, std::byte{0x01},
      std::byte{0x18}, std::byte{0x17}, std::byte{0x16}, std::byte{0x15},
      std::byte{0x14}, std::byte{0x13}, std::byte{0x12}, std::byte{0x11}};
  CHECK(out == want);
  CHECK(DecodeBlockMeta(out.data()) == meta);
}

TEST_CASE("DecodeBlockMeta round-trips EncodeBlockMeta for edge values") {
  for (const BlockMeta& m : {BlockMeta{0, 0}, BlockMeta{1, 0}, BlockMeta{~0ull, ~0ull},
                             BlockMeta{(7ull << 40) + 1, 0xdeadbeefcafef00dull}}) {
    CAPTURE(m.generation);
    CAPTURE(m.checksum);
    std::array<std::byte, kBlockMetaSize> buf{};
    EncodeBlockMeta(m, buf.data());
    CHECK(DecodeBlockMeta(buf.data()) == m);
  }
}

TEST_CASE("IsUnwritten is true only when both fields are zero") {
  CHECK(BlockMeta{}.IsUnwritten());
  CHECK_FALSE(BlockMeta{1, 0}.IsUnwritten());
  CHECK_FALSE(BlockMeta{0, 1}.IsUnwritten());
}

// Expected values printed by `xxhsum -H3` (xxHash 0.8.1) on files holding the same bytes, so they
// do not depend on our code.
TEST_CASE("BlockChecksum equals the XXH3-64 that xxhsum -H3 prints") {
  CHECK(BlockChecksum(Bytes("hello")) == 0x9555e8555c62dcfdull);
  CHECK(BlockChecksum({}) == 0x2d06800538d394c2ull);
  CHECK(BlockChecksum(std::vector<std::byte>(4096)) == 0x93d76fe148c689baull);
  CHECK(BlockChecksum(Pattern(4096)) == 0x7135ffa504f1bc71ull);
}

TEST_CASE("BlockChecksum equals xxhsum -H3 on the vector path for every block size and alignment") {
  // Inputs over 240 bytes take XXH3's long loop, which runs on AVX-512 or AVX2 where the CPU has
  // them; the values come from `xxhsum -H3` (the packaged, baseline implementation).
  CHECK(BlockChecksum(Pattern(241)) == 0x02e8cd95421c6d02ull);
  CHECK(BlockChecksum(Pattern(512)) == 0x5c021aac13954143ull);
  CHECK(BlockChecksum(Pattern(1000)) == 0x33ef703fb2b20ed1ull);
  CHECK(BlockChecksum(Pattern(8192)) == 0x40a71c16bbe37322ull);
  CHECK(BlockChecksum(Pattern(65536)) == 0xaaae63800707a868ull);
  const std::vector<std::byte> p = Pattern(4100);
  CHECK(BlockChecksum(std::span(p).subspan(3, 4096)) == 0xb0fded49f6a80499ull);  // unaligned
}

TEST_CASE("VerifyBlock accepts a block whose checksum matches") {
  std::vector<std::byte> data = Pattern(4096);
  CHECK(VerifyBlock(data, BlockMeta{1, BlockChecksum(data)}).ok());
}

TEST_CASE("VerifyBlock reports Corruption when one byte of the data changed") {
  std::vector<std::byte> data = Pattern(4096);
  const BlockMeta meta{5, BlockChecksum(data)};
  for (size_t at : {size_t{0}, size_t{2048}, size_t{4095}}) {
    CAPTURE(at);
    std::vector<std::byte> bad = data;
    bad[at] ^= std::byte{0x01};
    Status s = VerifyBlock(bad, meta);
    CHECK(s.IsCorruption());
    CHECK(s.message().find("checksum mismatch") != std::string::npos);
  }
}

TEST_CASE("VerifyBlock accepts an all-zero block under all-zero metadata") {
  CHECK(VerifyBlock(std::vector<std::byte>(4096), BlockMeta{}).ok());
}

TEST_CASE("VerifyBlock reports Corruption when data sits under all-zero metadata") {
  std::vector<std::byte> data(4096);
  data[100] = std::byte{1};
  CHECK(VerifyBlock(data, BlockMeta{}).IsCorruption());
}

TEST_CASE("VerifyBlock reports Corruption when generation is 0 but a checksum is set") {
  std::vector<std::byte> data(4096);
  CHECK(VerifyBlock(data, BlockMeta{0, BlockChecksum(data)}).IsCorruption());
}

TEST_CASE("VerifyBlock reports Corruption when the checksum is missing for a written block") {
  std::vector<std::byte> data = Pattern(512);
  CHECK(VerifyBlock(data, BlockMeta{3, 0}).IsCorruption());
}

TEST_CASE("Geometry computes record, chunk-file and count sizes for the defaults") {
  Geometry g;
  g.size = 10ull << 20;  // 10 MiB: two full 4 MiB chunks and a half one
  REQUIRE(g.Validate().ok());
  CHECK(g.format == kFormat2);
  CHECK(g.MetaBytes() == 32);
  CHECK(g.RecordSize() == 4096 + 32);  // in memory: the data, then the slot pair
  CHECK(g.BlocksPerChunk() == 1024);
  // The data area (4 MiB), then a 32-byte slot pair per block.
  CHECK(g.ChunkFileSize() == (4ull << 20) + 1024ull * 32);
  CHECK(g.ChunkCount() == 3);
  CHECK(g.BlockCount() == 2560);
  CHECK(g.DataOffset(0) == 0);
  CHECK(g.DataOffset(1) == 4096);
  CHECK(g.DataOffset(1023) == 1023ull * 4096);
  CHECK(g.MetaOffset(0) == 4ull << 20);
  CHECK(g.MetaOffset(1) == (4ull << 20) + 32);
  CHECK(g.MetaOffset(1023) == (4ull << 20) + 1023ull * 32);
  CHECK(g.MetaOffset(1023) + 32 == g.ChunkFileSize());
  SUBCASE("and format 1 interleaves each block with its 16-byte meta") {
    g.format = kFormat1;
    REQUIRE(g.Validate().ok());
    CHECK(g.MetaBytes() == 16);
    CHECK(g.RecordSize() == 4096 + 16);
    CHECK(g.ChunkFileSize() == 1024ull * 4112);
    CHECK(g.RecordOffset(0) == 0);
    CHECK(g.RecordOffset(1) == 4112);
    CHECK(g.RecordOffset(1023) == 1023ull * 4112);
  }
}

TEST_CASE("Geometry counts whole chunks when the size is a multiple of the chunk size") {
  Geometry g{16ull << 20, 512, 1ull << 20};
  REQUIRE(g.Validate().ok());
  CHECK(g.ChunkCount() == 16);
  CHECK(g.BlocksPerChunk() == 2048);
  CHECK(g.RecordSize() == 544);
  CHECK(g.ChunkFileSize() == (1ull << 20) + 2048ull * 32);
  CHECK(g.DataOffset(7) == 7ull * 512);
  CHECK(g.MetaOffset(7) == (1ull << 20) + 7ull * 32);
  g.format = kFormat1;
  CHECK(g.RecordSize() == 528);
  CHECK(g.ChunkFileSize() == 2048ull * 528);
  CHECK(g.RecordOffset(7) == 7ull * 528);
}

TEST_CASE("Geometry chunk-file size is independent of the volume size") {
  Geometry small{4096, 4096, 1ull << 20};
  Geometry big{1ull << 40, 4096, 1ull << 20};
  CHECK(small.ChunkFileSize() == big.ChunkFileSize());
  CHECK(small.ChunkCount() == 1);
  CHECK(big.ChunkCount() == 1ull << 20);
}

TEST_CASE("ChunkPath names chunk c as <volnr>/<part>/<c+1>") {
  CHECK(ChunkPath(7, 'b', 0) == "7/b/1");
  CHECK(ChunkPath(11, 'a', 122) == "11/a/123");
  CHECK(ChunkPath(1, 'z', 9999) == "1/z/10000");
  CHECK(PartDir(7, 'c') == "7/c");
}

TEST_CASE("Validate accepts every block and chunk size at the limits") {
  CHECK(Geometry{1ull << 20, kMinBlockSize, 1ull << 20}.Validate().ok());
  CHECK(Geometry{1ull << 20, kMaxBlockSize, 1ull << 20}.Validate().ok());
  CHECK(Geometry{4096, 4096, 4096}.Validate().ok());  // chunk == block
  CHECK(Geometry{1ull << 30, 4096, kMaxChunkSize}.Validate().ok());
  CHECK(Geometry{3ull * 4096, 4096, 1ull << 20}.Validate().ok());  // size not a chunk multiple
}

TEST_CASE("Validate returns InvalidArgument when a size is out of range") {
  struct Case {
    const char* what;
    Geometry g;
  };
  const Case cases[] = {
      {"block size not a power of two", {1ull << 20, 3000, 1ull << 20}},
      {"block size below 512", {1ull << 20, 256, 1ull << 20}},
      {"block size above 64 KiB", {1ull << 20, 128 * 1024, 1ull << 20}},
      {"block size zero", {1ull << 20, 0, 1ull << 20}},
      {"chunk size not a power of two", {1ull << 20, 4096, 3ull << 20}},
      {"chunk size below the block size", {1ull << 20, 4096, 2048}},
      {"chunk size above 1 GiB", {4ull << 30, 4096, 2ull << 30}},
      {"chunk size zero", {1ull << 20, 4096, 0}},
      {"size zero", {0, 4096, 1ull << 20}},
      {"size not a block multiple", {4096 + 512, 4096, 1ull << 20}},
      {"format 0", {1ull << 20, 4096, 1ull << 20, 0}},
      {"format 3", {1ull << 20, 4096, 1ull << 20, 3}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    Status s = c.g.Validate();
    CHECK(s.IsInvalidArgument());
  }
}
TEST_CASE(
    "ChunkPath and EncodeBlockMeta give the bytes of layout-spec.md §4.4 when fed its worked "
    "example") {
  // Volume 11, 4 KiB blocks, 4 MiB chunks; 4096 x 0xAB written at 4 MiB + 4 KiB as the 17th
  // write of epoch 3.
  Geometry g{64ull << 20, 4096, 4ull << 20};
  REQUIRE(g.Validate().ok());
  const uint64_t x = 4198400;
  const uint64_t chunk = x / g.chunk_size;
  const uint64_t block = (x % g.chunk_size) / g.block_size;
  CHECK(ChunkPath(11, 'a', chunk) == "11/a/2");
  // Format 1: the record of block 1 follows block 0's 4096 + 16 bytes.
  Geometry g1 = g;
  g1.format = kFormat1;
  CHECK(g1.RecordOffset(block) == 4112);
  CHECK(g1.ChunkFileSize() == 4210688);
  // Format 2: the data at 1 * 4096, the slot pair at 4 MiB + 1 * 32.
  CHECK(g.DataOffset(block) == 4096);
  CHECK(g.MetaOffset(block) == 4194336);
  CHECK(g.ChunkFileSize() == 4227072);

  const std::vector<std::byte> data(4096, std::byte{0xAB});
  // `xxhsum -H3` of 4096 bytes of 0xAB, run independently of this code.
  CHECK(BlockChecksum(data) == 0x98d740d6581442e8ull);
  std::array<std::byte, kBlockMetaSize> meta{};
  EncodeBlockMeta(BlockMeta{(3ull << 40) + 17, BlockChecksum(data)}, meta.data());
  const std::array<std::byte, kBlockMetaSize> want = {
      std::byte{0x11}, std::byte{0x00}, std::byte{0x00}, std::byte{0x00},
      std::byte{0x00}, std::byte{0x03}, std::byte{0x00}, std::byte{0x00},
      std::byte{0xe8}, std::byte{0x42}, std::byte{0x14}, std::byte{0x58},
      std::byte{0xd6}, std::byte{0x40}, std::byte{0xd7}, std::byte{0x98}};
  CHECK(meta == want);

  // Format 2: the slot of that write. Its check is the checksum XOR the address key, the XXH3 of
  // volnr 11, chunk 1, block 1 and the generation as u64 LE (`xxhsum -H3` of those 32 bytes:
  // c1c9fc4838bc08ae).
  const BlockAddress at{11, chunk, block};
  CHECK(AddressKey(at, (3ull << 40) + 17) == 0xc1c9fc4838bc08aeull);
  std::array<std::byte, kSlotSize> slot{};
  const uint64_t zero_checksum = BlockChecksum(std::vector<std::byte>(4096));
  EncodeSlot(BlockMeta{(3ull << 40) + 17, BlockChecksum(data)}, at, zero_checksum, slot.data());
  const std::array<std::byte, kSlotSize> want_slot = {
      std::byte{0x11}, std::byte{0x00}, std::byte{0x00}, std::byte{0x00},
      std::byte{0x00}, std::byte{0x03}, std::byte{0x00}, std::byte{0x00},
      std::byte{0x46}, std::byte{0x4a}, std::byte{0xa8}, std::byte{0x60},
      std::byte{0x9e}, std::byte{0xbc}, std::byte{0x1e}, std::byte{0x59}};
  CHECK(slot == want_slot);
  // The "zeros" slot of that block: generation 0, the all-zero block's checksum (93d76fe148c689ba)
  // XOR the key of generation 0 (008c7368e8db4a3d).
  EncodeSlot(BlockMeta{}, at, zero_checksum, slot.data());
  const std::array<std::byte, kSlotSize> want_zeros = {
      std::byte{0x00}, std::byte{0x00}, std::byte{0x00}, std::byte{0x00},
      std::byte{0x00}, std::byte{0x00}, std::byte{0x00}, std::byte{0x00},
      std::byte{0x87}, std::byte{0xc3}, std::byte{0x1d}, std::byte{0xa0},
      std::byte{0x89}, std::byte{0x1c}, std::byte{0x5b}, std::byte{0x93}};
  CHECK(slot == want_zeros);
  CHECK_FALSE(SlotEmpty(slot.data()));
}

TEST_CASE("ResolveSlots picks the newest slot the data matches, at its own address only") {
  const uint32_t bs = 4096;
  const uint64_t zero_checksum = BlockChecksum(std::vector<std::byte>(bs));
  const BlockAddress at{7, 2, 9};
  const std::vector<std::byte> old_data = Pattern(bs), zeros(bs);
  std::vector<std::byte> new_data = Pattern(bs);
  new_data[0] = std::byte{0xFF};
  const BlockMeta old_meta{5, BlockChecksum(old_data)}, new_meta{6, BlockChecksum(new_data)};
  auto judge = [&](std::span<const std::byte> data, const std::array<std::byte, kSlotPairSize>& pair,
                   const BlockAddress& a = BlockAddress{7, 2, 9}) {
    return ResolveSlots(data, BlockChecksum(data), pair.data(), a, zero_checksum);
  };
  std::array<std::byte, kSlotPairSize> pair{};
  SUBCASE("an empty pair holds zeros only") {
    SlotVerdict v = judge(zeros, pair);
    CHECK(v.good);
    CHECK(v.slot == -1);
    CHECK_FALSE(v.pending);
    CHECK(v.meta.IsUnwritten());
    CHECK_FALSE(judge(old_data, pair).good);
  }
  SUBCASE("a settled pair: the slot in 0, slot 1 empty") {
    EncodeSlot(old_meta, at, zero_checksum, pair.data());
    SlotVerdict v = judge(old_data, pair);
    CHECK(v.good);
    CHECK(v.slot == 0);
    CHECK_FALSE(v.pending);
    CHECK(v.meta == old_meta);
    CHECK_FALSE(judge(new_data, pair).good);
    CHECK_FALSE(judge(zeros, pair).good);
    // The same bytes at another block, chunk or volume do not match: the check is bound to the
    // address.
    CHECK_FALSE(judge(old_data, pair, BlockAddress{7, 2, 10}).good);
    CHECK_FALSE(judge(old_data, pair, BlockAddress{7, 3, 9}).good);
    CHECK_FALSE(judge(old_data, pair, BlockAddress{8, 2, 9}).good);
    // Nor under another generation.
    std::array<std::byte, kSlotPairSize> moved = pair;
    moved[0] ^= std::byte{0x02};
    CHECK_FALSE(judge(old_data, moved).good);
  }
  SUBCASE("a pending pair: either data passes, each under its own slot") {
    EncodeSlot(new_meta, at, zero_checksum, pair.data());
    EncodeSlot(old_meta, at, zero_checksum, pair.data() + kSlotSize);
    SlotVerdict v = judge(new_data, pair);
    CHECK(v.good);
    CHECK(v.pending);
    CHECK(v.slot == 0);
    CHECK(v.meta == new_meta);
    v = judge(old_data, pair);
    CHECK(v.good);
    CHECK(v.pending);
    CHECK(v.slot == 1);
    CHECK(v.meta == old_meta);
    CHECK_FALSE(judge(zeros, pair).good);
  }
  SUBCASE("both slots match the data: the larger generation wins, in either order") {
    const BlockMeta again{9, old_meta.checksum};
    EncodeSlot(old_meta, at, zero_checksum, pair.data());
    EncodeSlot(again, at, zero_checksum, pair.data() + kSlotSize);
    SlotVerdict v = judge(old_data, pair);
    CHECK(v.good);
    CHECK(v.slot == 1);
    CHECK(v.meta == again);
  }
  SUBCASE("a zeros slot beside a written one: zero data reads as unwritten") {
    EncodeSlot(BlockMeta{}, at, zero_checksum, pair.data());
    EncodeSlot(old_meta, at, zero_checksum, pair.data() + kSlotSize);
    SlotVerdict v = judge(zeros, pair);
    CHECK(v.good);
    CHECK(v.slot == 0);
    CHECK(v.meta.IsUnwritten());
    v = judge(old_data, pair);
    CHECK(v.good);
    CHECK(v.slot == 1);
    CHECK(v.meta == old_meta);
  }
}
TEST_CASE("ChunkFileNumber reads back what ChunkPath names and rejects anything else") {
  CHECK(ChunkFileNumber("1") == 1);
  CHECK(ChunkFileNumber("123") == 123);
  CHECK(ChunkPath(11, 'b', 122).ends_with("/" + std::to_string(ChunkFileNumber("123"))));
  for (const char* bad : {"", "0", "01", "-1", "+1", "1a", ".1.tmp", "1.tmp.7", " 1"}) {
    CAPTURE(bad);
    CHECK(ChunkFileNumber(bad) == 0);
  }
}
}  // TEST_SUITE("chunk_format")

}  // namespace qbd::test
