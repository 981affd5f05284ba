// ConvertVolume (qbdctl convert) over MemBackend parts: a format-1 volume written by hand
// (layout-spec.md §9.2), converted, then read back through PartStore (format 2).
#include "qbd/convert.h"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qbd/part_store.h"
#include "qbd/volume_meta.h"
#include "testutil/mem_backend.h"
#include "testutil/tagged_blocks.h"

namespace qbd::test {
namespace {

constexpr uint32_t kVol = 7;
constexpr uint32_t kBs = 4096;
constexpr uint64_t kPerChunk = 16;
constexpr uint64_t kChunks = 4;

// Which blocks the test volume holds: every chunk but the third has a file; a block in three is
// never written; generations differ per block and span two epochs.
bool Written(uint64_t c, uint64_t b) { return c != 2 && (c + b) % 3 != 0; }
uint64_t GenerationOf(uint64_t c, uint64_t b) {
  return (((c + b) % 2 + 1) << kGenerationBits) + c * 100 + b + 1;
}
std::vector<std::byte> DataOf(uint64_t c, uint64_t b) { return TaggedBlocks(c * 1000 + b, 1, kBs); }

struct Volume1 {
  MemBackend mem[3] = {MemBackend("a"), MemBackend("b"), MemBackend("c")};
  std::vector<std::unique_ptr<FaultyBackend>> faulty;
  std::vector<StorageBackend*> parts;
  VolumeMeta meta;
  Geometry g1, g2;

  Volume1() {
    meta.name = "v";
    meta.number = kVol;
    meta.replicas = 3;
    meta.geometry.size = kChunks * kPerChunk * kBs;
    meta.geometry.block_size = kBs;
    meta.geometry.chunk_size = kPerChunk * kBs;
    meta.geometry.format = kFormat1;
    g1 = g2 = meta.geometry;
    g2.format = kFormat2;
    for (int p = 0; p < 3; ++p) {
      faulty.push_back(std::make_unique<FaultyBackend>(mem[p]));
      parts.push_back(faulty.back().get());
      const char part = static_cast<char>('a' + p);
      REQUIRE(mem[p].MkDirs(PartDir(kVol, part)).ok());
      REQUIRE(WriteFileAtomic(mem[p], MetaPath(kVol), EncodeVolumeMeta(meta)).ok());
      for (uint64_t c = 0; c < kChunks; ++c) {
        if (c == 2) continue;
        REQUIRE(WriteWholeFile(mem[p], ChunkPath(kVol, part, c), Format1File(c)).ok());
      }
      REQUIRE(mem[p].SyncDir(PartDir(kVol, part)).ok());
    }
  }

  std::vector<std::byte> Format1File(uint64_t c) const {
    std::vector<std::byte> f(g1.ChunkFileSize());
    for (uint64_t b = 0; b < kPerChunk; ++b) {
      if (!Written(c, b)) continue;
      const auto d = DataOf(c, b);
      std::copy(d.begin(), d.end(), f.begin() + g1.RecordOffset(b));
      EncodeBlockMeta(BlockMeta{GenerationOf(c, b), BlockChecksum(d)},
                      f.data() + g1.RecordOffset(b) + kBs);
    }
    return f;
  }

  uint64_t FileSize(int p, uint64_t c) const {
    auto f = mem[p].Contents(ChunkPath(kVol, static_cast<char>('a' + p), c));
    return f.ok() ? f->size() : 0;
  }

  // Every block of every part reads back through PartStore (format 2) as written, generation
  // included; unwritten blocks read as zeros with empty slot pairs.
  void CheckConverted() {
    for (int p = 0; p < 3; ++p) {
      const char part = static_cast<char>('a' + p);
      PartStore store(mem[p], kVol, part, g2);
      for (uint64_t c = 0; c < kChunks; ++c) {
        CAPTURE(part);
        CAPTURE(c);
        if (c == 2) {
          CHECK_FALSE(mem[p].Exists(ChunkPath(kVol, part, c)));
          continue;
        }
        CHECK(FileSize(p, c) == g2.ChunkFileSize());
        std::vector<std::byte> data(kPerChunk * kBs);
        std::vector<BlockMeta> metas(kPerChunk);
        std::vector<uint64_t> bad;
        REQUIRE(store.Read(c, 0, data, metas, &bad).ok());
        auto file = mem[p].Contents(ChunkPath(kVol, part, c));
        REQUIRE(file.ok());
        for (uint64_t b = 0; b < kPerChunk; ++b) {
          CAPTURE(b);
          std::vector<std::byte> got(data.begin() + b * kBs, data.begin() + (b + 1) * kBs);
          if (Written(c, b)) {
            CHECK(got == DataOf(c, b));
            CHECK(metas[b] == BlockMeta{GenerationOf(c, b), BlockChecksum(DataOf(c, b))});
          } else {
            CHECK(got == std::vector<std::byte>(kBs));
            CHECK(metas[b].IsUnwritten());
            CHECK(SlotEmpty(file->data() + g2.MetaOffset(b)));
            CHECK(SlotEmpty(file->data() + g2.MetaOffset(b) + kSlotSize));
          }
        }
      }
      for (const std::string& f : mem[p].FilePaths()) CHECK(f.find(".tmp") == std::string::npos);
    }
  }

