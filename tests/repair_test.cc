// Tests of chunk repair (QuorumSet::RepairChunk in include/qbd/quorum.h) and of the lock that
// keeps one process in charge of a configuration (include/qbd/process_lock.h). Repair runs over three PartStores on MemBackends (each behind a FaultyBackend): a 256 KiB
// volume of 64 KiB chunks (16 blocks of 4 KiB), 16 KiB dirty regions (4 blocks). Chunk 1 (file
// "7/<part>/2") is written in blocks 0-11 (blocks 4-5 twice, with a newer generation), blocks
// 12-15 stay unwritten; each test damages chosen bytes and expects an exact report.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "qbd/process_lock.h"
#include "qbd/backend.h"
#include "qbd/chunk_format.h"
#include "qbd/dirty_map.h"
#include "qbd/log.h"
#include "qbd/part_store.h"
#include "qbd/quorum.h"
#include "testutil/random_bytes.h"
#include "testutil/mem_backend.h"
#include "testutil/tagged_blocks.h"
#include "testutil/temp_dir.h"

namespace qbd::test {
namespace {

constexpr uint32_t kVol = 7;
constexpr uint32_t kBs = 4096;
constexpr uint64_t kChunk = 64 * 1024;
constexpr uint64_t kSize = 256 * 1024;
constexpr uint32_t kRegion = 16 * 1024;
constexpr uint64_t kRegions = kSize / kRegion;
constexpr uint64_t kBlocks = kChunk / kBs;  // blocks per chunk
constexpr int kParts = 3;
constexpr uint64_t kC = 1;  // the chunk under test (file "7/<part>/2")

Geometry Geo() { return Geometry{kSize, kBs, kChunk}; }
// A block as repair reads and writes it: its data and its slot pair (format 2).
constexpr uint64_t kRec = kBs + kSlotPairSize;

// Device offset of block `block` of chunk `chunk`.
uint64_t Off(uint64_t chunk, uint64_t block) { return chunk * kChunk + block * kBs; }
// Byte offset of byte `x` of block `block`'s data in a chunk file.
uint64_t DataAt(uint64_t block, uint64_t x = 0) {
  REQUIRE(x < kBs);
  return Geo().DataOffset(block) + x;
}

std::vector<uint64_t> Range(uint64_t first, uint64_t end) {
  std::vector<uint64_t> v;
  for (uint64_t b = first; b < end; ++b) v.push_back(b);
  return v;
}

// One action as text, for readable failures: "b<-a whole missing [2,7] err=...".
std::string Show(const RepairAction& a) {
  return fmt::format("{}<-{} {} {} [{}] err={}", a.target, a.sources,
                     a.whole_file ? "whole" : "blocks", a.reason, fmt::join(a.blocks, ","),
                     a.error);
}
std::string Show(const ChunkRepairReport& r) {
  std::string s = fmt::format("chunk {} lost [{}] unknown [{}]", r.chunk, fmt::join(r.lost, ","),
                              fmt::join(r.unknown, ","));
  for (const RepairAction& a : r.actions) s += "; " + Show(a);
  for (const std::string& n : r.notes) s += "; note: " + n;
  return s;
}

using Snapshot = std::map<std::string, std::vector<std::byte>>;

// Three parts of volume 7 and the QuorumSet over them (no resync thread), with chunk kC written.
class Cluster {
 public:
  explicit Cluster(uint32_t write_quorum = 2) : write_quorum_(write_quorum) {
    for (int i = 0; i < kParts; ++i) {
      mem_[i] = std::make_unique<MemBackend>(fmt::format("part-{}", Letter(i)));
      faulty_[i] = std::make_unique<FaultyBackend>(*mem_[i]);
    }
    for (int h = 0; h < kParts; ++h) {
      REQUIRE(mem_[h]->MkDirs(std::to_string(kVol)).ok());
      for (int p = 0; p < kParts; ++p) {
        if (p == h) continue;
        REQUIRE(WriteFileAtomic(*mem_[h], DirtyMap::PathFor(kVol, Letter(p)),
                                DirtyMap(kRegion, kRegions).Encode())
                    .ok());
      }
    }
    Open();
    // Chunk kC: blocks 0-11, then 4-5 again (a newer generation); 12-15 unwritten. One block of
    // chunk 0 and of chunk 2 too, so that other chunks' files exist.
    Write(Off(kC, 0), RandomBytes(1, 12 * kBs));
    Write(Off(kC, 4), RandomBytes(2, 2 * kBs));
    Write(Off(0, 3), RandomBytes(3, kBs));
    Write(Off(2, 9), RandomBytes(4, kBs));
    REQUIRE(q().Flush().ok());
    REQUIRE(q().ChunkWritten(kC));
    for (int p = 1; p < kParts; ++p) REQUIRE(Raw(p, kC) == Raw(0, kC));
  }
  ~Cluster() { q_.reset(); }

