// Tests of include/qbd/dirty_map.h: the in-memory bitmap and its file format (layout-spec.md §5).
#include "qbd/dirty_map.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace qbd::test {
namespace {

std::span<const std::byte> AsBytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

}  // namespace

TEST_SUITE("dirty_map") {
TEST_CASE("DirtyMap reports every region clean when it is new") {
  DirtyMap m(kDefaultDirtyRegion, 100);
  CHECK(m.region_size() == kDefaultDirtyRegion);
  CHECK(m.regions() == 100);
  CHECK(m.CountSet() == 0);
  CHECK_FALSE(m.NextSet(0).has_value());
  CHECK_FALSE(m.AnyIn(0, 99));
  for (uint64_t r = 0; r < 100; ++r) CHECK_FALSE(m.Test(r));
}

TEST_CASE("Set marks exactly the regions in [first, last]") {
  DirtyMap m(4096, 40);
  m.Set(5, 17);
  for (uint64_t r = 0; r < 40; ++r) {
    CAPTURE(r);
    CHECK(m.Test(r) == (r >= 5 && r <= 17));
  }
  CHECK(m.CountSet() == 13);
}

TEST_CASE("Set returns each changed bitmap byte once, in order") {
  DirtyMap m(4096, 64);
  CHECK(m.Set(3, 3) == std::vector<uint64_t>{0});
  CHECK(m.Set(3, 3).empty());                             // already set: nothing changed
  CHECK(m.Set(6, 17) == std::vector<uint64_t>{0, 1, 2});  // bytes 0, 1 and 2
  CHECK(m.Set(0, 23) == std::vector<uint64_t>{0, 2});     // byte 1 was full already
  CHECK(m.Set(8, 15).empty());                            // byte 1 is full already
  CHECK(m.Set(40, 40) == std::vector<uint64_t>{5});
}

TEST_CASE("Set ignores regions past the end of the map") {
  DirtyMap m(4096, 10);
  CHECK(m.Set(8, 100) == std::vector<uint64_t>{1});
  CHECK(m.CountSet() == 2);
  CHECK(m.Set(10, 20).empty());
  CHECK_FALSE(m.Test(10));
  CHECK_FALSE(m.Test(1000));
}

TEST_CASE("Clear returns true only when the region was set") {
  DirtyMap m(4096, 16);
  m.Set(4, 5);
  CHECK(m.Clear(4));
  CHECK_FALSE(m.Clear(4));
  CHECK_FALSE(m.Test(4));
  CHECK(m.Test(5));
  CHECK_FALSE(m.Clear(6));
  CHECK_FALSE(m.Clear(16));  // past the end
  CHECK(m.CountSet() == 1);
}

TEST_CASE("NextSet finds the first set region at or after from") {
  DirtyMap m(4096, 100);
  m.Set(0, 0);
  m.Set(9, 9);
  m.Set(63, 64);
  m.Set(99, 99);
  CHECK(m.NextSet(0) == 0u);
  CHECK(m.NextSet(1) == 9u);
  CHECK(m.NextSet(9) == 9u);
  CHECK(m.NextSet(10) == 63u);
  CHECK(m.NextSet(64) == 64u);
  CHECK(m.NextSet(65) == 99u);
  CHECK_FALSE(m.NextSet(100).has_value());
  CHECK_FALSE(m.NextSet(5000).has_value());
  std::vector<uint64_t> seen;
  for (auto r = m.NextSet(0); r; r = m.NextSet(*r + 1)) seen.push_back(*r);
  CHECK(seen == std::vector<uint64_t>{0, 9, 63, 64, 99});
}

TEST_CASE("AnyIn is true when one region of the range is set") {
  DirtyMap m(4096, 200);
  m.Set(77, 77);
  CHECK(m.AnyIn(77, 77));
  CHECK(m.AnyIn(0, 199));
  CHECK(m.AnyIn(64, 79));  // crosses an all-zero byte then the set bit
  CHECK(m.AnyIn(72, 200));
  CHECK_FALSE(m.AnyIn(0, 76));
  CHECK_FALSE(m.AnyIn(78, 199));
  CHECK_FALSE(m.AnyIn(80, 5000));
}

TEST_CASE("Test, AnyIn, NextSet and CountSet agree with a reference set for random updates") {
  const uint64_t seed = std::random_device{}();
  INFO("seed = " << seed);
  std::mt19937_64 rng(seed);
  const uint64_t regions = 1 + rng() % 300;
  DirtyMap m(4096, regions);
  std::set<uint64_t> ref;
  for (int op = 0; op < 500; ++op) {
    uint64_t a = rng() % regions, b = rng() % regions;
    if (a > b) std::swap(a, b);
    if (rng() % 3 == 0) {
      CHECK(m.Clear(a) == (ref.erase(a) == 1));
    } else {
      b = std::min(b, a + rng() % 20);
      m.Set(a, b);
      for (uint64_t r = a; r <= b; ++r) ref.insert(r);
    }
    const uint64_t x = rng() % regions, y = std::min(regions - 1, x + rng() % 40);
    auto it = ref.lower_bound(x);
    CHECK(m.AnyIn(x, y) == (it != ref.end() && *it <= y));
    CHECK(m.NextSet(x) == (it == ref.end() ? std::nullopt : std::optional<uint64_t>(*it)));
  }
  CHECK(m.CountSet() == ref.size());
  for (uint64_t r = 0; r < regions; ++r) CHECK(m.Test(r) == (ref.count(r) == 1));
}

TEST_CASE("Encode writes the 32-byte header then the bitmap, LSB first") {
  DirtyMap m(65536, 20);
  m.Set(0, 0);
  m.Set(9, 9);
  m.Set(19, 19);
  const std::string f = m.Encode();
  REQUIRE(f.size() == kDirtyHeaderSize + 3);
  CHECK(f.substr(0, 8) == "QBDDIRTY");
  const std::string header_rest(
      "\x01\x00\x00\x00"                   // format 1
      "\x00\x00\x01\x00"                   // region size 65536
      "\x14\x00\x00\x00\x00\x00\x00\x00"   // 20 regions
      "\x00\x00\x00\x00\x00\x00\x00\x00",  // reserved
      24);
  CHECK(f.substr(8, 24) == header_rest);
  CHECK(static_cast<uint8_t>(f[32]) == 0x01);  // region 0
  CHECK(static_cast<uint8_t>(f[33]) == 0x02);  // region 9
  CHECK(static_cast<uint8_t>(f[34]) == 0x08);  // region 19
  CHECK(m.Byte(1) == 0x02);
  CHECK(m.Byte(3) == 0);  // past the bitmap
}

TEST_CASE("Decode round-trips Encode") {
  DirtyMap m(4096, 77);
  m.Set(1, 3);
  m.Set(64, 76);
  const std::string f = m.Encode();
  auto got = DirtyMap::Decode(AsBytes(f), 4096, 77, "7/.dirty-b");
  REQUIRE(got.ok());
  const DirtyMap& d = **got;
  CHECK(d.regions() == 77);
  CHECK(d.region_size() == 4096);
  CHECK(d.CountSet() == m.CountSet());
  for (uint64_t r = 0; r < 77; ++r) CHECK(d.Test(r) == m.Test(r));
  CHECK(d.Encode() == f);
}

TEST_CASE("Decode returns Corruption naming the file when the magic is wrong") {
  std::string f = DirtyMap(4096, 8).Encode();
  f[0] = 'X';
  auto got = DirtyMap::Decode(AsBytes(f), 4096, 8, "7/.dirty-c");
  REQUIRE_FALSE(got.ok());
  CHECK(got.status().IsCorruption());
  CHECK(got.status().message().find("7/.dirty-c") != std::string::npos);
}

TEST_CASE("Decode returns Corruption when the file is shorter than the header") {
  std::string f = DirtyMap(4096, 8).Encode().substr(0, kDirtyHeaderSize - 1);
  auto got = DirtyMap::Decode(AsBytes(f), 4096, 8, "f");
  REQUIRE_FALSE(got.ok());
  CHECK(got.status().IsCorruption());
  CHECK(DirtyMap::Decode({}, 4096, 8, "f").status().IsCorruption());
}

TEST_CASE("Decode returns Corruption when the format or the region size differ") {
  std::string f = DirtyMap(4096, 8).Encode();
  SUBCASE("format 2") {
    f[8] = '\x02';
    auto got = DirtyMap::Decode(AsBytes(f), 4096, 8, "7/.dirty-a");
    CHECK(got.status().IsCorruption());
    CHECK(got.status().message().find("7/.dirty-a") != std::string::npos);
  }
  SUBCASE("region size 8192 where 4096 is expected") {
    auto got = DirtyMap::Decode(AsBytes(f), 8192, 8, "7/.dirty-a");
    CHECK(got.status().IsCorruption());
    CHECK(got.status().message().find("7/.dirty-a") != std::string::npos);
  }
}

TEST_CASE("Decode pads a shorter bitmap with clean regions when the volume grew") {
  DirtyMap small(4096, 10);
  small.Set(2, 9);
  auto got = DirtyMap::Decode(AsBytes(small.Encode()), 4096, 1000, "f");
  REQUIRE(got.ok());
  const DirtyMap& d = **got;
  CHECK(d.regions() == 1000);
  CHECK(d.CountSet() == 8);
  CHECK(d.Test(2));
  CHECK(d.Test(9));
  CHECK_FALSE(d.Test(10));
  CHECK_FALSE(d.AnyIn(10, 999));
  CHECK(d.Encode().size() == kDirtyHeaderSize + 125);
}

TEST_CASE("Decode of a header-only file gives an all-clean map") {
  std::string f = DirtyMap(4096, 0).Encode();
  REQUIRE(f.size() == kDirtyHeaderSize);
  auto got = DirtyMap::Decode(AsBytes(f), 4096, 64, "f");
  REQUIRE(got.ok());
  CHECK((*got)->CountSet() == 0);
}

TEST_CASE("CountSet ignores bits past the last region when a larger map is decoded") {
  // The header promises that bits past `regions` are ignored; CountSet must agree with
  // Test/NextSet, or a part would report dirty regions that resync can never find.
  DirtyMap big(4096, 16);
  big.Set(0, 15);
  auto got = DirtyMap::Decode(AsBytes(big.Encode()), 4096, 10, "f");
  REQUIRE(got.ok());
  const DirtyMap& d = **got;
  uint64_t by_test = 0;
  for (uint64_t r = 0; r < d.regions(); ++r) by_test += d.Test(r) ? 1 : 0;
  CHECK(by_test == 10);
  CHECK(d.CountSet() == by_test);
}

TEST_CASE("Merge ORs the bits of another map") {
  DirtyMap a(4096, 30), b(4096, 30);
  a.Set(1, 2);
  b.Set(2, 5);
  b.Set(29, 29);
  a.Merge(b);
  CHECK(a.CountSet() == 6);
  CHECK(a.Test(1));
  CHECK(a.Test(5));
  CHECK(a.Test(29));
  CHECK(b.CountSet() == 5);  // unchanged
}

TEST_CASE("Merge of a smaller map into a larger one keeps the larger's size") {
  DirtyMap big(4096, 100), small(4096, 10);
  small.Set(3, 9);
  big.Merge(small);
  CHECK(big.CountSet() == 7);
  CHECK(big.regions() == 100);
}

TEST_CASE("PathFor names the copy of a part's map") {
  CHECK(DirtyMap::PathFor(7, 'b') == "7/.dirty-b");
  CHECK(DirtyMap::PathFor(123, 'a') == "123/.dirty-a");
}

TEST_CASE("Set and Clear from several threads lose no update") {
  DirtyMap m(4096, 1024);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&m, t] {
      // Thread t owns regions r with r % 4 == t: neighbours share every bitmap byte.
      for (uint64_t r = static_cast<uint64_t>(t); r < 1024; r += 4) m.Set(r, r);
      for (uint64_t r = static_cast<uint64_t>(t); r < 1024; r += 8) m.Clear(r);
    });
  }
  for (auto& th : threads) th.join();
  CHECK(m.CountSet() == 512);
  for (uint64_t r = 0; r < 1024; ++r) CHECK(m.Test(r) == (r % 8 >= 4));
}
}  // TEST_SUITE("dirty_map")

}  // namespace qbd::test
