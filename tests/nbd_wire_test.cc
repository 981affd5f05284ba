#include "qbd/nbd_wire.h"

#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/coding.h"

namespace qbd::test {
namespace {

using namespace qbd::nbd;  // NOLINT: the test reads like the protocol document

std::vector<std::byte> Bytes(std::initializer_list<int> v) {
  std::vector<std::byte> out;
  for (int b : v) out.push_back(std::byte(b));
  return out;
}

template <size_t N>
std::vector<std::byte> Vec(const std::array<std::byte, N>& a) {
  return std::vector<std::byte>(a.begin(), a.end());
}

// Every strict prefix of `full` must be rejected by `parse`.
template <typename F>
void CheckEveryPrefixRejected(const std::vector<std::byte>& full, F parse) {
  for (size_t n = 0; n < full.size(); ++n) {
    CAPTURE(n);
    auto r = parse(std::span(full.data(), n));
    CHECK(!r.ok());
    if (!r.ok()) CHECK(r.status().IsInvalidArgument());
  }
}

}  // namespace

TEST_SUITE("nbd_wire") {
TEST_CASE("coding helpers write big- and little-endian fields") {
  std::byte b[8];
  EncodeBE32(b, 0x01020304);
  CHECK(b[0] == std::byte{1});
  CHECK(b[3] == std::byte{4});
  CHECK(DecodeBE32(b) == 0x01020304u);
  EncodeLE32(b, 0x01020304);
  CHECK(b[0] == std::byte{4});
  CHECK(DecodeLE32(b) == 0x01020304u);
  EncodeBE64(b, 0x0102030405060708ull);
  CHECK(b[0] == std::byte{1});
  CHECK(DecodeBE64(b) == 0x0102030405060708ull);
  EncodeLE64(b, 0x0102030405060708ull);
  CHECK(b[0] == std::byte{8});
  CHECK(DecodeLE64(b) == 0x0102030405060708ull);
  EncodeBE16(b, 0xabcd);
  CHECK(DecodeBE16(b) == 0xabcd);
  EncodeLE16(b, 0xabcd);
  CHECK(b[0] == std::byte{0xcd});
  CHECK(DecodeLE16(b) == 0xabcd);
}

TEST_CASE("server greeting is NBDMAGIC IHAVEOPT flags and round-trips") {
  auto g = EncodeServerGreeting(kFlagFixedNewstyle | kFlagNoZeroes);
  CHECK(std::memcmp(g.data(), "NBDMAGICIHAVEOPT", 16) == 0);
  CHECK(g[16] == std::byte{0});
  CHECK(g[17] == std::byte{3});
  auto flags = ParseServerGreeting(g);
  REQUIRE(flags.ok());
  CHECK(*flags == 3);
  CheckEveryPrefixRejected(Vec(g), ParseServerGreeting);
  g[3] = std::byte{'X'};
  CHECK(ParseServerGreeting(g).status().IsInvalidArgument());
}

TEST_CASE("option header round-trips and rejects a bad magic") {
  auto h = EncodeOptionHeader({kOptGo, 1234});
  auto p = ParseOptionHeader(h);
  REQUIRE(p.ok());
  CHECK(p->option == kOptGo);
  CHECK(p->length == 1234);
  CheckEveryPrefixRejected(Vec(h), ParseOptionHeader);
  h[0] = std::byte{0};
  CHECK(!ParseOptionHeader(h).ok());

  auto opt = EncodeOption(kOptList, Bytes({1, 2, 3}));
  REQUIRE(opt.size() == kOptionHeaderSize + 3);
  CHECK(ParseOptionHeader(opt)->length == 3);
}

TEST_CASE("info request round-trips") {
  InfoRequest r{"disk0", {kInfoName, kInfoBlockSize}};
  auto enc = EncodeInfoRequest(r);
  CHECK(enc.size() == 4 + 5 + 2 + 4);
  auto p = ParseInfoRequest(enc);
  REQUIRE(p.ok());
  CHECK(*p == r);
  CheckEveryPrefixRejected(enc, ParseInfoRequest);

  SUBCASE("and an empty name with no requests is valid") {
    auto e = EncodeInfoRequest({});
    REQUIRE(ParseInfoRequest(e).ok());
    CHECK(ParseInfoRequest(e)->name.empty());
  }
}

TEST_CASE("info request is rejected when lengths disagree") {
  SUBCASE("name length larger than the data") {
    CHECK(!ParseInfoRequest(Bytes({0, 0, 0, 9, 'a', 'b', 0, 0})).ok());
  }
  SUBCASE("name length of 4 GiB") {
    CHECK(!ParseInfoRequest(Bytes({0xff, 0xff, 0xff, 0xff, 0, 0})).ok());
  }
  SUBCASE("trailing bytes after the requests") {
    CHECK(!ParseInfoRequest(Bytes({0, 0, 0, 0, 0, 1, 0, 3, 9})).ok());
  }
  SUBCASE("count larger than the requests present") {
    CHECK(!ParseInfoRequest(Bytes({0, 0, 0, 0, 0, 2, 0, 3})).ok());
  }
  SUBCASE("name longer than 4096 bytes") {
    InfoRequest r{std::string(kMaxStringLength + 1, 'x'), {}};
    CHECK(!ParseInfoRequest(EncodeInfoRequest(r)).ok());
  }
}

TEST_CASE("meta context request round-trips and rejects inconsistent lengths") {
  MetaContextRequest r{"vol", {"base:allocation", "qemu:dirty-bitmap:x", ""}};
  auto enc = EncodeMetaContextRequest(r);
  auto p = ParseMetaContextRequest(enc);
  REQUIRE(p.ok());
  CHECK(*p == r);
  CheckEveryPrefixRejected(enc, ParseMetaContextRequest);
  enc.push_back(std::byte{0});
  CHECK(!ParseMetaContextRequest(enc).ok());
  // A huge query count with no queries must not allocate or succeed.
  CHECK(!ParseMetaContextRequest(Bytes({0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff})).ok());
}

TEST_CASE("export name reply has 124 zero bytes unless NO_ZEROES") {
  auto with = EncodeExportNameReply(1 << 20, kFlagHasFlags | kFlagSendFlush, false);
  CHECK(with.size() == 134);
  CHECK(with.back() == std::byte{0});
  auto without = EncodeExportNameReply(1 << 20, kFlagHasFlags, true);
  CHECK(without.size() == 10);
  auto p = ParseExportNameReply(with);
  REQUIRE(p.ok());
  CHECK(p->size == (1u << 20));
  CHECK(p->flags == (kFlagHasFlags | kFlagSendFlush));
  CheckEveryPrefixRejected(without, ParseExportNameReply);
}

TEST_CASE("option replies carry magic, option, type and length") {
  auto rep = EncodeOptionReply(kOptList, kRepServer, EncodeRepServer("a", "desc"));
  auto h = ParseOptionReplyHeader(rep);
  REQUIRE(h.ok());
  CHECK(h->option == kOptList);
  CHECK(h->type == kRepServer);
  CHECK(h->length == rep.size() - kOptionReplyHeaderSize);
  auto s = ParseRepServer(std::span(rep).subspan(kOptionReplyHeaderSize));
  REQUIRE(s.ok());
  CHECK(s->name == "a");
  CHECK(s->description == "desc");
  CheckEveryPrefixRejected(std::vector(rep.begin(), rep.begin() + kOptionReplyHeaderSize),
                           ParseOptionReplyHeader);
  CHECK(!ParseRepServer(Bytes({0, 0, 0, 5, 'a'})).ok());

  auto err = EncodeOptionError(kOptGo, kRepErrUnknown, "no such export");
  auto eh = ParseOptionReplyHeader(err);
  REQUIRE(eh.ok());
  CHECK(eh->type == kRepErrUnknown);
  CHECK((eh->type & kRepErrBit) != 0);
  CHECK(eh->length == 14);
  err[7] = std::byte{0};
  CHECK(!ParseOptionReplyHeader(err).ok());
}

TEST_CASE("info replies round-trip for every known type") {
  auto ex = ParseInfo(EncodeInfoExport(1ull << 40, kFlagHasFlags | kFlagReadOnly));
  REQUIRE(ex.ok());
  CHECK(ex->type == kInfoExport);
  CHECK(ex->size == (1ull << 40));
  CHECK(ex->transmission_flags == (kFlagHasFlags | kFlagReadOnly));

  auto name = ParseInfo(EncodeInfoName("vol1"));
  REQUIRE(name.ok());
  CHECK(name->type == kInfoName);
  CHECK(name->text == "vol1");

  auto desc = ParseInfo(EncodeInfoDescription("a volume"));
  REQUIRE(desc.ok());
  CHECK(desc->type == kInfoDescription);
  CHECK(desc->text == "a volume");

  auto bs = ParseInfo(EncodeInfoBlockSize(1, 4096, 32 << 20));
  REQUIRE(bs.ok());
  CHECK(bs->type == kInfoBlockSize);
  CHECK(bs->min_block == 1);
  CHECK(bs->preferred_block == 4096);
  CHECK(bs->max_payload == (32u << 20));

  auto unknown = ParseInfo(Bytes({0, 99, 1, 2, 3}));
  REQUIRE(unknown.ok());
  CHECK(unknown->type == 99);

  auto bad_export = EncodeInfoExport(1, 1);
  bad_export.pop_back();
  CHECK(!ParseInfo(bad_export).ok());
  auto long_bs = EncodeInfoBlockSize(1, 2, 3);
  long_bs.push_back(std::byte{0});
  CHECK(!ParseInfo(long_bs).ok());
  CHECK(!ParseInfo(Bytes({0})).ok());
}

TEST_CASE("meta context reply round-trips") {
  auto p = ParseMetaContextReply(EncodeMetaContextReply(7, kBaseAllocation));
  REQUIRE(p.ok());
  CHECK(p->context_id == 7);
  CHECK(p->name == "base:allocation");
  CHECK(!ParseMetaContextReply(Bytes({0, 0, 1})).ok());
}

TEST_CASE("request header is 28 bytes and round-trips") {
  Request r{kCmdFlagFua, kCmdWrite, 0x1122334455667788ull, 1ull << 33, 65536};
  auto enc = EncodeRequest(r);
  CHECK(DecodeBE32(enc.data()) == kRequestMagic);
  auto p = ParseRequest(enc);
  REQUIRE(p.ok());
  CHECK(*p == r);
  CheckEveryPrefixRejected(Vec(enc), ParseRequest);
  enc[0] = std::byte{0x26};
  CHECK(ParseRequest(enc).status().IsInvalidArgument());
}

TEST_CASE("simple reply round-trips") {
  auto enc = EncodeSimpleReply(kEinval, 42);
  auto p = ParseSimpleReply(enc);
  REQUIRE(p.ok());
  CHECK(p->error == kEinval);
  CHECK(p->cookie == 42);
  CheckEveryPrefixRejected(Vec(enc), ParseSimpleReply);
  CHECK(!ParseSimpleReply(EncodeChunkHeader({})).ok());
}

TEST_CASE("structured chunks round-trip") {
  SUBCASE("OFFSET_DATA") {
    auto head = EncodeOffsetDataHeader(5, kReplyFlagDone, 4096, 3);
    auto h = ParseChunkHeader(head);
    REQUIRE(h.ok());
    CHECK(*h == ChunkHeader{kReplyFlagDone, kReplyTypeOffsetData, 5, 11});
    std::vector<std::byte> payload(head.begin() + kChunkHeaderSize, head.end());
    payload.insert(payload.end(), {std::byte{1}, std::byte{2}, std::byte{3}});
    auto d = ParseOffsetData(payload);
    REQUIRE(d.ok());
    CHECK(d->offset == 4096);
    CHECK(d->data.size() == 3);
    CHECK(d->data[2] == std::byte{3});
    CHECK(!ParseOffsetData(std::span(payload.data(), 8)).ok());
  }
  SUBCASE("NONE") {
    auto h = ParseChunkHeader(EncodeNoneChunk(9, kReplyFlagDone));
    REQUIRE(h.ok());
    CHECK(*h == ChunkHeader{kReplyFlagDone, kReplyTypeNone, 9, 0});
  }
  SUBCASE("ERROR") {
    auto enc = EncodeErrorChunk(3, kReplyFlagDone, kEio, "disk on fire");
    auto h = ParseChunkHeader(enc);
    REQUIRE(h.ok());
    CHECK(h->type == kReplyTypeError);
    CHECK(h->length == enc.size() - kChunkHeaderSize);
    auto payload = std::span(enc).subspan(kChunkHeaderSize);
    auto e = ParseErrorChunk(h->type, payload);
    REQUIRE(e.ok());
    CHECK(e->error == kEio);
    CHECK(e->message == "disk on fire");
    CHECK(!ParseErrorChunk(h->type, payload.first(payload.size() - 1)).ok());
    CHECK(!ParseErrorChunk(kReplyTypeOffsetData, payload).ok());
    // The same bytes plus an offset form an ERROR_OFFSET payload.
    std::vector<std::byte> with_offset(payload.begin(), payload.end());
    with_offset.resize(with_offset.size() + 8);
    EncodeBE64(with_offset.data() + payload.size(), 777);
    auto eo = ParseErrorChunk(kReplyTypeErrorOffset, with_offset);
    REQUIRE(eo.ok());
    CHECK(eo->offset == 777);
    CHECK(!ParseErrorChunk(kReplyTypeError, with_offset).ok());
  }
  SUBCASE("BLOCK_STATUS") {
    std::vector<BlockDescriptor> d = {{4096, kStateHole | kStateZero}, {8192, 0}};
    auto enc = EncodeBlockStatusChunk(11, kReplyFlagDone, 1, d);
    auto h = ParseChunkHeader(enc);
    REQUIRE(h.ok());
    CHECK(h->type == kReplyTypeBlockStatus);
    CHECK(h->length == 4 + 16);
    auto payload = std::span(enc).subspan(kChunkHeaderSize);
    auto bs = ParseBlockStatusChunk(payload);
    REQUIRE(bs.ok());
    CHECK(bs->context_id == 1);
    CHECK(bs->descriptors == d);
    CHECK(!ParseBlockStatusChunk(payload.first(4)).ok());
    CHECK(!ParseBlockStatusChunk(payload.first(payload.size() - 1)).ok());
  }
  auto bad = EncodeNoneChunk(1, 0);
  bad[1] = std::byte{0};
  CHECK(!ParseChunkHeader(bad).ok());
  CheckEveryPrefixRejected(Vec(EncodeNoneChunk(1, 0)), ParseChunkHeader);
}

TEST_CASE("errno values map to the protocol's, unknown ones to EIO") {
  CHECK(ErrnoToNbd(0) == 0);
  CHECK(ErrnoToNbd(EPERM) == kEperm);
  CHECK(ErrnoToNbd(EIO) == kEio);
  CHECK(ErrnoToNbd(ENOMEM) == kEnomem);
  CHECK(ErrnoToNbd(EINVAL) == kEinval);
  CHECK(ErrnoToNbd(ENOSPC) == kEnospc);
  CHECK(ErrnoToNbd(EOVERFLOW) == kEoverflow);
  CHECK(ErrnoToNbd(EOPNOTSUPP) == kEnotsup);
  CHECK(ErrnoToNbd(ESHUTDOWN) == kEshutdown);
  CHECK(ErrnoToNbd(ENOENT) == kEio);
  CHECK(ErrnoToNbd(ETIMEDOUT) == kEio);
}

TEST_CASE("names of options and commands are for log lines") {
  CHECK(std::string(OptionName(kOptGo)) == "NBD_OPT_GO");
  CHECK(std::string(OptionName(12345)) == "unknown");
  CHECK(std::string(CommandName(kCmdBlockStatus)) == "NBD_CMD_BLOCK_STATUS");
  CHECK(std::string(CommandName(99)) == "unknown");
}
}  // TEST_SUITE("nbd_wire")

}  // namespace qbd::test
