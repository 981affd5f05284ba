// Tests of include/qbd/replicated_text.h and replicated_file.h: every copy of a text metadata file
// on three MemBackends, one of them damaged each way (garbage, cut short, empty, missing), a bad
// majority, diverging copies and a backend out of reach.
#include "qbd/replicated_text.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "qbd/volume_meta.h"
#include "testutil/mem_backend.h"

namespace qbd::test {
namespace {

struct Three {
  MemBackend a{"a"}, b{"b"}, c{"c"};
  std::vector<StorageBackend*> all() { return {&a, &b, &c}; }
};

std::string Index(uint64_t serial, uint32_t volumes = 2) {
  VolumesIndex idx;
  idx.serial = serial;
  for (uint32_t v = 1; v <= volumes; ++v) idx.volumes["vol" + std::to_string(v)] = v;
  return EncodeVolumesIndex(idx);
}

ReplicatedText LoadIndex(Three& t) {
  return ReplicatedText::Load(
      t.all(), kVolumesMetaPath, [](std::string_view text, const std::string& where) {
        auto idx = ParseVolumesIndex(text, where);
        return idx.ok() ? Result<uint64_t>(idx->serial) : Result<uint64_t>(idx.status());
      });
}

void Put(StorageBackend& b, const std::string& text) {
  REQUIRE(WriteFileAtomic(b, kVolumesMetaPath, text).ok());
}

}  // namespace

TEST_SUITE("replicated_text") {
TEST_CASE("Load uses the good copies and names the bad one when one copy of three is damaged") {
  const std::string good = Index(4);
  struct Damage {
    const char* name;
    std::string bytes;  // "-": the copy is removed
    std::string line;   // the line the reason names ("" for a missing copy)
  };
  for (const Damage& d :
       {Damage{"garbage", std::string("\xff\xfe garbage\x01\n", 12), ":1: "},
        Damage{"cut short in a line", good.substr(0, good.size() - 4), ":5: "},
        Damage{"cut short at a line end", good.substr(0, good.find("format")), ":2: "},
        Damage{"empty", "", ":1: "}, Damage{"missing", "-", ""}}) {
    CAPTURE(d.name);
    Three t;
    for (StorageBackend* b : t.all()) Put(*b, good);
    if (d.bytes == "-") {
      REQUIRE(t.b.Remove(kVolumesMetaPath).ok());
    } else {
      Put(t.b, d.bytes);
    }
    ReplicatedText r = LoadIndex(t);
    CHECK(r.verdict().ok());
    REQUIRE(r.chosen() >= 0);
    CHECK(r.text() == good);
    CHECK(r.version() == 4);
    const FileCopy& bad = r.copies()[1];
    CHECK(bad.where == "mem:b/.volumesmeta");
    if (d.line.empty()) {
      CHECK(bad.state == MetaCopyState::kMissing);
    } else {
      CHECK(bad.state == MetaCopyState::kMalformed);
      CAPTURE(bad.reason);
      CHECK(bad.reason.rfind("mem:b/.volumesmeta" + d.line, 0) == 0);
      CHECK(bad.reason.find('\xff') == std::string::npos);  // printable: damaged bytes are escaped
    }
    CHECK(r.NeedsRewrite(1));
    CHECK_FALSE(r.NeedsRewrite(0));
    CHECK_FALSE(r.NeedsRewrite(2));
    // Rewrite makes it equal to the good ones.
    REQUIRE(r.Rewrite(1, r.text()).ok());
    auto now = ReadSmallFile(t.b, kVolumesMetaPath);
    REQUIRE(now.ok());
    CHECK(*now == good);
    CHECK(LoadIndex(t).copies()[1].state == MetaCopyState::kGood);
  }
}

TEST_CASE("Load refuses naming the file and line when two copies of three are malformed") {
  Three t;
  Put(t.a, "format = 1\nserial = x\n");
  Put(t.b, Index(4));
  Put(t.c, "garbage\n");
  ReplicatedText r = LoadIndex(t);
  REQUIRE_FALSE(r.verdict().ok());
  CHECK(r.verdict().IsInvalidArgument());
  CAPTURE(r.verdict().message());
  CHECK(r.verdict().message().rfind("mem:a/.volumesmeta:2: ", 0) == 0);
  CHECK(r.verdict().message().find("no good majority") != std::string::npos);
}

TEST_CASE("Load refuses when the only copy found is malformed and the others are missing") {
  Three t;
  Put(t.c, "garbage\n");
  ReplicatedText r = LoadIndex(t);
  CHECK_FALSE(r.verdict().ok());
  CHECK(r.verdict().message().find("mem:c/.volumesmeta:1: ") != std::string::npos);
}

TEST_CASE("Load returns NotFound when no backend has a copy") {
  Three t;
  ReplicatedText r = LoadIndex(t);
  CHECK(r.verdict().IsNotFound());
  CHECK(r.AllMissing());
  CHECK(r.chosen() == -1);
}

TEST_CASE("Load takes the newest serial and marks older copies for rewriting") {
  Three t;
  Put(t.a, Index(3));
  Put(t.b, Index(5, 3));
  Put(t.c, Index(3));
  ReplicatedText r = LoadIndex(t);
  CHECK(r.verdict().ok());
  CHECK(r.version() == 5);
  CHECK(r.text() == Index(5, 3));
  CHECK(r.NeedsRewrite(0));
  CHECK(r.copies()[0].reason == "older copy (serial 3, newest 5)");
  CHECK_FALSE(r.NeedsRewrite(1));
}

TEST_CASE("Load takes the text most copies hold when copies of one serial differ") {
  Three t;
  Put(t.a, Index(4));
  Put(t.b, Index(4, 1));  // a copy that lost a line but kept its serial
  Put(t.c, Index(4));
  ReplicatedText r = LoadIndex(t);
  CHECK(r.verdict().ok());
  CHECK(r.text() == Index(4));
  CHECK(r.NeedsRewrite(1));
  CHECK(r.copies()[1].reason.find("differs") != std::string::npos);
  SUBCASE("and refuses when as many copies hold one text as the other") {
    REQUIRE(t.c.Remove(kVolumesMetaPath).ok());
    ReplicatedText tie = LoadIndex(t);
    CHECK_FALSE(tie.verdict().ok());
    CHECK(tie.verdict().message().find("mem:a/.volumesmeta") != std::string::npos);
    CHECK(tie.verdict().message().find("mem:b/.volumesmeta") != std::string::npos);
  }
}

TEST_CASE("Load counts a copy out of reach neither for nor against the file") {
  Three t;
  for (StorageBackend* b : t.all()) Put(*b, Index(2));
  FaultyBackend fb(t.b);
  fb.FailMatching(".volumesmeta", FaultyBackend::kReadOps);
  Put(t.c, "garbage\n");
  ReplicatedText r = ReplicatedText::Load(
      {&t.a, &fb, &t.c}, kVolumesMetaPath, [](std::string_view text, const std::string& where) {
        auto idx = ParseVolumesIndex(text, where);
        return idx.ok() ? Result<uint64_t>(idx->serial) : Result<uint64_t>(idx.status());
      });
  CHECK(r.copies()[1].state == MetaCopyState::kUnreachable);
  CHECK_FALSE(r.NeedsRewrite(1));
  CHECK(r.copies()[2].state == MetaCopyState::kMalformed);
  CHECK(r.verdict().ok());  // one malformed of three holders is a minority
  CHECK(r.text() == Index(2));
}

TEST_CASE("LimitHolders judges only the first copies when the others are not holders") {
  Three t;
  Put(t.a, Index(2));
  Put(t.b, "garbage\n");
  ReplicatedText r = LoadIndex(t);
  CHECK(r.verdict().ok());  // a good, b malformed, c missing: one of three malformed
  r.LimitHolders(2);
  CHECK_FALSE(r.verdict().ok());  // one of two holders malformed: no good majority
  CHECK(r.copies()[2].state == MetaCopyState::kAbsent);
}

TEST_CASE("Printable escapes invalid UTF-8 and control bytes and keeps valid UTF-8") {
  CHECK(Printable("plain") == "plain");
  CHECK(Printable("caf\xc3\xa9") == "caf\xc3\xa9");
  CHECK(Printable(std::string("a\xff\x00z", 4)) == "a\\xff\\x00z");
  CHECK(Printable("\xc0\xaf") == "\\xc0\\xaf");           // overlong
  CHECK(Printable("\xed\xa0\x80") == "\\xed\\xa0\\x80");  // a surrogate
  CHECK(Printable("abcdef", 3) == "abc...");
}
}  // TEST_SUITE("replicated_text")

}  // namespace qbd::test
