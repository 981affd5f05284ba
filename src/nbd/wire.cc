// Encoding and parsing of NBD protocol messages (see include/qbd/nbd_wire.h and proto.md).
//
// Invariant: every Parse* checks a length before it decodes the bytes it covers; sizes read from
// the input are compared against the bytes remaining, never added to an offset first (so a huge
// u32 cannot wrap).
#include <fmt/format.h>

#include <cerrno>
#include <cstring>

#include "common/coding.h"
#include "qbd/nbd_wire.h"

namespace qbd::nbd {
namespace {

static_assert(kServerGreetingSize == 8 + 8 + 2);
static_assert(kOptionHeaderSize == 8 + 4 + 4);
static_assert(kOptionReplyHeaderSize == 8 + 4 + 4 + 4);
static_assert(kRequestSize == 4 + 2 + 2 + 8 + 8 + 4);
static_assert(kSimpleReplySize == 4 + 4 + 8);
static_assert(kChunkHeaderSize == 4 + 2 + 2 + 8 + 4);

Status Malformed(std::string_view what) {
  return Status::InvalidArgument(fmt::format("nbd: malformed {}", what));
}

// Reads fields front to back from a span; each getter returns false when too few bytes remain.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}

  size_t remaining() const { return in_.size() - pos_; }
  bool U16(uint16_t* v) {
    if (remaining() < 2) return false;
    *v = DecodeBE16(in_.data() + pos_);
    pos_ += 2;
    return true;
  }
  bool U32(uint32_t* v) {
    if (remaining() < 4) return false;
    *v = DecodeBE32(in_.data() + pos_);
    pos_ += 4;
    return true;
  }
  bool U64(uint64_t* v) {
    if (remaining() < 8) return false;
    *v = DecodeBE64(in_.data() + pos_);
    pos_ += 8;
    return true;
  }
  bool String(size_t n, std::string* s) {
    if (n > remaining()) return false;
    s->assign(reinterpret_cast<const char*>(in_.data() + pos_), n);
    pos_ += n;
    return true;
  }
  // A u32 length then that many bytes, at most kMaxStringLength.
  bool LengthPrefixed(std::string* s) {
    uint32_t n = 0;
    return U32(&n) && n <= kMaxStringLength && String(n, s);
  }
  std::span<const std::byte> Rest() {
    auto r = in_.subspan(pos_);
    pos_ = in_.size();
    return r;
  }

 private:
  std::span<const std::byte> in_;
  size_t pos_ = 0;
};

// Appends fields to a vector.
class Writer {
 public:
  explicit Writer(size_t reserve = 0) { out_.reserve(reserve); }

  Writer& U16(uint16_t v) {
    Grow(2);
    EncodeBE16(out_.data() + out_.size() - 2, v);
    return *this;
  }
  Writer& U32(uint32_t v) {
    Grow(4);
    EncodeBE32(out_.data() + out_.size() - 4, v);
    return *this;
  }
  Writer& U64(uint64_t v) {
    Grow(8);
    EncodeBE64(out_.data() + out_.size() - 8, v);
    return *this;
  }
  Writer& Bytes(std::span<const std::byte> b) {
    out_.insert(out_.end(), b.begin(), b.end());
    return *this;
  }
  Writer& String(std::string_view s) { return Bytes(std::as_bytes(std::span(s))); }
  std::vector<std::byte> Take() { return std::move(out_); }

 private:
  void Grow(size_t n) { out_.resize(out_.size() + n); }
  std::vector<std::byte> out_;
};

}  // namespace

uint32_t ErrnoToNbd(int err) {
  switch (err) {
    case 0:
      return 0;
    case EPERM:
      return kEperm;
    case EIO:
      return kEio;
    case ENOMEM:
      return kEnomem;
    case EINVAL:
      return kEinval;
    case ENOSPC:
      return kEnospc;
    case EOVERFLOW:
      return kEoverflow;
    case ENOTSUP:
      return kEnotsup;
#if EOPNOTSUPP != ENOTSUP
    case EOPNOTSUPP:
      return kEnotsup;
#endif
    case ESHUTDOWN:
      return kEshutdown;
    default:
      return kEio;
  }
}

