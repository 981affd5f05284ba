// InspectBlock (qbdctl block) over MemBackend parts written through PartStore (format 2) or by
// hand (format 1).
#include "qbd/inspect.h"

#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "qbd/part_store.h"
#include "testutil/mem_backend.h"
#include "testutil/tagged_blocks.h"

namespace qbd::test {
namespace {

constexpr uint32_t kVol = 3;
constexpr uint32_t kBs = 4096;
constexpr uint64_t kPerChunk = 16;
constexpr uint64_t kChunkSize = kPerChunk * kBs;
constexpr uint64_t kGen = (2ull << kGenerationBits) + 17;

struct Parts {
  MemBackend mem[3] = {MemBackend("a"), MemBackend("b"), MemBackend("c")};
  std::vector<StorageBackend*> parts{&mem[0], &mem[1], &mem[2]};
  VolumeMeta meta;

  explicit Parts(uint32_t format = kFormat2) {
    meta.name = "vol";
    meta.number = kVol;
    meta.replicas = 3;
    meta.geometry.size = 4 * kChunkSize;
    meta.geometry.block_size = kBs;
    meta.geometry.chunk_size = kChunkSize;
    meta.geometry.format = format;
  }

  // Blocks 0-7 of chunks 0 and 1 on every part (format 2), chunk c's data tagged c.
  void WriteFormat2() {
    for (int p = 0; p < 3; ++p) {
      PartStore store(mem[p], kVol, static_cast<char>('a' + p), meta.geometry);
      for (uint64_t c = 0; c < 2; ++c) {
        const auto data = TaggedBlocks(c, 8, kBs);
        bool created = false;
        REQUIRE(store.Write(c, 0, data, TaggedMetas(data, kGen + c, kBs), /*sync=*/true, &created)
                    .ok());
      }
      REQUIRE(store.CloseAll().ok());
    }
  }
};

const PartBlockView& Part(const BlockView& v, char p) { return v.parts[p - 'a']; }

}  // namespace

TEST_SUITE("inspect") {
TEST_CASE(
    "inspect shows a written block's files, offsets, slots and a good verdict on every part") {
  Parts t;
  t.WriteFormat2();
  auto v = InspectBlock(t.meta, t.parts, kChunkSize + 3 * kBs + 100);  // chunk 1, block 3
  REQUIRE(v.ok());
  CHECK(v->chunk == 1);
  CHECK(v->ChunkFileNumber() == 2);
  CHECK(v->block == 3);
  CHECK(v->chunk_written);
  CHECK(v->source == 0);
  CHECK(v->Readable());
  const auto data = TaggedBlocks(1, 8, kBs);
  for (const PartBlockView& p : v->parts) {
    CAPTURE(p.part);
    CHECK(p.file == std::string("mem:") + p.part + "/3/" + p.part + "/2");
    CHECK(p.state == CopyState::kPresent);
    CHECK(p.data_offset == 3 * kBs);
    CHECK(p.meta_offset == kChunkSize + 3 * 32);
    CHECK(p.verdict == "good");
    CHECK(p.slot == 0);
    CHECK(p.slots[0].generation == kGen + 1);
    CHECK(std::string(p.slots[0].Kind()) == "written");
    CHECK(p.slots[0].matches);
    CHECK(std::string(p.slots[1].Kind()) == "empty");
    CHECK(p.content == BlockChecksum(std::span(data).subspan(3 * kBs, kBs)));
    CHECK(p.issue == BlockIssue::kNone);
  }
  const std::string text = FormatBlockText(*v);
  CHECK(text.find("offset 77924: chunk file 2 (chunk index 1), block 3 of 16") !=
        std::string::npos);
  CHECK(text.find("generation 2199023255570 (epoch 2, n 18)") != std::string::npos);
  CHECK(text.find(
            "judge: source part a (generation 2199023255570 (epoch 2, n 18)); every copy agrees") !=
        std::string::npos);
  const std::string json = FormatBlockJson(*v);
  CHECK(json.find("\"chunk_file\":2") != std::string::npos);
  CHECK(json.find("\"generation\":{\"value\":2199023255570,\"epoch\":2,\"n\":18}") !=
        std::string::npos);
  CHECK(json.find(
            "\"judge\":{\"source\":\"a\",\"lost\":false,\"unknown\":false,\"readable\":true}") !=
        std::string::npos);
}

TEST_CASE("inspect finds a misplaced chunk file corrupt on its part") {
  Parts t;
  t.WriteFormat2();
  // Part a's chunk file 2 copied over its chunk file 1: same sizes, checks bound to chunk 2.
  auto two = t.mem[0].Contents("3/a/2");
  REQUIRE(two.ok());
  REQUIRE(WriteWholeFile(t.mem[0], "3/a/1", *two).ok());
  auto v = InspectBlock(t.meta, t.parts, 2 * kBs);
  REQUIRE(v.ok());
  CHECK(Part(*v, 'a').verdict == "corrupt");
  CHECK(Part(*v, 'a').slot == -1);
  CHECK_FALSE(Part(*v, 'a').slots[0].matches);
  CHECK(Part(*v, 'a').slots[0].generation == kGen + 1);  // chunk 2's write, found in chunk 1
  CHECK(Part(*v, 'a').issue == BlockIssue::kCorrupt);
  CHECK(Part(*v, 'b').verdict == "good");
  CHECK(v->source == 1);
  CHECK(v->Readable());
  CHECK(FormatBlockText(*v).find(
            "judge: source part b (generation 2199023255569 (epoch 2, n 17)); part a corrupt") !=
        std::string::npos);
}

TEST_CASE("inspect reports unwritten blocks, missing files and lost blocks") {
  Parts t;
  t.WriteFormat2();
  SUBCASE("a block never written in a written chunk is unwritten, with empty slots") {
    auto v = InspectBlock(t.meta, t.parts, 12 * kBs);
    REQUIRE(v.ok());
    CHECK(Part(*v, 'c').verdict == "unwritten");
    CHECK(std::string(Part(*v, 'c').slots[0].Kind()) == "empty");
    CHECK(Part(*v, 'c').data_zero);
    CHECK(v->Readable());
  }
  SUBCASE("a chunk never written reads as zeros") {
    auto v = InspectBlock(t.meta, t.parts, 3 * kChunkSize);
    REQUIRE(v.ok());
    CHECK_FALSE(v->chunk_written);
    CHECK(Part(*v, 'a').verdict == "missing");
    CHECK(v->Readable());
    CHECK(FormatBlockText(*v).find("never written on any part") != std::string::npos);
  }
  SUBCASE("a file missing on one part") {
    REQUIRE(t.mem[1].Remove("3/b/1").ok());
    auto v = InspectBlock(t.meta, t.parts, 0);
    REQUIRE(v.ok());
    CHECK(Part(*v, 'b').verdict == "missing");
    CHECK(Part(*v, 'b').issue == BlockIssue::kMissing);
    CHECK(v->Readable());
  }
  SUBCASE("a block corrupt on every part has no good copy") {
    for (int p = 0; p < 3; ++p) {
      const std::string f = std::string("3/") + static_cast<char>('a' + p) + "/1";
      REQUIRE(FlipByte(t.mem[p], f, kBs + 5).ok());
    }
    auto v = InspectBlock(t.meta, t.parts, kBs);
    REQUIRE(v.ok());
    CHECK(v->lost);
    CHECK_FALSE(v->Readable());
    CHECK(FormatBlockText(*v).find("DATA LOST") != std::string::npos);
  }
  SUBCASE("an offset beyond the volume is refused") {
    CHECK(InspectBlock(t.meta, t.parts, 4 * kChunkSize).status().IsInvalidArgument());
  }
}

TEST_CASE("inspect reads a format-1 volume's record and its 16-byte metadata") {
  Parts t(kFormat1);
  const Geometry& g = t.meta.geometry;
  const auto data = TaggedBlocks(9, 1, kBs);
  std::vector<std::byte> file(g.ChunkFileSize());
  std::copy(data.begin(), data.end(), file.begin() + g.RecordOffset(2));
  EncodeBlockMeta(BlockMeta{kGen, BlockChecksum(data)}, file.data() + g.RecordOffset(2) + kBs);
  for (int p = 0; p < 3; ++p) {
    const char part = static_cast<char>('a' + p);
    REQUIRE(t.mem[p].MkDirs(PartDir(kVol, part)).ok());
    REQUIRE(WriteWholeFile(t.mem[p], ChunkPath(kVol, part, 0), file).ok());
  }
  REQUIRE(FlipByte(t.mem[2], "3/c/1", g.RecordOffset(2) + kBs + 9).ok());  // c's stored checksum
  auto v = InspectBlock(t.meta, t.parts, 2 * kBs);
  REQUIRE(v.ok());
  CHECK(Part(*v, 'a').format == kFormat1);
  CHECK(Part(*v, 'a').data_offset == 2 * (kBs + 16));
  CHECK(Part(*v, 'a').meta_offset == 2 * (kBs + 16) + kBs);
  CHECK(Part(*v, 'a').stored == BlockMeta{kGen, BlockChecksum(data)});
  CHECK(Part(*v, 'a').verdict == "good");
  CHECK(Part(*v, 'c').verdict == "corrupt");
  CHECK(Part(*v, 'c').issue == BlockIssue::kCorrupt);
  CHECK(v->source == 0);
  CHECK(FormatBlockText(*v).find("record at byte 8224 (data), metadata at byte 12320") !=
        std::string::npos);
  CHECK(FormatBlockJson(*v).find("\"stored\":{\"generation\":{\"value\":2199023255569") !=
        std::string::npos);
}
}  // TEST_SUITE("inspect")

}  // namespace qbd::test
