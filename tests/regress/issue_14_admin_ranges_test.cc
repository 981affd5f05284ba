// Issue 14 (fuzzing): block ranges in a chunk repair's report, which qbd-repair reads from the
// daemon (once on the admin socket, now in the REST API's JSON). A range ending at 2^64 - 1 made
// the range parser count past the largest uint64_t and wrap to 0, and a long one made its length
// check overflow: either way the decoder appended blocks until memory ran out.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "qbd/api.h"

namespace qbd::test {
namespace {

TEST_SUITE("regress") {
TEST_CASE("ParseBlockRanges fails with Corruption when a block range ends at the largest number") {
  for (const char* text :
       {"18446744073709551614-18446744073709551615", "18446744073709551615",
        "18446744073709551615,0", "0,1-18446744073709551615"}) {
    CAPTURE(text);
    CHECK(ParseBlockRanges(text).status().IsCorruption());
  }
}

TEST_CASE("ParseBlockRanges fails with Corruption when a block lies past a chunk's last block") {
  CHECK(ParseBlockRanges("2097152").status().IsCorruption());
  CHECK(ParseBlockRanges("0,2097151-2097152").status().IsCorruption());
  auto last = ParseBlockRanges("2097151");
  REQUIRE(last.ok());
  CHECK(*last == std::vector<uint64_t>{2097151});
  auto many = ParseBlockRanges("0-3,2097150-2097151");
  REQUIRE(many.ok());
  CHECK(*many == std::vector<uint64_t>{0, 1, 2, 3, 2097150, 2097151});
}

TEST_CASE("a repair report whose ranges are too long is Corruption, not an allocation") {
  nlohmann::json j = {{"chunk", 1},       {"bytes_read", 0},  {"bytes_written", 0},
                      {"actions", nlohmann::json::array()}, {"lost", "0-18446744073709551615"},
                      {"unknown", ""},    {"accepted", ""},   {"notes", nlohmann::json::array()}};
  CHECK(RepairReportFromJson(j).status().IsCorruption());
}
}  // TEST_SUITE("regress")

}  // namespace
}  // namespace qbd::test