const char* OptionName(uint32_t option) {
  switch (option) {
    case kOptExportName:
      return "NBD_OPT_EXPORT_NAME";
    case kOptAbort:
      return "NBD_OPT_ABORT";
    case kOptList:
      return "NBD_OPT_LIST";
    case kOptPeekExport:
      return "NBD_OPT_PEEK_EXPORT";
    case kOptStartTls:
      return "NBD_OPT_STARTTLS";
    case kOptInfo:
      return "NBD_OPT_INFO";
    case kOptGo:
      return "NBD_OPT_GO";
    case kOptStructuredReply:
      return "NBD_OPT_STRUCTURED_REPLY";
    case kOptListMetaContext:
      return "NBD_OPT_LIST_META_CONTEXT";
    case kOptSetMetaContext:
      return "NBD_OPT_SET_META_CONTEXT";
    case kOptExtendedHeaders:
      return "NBD_OPT_EXTENDED_HEADERS";
    default:
      return "unknown";
  }
}

const char* CommandName(uint16_t type) {
  switch (type) {
    case kCmdRead:
      return "NBD_CMD_READ";
    case kCmdWrite:
      return "NBD_CMD_WRITE";
    case kCmdDisc:
      return "NBD_CMD_DISC";
    case kCmdFlush:
      return "NBD_CMD_FLUSH";
    case kCmdTrim:
      return "NBD_CMD_TRIM";
    case kCmdCache:
      return "NBD_CMD_CACHE";
    case kCmdWriteZeroes:
      return "NBD_CMD_WRITE_ZEROES";
    case kCmdBlockStatus:
      return "NBD_CMD_BLOCK_STATUS";
    case kCmdResize:
      return "NBD_CMD_RESIZE";
    default:
      return "unknown";
  }
}

// ---- Handshake ----

std::array<std::byte, kServerGreetingSize> EncodeServerGreeting(uint16_t handshake_flags) {
  std::array<std::byte, kServerGreetingSize> out;
  EncodeBE64(&out[0], kNbdMagic);
  EncodeBE64(&out[8], kOptMagic);
  EncodeBE16(&out[16], handshake_flags);
  return out;
}

Result<uint16_t> ParseServerGreeting(std::span<const std::byte> in) {
  Reader r(in);
  uint64_t magic = 0, opt_magic = 0;
  uint16_t flags = 0;
  if (!r.U64(&magic) || !r.U64(&opt_magic) || !r.U16(&flags)) return Malformed("greeting");
  if (magic != kNbdMagic || opt_magic != kOptMagic) return Malformed("greeting magic");
  return flags;
}

std::array<std::byte, kClientFlagsSize> EncodeClientFlags(uint32_t flags) {
  std::array<std::byte, kClientFlagsSize> out;
  EncodeBE32(&out[0], flags);
  return out;
}

Result<uint32_t> ParseClientFlags(std::span<const std::byte> in) {
  if (in.size() < kClientFlagsSize) return Malformed("client flags");
  return DecodeBE32(in.data());
}

std::array<std::byte, kOptionHeaderSize> EncodeOptionHeader(const OptionHeader& h) {
  std::array<std::byte, kOptionHeaderSize> out;
  EncodeBE64(&out[0], kOptMagic);
  EncodeBE32(&out[8], h.option);
  EncodeBE32(&out[12], h.length);
  return out;
}

Result<OptionHeader> ParseOptionHeader(std::span<const std::byte> in) {
  Reader r(in);
  uint64_t magic = 0;
  OptionHeader h;
  if (!r.U64(&magic) || !r.U32(&h.option) || !r.U32(&h.length)) return Malformed("option header");
  if (magic != kOptMagic) return Malformed("option magic");
  return h;
}

std::vector<std::byte> EncodeOption(uint32_t option, std::span<const std::byte> data) {
  auto header = EncodeOptionHeader({option, static_cast<uint32_t>(data.size())});
  return Writer(header.size() + data.size()).Bytes(header).Bytes(data).Take();
}

std::vector<std::byte> EncodeInfoRequest(const InfoRequest& req) {
  Writer w(4 + req.name.size() + 2 + 2 * req.requests.size());
  w.U32(static_cast<uint32_t>(req.name.size())).String(req.name);
  w.U16(static_cast<uint16_t>(req.requests.size()));
  for (uint16_t i : req.requests) w.U16(i);
  return w.Take();
}

