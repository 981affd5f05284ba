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
  CHECK(g.RecordSize() == 4096 + 16);
  CHECK(g.BlocksPerChunk() == 1024);
  CHECK(g.ChunkFileSize() == 1024ull * 4112);
  CHECK(g.ChunkCount() == 3);
  CHECK(g.BlockCount() == 2560);
  CHECK(g.RecordOffset(0) == 0);
  CHECK(g.RecordOffset(1) == 4112);
  CHECK(g.RecordOffset(1023) == 1023ull * 4112);
}

TEST_CASE("Geometry counts whole chunks when the size is a multiple of the chunk size") {
  Geometry g{16ull << 20, 512, 1ull << 20};
  REQUIRE(g.Validate().ok());
  CHECK(g.ChunkCount() == 16);
  CHECK(g.BlocksPerChunk() == 2048);
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
  CHECK(g.RecordOffset(block) == 4112);
  CHECK(g.ChunkFileSize() == 4210688);

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