  // Every part's `.meta` copy.
  std::vector<VolumeMeta> Metas() {
    std::vector<VolumeMeta> out;
    for (int p = 0; p < 3; ++p) {
      auto text = ReadSmallFile(mem[p], MetaPath(kVol));
      REQUIRE(text.ok());
      auto m = ParseVolumeMeta(*text, "meta");
      REQUIRE(m.ok());
      out.push_back(*m);
    }
    return out;
  }

  std::map<std::string, std::vector<std::byte>> Snapshot() const {
    std::map<std::string, std::vector<std::byte>> out;
    for (int p = 0; p < 3; ++p) {
      for (const std::string& f : mem[p].FilePaths())
        out[fmt::format("{}:{}", p, f)] = mem[p].Contents(f).value();
    }
    return out;
  }
};

}  // namespace

TEST_SUITE("convert") {
TEST_CASE("convert rewrites every chunk file in format 2 keeping data and generations") {
  QuietLog quiet;
  Volume1 v;
  std::vector<ConvertProgress> seen;
  ConvertOptions o;
  o.progress = [&](const ConvertProgress& p) { seen.push_back(p); };
  auto r = ConvertVolume(v.meta, v.parts, o);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK_FALSE(r->already_converted);
  CHECK(r->chunks == 3);
  CHECK(r->files_converted == 9);
  CHECK(r->files_kept == 0);
  CHECK(r->blocks_from_other == 0);
  CHECK(r->meta_copies_written == 3);
  REQUIRE(seen.size() == 3);
  CHECK(seen.back().chunks_done == 3);
  CHECK(seen.back().chunks_total == 3);
  v.CheckConverted();
  for (const VolumeMeta& m : v.Metas()) {
    CHECK(m.geometry.format == kFormat2);
    CHECK(m.serial == 2);
    CHECK(m.geometry.size == v.meta.geometry.size);
  }
  CHECK(EncodeVolumeMeta(v.Metas()[0]).find("block_meta_size = 32") != std::string::npos);

  SUBCASE("and a second run changes nothing") {
    const auto before = v.Snapshot();
    VolumeMeta now = v.Metas()[0];
    auto again = ConvertVolume(now, v.parts);
    REQUIRE(again.ok());
    CHECK(again->already_converted);
    CHECK(again->meta_copies_written == 0);
    CHECK(v.Snapshot() == before);
  }
  SUBCASE("and a second run rewrites a .meta copy left older") {
    VolumeMeta old = v.meta;
    REQUIRE(WriteFileAtomic(v.mem[1], MetaPath(kVol), EncodeVolumeMeta(old)).ok());
    auto again = ConvertVolume(v.Metas()[0], v.parts);
    REQUIRE(again.ok());
    CHECK(again->already_converted);
    CHECK(again->meta_copies_written == 1);
    CHECK(v.Metas()[1].geometry.format == kFormat2);
  }
}

TEST_CASE("convert takes a block that fails its check on one part from another part") {
  QuietLog quiet;
  Volume1 v;
  // Part b, chunk file 2, block 4: one data byte flipped.
  REQUIRE(FlipByte(v.mem[1], ChunkPath(kVol, 'b', 1), v.g1.RecordOffset(4) + 100).ok());
  SUBCASE("a short file is rebuilt whole from the others") {
    REQUIRE(WriteWholeFile(v.mem[2], ChunkPath(kVol, 'c', 3), std::vector<std::byte>(1000)).ok());
  }
  auto r = ConvertVolume(v.meta, v.parts);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->blocks_from_other >= 1);
  bool noted = false;
  for (const std::string& n : r->notes) {
    noted =
        noted ||
        n == "volume v chunk file 2 part b: 1 block(s) failed their check (4): taken from part a";
  }
  CHECK(noted);
  v.CheckConverted();
}

TEST_CASE("convert refuses a block without a good copy and leaves its chunk's files intact") {
  QuietLog quiet;
  Volume1 v;
  for (int p = 0; p < 3; ++p) {
    REQUIRE(
        FlipByte(v.mem[p], ChunkPath(kVol, static_cast<char>('a' + p), 3), v.g1.RecordOffset(5) + 7)
            .ok());
  }
  const auto before = v.Snapshot();
  auto r = ConvertVolume(v.meta, v.parts);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().IsCorruption());
  CHECK(r.status().message().find("volume v chunk file 4 block 5: no good copy on any part") !=
        std::string::npos);
  // Chunks 1 and 2 were converted before; chunk file 4 is as it was, on every part, and no
  // temporary file is left. `.meta` still says format 1.
  for (int p = 0; p < 3; ++p) {
    const std::string f = ChunkPath(kVol, static_cast<char>('a' + p), 3);
    CHECK(v.mem[p].Contents(f).value() == before.at(fmt::format("{}:{}", p, f)));
    CHECK(v.FileSize(p, 0) == v.g2.ChunkFileSize());
    for (const std::string& name : v.mem[p].FilePaths())
      CHECK(name.find(".tmp") == std::string::npos);
  }
  for (const VolumeMeta& m : v.Metas()) CHECK(m.geometry.format == kFormat1);
}