Result<InfoRequest> ParseInfoRequest(std::span<const std::byte> data) {
  Reader r(data);
  InfoRequest req;
  uint16_t n = 0;
  if (!r.LengthPrefixed(&req.name) || !r.U16(&n)) return Malformed("info request");
  if (r.remaining() != 2u * n) return Malformed("info request count");
  req.requests.resize(n);
  for (uint16_t& i : req.requests) (void)r.U16(&i);  // length checked above
  return req;
}

std::vector<std::byte> EncodeMetaContextRequest(const MetaContextRequest& req) {
  Writer w;
  w.U32(static_cast<uint32_t>(req.export_name.size())).String(req.export_name);
  w.U32(static_cast<uint32_t>(req.queries.size()));
  for (const std::string& q : req.queries) w.U32(static_cast<uint32_t>(q.size())).String(q);
  return w.Take();
}

Result<MetaContextRequest> ParseMetaContextRequest(std::span<const std::byte> data) {
  Reader r(data);
  MetaContextRequest req;
  uint32_t n = 0;
  if (!r.LengthPrefixed(&req.export_name) || !r.U32(&n)) return Malformed("meta context request");
  // Each query takes at least its 4-byte length: bound n before reserving anything.
  if (n > r.remaining() / 4) return Malformed("meta context query count");
  req.queries.resize(n);
  for (std::string& q : req.queries) {
    if (!r.LengthPrefixed(&q)) return Malformed("meta context query");
  }
  if (r.remaining() != 0) return Malformed("meta context request trailing bytes");
  return req;
}

std::vector<std::byte> EncodeExportNameReply(uint64_t size, uint16_t flags, bool no_zeroes) {
  Writer w(kExportNameReplySize + kExportNameZeroes);
  w.U64(size).U16(flags);
  std::vector<std::byte> out = w.Take();
  if (!no_zeroes) out.resize(kExportNameReplySize + kExportNameZeroes);
  return out;
}

Result<ExportNameReply> ParseExportNameReply(std::span<const std::byte> in) {
  Reader r(in);
  ExportNameReply rep;
  if (!r.U64(&rep.size) || !r.U16(&rep.flags)) return Malformed("export name reply");
  return rep;
}

// ---- Option replies ----

std::vector<std::byte> EncodeOptionReply(uint32_t option, uint32_t type,
                                         std::span<const std::byte> data) {
  Writer w(kOptionReplyHeaderSize + data.size());
  w.U64(kOptReplyMagic).U32(option).U32(type).U32(static_cast<uint32_t>(data.size()));
  return w.Bytes(data).Take();
}

std::vector<std::byte> EncodeOptionError(uint32_t option, uint32_t type, std::string_view message) {
  return EncodeOptionReply(option, type,
                           std::as_bytes(std::span(message.substr(0, kMaxStringLength))));
}

Result<OptionReplyHeader> ParseOptionReplyHeader(std::span<const std::byte> in) {
  Reader r(in);
  uint64_t magic = 0;
  OptionReplyHeader h;
  if (!r.U64(&magic) || !r.U32(&h.option) || !r.U32(&h.type) || !r.U32(&h.length)) {
    return Malformed("option reply header");
  }
  if (magic != kOptReplyMagic) return Malformed("option reply magic");
  return h;
}

std::vector<std::byte> EncodeRepServer(std::string_view name, std::string_view description) {
  Writer w(4 + name.size() + description.size());
  return w.U32(static_cast<uint32_t>(name.size())).String(name).String(description).Take();
}

Result<RepServer> ParseRepServer(std::span<const std::byte> data) {
  Reader r(data);
  RepServer s;
  if (!r.LengthPrefixed(&s.name)) return Malformed("NBD_REP_SERVER");
  if (!r.String(r.remaining(), &s.description)) return Malformed("NBD_REP_SERVER");
  return s;
}

std::vector<std::byte> EncodeInfoExport(uint64_t size, uint16_t transmission_flags) {
  return Writer(12).U16(kInfoExport).U64(size).U16(transmission_flags).Take();
}

std::vector<std::byte> EncodeInfoName(std::string_view name) {
  return Writer(2 + name.size()).U16(kInfoName).String(name).Take();
}

