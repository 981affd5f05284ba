// Feeds arbitrary bytes to every parser of nbd_wire.h: each parser sees the whole input and the
// input after an option (reply) header, so one corpus entry exercises them all. Parsers must
// never crash, read out of bounds or allocate without bound, and whatever parses must re-encode
// to bytes that parse to the same value.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "qbd/nbd_wire.h"

namespace {

void Check(bool cond) {
  if (!cond) std::abort();
}

void ParseAll(std::span<const std::byte> in) {
  namespace nbd = qbd::nbd;
  (void)nbd::ParseServerGreeting(in);
  (void)nbd::ParseClientFlags(in);
  (void)nbd::ParseOptionHeader(in);
  (void)nbd::ParseExportNameReply(in);
  (void)nbd::ParseOptionReplyHeader(in);
  (void)nbd::ParseRepServer(in);
  (void)nbd::ParseInfo(in);
  (void)nbd::ParseMetaContextReply(in);
  (void)nbd::ParseSimpleReply(in);
  (void)nbd::ParseChunkHeader(in);
  (void)nbd::ParseOffsetData(in);
  (void)nbd::ParseErrorChunk(nbd::kReplyTypeError, in);
  (void)nbd::ParseErrorChunk(nbd::kReplyTypeErrorOffset, in);
  (void)nbd::ParseErrorChunk(0x8005, in);

  if (auto r = nbd::ParseRequest(in); r.ok()) {
    Check(nbd::ParseRequest(nbd::EncodeRequest(*r)).value() == *r);
  }
  if (auto r = nbd::ParseInfoRequest(in); r.ok()) {
    Check(nbd::ParseInfoRequest(nbd::EncodeInfoRequest(*r)).value() == *r);
  }
  if (auto r = nbd::ParseMetaContextRequest(in); r.ok()) {
    Check(nbd::ParseMetaContextRequest(nbd::EncodeMetaContextRequest(*r)).value() == *r);
  }
  if (auto r = nbd::ParseBlockStatusChunk(in); r.ok()) {
    auto enc = nbd::EncodeBlockStatusChunk(1, 0, r->context_id, r->descriptors);
    auto again = nbd::ParseBlockStatusChunk(std::span(enc).subspan(nbd::kChunkHeaderSize));
    Check(again.ok() && again->descriptors == r->descriptors);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto in = std::as_bytes(std::span(data, size));
  ParseAll(in);
  // Messages usually follow a header: parse the tails after the common header sizes too.
  for (size_t skip : {qbd::nbd::kOptionHeaderSize, qbd::nbd::kOptionReplyHeaderSize}) {
    if (size > skip) ParseAll(in.subspan(skip));
  }
  return 0;
}
