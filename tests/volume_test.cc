#include "qbd/volume.h"

#include <doctest/doctest.h>

#include <vector>

#include "qbd/catalog.h"
#include "qbd/stats.h"
#include "testutil/mem_backend.h"
#include "testutil/tagged_blocks.h"

namespace qbd::test {
namespace {

VolumeMeta Meta() {
  VolumeMeta m;
  m.name = "v";
  m.number = 3;
  m.geometry.size = 8 << 20;
  m.geometry.block_size = 4096;
  m.geometry.chunk_size = 1 << 20;
  m.replicas = 3;
  return m;
}

struct Parts {
  MemBackend a{"a"}, b{"b"}, c{"c"};
  std::vector<StorageBackend*> all() { return {&a, &b, &c}; }
};

}  // namespace

TEST_SUITE("volume") {
TEST_CASE("Open assembles Stats over QuorumSet: a write is counted once and lands on every part") {
  Parts p;
  VolumeOpenOptions o;
  o.start_resync_thread = false;
  auto v = Volume::Open(Meta(), p.all(), o);
  REQUIRE(v.ok());
  std::vector<std::byte> buf(4096, std::byte{0x42});
  REQUIRE((*v)->handler()->Write(1 << 20, buf, false).ok());
  CHECK((*v)->stats().metrics().write.requests->Value() == 1);
  for (StorageBackend* b : p.all()) {
    auto raw = ReadWholeFile(*b, std::string("3/") + (b == &p.a ? "a" : b == &p.b ? "b" : "c") + "/2");
    REQUIRE(raw.ok());
    CHECK(raw->size() == Meta().geometry.ChunkFileSize());
    CHECK((*raw)[Meta().geometry.DataOffset(0)] == std::byte{0x42});
    // Block 0 of chunk 1 passes its check, under a generation of epoch 1.
    const SlotVerdict sv = StoredSlots(*raw, Meta().geometry, BlockAddress{3, 1, 0});
    CHECK(sv.good);
    CHECK((sv.meta.generation >> kGenerationBits) == 1);
  }
  CHECK((*v)->Close().ok());
}

TEST_CASE("Open raises the epoch on every part so that generations grow across restarts") {
  Parts p;
  VolumeOpenOptions o;
  o.start_resync_thread = false;
  std::vector<std::byte> buf(4096, std::byte{1});
  uint64_t gens[2] = {0, 0};
  for (int run = 0; run < 2; ++run) {
    auto v = Volume::Open(Meta(), p.all(), o);
    REQUIRE(v.ok());
    REQUIRE((*v)->handler()->Write(0, buf, true).ok());
    REQUIRE((*v)->Close().ok());
    auto raw = ReadWholeFile(p.b, "3/b/1");
    REQUIRE(raw.ok());
    // Block 0's generation, from its slot pair (the block must pass its check).
    const SlotVerdict sv = StoredSlots(*raw, Meta().geometry, BlockAddress{3, 0, 0});
    CHECK(sv.good);
    gens[run] = sv.meta.generation;
  }
  CHECK((gens[0] >> 40) == 1);
  CHECK((gens[1] >> 40) == 2);
  CHECK(gens[1] > gens[0]);
  auto epoch = ReadSmallFile(p.c, Catalog::EpochPath(3));
  REQUIRE(epoch.ok());
  CHECK(epoch->find("epoch = 2") != std::string::npos);
}

TEST_CASE("Open refuses a format-1 volume before it writes anything") {
  Parts p;
  VolumeMeta m = Meta();
  m.geometry.format = kFormat1;
  VolumeOpenOptions o;
  o.start_resync_thread = false;
  auto v = Volume::Open(m, p.all(), o);
  REQUIRE_FALSE(v.ok());
  CHECK(v.status().IsInvalidArgument());
  CHECK(v.status().message().find("format 1") != std::string::npos);
  for (MemBackend* b : {&p.a, &p.b, &p.c}) CHECK(b->FilePaths().empty());
}

TEST_CASE("Open fails naming the file when the only copy of a dirty map is damaged") {
  // Part a's map lives on b and c; c has none (missing), b's is garbage: no good copy.
  Parts p;
  REQUIRE(p.b.MkDirs("3").ok());
  REQUIRE(WriteFileAtomic(p.b, "3/.dirty-a", "not a dirty map").ok());
  VolumeOpenOptions o;
  o.start_resync_thread = false;
  auto v = Volume::Open(Meta(), p.all(), o);
  REQUIRE_FALSE(v.ok());
  CHECK(v.status().IsCorruption());
  CHECK(v.status().message().find("3/.dirty-a") != std::string::npos);
}

TEST_CASE("Open serves from the good copies and rewrites a bad copy when one backend's copy is damaged") {
  struct Damage {
    const char* name;
    const char* bytes;  // nullptr: the copy is removed
  };
  for (const char* path : {"3/.epoch", "3/.chunkmap", "3/.dirty-a"}) {
    for (const Damage& d : {Damage{"garbage", "epoch = x\n\xff garbage"}, Damage{"empty", ""},
                            Damage{"cut short", "# gen"}, Damage{"missing", nullptr}}) {
      CAPTURE(path);
      CAPTURE(d.name);
      Parts p;
      VolumeOpenOptions o;
      o.start_resync_thread = false;
      std::vector<std::byte> buf(4096, std::byte{0x42});
      {
        auto v = Volume::Open(Meta(), p.all(), o);
        REQUIRE(v.ok());
        REQUIRE((*v)->handler()->Write(1 << 20, buf, /*fua=*/true).ok());
        REQUIRE((*v)->Close().ok());
      }
      // Part a's dirty map lives on b and c only.
      MemBackend& good = std::string(path) == "3/.dirty-a" ? p.c : p.a;
      if (d.bytes) {
        REQUIRE(WriteFileAtomic(p.b, path, d.bytes).ok());
      } else {
        REQUIRE(p.b.Remove(path).ok());
      }
      auto v = Volume::Open(Meta(), p.all(), o);
      REQUIRE_MESSAGE(v.ok(), v.status().ToString());
      std::vector<std::byte> got(4096);
      REQUIRE((*v)->handler()->Read(1 << 20, got).ok());
      CHECK(got == buf);
      CHECK((*v)->quorum().ChunkWritten(1));
      // The bad copy was rewritten at open: it equals a good one again.
      auto fixed = ReadWholeFile(p.b, path);
      auto other = ReadWholeFile(good, path);
      REQUIRE(fixed.ok());
      REQUIRE(other.ok());
      CHECK(*fixed == *other);
      CHECK((*v)->Close().ok());
    }
  }
}

TEST_CASE("Open fails naming the file and writes nothing when two of three copies are malformed") {
  Parts p;
  VolumeOpenOptions o;
  o.start_resync_thread = false;
  {
    auto v = Volume::Open(Meta(), p.all(), o);
    REQUIRE(v.ok());
    REQUIRE((*v)->Close().ok());
  }
  std::string path = "3/.chunkmap", where = "mem:a/3/.chunkmap: ";
  SUBCASE(".epoch") {
    path = "3/.epoch";
    where = "mem:a/3/.epoch:1: ";
  }
  SUBCASE(".chunkmap") {}
  CAPTURE(path);
  REQUIRE(WriteFileAtomic(p.a, path, "garbage\n").ok());
  REQUIRE(WriteFileAtomic(p.b, path, "garbage\n").ok());
  const auto epoch_before = ReadWholeFile(p.c, "3/.epoch");
  auto v = Volume::Open(Meta(), p.all(), o);
  REQUIRE_FALSE(v.ok());
  CAPTURE(v.status().message());
  CHECK(v.status().message().rfind(where, 0) == 0);
  CHECK(v.status().message().find("no good majority") != std::string::npos);
  CHECK(ReadWholeFile(p.c, "3/.epoch").value() == epoch_before.value());
  CHECK_FALSE(p.a.Exists("3/.running"));
}
}  // TEST_SUITE("volume")

}  // namespace qbd::test