std::vector<std::byte> EncodeInfoDescription(std::string_view description) {
  return Writer(2 + description.size()).U16(kInfoDescription).String(description).Take();
}

std::vector<std::byte> EncodeInfoBlockSize(uint32_t min_block, uint32_t preferred_block,
                                           uint32_t max_payload) {
  return Writer(14).U16(kInfoBlockSize).U32(min_block).U32(preferred_block).U32(max_payload).Take();
}

Result<Info> ParseInfo(std::span<const std::byte> data) {
  Reader r(data);
  Info info;
  if (!r.U16(&info.type)) return Malformed("NBD_REP_INFO");
  switch (info.type) {
    case kInfoExport:
      if (r.remaining() != 10) return Malformed("NBD_INFO_EXPORT length");
      (void)r.U64(&info.size);
      (void)r.U16(&info.transmission_flags);
      break;
    case kInfoName:
    case kInfoDescription:
      if (r.remaining() > kMaxStringLength) return Malformed("NBD_INFO_NAME/DESCRIPTION length");
      (void)r.String(r.remaining(), &info.text);
      break;
    case kInfoBlockSize:
      if (r.remaining() != 12) return Malformed("NBD_INFO_BLOCK_SIZE length");
      (void)r.U32(&info.min_block);
      (void)r.U32(&info.preferred_block);
      (void)r.U32(&info.max_payload);
      break;
    default:
      break;  // unknown info types are to be ignored by clients
  }
  return info;
}

std::vector<std::byte> EncodeMetaContextReply(uint32_t context_id, std::string_view name) {
  return Writer(4 + name.size()).U32(context_id).String(name).Take();
}

Result<MetaContextReply> ParseMetaContextReply(std::span<const std::byte> data) {
  Reader r(data);
  MetaContextReply rep;
  if (!r.U32(&rep.context_id)) return Malformed("NBD_REP_META_CONTEXT");
  if (r.remaining() > kMaxStringLength) return Malformed("NBD_REP_META_CONTEXT name length");
  (void)r.String(r.remaining(), &rep.name);
  return rep;
}

// ---- Transmission ----

std::array<std::byte, kRequestSize> EncodeRequest(const Request& req) {
  std::array<std::byte, kRequestSize> out;
  EncodeBE32(&out[0], kRequestMagic);
  EncodeBE16(&out[4], req.flags);
  EncodeBE16(&out[6], req.type);
  EncodeBE64(&out[8], req.cookie);
  EncodeBE64(&out[16], req.offset);
  EncodeBE32(&out[24], req.length);
  return out;
}

Result<Request> ParseRequest(std::span<const std::byte> in) {
  if (in.size() < kRequestSize) return Malformed("request: short");
  if (DecodeBE32(in.data()) != kRequestMagic) return Malformed("request magic");
  Request req;
  req.flags = DecodeBE16(in.data() + 4);
  req.type = DecodeBE16(in.data() + 6);
  req.cookie = DecodeBE64(in.data() + 8);
  req.offset = DecodeBE64(in.data() + 16);
  req.length = DecodeBE32(in.data() + 24);
  return req;
}

std::array<std::byte, kSimpleReplySize> EncodeSimpleReply(uint32_t error, uint64_t cookie) {
  std::array<std::byte, kSimpleReplySize> out;
  EncodeBE32(&out[0], kSimpleReplyMagic);
  EncodeBE32(&out[4], error);
  EncodeBE64(&out[8], cookie);
  return out;
}

Result<SimpleReply> ParseSimpleReply(std::span<const std::byte> in) {
  if (in.size() < kSimpleReplySize) return Malformed("simple reply: short");
  if (DecodeBE32(in.data()) != kSimpleReplyMagic) return Malformed("simple reply magic");
  return SimpleReply{DecodeBE32(in.data() + 4), DecodeBE64(in.data() + 8)};
}

std::array<std::byte, kChunkHeaderSize> EncodeChunkHeader(const ChunkHeader& h) {
  std::array<std::byte, kChunkHeaderSize> out;
  EncodeBE32(&out[0], kStructuredReplyMagic);
  EncodeBE16(&out[4], h.flags);
  EncodeBE16(&out[6], h.type);
  EncodeBE64(&out[8], h.cookie);
  EncodeBE32(&out[16], h.length);
  return out;
}

