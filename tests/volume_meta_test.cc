// Tests of include/qbd/volume_meta.h: `<volnr>/.meta` and `.volumesmeta` (layout-spec.md §1, §2).
#include "qbd/volume_meta.h"

#include <doctest/doctest.h>

#include <string>
#include <string_view>

namespace qbd::test {
namespace {

constexpr char kMetaFile[] = "11/.meta";
constexpr char kIndexFile[] = ".volumesmeta";

VolumeMeta Sample() {
  VolumeMeta m;
  m.name = "mydevice1";
  m.number = 11;
  m.geometry = Geometry{1ull << 30, 4096, 32ull << 20};
  m.replicas = 3;
  m.write_quorum = 0;
  m.read_only = true;
  m.append_only = false;
  m.serial = 5;
  m.created = "2026-01-02T03:04:05Z";
  return m;
}

// The block_meta_size line a volume of `format` has.
std::string MetaSizeLine(uint32_t format) {
  return format == kFormat1 ? "block_meta_size = 16\n" : "block_meta_size = 32\n";
}

void CheckSame(const VolumeMeta& a, const VolumeMeta& b) {
  CHECK(a.name == b.name);
  CHECK(a.number == b.number);
  CHECK(a.geometry.size == b.geometry.size);
  CHECK(a.geometry.block_size == b.geometry.block_size);
  CHECK(a.geometry.chunk_size == b.geometry.chunk_size);
  CHECK(a.geometry.format == b.geometry.format);
  CHECK(a.replicas == b.replicas);
  CHECK(a.write_quorum == b.write_quorum);
  CHECK(a.read_only == b.read_only);
  CHECK(a.append_only == b.append_only);
  CHECK(a.serial == b.serial);
  CHECK(a.created == b.created);
}

const std::string kMinimal =
    "format = 1\nname = v\nnumber = 3\nsize = 1048576\nreplicas = 2\n";  // 5 lines
const std::string kMinimal2 =
    "format = 2\nname = v\nnumber = 3\nsize = 1048576\nreplicas = 2\n";  // 5 lines

// Parsing `text` as .meta fails with InvalidArgument; the message starts with `prefix`
// ("11/.meta:4: ") and holds `words`.
void CheckMetaFails(const std::string& text, const std::string& prefix, const std::string& words) {
  CAPTURE(text);
  auto m = ParseVolumeMeta(text, kMetaFile);
  REQUIRE_FALSE(m.ok());
  CHECK(m.status().IsInvalidArgument());
  const std::string msg = m.status().message();
  CAPTURE(msg);
  CHECK(msg.rfind(prefix, 0) == 0);
  CHECK(msg.find(words) != std::string::npos);
}

void CheckIndexFails(const std::string& text, const std::string& prefix, const std::string& words) {
  CAPTURE(text);
  auto idx = ParseVolumesIndex(text, kIndexFile);
  REQUIRE_FALSE(idx.ok());
  CHECK(idx.status().IsInvalidArgument());
  const std::string msg = idx.status().message();
  CAPTURE(msg);
  CHECK(msg.rfind(prefix, 0) == 0);
  CHECK(msg.find(words) != std::string::npos);
}

}  // namespace

TEST_SUITE("volume_meta") {
TEST_CASE("ParseVolumeMeta round-trips EncodeVolumeMeta") {
  VolumeMeta m = Sample();
  // A new volume's chunk files are format 2: 32 bytes of metadata (a slot pair) per block.
  std::string want_format = "format = 2\n", want_meta_size = "block_meta_size = 32\n";
  SUBCASE("majority quorum, read-only") {}
  SUBCASE("explicit quorum, append-only, no creation time") {
    m.write_quorum = 3;
    m.read_only = false;
    m.append_only = true;
    m.created.clear();
    m.geometry = Geometry{3 * 65536, 65536, 65536};
  }
  SUBCASE("a format-1 volume: 16 bytes of metadata per block") {
    m.geometry.format = kFormat1;
    want_format = "format = 1\n";
    want_meta_size = "block_meta_size = 16\n";
  }
  const std::string text = EncodeVolumeMeta(m);
  CHECK(text.find(want_format) != std::string::npos);
  CHECK(text.find(want_meta_size) != std::string::npos);
  auto back = ParseVolumeMeta(text, kMetaFile);
  REQUIRE_MESSAGE(back.ok(), back.status().ToString());
  CheckSame(*back, m);
  CHECK(EncodeVolumeMeta(*back) == text);
}

TEST_CASE("ParseVolumeMeta keeps the LVM thin option and PV UUID; a malformed UUID names its line") {
  VolumeMeta m = Sample();
  m.lvm_thin = true;
  m.lvm_pv_uuid = "AbCdEf-0123-4567-89ab-cdef-GHIJ-klmnop";
  const std::string text = EncodeVolumeMeta(m);
  CHECK(text.find("lvm_thin = true\n") != std::string::npos);
  CHECK(text.find("lvm_pv_uuid = AbCdEf-0123-4567-89ab-cdef-GHIJ-klmnop\n") != std::string::npos);
  auto back = ParseVolumeMeta(text, kMetaFile);
  REQUIRE_MESSAGE(back.ok(), back.status().ToString());
  CHECK(back->lvm_thin);
  CHECK(back->lvm_pv_uuid == m.lvm_pv_uuid);
  CHECK(EncodeVolumeMeta(*back) == text);
  CHECK(EncodeVolumeMeta(Sample()).find("lvm_") == std::string::npos);  // absent unless set
  std::string bad = text;
  bad.replace(bad.find("AbCdEf"), 6, "AbCd!f");
  auto refused = ParseVolumeMeta(bad, kMetaFile);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message().find("lvm_pv_uuid") != std::string::npos);
  CHECK(refused.status().message().find(std::string(kMetaFile) + ":") != std::string::npos);
}

TEST_CASE("ParseVolumeMeta applies the defaults of layout-spec.md §2") {
  auto m = ParseVolumeMeta(kMinimal, kMetaFile);
  REQUIRE_MESSAGE(m.ok(), m.status().ToString());
  CHECK(m->geometry.format == kFormat1);  // as the file says
  CHECK(m->serial == 1);
  CHECK(m->geometry.block_size == 4096);
  CHECK(m->geometry.chunk_size == 4ull << 20);
  CHECK(m->write_quorum == 0);
  CHECK(m->EffectiveWriteQuorum() == 2);
  CHECK_FALSE(m->read_only);
  CHECK_FALSE(m->append_only);
  CHECK(m->LastPart() == 'b');
}

TEST_CASE("ParseVolumeMeta reads the chunk format and checks block_meta_size against it") {
  for (const auto& [text, format] : {std::pair{kMinimal, kFormat1}, std::pair{kMinimal2, kFormat2}}) {
    CAPTURE(format);
    auto m = ParseVolumeMeta(text, kMetaFile);
    REQUIRE_MESSAGE(m.ok(), m.status().ToString());
    CHECK(m->geometry.format == format);
    auto with_size = ParseVolumeMeta(text + MetaSizeLine(format), kMetaFile);
    REQUIRE_MESSAGE(with_size.ok(), with_size.status().ToString());
    CHECK(with_size->geometry.format == format);
  }
}

TEST_CASE("EffectiveWriteQuorum is a majority unless set") {
  VolumeMeta m;
  for (uint32_t r : {1u, 2u, 3u, 4u, 5u}) {
    m.replicas = r;
    CHECK(m.EffectiveWriteQuorum() == r / 2 + 1);
  }
  m.write_quorum = 1;
  CHECK(m.EffectiveWriteQuorum() == 1);
  CHECK(MetaPath(11) == "11/.meta");
}

TEST_CASE("ParseVolumeMeta fails naming the file and line when a line is wrong") {
  const std::string at6 = std::string(kMetaFile) + ":6: ";
  SUBCASE("an unknown key") { CheckMetaFails(kMinimal + "colour = red\n", at6, "unknown key"); }
  SUBCASE("a line without '='") { CheckMetaFails(kMinimal + "read_only\n", at6, "key = value"); }
  SUBCASE("a key set twice") { CheckMetaFails(kMinimal + "size = 2097152\n", at6, "set twice"); }
  SUBCASE("a section") {
    CheckMetaFails(kMinimal + "[x]\nk = v\n", std::string(kMetaFile) + ":7: ", "sections");
  }
  SUBCASE("format 3") {
    CheckMetaFails("format = 3\nname = v\n", std::string(kMetaFile) + ":1: ", "format 3");
  }
  SUBCASE("a number that is not one") {
    CheckMetaFails(kMinimal + "serial = 1e3\n", at6, "serial");
  }
  SUBCASE("block_size above 64 KiB") {
    CheckMetaFails(kMinimal + "block_size = 131072\n", at6, "block_size");
  }
  SUBCASE("block_meta_size other than 16 in format 1") {
    CheckMetaFails(kMinimal + "block_meta_size = 32\n", at6, "block_meta_size");
  }
  SUBCASE("block_meta_size other than 32 in format 2") {
    CheckMetaFails(kMinimal2 + "block_meta_size = 16\n", at6, "block_meta_size");
  }
  SUBCASE("chunk_size above 1 GiB") {
    CheckMetaFails(kMinimal + "chunk_size = 2147483648\n", at6, "chunk_size");
  }
  SUBCASE("an unknown layout") { CheckMetaFails(kMinimal + "layout = ec\n", at6, "layout"); }
  SUBCASE("write_quorum 0") {
    CheckMetaFails(kMinimal + "write_quorum = 0\n", at6, "write_quorum");
  }
  SUBCASE("a bad boolean") { CheckMetaFails(kMinimal + "read_only = perhaps\n", at6, "read_only"); }
  SUBCASE("replicas 0 and 27") {
    CheckMetaFails("format = 1\nreplicas = 0\n", std::string(kMetaFile) + ":2: ", "replicas");
    CheckMetaFails("format = 1\nreplicas = 27\n", std::string(kMetaFile) + ":2: ", "replicas");
  }
  SUBCASE("number 0") { CheckMetaFails("number = 0\n", std::string(kMetaFile) + ":1: ", "number"); }
  SUBCASE("qos with an unknown key") {
    CheckMetaFails(kMinimal + "qos = {\"iops\":5}\n", at6, "qos: unknown key 'iops'");
  }
  SUBCASE("qos with a negative limit") {
    CheckMetaFails(kMinimal + "qos = {\"max_iops\":-5}\n", at6, "qos: max_iops: must not be negative");
  }
  SUBCASE("qos that is not JSON") { CheckMetaFails(kMinimal + "qos = {max_iops\n", at6, "qos"); }
  SUBCASE("an invalid name") {
    CheckMetaFails("format = 1\nname = -bad\n", std::string(kMetaFile) + ":2: ", "-bad");
  }
}

TEST_CASE("ParseVolumeMeta fails naming the file when a required key is missing") {
  for (const char* key : {"format", "name", "number", "size", "replicas"}) {
    CAPTURE(key);
    std::string text;
    for (const char* line :
         {"format = 1", "name = v", "number = 3", "size = 1048576", "replicas = 2"}) {
      if (std::string_view(line).rfind(key, 0) != 0) text += std::string(line) + "\n";
    }
    // No line: ReplicatedText names the one after the last (replicated_text_test.cc).
    CheckMetaFails(text, std::string(kMetaFile) + ": ", std::string("'") + key + "' is missing");
  }
}

TEST_CASE("ParseVolumeMeta fails naming the file and the line when the geometry or quorum is inconsistent") {
  const std::string at6 = std::string(kMetaFile) + ":6: ";
  CheckMetaFails(kMinimal + "block_size = 3000\n", at6, "block_size 3000 is not a power of two");
  CheckMetaFails(kMinimal + "chunk_size = 2048\n", at6, "chunk_size 2048 is smaller than block_size");
  CheckMetaFails(kMinimal + "chunk_size = 3000000\n", at6, "chunk_size 3000000 is not a power of two");
  CheckMetaFails("format = 1\nname = v\nnumber = 3\nsize = 1000\nreplicas = 2\n",
                 std::string(kMetaFile) + ":4: ", "volume size 1000 is not a multiple");
  // The later line of the pair is named.
  CheckMetaFails("format = 1\nname = v\nnumber = 3\nsize = 1052672\nreplicas = 2\nblock_size = 8192\n",
                 at6, "not a multiple of the block size 8192");
  CheckMetaFails(kMinimal + "write_quorum = 3\n", at6, "exceeds replicas");
  CheckMetaFails("format = 1\nwrite_quorum = 3\nname = v\nnumber = 3\nsize = 1048576\nreplicas = 2\n",
                 at6, "exceeds replicas");
  CheckMetaFails("format = 1\nname = v\nsize = 0\n", std::string(kMetaFile) + ":3: ", "size must not be 0");
}

TEST_CASE("ParseVolumeMeta fails naming the file and line when a value is out of its bounds") {
  const std::string at6 = std::string(kMetaFile) + ":6: ";
  SUBCASE("a created of 100,000 digits") {
    CheckMetaFails(kMinimal + "created = " + std::string(100000, '7') + "\n", at6, "ISO 8601");
    auto m = ParseVolumeMeta(kMinimal + "created = " + std::string(100000, '7') + "\n", kMetaFile);
    CHECK(m.status().message().size() < 300);  // the value is not echoed whole
  }
  SUBCASE("a created that is not an ISO 8601 UTC time") {
    for (const char* bad : {"yesterday", "2026-13-01T00:00:00Z", "2026-01-02T03:04:05", "2026-01-02 03:04:05Z",
                            "2026-01-02T03:04:05+01:00", "2026-01-02T24:00:00Z", "2026-01-02T03:04:05.Z"}) {
      CAPTURE(bad);
      CheckMetaFails(kMinimal + "created = " + bad + "\n", at6, "created");
    }
  }
  SUBCASE("a size above 1 PiB") {
    CheckMetaFails("format = 1\nname = v\nsize = 1125899906846720\n", std::string(kMetaFile) + ":3: ", "size");
  }
  SUBCASE("a serial above 2^53 or of 100,000 digits") {
    CheckMetaFails(kMinimal + "serial = 9007199254740993\n", at6, "serial");
    CheckMetaFails(kMinimal + "serial = " + std::string(100000, '9') + "\n", at6, "serial");
  }
  SUBCASE("a number other than the directory's") {
    auto m = ParseVolumeMeta(kMinimal, kMetaFile, 4);
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().message().rfind(std::string(kMetaFile) + ":3: ", 0) == 0);
    CHECK(m.status().message().find("number 3 where 4 was expected") != std::string::npos);
    CHECK(ParseVolumeMeta(kMinimal, kMetaFile, 3).ok());
  }
  SUBCASE("a name of 100,000 characters") {
    CheckMetaFails("format = 1\nname = " + std::string(100000, 'n') + "\n", std::string(kMetaFile) + ":2: ",
                   "1-64 characters");
  }
}