  static char Letter(int i) { return static_cast<char>('a' + i); }

  // (Re)opens the volume over the same backends: dirty maps from the persisted copies, no chunk
  // map (as a volume made before layout-spec.md §6 has none).
  void Open() {
    q_.reset();
    std::vector<std::unique_ptr<PartStore>> stores;
    std::vector<std::unique_ptr<DirtyMap>> dirty;
    for (int i = 0; i < kParts; ++i) {
      stores.push_back(std::make_unique<PartStore>(*faulty_[i], kVol, Letter(i), Geo()));
      dirty.push_back(LoadDirty(i));
    }
    QuorumOptions o;
    o.volume = "vol7";
    o.volnr = kVol;
    o.geometry = Geo();
    o.write_quorum = write_quorum_;
    o.epoch = ++epoch_;
    o.region_size = kRegion;
    o.start_resync_thread = false;
    q_ = std::make_unique<QuorumSet>(o, std::move(stores), std::move(dirty));
    REQUIRE(q_->region_size() == kRegion);
  }

  QuorumSet& q() { return *q_; }
  MemBackend& mem(int i) { return *mem_[i]; }
  FaultyBackend& faulty(int i) { return *faulty_[i]; }

  void Write(uint64_t off, const std::vector<std::byte>& data) {
    Status s = q_->Write(off, data, /*fua=*/false);
    REQUIRE_MESSAGE(s.ok(), s.ToString());
  }
  std::vector<std::byte> ReadBack(uint64_t off, uint64_t len) {
    std::vector<std::byte> got(len);
    Status s = q_->Read(off, got);
    REQUIRE_MESSAGE(s.ok(), s.ToString());
    return got;
  }

  std::string ChunkFile(int part, uint64_t chunk = kC) const {
    return ChunkPath(kVol, Letter(part), chunk);
  }
  // The chunk file's bytes; empty when absent.
  std::vector<std::byte> Raw(int part, uint64_t chunk = kC) const {
    auto r = mem_[part]->Contents(ChunkFile(part, chunk));
    return r.ok() ? std::move(r).value() : std::vector<std::byte>{};
  }
  bool Has(int part, uint64_t chunk = kC) const {
    return mem_[part]->Exists(ChunkFile(part, chunk));
  }
  // What block `block`'s slot pair on `part` says about its data; the block must pass its check.
  BlockMeta StoredMeta(int part, uint64_t block) const {
    std::vector<std::byte> raw = Raw(part);
    REQUIRE(raw.size() == Geo().ChunkFileSize());
    const SlotVerdict v = StoredSlots(raw, Geo(), BlockAddress{kVol, kC, block});
    CHECK_MESSAGE(v.good, "part ", part, " block ", block, " fails its check");
    return v.meta;
  }

  // Every file of every part, with its bytes.
  std::array<Snapshot, kParts> Files() const {
    std::array<Snapshot, kParts> out;
    for (int p = 0; p < kParts; ++p) {
      for (const std::string& path : mem_[p]->FilePaths()) {
        auto c = mem_[p]->Contents(path);
        REQUIRE(c.ok());
        out[p][path] = std::move(c).value();
      }
    }
    return out;
  }

  // Whether the copy of `part`'s dirty map on `holder` has `region` set.
  bool PersistedDirty(int holder, int part, uint64_t region) {
    auto text = ReadSmallFile(*mem_[holder], DirtyMap::PathFor(kVol, Letter(part)));
    REQUIRE(text.ok());
    auto m =
        DirtyMap::Decode(std::as_bytes(std::span<const char>(*text)), kRegion, kRegions, "dirty");
    REQUIRE(m.ok());
    return (*m)->Test(region);
  }