Result<ChunkHeader> ParseChunkHeader(std::span<const std::byte> in) {
  if (in.size() < kChunkHeaderSize) return Malformed("chunk header: short");
  if (DecodeBE32(in.data()) != kStructuredReplyMagic) return Malformed("chunk header magic");
  ChunkHeader h;
  h.flags = DecodeBE16(in.data() + 4);
  h.type = DecodeBE16(in.data() + 6);
  h.cookie = DecodeBE64(in.data() + 8);
  h.length = DecodeBE32(in.data() + 16);
  return h;
}

std::array<std::byte, kChunkHeaderSize> EncodeNoneChunk(uint64_t cookie, uint16_t flags) {
  return EncodeChunkHeader({flags, kReplyTypeNone, cookie, 0});
}

std::array<std::byte, kOffsetDataHeaderSize> EncodeOffsetDataHeader(uint64_t cookie, uint16_t flags,
                                                                    uint64_t offset,
                                                                    uint32_t data_length) {
  std::array<std::byte, kOffsetDataHeaderSize> out;
  auto h = EncodeChunkHeader({flags, kReplyTypeOffsetData, cookie, 8 + data_length});
  std::memcpy(out.data(), h.data(), h.size());
  EncodeBE64(&out[kChunkHeaderSize], offset);
  return out;
}

std::vector<std::byte> EncodeErrorChunk(uint64_t cookie, uint16_t flags, uint32_t error,
                                        std::string_view message) {
  message = message.substr(0, kMaxStringLength);
  const auto payload = static_cast<uint32_t>(6 + message.size());
  Writer w(kChunkHeaderSize + payload);
  w.Bytes(EncodeChunkHeader({flags, kReplyTypeError, cookie, payload}));
  return w.U32(error).U16(static_cast<uint16_t>(message.size())).String(message).Take();
}

std::vector<std::byte> EncodeBlockStatusChunk(uint64_t cookie, uint16_t flags, uint32_t context_id,
                                              std::span<const BlockDescriptor> descriptors) {
  const auto payload = static_cast<uint32_t>(4 + kBlockDescriptorSize * descriptors.size());
  Writer w(kChunkHeaderSize + payload);
  w.Bytes(EncodeChunkHeader({flags, kReplyTypeBlockStatus, cookie, payload})).U32(context_id);
  for (const BlockDescriptor& d : descriptors) w.U32(d.length).U32(d.flags);
  return w.Take();
}

Result<OffsetData> ParseOffsetData(std::span<const std::byte> payload) {
  if (payload.size() <= 8) return Malformed("OFFSET_DATA chunk: no data");
  return OffsetData{DecodeBE64(payload.data()), payload.subspan(8)};
}

Result<ErrorChunk> ParseErrorChunk(uint16_t type, std::span<const std::byte> payload) {
  if ((type & kReplyTypeErrBit) == 0) return Malformed("error chunk: not an error type");
  Reader r(payload);
  ErrorChunk e;
  uint16_t n = 0;
  if (!r.U32(&e.error) || !r.U16(&n) || !r.String(n, &e.message)) return Malformed("error chunk");
  if (type == kReplyTypeError && r.remaining() != 0) return Malformed("ERROR chunk length");
  if (type == kReplyTypeErrorOffset && (r.remaining() != 8 || !r.U64(&e.offset))) {
    return Malformed("ERROR_OFFSET chunk length");
  }
  return e;
}

Result<BlockStatusChunk> ParseBlockStatusChunk(std::span<const std::byte> payload) {
  Reader r(payload);
  BlockStatusChunk c;
  if (!r.U32(&c.context_id)) return Malformed("BLOCK_STATUS chunk");
  if (r.remaining() == 0 || r.remaining() % kBlockDescriptorSize != 0) {
    return Malformed("BLOCK_STATUS chunk length");
  }
  c.descriptors.resize(r.remaining() / kBlockDescriptorSize);
  for (BlockDescriptor& d : c.descriptors) {
    (void)r.U32(&d.length);  // length checked above
    (void)r.U32(&d.flags);
  }
  return c;
}

}  // namespace qbd::nbd