TEST_CASE("ParseVolumeMeta accepts created with a fraction of a second, and the bounds themselves") {
  auto m = ParseVolumeMeta(kMinimal + "created = 2026-01-02T03:04:05.123456789Z\nserial = 9007199254740992\n",
                           kMetaFile);
  REQUIRE_MESSAGE(m.ok(), m.status().ToString());
  CHECK(m->serial == kMaxSerial);
  auto big = ParseVolumeMeta("format = 1\nname = v\nnumber = 3\nsize = 1125899906842624\nreplicas = 2\n", kMetaFile);
  REQUIRE_MESSAGE(big.ok(), big.status().ToString());
  CHECK(big->geometry.size == kMaxVolumeSize);
}

TEST_CASE("ParseVolumesIndex round-trips EncodeVolumesIndex") {
  VolumesIndex idx;
  idx.serial = 9;
  idx.volumes = {{"mydevice1", 11}, {"demo", 1}, {"a.b_c-d", 4000000000u}};
  const std::string text = EncodeVolumesIndex(idx);
  auto back = ParseVolumesIndex(text, kIndexFile);
  REQUIRE_MESSAGE(back.ok(), back.status().ToString());
  CHECK(back->serial == 9);
  CHECK(back->volumes == idx.volumes);
  CHECK(EncodeVolumesIndex(*back) == text);
}