TEST_CASE("convert resumes after a failure midway and a crash") {
  QuietLog quiet;
  Volume1 v;
  // The second publication on part b fails: chunk 1 is converted everywhere, chunk 2 on part a.
  v.faulty[1]->FailNth(2, FaultyBackend::kRename, "7/b/");
  auto r = ConvertVolume(v.meta, v.parts);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().IsIOError());
  for (const VolumeMeta& m : v.Metas()) CHECK(m.geometry.format == kFormat1);
  CHECK(v.FileSize(0, 0) == v.g2.ChunkFileSize());
  CHECK(v.FileSize(0, 1) == v.g2.ChunkFileSize());
  CHECK(v.FileSize(1, 1) == v.g1.ChunkFileSize());
  CHECK(v.FileSize(2, 1) == v.g1.ChunkFileSize());
  CHECK(v.FileSize(0, 3) == v.g1.ChunkFileSize());
  for (MemBackend& m : v.mem) m.DropUnsynced();  // what was published survives a crash
  CHECK(v.FileSize(0, 1) == v.g2.ChunkFileSize());
  v.faulty[1]->ClearFaults();
  SUBCASE("a converted file damaged meanwhile has its block fixed in place") {
    REQUIRE(FlipByte(v.mem[0], ChunkPath(kVol, 'a', 1), v.g2.DataOffset(7) + 1).ok());
  }
  auto again = ConvertVolume(v.meta, v.parts);
  REQUIRE_MESSAGE(again.ok(), again.status().ToString());
  CHECK(again->files_kept == 4);  // chunk 1 on a, b, c and chunk 2 on a
  CHECK(again->files_converted == 5);
  v.CheckConverted();
  for (const VolumeMeta& m : v.Metas()) CHECK(m.geometry.format == kFormat2);
}

TEST_CASE("CheckNotServed refuses a volume that a master has open or holds the lease of") {
  Volume1 v;
  const LeaseIdentity self =
      LeaseIdentity::ForThisProcess("/etc/qbd/qbd.conf", "/tmp/qbd-convert-test.sock");
  CHECK(CheckNotServed(v.meta, v.parts, self).ok());
  SUBCASE(".running on one part") {
    REQUIRE(WriteFileAtomic(v.mem[2], "7/.running", "# open\n").ok());
    Status s = CheckNotServed(v.meta, v.parts, self);
    CHECK(s.IsUnavailable());
    CHECK(s.message().find("mem:c/7/.running is present") != std::string::npos);
  }
  SUBCASE("another master's .owner") {
    LeaseRecord other;
    other.who = LeaseIdentity::ForThisProcess("/etc/qbd/other.conf", "/tmp/qbd-other.sock");
    other.volnr = kVol;
    other.counter = 3;
    other.lease_ms = 10000;
    other.renew_ms = 2000;
    REQUIRE(WriteFileAtomic(v.mem[0], LeasePath(kVol), other.Encode()).ok());
    Status s = CheckNotServed(v.meta, v.parts, self);
    CHECK(s.IsUnavailable());
    CHECK(s.message().find("holds its lease") != std::string::npos);
  }
}

TEST_CASE("ChunkFileGeometry reads a file of format 2's size as format 2") {
  Volume1 v;
  CHECK(ChunkFileGeometry(v.g1, v.g2.ChunkFileSize()).format == kFormat2);
  CHECK(ChunkFileGeometry(v.g1, v.g1.ChunkFileSize()).format == kFormat1);
  CHECK(ChunkFileGeometry(v.g1, 1000).format == kFormat1);
  CHECK(ChunkFileGeometry(v.g2, 1000).format == kFormat2);
}
}  // TEST_SUITE("convert")

}  // namespace qbd::test
