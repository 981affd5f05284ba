// Issue 14 (fuzzing): block ranges in a "repair" reply on the admin socket. A range ending at
// 2^64 - 1 made ParseRanges count past the largest uint64_t and wrap to 0, and a long one made
// its length check overflow: either way the decoder appended blocks until memory ran out.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "qbd/admin.h"

namespace qbd::test {
namespace {

TEST_SUITE("regress") {
TEST_CASE(
    "DecodeRepairReport fails with Corruption when a block range ends at the largest number") {
  for (const char* text :
       {"lost 18446744073709551614-18446744073709551615\n", "lost 18446744073709551615\n",
        "unknown 18446744073709551615,0\n", "action b a 0 stale 0,1-18446744073709551615\n"}) {
    CAPTURE(text);
    auto r = DecodeRepairReport(text);
    CHECK(r.status().IsCorruption());
  }
}

TEST_CASE("DecodeRepairReport fails with Corruption when a block lies past a chunk's last block") {
  CHECK(DecodeRepairReport("lost 2097152\n").status().IsCorruption());
  CHECK(DecodeRepairReport("lost 0,2097151-2097152\n").status().IsCorruption());
  auto last = DecodeRepairReport("lost 2097151\naccepted 0-3,2097150-2097151\n");
  REQUIRE(last.ok());
  CHECK(last->lost == std::vector<uint64_t>{2097151});
  CHECK(last->accepted == std::vector<uint64_t>{0, 1, 2, 3, 2097150, 2097151});
}
}  // TEST_SUITE("regress")

}  // namespace
}  // namespace qbd::test