TEST_CASE("ParseVolumesIndex reads the example of layout-spec.md §1") {
  auto idx = ParseVolumesIndex(
      "# qbd volumes: name = number (layout-spec.md section 1)\n"
      "format = 1\nserial = 4\nmydevice1 = 11\ndemo = 1\n",
      kIndexFile);
  REQUIRE(idx.ok());
  CHECK(idx->serial == 4);
  CHECK(idx->Find("mydevice1") == 11);
  CHECK(idx->Find("demo") == 1);
  CHECK(idx->Find("other") == 0);
  CHECK(idx->NextNumber() == 12);
}

TEST_CASE("NextNumber is 1 for an empty index") {
  VolumesIndex idx;
  CHECK(idx.NextNumber() == 1);
  auto parsed = ParseVolumesIndex("format = 1\n", kIndexFile);
  REQUIRE(parsed.ok());
  CHECK(parsed->volumes.empty());
  CHECK(parsed->serial == 0);
}

TEST_CASE("ParseVolumesIndex fails naming the file and line when a line is wrong") {
  const std::string at3 = std::string(kIndexFile) + ":3: ";
  const std::string head = "format = 1\nv1 = 1\n";
  SUBCASE("a name listed twice") { CheckIndexFails(head + "v1 = 2\n", at3, "listed twice"); }
  SUBCASE("a number used twice") { CheckIndexFails(head + "v2 = 1\n", at3, "used twice"); }
  SUBCASE("number 0") { CheckIndexFails(head + "v2 = 0\n", at3, "v2"); }
  SUBCASE("a number that is not one") { CheckIndexFails(head + "v2 = x\n", at3, "v2"); }
  SUBCASE("a number past u32") { CheckIndexFails(head + "v2 = 4294967296\n", at3, "v2"); }
  SUBCASE("an invalid name") { CheckIndexFails(head + "bad name = 2\n", at3, "malformed key"); }
  SUBCASE("a name starting with '-'") { CheckIndexFails(head + "-v = 2\n", at3, "-v"); }
  SUBCASE("a section") {
    CheckIndexFails(head + "[s]\nv = 2\n", std::string(kIndexFile) + ":4: ", "sections");
  }
  SUBCASE("format 2") {
    CheckIndexFails("v = 1\nformat = 2\n", std::string(kIndexFile) + ":2: ", "format");
  }
  SUBCASE("a bad serial") { CheckIndexFails(head + "serial = -1\n", at3, "serial"); }
  SUBCASE("a serial above 2^53") { CheckIndexFails(head + "serial = 9007199254740993\n", at3, "serial"); }
  SUBCASE("a number of 100,000 digits") {
    CheckIndexFails(head + "v2 = " + std::string(100000, '1') + "\n", at3, "v2");
    CHECK(ParseVolumesIndex(head + "v2 = " + std::string(100000, '1') + "\n", kIndexFile).status().message().size() <
          300);
  }
  SUBCASE("a name of 100,000 characters") { CheckIndexFails(head + std::string(100000, 'v') + " = 2\n", at3, "key"); }
  SUBCASE("serial twice") { CheckIndexFails("format = 1\nserial = 1\nserial = 2\n", at3, "set twice"); }
  SUBCASE("the earlier line of a duplicate is named") {
    CheckIndexFails(head + "v2 = 1\n", at3, "first on line 2");
  }
}

TEST_CASE("ParseVolumesIndex fails naming the file when format is missing") {
  CheckIndexFails("serial = 2\nv = 1\n", std::string(kIndexFile) + ": ", "format");
}

TEST_CASE("ValidateVolumeName accepts 1-64 of [A-Za-z0-9._-] starting alphanumeric") {
  for (const std::string& name : {std::string("a"), std::string("0"), std::string("Vm-101.disk_0"),
                                  std::string(64, 'x'), std::string("Format")}) {
    CAPTURE(name);
    CHECK(ValidateVolumeName(name).ok());
  }
}

TEST_CASE("ValidateVolumeName returns InvalidArgument when the name is not allowed") {
  for (const std::string& name :
       {std::string(""), std::string(65, 'x'), std::string("-a"), std::string(".a"),
        std::string("_a"), std::string("a b"), std::string("a/b"), std::string("a=b"),
        std::string("é"), std::string("format"), std::string("serial"), std::string("a#")}) {
    CAPTURE(name);
    CHECK(ValidateVolumeName(name).IsInvalidArgument());
  }
}
}  // TEST_SUITE("volume_meta")

}  // namespace qbd::test
