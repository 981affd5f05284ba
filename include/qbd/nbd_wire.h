// nbd_wire: the NBD protocol's messages as bytes, without any I/O (fixed newstyle handshake,
// simple and structured replies; no TLS, no extended headers).
//
// The server (src/nbd/server.cc) and the test clients use it; it is fuzzed by
// fuzz/nbd_wire_fuzz.cc. Every Encode* returns the exact bytes of one message (header and
// payload), big-endian as the protocol requires. Every Parse* takes the bytes as received and
// returns InvalidArgument for malformed input: a bad magic, too few bytes, or lengths that
// disagree with each other. Parsers never read past the span they are given and keep no pointers
// into it unless the result type says so (a span member).
//
// Reference: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
// Thread-safety: pure functions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/status.h"

namespace qbd::nbd {

// ---- Magics ----
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943;       // "NBDMAGIC"
inline constexpr uint64_t kOptMagic = 0x49484156454f5054;       // "IHAVEOPT"
inline constexpr uint64_t kOptReplyMagic = 0x0003e889045565a9;  // option replies
inline constexpr uint32_t kRequestMagic = 0x25609513;           // transmission requests
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;       // simple replies
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;   // structured reply chunks

// ---- Handshake flags (server, 16 bits) and client flags (32 bits) ----
inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFlagFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientFlagNoZeroes = 1 << 1;

// ---- Transmission flags (16 bits) ----
inline constexpr uint16_t kFlagHasFlags = 1 << 0;
inline constexpr uint16_t kFlagReadOnly = 1 << 1;
inline constexpr uint16_t kFlagSendFlush = 1 << 2;
inline constexpr uint16_t kFlagSendFua = 1 << 3;
inline constexpr uint16_t kFlagRotational = 1 << 4;
inline constexpr uint16_t kFlagSendTrim = 1 << 5;
inline constexpr uint16_t kFlagSendWriteZeroes = 1 << 6;
inline constexpr uint16_t kFlagSendDf = 1 << 7;
inline constexpr uint16_t kFlagCanMultiConn = 1 << 8;
inline constexpr uint16_t kFlagSendResize = 1 << 9;
inline constexpr uint16_t kFlagSendCache = 1 << 10;
inline constexpr uint16_t kFlagSendFastZero = 1 << 11;

// ---- Options ----
inline constexpr uint32_t kOptExportName = 1;
inline constexpr uint32_t kOptAbort = 2;
inline constexpr uint32_t kOptList = 3;
inline constexpr uint32_t kOptPeekExport = 4;  // withdrawn
inline constexpr uint32_t kOptStartTls = 5;
inline constexpr uint32_t kOptInfo = 6;
inline constexpr uint32_t kOptGo = 7;
inline constexpr uint32_t kOptStructuredReply = 8;
inline constexpr uint32_t kOptListMetaContext = 9;
inline constexpr uint32_t kOptSetMetaContext = 10;
inline constexpr uint32_t kOptExtendedHeaders = 11;

// ---- Option reply types ----
inline constexpr uint32_t kRepAck = 1;
inline constexpr uint32_t kRepServer = 2;
inline constexpr uint32_t kRepInfo = 3;
inline constexpr uint32_t kRepMetaContext = 4;
inline constexpr uint32_t kRepErrBit = 0x80000000u;
inline constexpr uint32_t kRepErrUnsup = kRepErrBit | 1;
inline constexpr uint32_t kRepErrPolicy = kRepErrBit | 2;
inline constexpr uint32_t kRepErrInvalid = kRepErrBit | 3;
inline constexpr uint32_t kRepErrPlatform = kRepErrBit | 4;
inline constexpr uint32_t kRepErrTlsReqd = kRepErrBit | 5;
inline constexpr uint32_t kRepErrUnknown = kRepErrBit | 6;
inline constexpr uint32_t kRepErrShutdown = kRepErrBit | 7;
inline constexpr uint32_t kRepErrBlockSizeReqd = kRepErrBit | 8;
inline constexpr uint32_t kRepErrTooBig = kRepErrBit | 9;

// ---- NBD_INFO_* (in NBD_REP_INFO replies and NBD_OPT_INFO/GO requests) ----
inline constexpr uint16_t kInfoExport = 0;
inline constexpr uint16_t kInfoName = 1;
inline constexpr uint16_t kInfoDescription = 2;
inline constexpr uint16_t kInfoBlockSize = 3;

// ---- Commands and command flags ----
inline constexpr uint16_t kCmdRead = 0;
inline constexpr uint16_t kCmdWrite = 1;
inline constexpr uint16_t kCmdDisc = 2;
inline constexpr uint16_t kCmdFlush = 3;
inline constexpr uint16_t kCmdTrim = 4;
inline constexpr uint16_t kCmdCache = 5;
inline constexpr uint16_t kCmdWriteZeroes = 6;
inline constexpr uint16_t kCmdBlockStatus = 7;
inline constexpr uint16_t kCmdResize = 8;

inline constexpr uint16_t kCmdFlagFua = 1 << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1 << 1;
inline constexpr uint16_t kCmdFlagDf = 1 << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1 << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1 << 4;

// ---- NBD errno values (the protocol's, not the host's) ----
inline constexpr uint32_t kEperm = 1;
inline constexpr uint32_t kEio = 5;
inline constexpr uint32_t kEnomem = 12;
inline constexpr uint32_t kEinval = 22;
inline constexpr uint32_t kEnospc = 28;
inline constexpr uint32_t kEoverflow = 75;
inline constexpr uint32_t kEnotsup = 95;
inline constexpr uint32_t kEshutdown = 108;

// ---- Structured replies ----
inline constexpr uint16_t kReplyFlagDone = 1 << 0;
inline constexpr uint16_t kReplyTypeNone = 0;
inline constexpr uint16_t kReplyTypeOffsetData = 1;
inline constexpr uint16_t kReplyTypeOffsetHole = 2;
inline constexpr uint16_t kReplyTypeBlockStatus = 5;
inline constexpr uint16_t kReplyTypeErrBit = 1 << 15;
inline constexpr uint16_t kReplyTypeError = kReplyTypeErrBit | 1;
inline constexpr uint16_t kReplyTypeErrorOffset = kReplyTypeErrBit | 2;

// ---- Meta contexts ----
inline constexpr std::string_view kBaseAllocation = "base:allocation";
inline constexpr uint32_t kStateHole = 1 << 0;  // base:allocation flags
inline constexpr uint32_t kStateZero = 1 << 1;

// ---- Sizes ----
inline constexpr size_t kServerGreetingSize = 18;  // NBDMAGIC, IHAVEOPT, u16 flags
inline constexpr size_t kClientFlagsSize = 4;
inline constexpr size_t kOptionHeaderSize = 16;       // IHAVEOPT, u32 option, u32 length
inline constexpr size_t kOptionReplyHeaderSize = 20;  // magic, u32 option, u32 type, u32 length
inline constexpr size_t kExportNameReplySize = 10;    // u64 size, u16 flags (+124 zeroes)
inline constexpr size_t kExportNameZeroes = 124;
inline constexpr size_t kRequestSize = 28;
inline constexpr size_t kSimpleReplySize = 16;
inline constexpr size_t kChunkHeaderSize = 20;
inline constexpr size_t kOffsetDataHeaderSize = kChunkHeaderSize + 8;  // chunk header + u64 offset
inline constexpr size_t kBlockDescriptorSize = 8;                      // u32 length, u32 flags
// Strings (names, queries, messages) longer than this are malformed (proto.md "Conventions").
inline constexpr size_t kMaxStringLength = 4096;

// Maps a host errno (Status::Errno()) to the NBD error sent to the client: EPERM, EIO, ENOMEM,
// EINVAL, ENOSPC, EOVERFLOW, ENOTSUP/EOPNOTSUPP, ESHUTDOWN keep their meaning; any other
// non-zero value becomes EIO; 0 stays 0.
uint32_t ErrnoToNbd(int err);
// "NBD_OPT_GO", "NBD_CMD_READ", ...; "unknown" for values outside the protocol. For log lines.
const char* OptionName(uint32_t option);
const char* CommandName(uint16_t type);

// ---- Handshake ----

// S: NBDMAGIC, IHAVEOPT, handshake flags.
std::array<std::byte, kServerGreetingSize> EncodeServerGreeting(uint16_t handshake_flags);
// Returns the handshake flags. REQUIRES nothing; InvalidArgument on bad magic or short input.
Result<uint16_t> ParseServerGreeting(std::span<const std::byte> in);

std::array<std::byte, kClientFlagsSize> EncodeClientFlags(uint32_t flags);
Result<uint32_t> ParseClientFlags(std::span<const std::byte> in);

struct OptionHeader {
  uint32_t option = 0;
  uint32_t length = 0;  // bytes of option data that follow
};
std::array<std::byte, kOptionHeaderSize> EncodeOptionHeader(const OptionHeader& h);
Result<OptionHeader> ParseOptionHeader(std::span<const std::byte> in);
// An option header followed by its data (for clients).
std::vector<std::byte> EncodeOption(uint32_t option, std::span<const std::byte> data);

// Data of NBD_OPT_INFO and NBD_OPT_GO: u32 name length, name, u16 count, count x u16 info type.
struct InfoRequest {
  std::string name;
  std::vector<uint16_t> requests;  // NBD_INFO_* the client asks for
  bool operator==(const InfoRequest&) const = default;
};
std::vector<std::byte> EncodeInfoRequest(const InfoRequest& r);
// The whole option data must be consumed exactly.
Result<InfoRequest> ParseInfoRequest(std::span<const std::byte> data);

// Data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: u32 export name length, name,
// u32 query count, then per query u32 length and the query string.
struct MetaContextRequest {
  std::string export_name;
  std::vector<std::string> queries;
  bool operator==(const MetaContextRequest&) const = default;
};
std::vector<std::byte> EncodeMetaContextRequest(const MetaContextRequest& r);
Result<MetaContextRequest> ParseMetaContextRequest(std::span<const std::byte> data);

// Reply to NBD_OPT_EXPORT_NAME: u64 size, u16 transmission flags, then 124 zero bytes unless the
// client set NBD_FLAG_C_NO_ZEROES.
std::vector<std::byte> EncodeExportNameReply(uint64_t size, uint16_t flags, bool no_zeroes);
struct ExportNameReply {
  uint64_t size = 0;
  uint16_t flags = 0;
};
// Accepts the 10-byte form (trailing zeroes, if any, are the caller's to skip).
Result<ExportNameReply> ParseExportNameReply(std::span<const std::byte> in);

// ---- Option replies ----

struct OptionReplyHeader {
  uint32_t option = 0;
  uint32_t type = 0;    // NBD_REP_*
  uint32_t length = 0;  // bytes of reply data that follow
};
// A whole option reply: header and `data`. Errors carry a human-readable message as data.
std::vector<std::byte> EncodeOptionReply(uint32_t option, uint32_t type,
                                         std::span<const std::byte> data = {});
std::vector<std::byte> EncodeOptionError(uint32_t option, uint32_t type, std::string_view message);
Result<OptionReplyHeader> ParseOptionReplyHeader(std::span<const std::byte> in);

// NBD_REP_SERVER data: u32 name length, name, optional description (rest of the data).
std::vector<std::byte> EncodeRepServer(std::string_view name, std::string_view description);
struct RepServer {
  std::string name;
  std::string description;
};
Result<RepServer> ParseRepServer(std::span<const std::byte> data);

// NBD_REP_INFO data: u16 info type, then per type: EXPORT u64 size, u16 transmission flags;
// NAME / DESCRIPTION the string; BLOCK_SIZE u32 minimum, u32 preferred, u32 maximum payload.
std::vector<std::byte> EncodeInfoExport(uint64_t size, uint16_t transmission_flags);
std::vector<std::byte> EncodeInfoName(std::string_view name);
std::vector<std::byte> EncodeInfoDescription(std::string_view description);
std::vector<std::byte> EncodeInfoBlockSize(uint32_t min_block, uint32_t preferred_block,
                                           uint32_t max_payload);
struct Info {
  uint16_t type = 0;
  uint64_t size = 0;                // kInfoExport
  uint16_t transmission_flags = 0;  // kInfoExport
  std::string text;                 // kInfoName, kInfoDescription
  uint32_t min_block = 0;           // kInfoBlockSize
  uint32_t preferred_block = 0;
  uint32_t max_payload = 0;
};
// Known types must have their exact length; an unknown type is returned with only `type` set.
Result<Info> ParseInfo(std::span<const std::byte> data);

// NBD_REP_META_CONTEXT data: u32 context id, name.
std::vector<std::byte> EncodeMetaContextReply(uint32_t context_id, std::string_view name);
struct MetaContextReply {
  uint32_t context_id = 0;
  std::string name;
};
Result<MetaContextReply> ParseMetaContextReply(std::span<const std::byte> data);

// ---- Transmission ----

struct Request {
  uint16_t flags = 0;   // NBD_CMD_FLAG_*
  uint16_t type = 0;    // NBD_CMD_*
  uint64_t cookie = 0;  // a.k.a. handle: echoed in the reply
  uint64_t offset = 0;
  uint32_t length = 0;  // for WRITE, the payload that follows
  bool operator==(const Request&) const = default;
};
std::array<std::byte, kRequestSize> EncodeRequest(const Request& r);
// InvalidArgument on short input or a bad magic; any type and flags are accepted here.
Result<Request> ParseRequest(std::span<const std::byte> in);

struct SimpleReply {
  uint32_t error = 0;  // NBD errno
  uint64_t cookie = 0;
};
std::array<std::byte, kSimpleReplySize> EncodeSimpleReply(uint32_t error, uint64_t cookie);
Result<SimpleReply> ParseSimpleReply(std::span<const std::byte> in);

struct ChunkHeader {
  uint16_t flags = 0;  // NBD_REPLY_FLAG_*
  uint16_t type = 0;   // NBD_REPLY_TYPE_*
  uint64_t cookie = 0;
  uint32_t length = 0;  // payload bytes that follow
  bool operator==(const ChunkHeader&) const = default;
};
std::array<std::byte, kChunkHeaderSize> EncodeChunkHeader(const ChunkHeader& h);
Result<ChunkHeader> ParseChunkHeader(std::span<const std::byte> in);

// NBD_REPLY_TYPE_NONE (length 0).
std::array<std::byte, kChunkHeaderSize> EncodeNoneChunk(uint64_t cookie, uint16_t flags);
// The chunk header and u64 offset of an NBD_REPLY_TYPE_OFFSET_DATA chunk carrying `data_length`
// bytes; the data itself is sent after it (so it need not be copied).
std::array<std::byte, kOffsetDataHeaderSize> EncodeOffsetDataHeader(uint64_t cookie, uint16_t flags,
                                                                    uint64_t offset,
                                                                    uint32_t data_length);
// NBD_REPLY_TYPE_ERROR: u32 error, u16 message length, message. `message` is cut at
// kMaxStringLength.
std::vector<std::byte> EncodeErrorChunk(uint64_t cookie, uint16_t flags, uint32_t error,
                                        std::string_view message);

struct BlockDescriptor {
  uint32_t length = 0;
  uint32_t flags = 0;  // kStateHole | kStateZero for base:allocation
  bool operator==(const BlockDescriptor&) const = default;
};
// NBD_REPLY_TYPE_BLOCK_STATUS: u32 context id, then u32 length, u32 flags per descriptor.
std::vector<std::byte> EncodeBlockStatusChunk(uint64_t cookie, uint16_t flags, uint32_t context_id,
                                              std::span<const BlockDescriptor> descriptors);

// Payload parsers (the bytes after a chunk header, `header.length` of them).
struct OffsetData {
  uint64_t offset = 0;
  std::span<const std::byte> data;  // points into the parsed payload
};
// At least one data byte is required (proto.md).
Result<OffsetData> ParseOffsetData(std::span<const std::byte> payload);
struct ErrorChunk {
  uint32_t error = 0;
  std::string message;
  uint64_t offset = 0;  // kReplyTypeErrorOffset only
};
// Parses the payload of an error chunk of `type` (any type with kReplyTypeErrBit): u32 error,
// u16 message length, message, and for kReplyTypeErrorOffset a u64 offset. Other error types may
// carry more bytes, which are ignored.
Result<ErrorChunk> ParseErrorChunk(uint16_t type, std::span<const std::byte> payload);
struct BlockStatusChunk {
  uint32_t context_id = 0;
  std::vector<BlockDescriptor> descriptors;  // at least one
};
Result<BlockStatusChunk> ParseBlockStatusChunk(std::span<const std::byte> payload);

}  // namespace qbd::nbd