  ChunkRepairReport Repair(RepairOptions o = {}, uint64_t chunk = kC) {
    auto r = q_->RepairChunk(chunk, o);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    return std::move(r).value();
  }

 private:
  std::unique_ptr<DirtyMap> LoadDirty(int p) {
    auto m = std::make_unique<DirtyMap>(kRegion, kRegions);
    for (int h = 0; h < kParts; ++h) {
      if (h == p) continue;
      auto text = ReadSmallFile(*mem_[h], DirtyMap::PathFor(kVol, Letter(p)));
      if (!text.ok()) continue;
      auto copy =
          DirtyMap::Decode(std::as_bytes(std::span<const char>(*text)), kRegion, kRegions, "dirty");
      REQUIRE(copy.ok());
      m->Merge(**copy);
    }
    return m;
  }

  QuietLog quiet_;
  const uint32_t write_quorum_;
  uint64_t epoch_ = 0;
  std::array<std::unique_ptr<MemBackend>, kParts> mem_;
  std::array<std::unique_ptr<FaultyBackend>, kParts> faulty_;
  std::unique_ptr<QuorumSet> q_;  // last: destroyed first
};

// The region number (of the device) holding block `block` of chunk kC.
uint64_t RegionOfBlock(uint64_t block) { return Off(kC, block) / kRegion; }

bool OnlyFrom(const std::string& sources, const std::string& allowed) {
  return !sources.empty() && std::all_of(sources.begin(), sources.end(), [&](char c) {
    return allowed.find(c) != std::string::npos;
  });
}

void CheckDone(const ChunkRepairReport& r) {
  for (const RepairAction& a : r.actions) CHECK_MESSAGE(a.error.empty(), Show(a));
}

}  // namespace

TEST_SUITE("repair") {
TEST_CASE("RepairChunk reports a clean chunk and changes no file when every copy is good") {
  Cluster c;
  const auto before = c.Files();
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  CHECK(r.Clean());
  CHECK(r.chunk == kC + 1);
  CHECK(r.actions.empty());
  CHECK(r.lost.empty());
  CHECK(r.unknown.empty());
  CHECK(r.notes.empty());
  CHECK(r.bytes_written == 0);
  REQUIRE(Geo().RecordSize() == kRec);
  CHECK(r.bytes_read == kParts * kBlocks * kRec);
  CHECK(c.Files() == before);
}

TEST_CASE("RepairChunk changes nothing when the chunk was never written") {
  Cluster c;
  const auto before = c.Files();
  ChunkRepairReport r = c.Repair({}, /*chunk=*/3);
  INFO(Show(r));
  CHECK(r.Clean());
  CHECK(r.notes.empty());
  CHECK(c.Files() == before);
  CHECK_FALSE(c.q().ChunkWritten(3));
}

TEST_CASE("RepairChunk returns InvalidArgument when the chunk is past the end") {
  Cluster c;
  auto r = c.q().RepairChunk(kSize / kChunk, {});
  CHECK(r.status().IsInvalidArgument());
}

TEST_CASE("RepairChunk rebuilds the whole file when a part lacks its chunk file") {
  Cluster c;
  REQUIRE(c.mem(1).Remove(c.ChunkFile(1)).ok());
  const auto before = c.Files();
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  REQUIRE(r.actions.size() == 1);
  const RepairAction& a = r.actions[0];
  CHECK(a.target == 'b');
  CHECK(a.whole_file);
  CHECK(a.reason == "missing");
  CHECK_MESSAGE(OnlyFrom(a.sources, "ac"), a.sources);
  CHECK(a.blocks.empty());
  CHECK(a.error.empty());
  CHECK(r.lost.empty());
  CHECK(r.unknown.empty());
  CHECK(r.notes.empty());
  CHECK(r.bytes_written > 0);
  CHECK(c.Raw(1) == c.Raw(0));
  // Nothing else changed on any part, and no temp file is left.
  auto after = c.Files();
  after[1].erase(c.ChunkFile(1));
  CHECK(after == before);
  CHECK(c.Repair().Clean());
}

TEST_CASE("RepairChunk rebuilds the whole file when a part's chunk file has the wrong size") {
  Cluster c;
  std::vector<std::byte> raw = c.Raw(2);
  std::string reason;
  SUBCASE("short") {
    raw.resize(raw.size() / 2 + 7);
    reason = "short";
  }
  SUBCASE("long") {
    raw.resize(raw.size() + kRec, std::byte{0});
    reason = "long";
  }
  REQUIRE(WriteWholeFile(c.mem(2), c.ChunkFile(2), raw).ok());
  const auto before = c.Files();
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  REQUIRE(r.actions.size() == 1);
  const RepairAction& a = r.actions[0];
  CHECK(a.target == 'c');
  CHECK(a.whole_file);
  CHECK(a.reason == reason);
  CHECK_MESSAGE(OnlyFrom(a.sources, "ab"), a.sources);
  CHECK(a.blocks.empty());
  CHECK(a.error.empty());
  CHECK(r.lost.empty());
  CHECK(c.Raw(2) == c.Raw(0));
  auto after = c.Files();
  after[2].erase(c.ChunkFile(2));
  auto expected = before;
  expected[2].erase(c.ChunkFile(2));
  CHECK(after == expected);  // no temp file left, nothing else touched
  CHECK(c.Repair().Clean());
}

TEST_CASE("RepairChunk rewrites exactly the corrupt blocks in place when data bytes flipped") {
  Cluster c;
  REQUIRE(FlipByte(c.mem(0), c.ChunkFile(0), DataAt(2, 100)).ok());
  REQUIRE(FlipByte(c.mem(0), c.ChunkFile(0), DataAt(7, kBs - 1), std::byte{0x80}).ok());
  REQUIRE(c.Raw(0) != c.Raw(1));
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  REQUIRE(r.actions.size() == 1);
  const RepairAction& a = r.actions[0];
  CHECK(a.target == 'a');
  CHECK_FALSE(a.whole_file);
  CHECK(a.reason == "corrupt");
  CHECK(a.blocks == std::vector<uint64_t>{2, 7});
  CHECK_MESSAGE(OnlyFrom(a.sources, "bc"), a.sources);
  CHECK(a.error.empty());
  CHECK(r.lost.empty());
  CHECK(r.bytes_written == 2 * kRec);
  CHECK(c.Raw(0) == c.Raw(1));
  CHECK(c.Raw(2) == c.Raw(1));
  CHECK(c.Repair().Clean());
}

TEST_CASE("RepairChunk rewrites the old blocks when a part's copy is stale") {
  Cluster c;
  const std::vector<std::byte> old_b = c.Raw(1);
  const std::vector<std::byte> fresh = RandomBytes(9, 2 * kBs);
  c.Write(Off(kC, 3), fresh);
  REQUIRE(c.q().Flush().ok());
  REQUIRE(WriteWholeFile(c.mem(1), c.ChunkFile(1), old_b).ok());  // b's copy goes back in time
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  REQUIRE(r.actions.size() == 1);
  const RepairAction& a = r.actions[0];
  CHECK(a.target == 'b');
  CHECK_FALSE(a.whole_file);
  CHECK(a.reason == "stale");
  CHECK(a.blocks == std::vector<uint64_t>{3, 4});
  CHECK_MESSAGE(OnlyFrom(a.sources, "ac"), a.sources);
  CHECK(a.error.empty());
  CHECK(r.lost.empty());
  CHECK(c.Raw(1) == c.Raw(0));
  CHECK(c.Repair().Clean());
  CHECK(c.ReadBack(Off(kC, 3), 2 * kBs) == fresh);
  c.q().TEST_SetPartUp(0, false);
  c.q().TEST_SetPartUp(2, false);
  CHECK(c.ReadBack(Off(kC, 3), 2 * kBs) == fresh);  // from part b alone
}

TEST_CASE("RepairChunk reports the same actions but writes nothing when dry_run is set") {
  Cluster c;
  REQUIRE(c.mem(1).Remove(c.ChunkFile(1)).ok());
  REQUIRE(FlipByte(c.mem(0), c.ChunkFile(0), DataAt(2, 100)).ok());
  REQUIRE(FlipByte(c.mem(0), c.ChunkFile(0), DataAt(7, 5)).ok());
  const auto before = c.Files();
  RepairOptions dry;
  dry.dry_run = true;
  ChunkRepairReport plan = c.Repair(dry);
  INFO(Show(plan));
  CHECK(c.Files() == before);
  CHECK(plan.bytes_written == 0);
  REQUIRE(plan.actions.size() == 2);
  CHECK(plan.actions[0].target == 'a');
  CHECK(plan.actions[0].reason == "corrupt");
  CHECK(plan.actions[0].blocks == std::vector<uint64_t>{2, 7});
  CHECK_FALSE(plan.actions[0].whole_file);
  CHECK(plan.actions[1].target == 'b');
  CHECK(plan.actions[1].reason == "missing");
  CHECK(plan.actions[1].whole_file);
  // A second plan is the same, and the real repair does what was planned.
  ChunkRepairReport again = c.Repair(dry);
  ChunkRepairReport done = c.Repair();
  REQUIRE(again.actions.size() == plan.actions.size());
  REQUIRE(done.actions.size() == plan.actions.size());
  for (size_t i = 0; i < plan.actions.size(); ++i) {
    CHECK(Show(again.actions[i]) == Show(plan.actions[i]));
    CHECK(Show(done.actions[i]) == Show(plan.actions[i]));
  }
  CHECK(done.lost == plan.lost);
  CHECK(c.Raw(0) == c.Raw(2));
  CHECK(c.Raw(1) == c.Raw(2));
}

TEST_CASE("RepairChunk leaves a part alone when targets excludes it") {
  Cluster c;
  RepairOptions o;
  o.targets = (1u << 0) | (1u << 2);  // a and c
  SUBCASE("its chunk file deleted") { REQUIRE(c.mem(1).Remove(c.ChunkFile(1)).ok()); }
  SUBCASE("a block of it corrupt") {
    REQUIRE(FlipByte(c.mem(1), c.ChunkFile(1), DataAt(5, 9)).ok());
  }
  REQUIRE(FlipByte(c.mem(0), c.ChunkFile(0), DataAt(7, 1)).ok());  // a is a target
  const auto before = c.Files();
  ChunkRepairReport r = c.Repair(o);
  INFO(Show(r));
  for (const RepairAction& a : r.actions) CHECK_MESSAGE(a.target != 'b', Show(a));
  REQUIRE(r.actions.size() == 1);
  CHECK(r.actions[0].target == 'a');
  CHECK(r.actions[0].blocks == std::vector<uint64_t>{7});
  CheckDone(r);
  auto after = c.Files();
  CHECK(after[1] == before[1]);
  CHECK(after[2] == before[2]);
  CHECK(c.Raw(0) == c.Raw(2));
}

TEST_CASE(
    "RepairChunk reports a block lost and leaves its copies as they are when it is corrupt on "
    "every part") {
  Cluster c;
  for (int p = 0; p < kParts; ++p) {
    REQUIRE(FlipByte(c.mem(p), c.ChunkFile(p), DataAt(5, 10 + p)).ok());
  }
  const auto before = c.Files();
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  CHECK(r.lost == std::vector<uint64_t>{5});
  CHECK(r.unknown.empty());
  for (const RepairAction& a : r.actions) {
    CHECK_MESSAGE(std::find(a.blocks.begin(), a.blocks.end(), 5) == a.blocks.end(), Show(a));
    CHECK_FALSE(a.whole_file);
  }
  CHECK(r.actions.empty());
  CHECK_FALSE(r.Clean());
  CHECK(c.Files() == before);
  SUBCASE("and a part's rebuilt file keeps a damaged copy of it rather than an unwritten block") {
    REQUIRE(c.mem(2).Remove(c.ChunkFile(2)).ok());
    ChunkRepairReport w = c.Repair();
    INFO(Show(w));
    CHECK(w.lost == std::vector<uint64_t>{5});
    REQUIRE(w.actions.size() == 1);
    CHECK(w.actions[0].target == 'c');
    CHECK(w.actions[0].whole_file);
    // Block 5 of the rebuilt file is a damaged copy, its data and slot pair as another part
    // holds them: not an empty pair (unwritten).
    const std::vector<std::byte> rebuilt = c.Raw(2);
    REQUIRE(rebuilt.size() == Geo().ChunkFileSize());
    auto same_block = [&](const std::vector<std::byte>& x, const std::vector<std::byte>& y) {
      return std::equal(x.begin() + Geo().DataOffset(5), x.begin() + Geo().DataOffset(6), y.begin() + Geo().DataOffset(5)) &&
             std::equal(x.begin() + Geo().MetaOffset(5), x.begin() + Geo().MetaOffset(6), y.begin() + Geo().MetaOffset(5));
    };
    CHECK((same_block(rebuilt, c.Raw(0)) || same_block(rebuilt, c.Raw(1))));
    CHECK_FALSE(SlotEmpty(rebuilt.data() + Geo().MetaOffset(5)));
    CHECK_FALSE(StoredSlots(rebuilt, Geo(), BlockAddress{kVol, kC, 5}).good);
    CHECK(c.Repair().lost == std::vector<uint64_t>{5});
  }
}

TEST_CASE(
    "RepairChunk reports every block lost and creates no file when the chunk file is gone from "
    "every part") {
  Cluster c;
  REQUIRE(c.q().ChunkWritten(kC));
  for (int p = 0; p < kParts; ++p) REQUIRE(c.mem(p).Remove(c.ChunkFile(p)).ok());
  const auto before = c.Files();
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  CHECK(r.lost == Range(0, kBlocks));
  CHECK(r.unknown.empty());
  CHECK(r.actions.empty());
  CHECK(r.bytes_written == 0);
  CHECK(r.notes.size() == 1);
  for (int p = 0; p < kParts; ++p) CHECK_FALSE(c.Has(p));
  CHECK(c.Files() == before);
}

TEST_CASE("RepairChunk adds the chunk to the chunk map when files exist but the map lacks it") {
  Cluster c;
  c.Open();  // the new QuorumSet gets no chunk map
  REQUIRE_FALSE(c.q().ChunkWritten(kC));
  RepairOptions dry;
  dry.dry_run = true;
  ChunkRepairReport plan = c.Repair(dry);
  INFO(Show(plan));
  CHECK(plan.actions.empty());
  CHECK(plan.notes ==
        std::vector<std::string>{"the chunk map lacks this chunk: it would be added"});
  CHECK_FALSE(c.q().ChunkWritten(kC));
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  CHECK(r.actions.empty());
  CHECK(r.notes == std::vector<std::string>{"added to the chunk map"});
  CHECK(c.q().ChunkWritten(kC));
}

TEST_CASE(
    "RepairChunk rewrites the blocks a part missed and clears its dirty region when it was down") {
  Cluster c;
  const std::vector<std::byte> fresh = RandomBytes(11, 2 * kBs);
  std::string reason;
  SUBCASE("while it had the chunk file") { reason = "stale"; }
  SUBCASE("before it had the chunk file") {
    REQUIRE(c.mem(2).Remove(c.ChunkFile(2)).ok());
    reason = "missing";
  }
  c.q().MarkPartDown(2, Status::IOError("test: part c down"));
  c.Write(Off(kC, 5), fresh);  // blocks 5-6: region of blocks 4-7
  REQUIRE(c.q().Flush().ok());
  REQUIRE(c.q().DirtyRegions(2) == 1);
  REQUIRE(c.PersistedDirty(0, 2, RegionOfBlock(5)));
  c.q().TEST_SetPartUp(2, true);
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  REQUIRE(r.actions.size() == 1);
  const RepairAction& a = r.actions[0];
  CHECK(a.target == 'c');
  CHECK(a.reason == reason);
  CHECK(a.whole_file == (reason == "missing"));
  if (!a.whole_file) CHECK(a.blocks == std::vector<uint64_t>{5, 6});
  CHECK_MESSAGE(OnlyFrom(a.sources, "ab"), a.sources);
  CheckDone(r);
  CHECK(r.lost.empty());
  CHECK(r.unknown.empty());
  CHECK(c.q().DirtyRegions(2) == 0);
  CHECK_FALSE(c.PersistedDirty(0, 2, RegionOfBlock(5)));
  CHECK_FALSE(c.PersistedDirty(1, 2, RegionOfBlock(5)));
  CHECK(c.Raw(2) == c.Raw(0));
  c.q().TEST_SetPartUp(0, false);
  c.q().TEST_SetPartUp(1, false);
  CHECK(c.ReadBack(Off(kC, 5), 2 * kBs) == fresh);  // from part c alone
}

TEST_CASE("RepairChunk keeps a dirty region when the dry_run leaves the copy as it is") {
  Cluster c;
  c.q().MarkPartDown(2, Status::IOError("test: part c down"));
  c.Write(Off(kC, 5), RandomBytes(12, kBs));
  c.q().TEST_SetPartUp(2, true);
  RepairOptions dry;
  dry.dry_run = true;
  ChunkRepairReport r = c.Repair(dry);
  INFO(Show(r));
  REQUIRE(r.actions.size() == 1);
  CHECK(r.actions[0].blocks == std::vector<uint64_t>{5});
  CHECK(c.q().DirtyRegions(2) == 1);
}

TEST_CASE(
    "RepairChunk reports a part down in notes and a block unknown when no good copy is in reach") {
  Cluster c;
  REQUIRE(FlipByte(c.mem(0), c.ChunkFile(0), DataAt(3, 1)).ok());
  REQUIRE(FlipByte(c.mem(1), c.ChunkFile(1), DataAt(3, 2)).ok());
  const auto before = c.Files();
  c.q().TEST_SetPartUp(2, false);
  c.faulty(2).FailMatching("", FaultyBackend::kStat);  // still out of reach when repair looks
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  CHECK(r.unknown == std::vector<uint64_t>{3});
  CHECK(r.lost.empty());
  CHECK(r.actions.empty());
  CHECK(r.notes == std::vector<std::string>{"part c is down: not checked"});
  CHECK(c.Files() == before);
}

TEST_CASE(
    "RepairChunk reports the error and leaves the other parts alone when writing the target "
    "fails") {
  Cluster c;
  bool whole = false;
  SUBCASE("in-place block write fails") {
    REQUIRE(FlipByte(c.mem(1), c.ChunkFile(1), DataAt(2, 3)).ok());
    c.faulty(1).FailMatching("7/b/", FaultyBackend::kWrite);
  }
  SUBCASE("rename of the rebuilt file fails") {
    REQUIRE(c.mem(1).Remove(c.ChunkFile(1)).ok());
    c.faulty(1).FailMatching("7/b/", FaultyBackend::kRename);
    whole = true;
  }
  SUBCASE("sync of the rebuilt file fails") {
    REQUIRE(c.mem(1).Remove(c.ChunkFile(1)).ok());
    c.faulty(1).FailMatching("7/b/", FaultyBackend::kSync);
    whole = true;
  }
  REQUIRE(FlipByte(c.mem(2), c.ChunkFile(2), DataAt(9, 3)).ok());  // c's repair must still happen
  const auto before = c.Files();
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  CHECK(c.faulty(1).injected() >= 1);
  REQUIRE(r.actions.size() == 2);
  const RepairAction& b = r.actions[0];
  CHECK(b.target == 'b');
  CHECK(b.whole_file == whole);
  CHECK_FALSE(b.error.empty());
  const RepairAction& cc = r.actions[1];
  CHECK(cc.target == 'c');
  CHECK(cc.blocks == std::vector<uint64_t>{9});
  CHECK(cc.error.empty());
  auto after = c.Files();
  CHECK(after[0] == before[0]);
  CHECK(after[1] == before[1]);  // no temp file left, the damaged copy as it was
  CHECK(c.Raw(2) == c.Raw(0));
  // Once the backend works again, the repair finishes.
  c.faulty(1).ClearFaults();
  ChunkRepairReport again = c.Repair();
  CheckDone(again);
  CHECK(c.Raw(1) == c.Raw(0));
  CHECK(c.Repair().Clean());
}

// Regression: a part that is down is handed to JudgeCopies with its dirty bits, so that a block
// whose only clean part is down is unknown; it used to get a source among the dirty parts, whose
// copies were then rewritten from it (a trim undone, an older write restored) and their dirty
// bits cleared, so that resync never copied the clean part's data back.
TEST_CASE(
    "RepairChunk reports blocks unknown and keeps dirty regions when the only clean part is down") {
  std::vector<std::byte> before_c;
  std::unique_ptr<Cluster> cl;
  SUBCASE("a trim that b missed") {
    cl = std::make_unique<Cluster>(/*write_quorum=*/2);
    Cluster& c = *cl;
    c.q().MarkPartDown(1, Status::IOError("test: b down"));
    REQUIRE(c.q().Trim(Off(kC, 2), kBs, /*fua=*/false).ok());  // a and c: block 2 unwritten
    c.q().TEST_SetPartUp(1, true);
    c.q().MarkPartDown(2, Status::IOError("test: c down"));
    c.Write(Off(kC, 1), RandomBytes(20, kBs));  // a and b; same region as block 2
    c.q().TEST_SetPartUp(2, true);
    REQUIRE(c.StoredMeta(0, 2).IsUnwritten());
    REQUIRE(c.StoredMeta(2, 2).IsUnwritten());
    REQUIRE_FALSE(c.StoredMeta(1, 2).IsUnwritten());  // b still has the trimmed data
  }
  SUBCASE("a write that only a took (write quorum 1)") {
    cl = std::make_unique<Cluster>(/*write_quorum=*/1);
    Cluster& c = *cl;
    c.q().MarkPartDown(2, Status::IOError("test: c down"));
    c.Write(Off(kC, 2), RandomBytes(21, kBs));  // a and b
    c.q().MarkPartDown(1, Status::IOError("test: b down"));
    c.Write(Off(kC, 2), RandomBytes(22, kBs));  // a only: the newest acknowledged data
    c.q().TEST_SetPartUp(1, true);
    c.q().TEST_SetPartUp(2, true);
  }
  Cluster& c = *cl;
  REQUIRE(c.q().Flush().ok());
  REQUIRE(c.q().DirtyRegions(0) == 0);
  REQUIRE(c.q().DirtyRegions(1) == 1);
  REQUIRE(c.q().DirtyRegions(2) == 1);
  c.q().TEST_SetPartUp(0, false);  // the only clean copy of the region is out of reach
  c.faulty(0).FailMatching("", FaultyBackend::kStat);  // and still when repair looks
  before_c = c.Raw(2);
  ChunkRepairReport r = c.Repair();
  INFO(Show(r));
  CHECK_MESSAGE(std::find(r.unknown.begin(), r.unknown.end(), 2) != r.unknown.end(), Show(r));
  for (const RepairAction& a : r.actions) {
    CHECK_MESSAGE(std::find(a.blocks.begin(), a.blocks.end(), 2) == a.blocks.end(), Show(a));
  }
  CHECK(c.Raw(2) == before_c);
  CHECK(c.q().DirtyRegions(1) == 1);
  CHECK(c.q().DirtyRegions(2) == 1);
}

TEST_CASE("ProcessLock::Acquire fails with Unavailable naming the holder when the lock is held") {
  TempDir dir("qbd-repair-test");
  const std::string path = dir.Sub("admin.sock.lock");
  auto first = ProcessLock::Acquire(path, "qbd-master test-holder");
  REQUIRE_MESSAGE(first.ok(), first.status().ToString());
  auto second = ProcessLock::Acquire(path, "qbd-repair");
  REQUIRE_FALSE(second.ok());
  const Status s = second.status();
  CHECK(s.IsUnavailable());
  CHECK_MESSAGE(s.message().find("qbd-master test-holder") != std::string::npos, s.ToString());
  CHECK_MESSAGE(s.message().find(std::to_string(::getpid())) != std::string::npos, s.ToString());
  first.value().reset();
  auto third = ProcessLock::Acquire(path, "qbd-repair");
  CHECK_MESSAGE(third.ok(), third.status().ToString());
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(text == fmt::format("qbd-repair (pid {})\n", ::getpid()));
}

TEST_CASE("ProcessLock::HeldBy names the holder while the lock is held, and nobody after") {
  TempDir dir("qbd-repair-test");
  const std::string path = dir.Sub("q.sock.lock");
  CHECK_FALSE(ProcessLock::HeldBy(path).has_value());  // no file yet
  auto held = ProcessLock::Acquire(path, "qbd-master test");
  REQUIRE(held.ok());
  auto who = ProcessLock::HeldBy(path);
  REQUIRE(who.has_value());
  CHECK(*who == fmt::format("qbd-master test (pid {})", ::getpid()));
  // Asking takes no lock: the holder's lock is still the only one, and a taker still fails.
  CHECK(ProcessLock::Acquire(path, "other").status().IsUnavailable());
  held.value().reset();
  CHECK_FALSE(ProcessLock::HeldBy(path).has_value());
  CHECK(ProcessLock::Acquire(path, "other").ok());
}
}  // TEST_SUITE("repair")

}  // namespace qbd::test
