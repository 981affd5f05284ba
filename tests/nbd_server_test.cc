// Drives a real NbdServer over a unix socket (and TCP 127.0.0.1:0) with a small raw-socket client,
// so every byte the server sends is checked against the protocol.
#include "qbd/nbd_server.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/coding.h"
#include "qbd/nbd_wire.h"
#include "testutil/mem_disk.h"

namespace qbd::test {
namespace {

using namespace qbd::nbd;  // NOLINT: the test reads like the protocol document

constexpr uint64_t kDiskSize = 1 << 20;

class MapRegistry : public ExportRegistry {
 public:
  std::vector<std::string> List() const override {
    std::vector<std::string> out;
    for (const auto& [name, e] : exports_) {
      if (!name.empty()) out.push_back(name);
    }
    return out;
  }
  std::shared_ptr<const Export> Find(std::string_view name) const override {
    auto it = exports_.find(std::string(name));
    return it == exports_.end() ? nullptr : it->second;
  }
  void Add(std::shared_ptr<Export> e, bool is_default = false) {
    if (is_default) exports_[""] = e;
    exports_[e->name] = std::move(e);
  }

 private:
  std::map<std::string, std::shared_ptr<const Export>> exports_;
};

std::vector<std::byte> Pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<uint8_t>(seed + i * 7 + (i >> 8)));
  return v;
}

std::span<const std::byte> AsBytes(std::string_view s) { return std::as_bytes(std::span(s)); }

// A blocking client socket with a 5 s receive timeout, so a broken server fails tests quickly
// instead of hanging them.
class RawClient {
 public:
  explicit RawClient(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::strncpy(sun.sun_path, path.c_str(), sizeof(sun.sun_path) - 1);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) == 0);
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~RawClient() { ::close(fd_); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  void Send(std::span<const std::byte> b) {
    REQUIRE(::send(fd_, b.data(), b.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(b.size()));
  }
  std::vector<std::byte> Recv(size_t n) {
    std::vector<std::byte> out(n);
    size_t done = 0;
    while (done < n) {
      ssize_t r = ::recv(fd_, out.data() + done, n - done, 0);
      REQUIRE_MESSAGE(r > 0, "recv: ", r < 0 ? std::strerror(errno) : "EOF");
      done += static_cast<size_t>(r);
    }
    return out;
  }
  // True when the server closes the connection (EOF or reset) within `limit`.
  bool ClosedByServer(std::chrono::seconds limit = std::chrono::seconds(2)) {
    pollfd p{fd_, POLLIN, 0};
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      if (::poll(&p, 1, 50) > 0) {
        std::byte b[256];
        ssize_t r = ::recv(fd_, b, sizeof(b), MSG_DONTWAIT);
        if (r <= 0) return r == 0 || errno == ECONNRESET;
      }
    }
    return false;
  }

  // Greeting and client flags.
  void Hello(uint32_t client_flags = kClientFlagFixedNewstyle | kClientFlagNoZeroes) {
    auto flags = ParseServerGreeting(Recv(kServerGreetingSize));
    REQUIRE(flags.ok());
    CHECK(*flags == (kFlagFixedNewstyle | kFlagNoZeroes));
    Send(EncodeClientFlags(client_flags));
  }

  struct OptReply {
    OptionReplyHeader h;
    std::vector<std::byte> data;
  };
  void SendOption(uint32_t opt, std::span<const std::byte> data = {}) {
    Send(EncodeOption(opt, data));
  }
  OptReply RecvOptReply() {
    auto h = ParseOptionReplyHeader(Recv(kOptionReplyHeaderSize));
    REQUIRE(h.ok());
    OptReply r{*h, Recv(h->length)};
    return r;
  }
  // Sends `opt` and returns the replies up to and including the final one (ACK or an error).
  std::vector<OptReply> Option(uint32_t opt, std::span<const std::byte> data = {}) {
    SendOption(opt, data);
    std::vector<OptReply> out;
    for (;;) {
      out.push_back(RecvOptReply());
      CHECK(out.back().h.option == opt);
      uint32_t t = out.back().h.type;
      if (t == kRepAck || (t & kRepErrBit) != 0) return out;
    }
  }

  // Handshake through NBD_OPT_GO; returns the NBD_INFO_EXPORT info.
  Info Go(const std::string& name, bool structured = false, bool base_allocation = false) {
    Hello();
    if (structured) {
      auto r = Option(kOptStructuredReply);
      REQUIRE(r.back().h.type == kRepAck);
      structured_ = true;
    }
    if (base_allocation) {
      auto r = Option(kOptSetMetaContext,
                      EncodeMetaContextRequest({name, {std::string(kBaseAllocation)}}));
      REQUIRE(r.size() == 2);
      REQUIRE(r[0].h.type == kRepMetaContext);
      auto mc = ParseMetaContextReply(r[0].data);
      REQUIRE(mc.ok());
      CHECK(mc->name == kBaseAllocation);
      context_id_ = mc->context_id;
    }
    auto replies = Option(kOptGo, EncodeInfoRequest({name, {kInfoBlockSize}}));
    REQUIRE(replies.back().h.type == kRepAck);
    Info export_info;
    bool saw_export = false, saw_block_size = false;
    for (auto& r : replies) {
      if (r.h.type != kRepInfo) continue;
      auto info = ParseInfo(r.data);
      REQUIRE(info.ok());
      if (info->type == kInfoExport) {
        export_info = *info;
        saw_export = true;
      }
      saw_block_size = saw_block_size || info->type == kInfoBlockSize;
    }
    CHECK(saw_export);
    CHECK(saw_block_size);
    return export_info;
  }

  void Request(uint16_t type, uint64_t cookie, uint64_t offset, uint32_t length, uint16_t flags = 0,
               std::span<const std::byte> payload = {}) {
    auto h = EncodeRequest({flags, type, cookie, offset, length});
    std::vector<std::byte> msg(h.begin(), h.end());
    msg.insert(msg.end(), payload.begin(), payload.end());
    Send(msg);
  }

  struct Reply {
    uint64_t cookie = 0;
    uint32_t error = 0;
    std::vector<std::byte> data;           // READ data
    std::vector<BlockDescriptor> extents;  // BLOCK_STATUS
    uint32_t context_id = 0;
    bool structured = false;
  };
  // Receives one reply. Simple replies to reads need the read length: `read_lengths` maps
  // cookies of outstanding simple-reply reads to their length.
  Reply RecvReply(const std::map<uint64_t, uint32_t>& read_lengths = {}) {
    auto magic_bytes = Recv(4);
    uint32_t magic = DecodeBE32(magic_bytes.data());
    Reply out;
    if (magic == kSimpleReplyMagic) {
      auto rest = Recv(kSimpleReplySize - 4);
      magic_bytes.insert(magic_bytes.end(), rest.begin(), rest.end());
      auto r = ParseSimpleReply(magic_bytes);
      REQUIRE(r.ok());
      out.cookie = r->cookie;
      out.error = r->error;
      auto it = read_lengths.find(out.cookie);
      if (out.error == 0 && it != read_lengths.end()) out.data = Recv(it->second);
      return out;
    }
    REQUIRE(magic == kStructuredReplyMagic);
    out.structured = true;
    for (;;) {
      if (magic_bytes.empty()) magic_bytes = Recv(4);
      auto rest = Recv(kChunkHeaderSize - 4);
      magic_bytes.insert(magic_bytes.end(), rest.begin(), rest.end());
      auto h = ParseChunkHeader(magic_bytes);
      REQUIRE(h.ok());
      magic_bytes.clear();
      out.cookie = h->cookie;
      auto payload = Recv(h->length);
      if (h->type == kReplyTypeOffsetData) {
        auto d = ParseOffsetData(payload);
        REQUIRE(d.ok());
        out.data.assign(d->data.begin(), d->data.end());
      } else if (h->type == kReplyTypeBlockStatus) {
        auto bs = ParseBlockStatusChunk(payload);
        REQUIRE(bs.ok());
        out.extents = bs->descriptors;
        out.context_id = bs->context_id;
      } else if ((h->type & kReplyTypeErrBit) != 0) {
        auto e = ParseErrorChunk(h->type, payload);
        REQUIRE(e.ok());
        out.error = e->error;
      } else {
        REQUIRE(h->type == kReplyTypeNone);
      }
      if ((h->flags & kReplyFlagDone) != 0) return out;
    }
  }

  // One request, one reply.
  Reply Call(uint16_t type, uint64_t offset, uint32_t length, uint16_t flags = 0,
             std::span<const std::byte> payload = {}) {
    const uint64_t cookie = ++cookie_;
    Request(type, cookie, offset, length, flags, payload);
    std::map<uint64_t, uint32_t> reads;
    if (type == kCmdRead && !structured_) reads[cookie] = length;
    Reply r = RecvReply(reads);
    CHECK(r.cookie == cookie);
    return r;
  }

  int fd() const { return fd_; }
  uint32_t context_id() const { return context_id_; }

 private:
  int fd_ = -1;
  bool structured_ = false;
  uint32_t context_id_ = 0;
  uint64_t cookie_ = 1000;
};

int ThreadCount() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  }
  return -1;
}

// ThreadCount() once it reads the same twice 5 ms apart: threads of connections closed by an
// earlier test may still be ending.
int SettledThreadCount() {
  int last = ThreadCount();
  for (int i = 0; i < 1000; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const int now = ThreadCount();
    if (now == last) return now;
    last = now;
  }
  return last;
}

// A server on a unix socket in a fresh temporary directory, serving "disk" (default) and a
// read-only "ro" export, both MemDisks.
class ServerFixture {
 public:
  explicit ServerFixture(NbdServerOptions options = {4, 64 * 1024}) : server_(registry_, options) {
    char tmpl[] = "/tmp/qbd_nbd_test_XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    disk = std::make_shared<MemDisk>(kDiskSize);
    ro_disk = std::make_shared<MemDisk>(kDiskSize);
    auto e = std::make_shared<Export>();
    e->name = "disk";
    e->description = "the test disk";
    e->max_payload = 256 * 1024;
    e->handler = disk;
    registry_.Add(e, /*is_default=*/true);
    auto ro = std::make_shared<Export>();
    ro->name = "ro";
    ro->read_only = true;
    ro->handler = ro_disk;
    registry_.Add(ro);
    path = dir_ + "/nbd.sock";
    REQUIRE(server_.Listen("unix:" + path).ok());
  }
  ~ServerFixture() {
    server_.Stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  NbdServer& server() { return server_; }
  MapRegistry& registry() { return registry_; }

  std::shared_ptr<MemDisk> disk, ro_disk;
  std::string path;

 private:
  std::string dir_;
  MapRegistry registry_;
  NbdServer server_;
};

}  // namespace

TEST_SUITE("nbd_server") {
TEST_CASE("GO then write, read, flush, trim and write zeroes work on the export") {
  ServerFixture f;
  RawClient c(f.path);
  Info info = c.Go("disk");
  CHECK(info.size == kDiskSize);
  CHECK((info.transmission_flags & kFlagHasFlags) != 0);
  CHECK((info.transmission_flags & kFlagSendFlush) != 0);
  CHECK((info.transmission_flags & kFlagSendFua) != 0);
  CHECK((info.transmission_flags & kFlagSendTrim) != 0);
  CHECK((info.transmission_flags & kFlagSendWriteZeroes) != 0);
  CHECK((info.transmission_flags & kFlagCanMultiConn) != 0);
  CHECK((info.transmission_flags & kFlagSendCache) != 0);
  CHECK((info.transmission_flags & kFlagSendFastZero) == 0);
  CHECK((info.transmission_flags & kFlagSendDf) == 0);
  CHECK((info.transmission_flags & kFlagReadOnly) == 0);

  auto data = Pattern(10000, 3);
  CHECK(c.Call(kCmdWrite, 5000, data.size(), kCmdFlagFua, data).error == 0);
  CHECK(f.disk->fua_writes() == 1);
  auto r = c.Call(kCmdRead, 5000, data.size());
  CHECK(r.error == 0);
  CHECK(r.data == data);
  CHECK(c.Call(kCmdFlush, 0, 0).error == 0);
  CHECK(f.disk->flushes() == 1);

  CHECK(c.Call(kCmdTrim, 5000, 100).error == 0);
  CHECK(f.disk->trims() == 1);
  CHECK(c.Call(kCmdWriteZeroes, 6000, 100, kCmdFlagNoHole).error == 0);
  CHECK(f.disk->no_hole_zeroes() == 1);
  CHECK(c.Call(kCmdWriteZeroes, 7000, 100).error == 0);
  CHECK(f.disk->zeroes() == 2);
  CHECK(c.Call(kCmdCache, 0, 4096).error == 0);
  auto after = f.disk->Contents(5000, data.size());
  std::vector<std::byte> expect = data;
  std::fill(expect.begin(), expect.begin() + 100, std::byte{0});
  std::fill(expect.begin() + 1000, expect.begin() + 1100, std::byte{0});
  std::fill(expect.begin() + 2000, expect.begin() + 2100, std::byte{0});
  CHECK(after == expect);

  SUBCASE("and zero-length read and write succeed") {
    CHECK(c.Call(kCmdRead, 0, 0).error == 0);
    CHECK(c.Call(kCmdWrite, kDiskSize, 0).error == 0);
  }
  SUBCASE("and DISC closes the connection") {
    c.Request(kCmdDisc, 1, 0, 0);
    CHECK(c.ClosedByServer());
  }
}

TEST_CASE("EXPORT_NAME enters transmission with and without the 124 zero bytes") {
  ServerFixture f;
  SUBCASE("NO_ZEROES") {
    RawClient c(f.path);
    c.Hello();
    c.SendOption(kOptExportName, AsBytes("disk"));
    auto rep = ParseExportNameReply(c.Recv(kExportNameReplySize));
    REQUIRE(rep.ok());
    CHECK(rep->size == kDiskSize);
    // The next bytes must be a reply to our request, not zero padding.
    CHECK(c.Call(kCmdFlush, 0, 0).error == 0);
  }
  SUBCASE("with zeroes, default export by empty name") {
    RawClient c(f.path);
    c.Hello(kClientFlagFixedNewstyle);
    c.SendOption(kOptExportName);
    auto bytes = c.Recv(kExportNameReplySize + kExportNameZeroes);
    CHECK(ParseExportNameReply(bytes)->size == kDiskSize);
    CHECK(c.Call(kCmdFlush, 0, 0).error == 0);
  }
  SUBCASE("unknown export closes the connection") {
    RawClient c(f.path);
    c.Hello();
    c.SendOption(kOptExportName, AsBytes("nope"));
    CHECK(c.ClosedByServer());
  }
}

TEST_CASE("LIST returns every export then ACK") {
  ServerFixture f;
  RawClient c(f.path);
  c.Hello();
  auto replies = c.Option(kOptList);
  REQUIRE(replies.size() == 3);
  std::set<std::string> names;
  for (size_t i = 0; i < 2; ++i) {
    REQUIRE(replies[i].h.type == kRepServer);
    auto s = ParseRepServer(replies[i].data);
    REQUIRE(s.ok());
    names.insert(s->name);
    if (s->name == "disk") CHECK(s->description == "the test disk");
  }
  CHECK(names == std::set<std::string>{"disk", "ro"});
  CHECK(replies[2].h.type == kRepAck);
  SUBCASE("and LIST with data is invalid") {
    CHECK(c.Option(kOptList, AsBytes("x")).back().h.type == kRepErrInvalid);
  }
}

TEST_CASE("unknown options and STARTTLS get ERR_UNSUP and negotiation continues") {
  ServerFixture f;
  RawClient c(f.path);
  c.Hello();
  CHECK(c.Option(4242, AsBytes("whatever")).back().h.type == kRepErrUnsup);
  CHECK(c.Option(kOptStartTls).back().h.type == kRepErrUnsup);
  CHECK(c.Option(kOptExtendedHeaders).back().h.type == kRepErrUnsup);
  auto go = c.Option(kOptGo, EncodeInfoRequest({"disk", {}}));
  CHECK(go.back().h.type == kRepAck);
}

TEST_CASE("GO and INFO of an unknown export get ERR_UNKNOWN") {
  ServerFixture f;
  RawClient c(f.path);
  c.Hello();
  CHECK(c.Option(kOptInfo, EncodeInfoRequest({"missing", {}})).back().h.type == kRepErrUnknown);
  CHECK(c.Option(kOptGo, EncodeInfoRequest({"missing", {}})).back().h.type == kRepErrUnknown);
  SUBCASE("and the error message shows a binary name escaped") {
    auto r = c.Option(kOptGo, EncodeInfoRequest({std::string("a\nb\xff", 4), {}}));
    REQUIRE(r.back().h.type == kRepErrUnknown);
    std::string msg(reinterpret_cast<const char*>(r.back().data.data()), r.back().data.size());
    CHECK(msg == "unknown export 'a\\x0ab\\xff'");
  }
  SUBCASE("and a malformed GO payload gets ERR_INVALID") {
    CHECK(c.Option(kOptGo, std::vector<std::byte>(3)).back().h.type == kRepErrInvalid);
  }
  SUBCASE("and INFO keeps negotiating, reporting name and description when asked") {
    auto r = c.Option(kOptInfo, EncodeInfoRequest({"", {kInfoName, kInfoDescription}}));
    REQUIRE(r.back().h.type == kRepAck);
    std::map<uint16_t, Info> infos;
    for (auto& x : r) {
      if (x.h.type != kRepInfo) continue;
      auto info = ParseInfo(x.data);
      REQUIRE(info.ok());
      infos[info->type] = *info;
    }
    CHECK(infos[kInfoName].text == "disk");
    CHECK(infos[kInfoDescription].text == "the test disk");
    CHECK(infos[kInfoBlockSize].preferred_block == 4096);
    CHECK(infos[kInfoBlockSize].max_payload == 256 * 1024);
    CHECK(c.Option(kOptGo, EncodeInfoRequest({"disk", {}})).back().h.type == kRepAck);
    CHECK(c.Call(kCmdFlush, 0, 0).error == 0);
  }
  SUBCASE("and ABORT is acknowledged, then the connection closes") {
    CHECK(c.Option(kOptAbort).back().h.type == kRepAck);
    CHECK(c.ClosedByServer());
  }
}

TEST_CASE("handshake closes on unknown client flags and oversized options") {
  ServerFixture f;
  SUBCASE("client flags") {
    RawClient c(f.path);
    c.Hello(kClientFlagFixedNewstyle | 0x100);
    CHECK(c.ClosedByServer());
  }
  SUBCASE("option longer than max_option_length") {
    RawClient c(f.path);
    c.Hello();
    c.Send(EncodeOptionHeader({kOptGo, 64 * 1024 + 1}));
    CHECK(c.ClosedByServer());
  }
  SUBCASE("bad option magic") {
    RawClient c(f.path);
    c.Hello();
    c.Send(std::vector<std::byte>(kOptionHeaderSize, std::byte{0x41}));
    CHECK(c.ClosedByServer());
  }
}

TEST_CASE("requests out of range or malformed get errors and the connection survives") {
  ServerFixture f;
  RawClient c(f.path);
  c.Go("disk");
  CHECK(c.Call(kCmdRead, kDiskSize - 10, 20).error == kEinval);
  CHECK(c.Call(kCmdRead, ~0ull - 5, 20).error == kEinval);
  CHECK(c.Call(kCmdRead, kDiskSize + 1, 0).error == kEinval);
  auto data = Pattern(20, 1);
  CHECK(c.Call(kCmdWrite, kDiskSize - 10, 20, 0, data).error == kEnospc);
  CHECK(c.Call(kCmdWriteZeroes, kDiskSize, 1).error == kEnospc);
  CHECK(c.Call(kCmdTrim, kDiskSize, 1).error == kEinval);
  CHECK(c.Call(kCmdRead, 0, 256 * 1024 + 1).error == kEinval);
  CHECK(c.Call(77, 0, 0).error == kEinval);
  CHECK(c.Call(kCmdRead, 0, 512, kCmdFlagNoHole).error == kEinval);
  CHECK(c.Call(kCmdWriteZeroes, 0, 512, kCmdFlagFastZero).error == kEinval);
  CHECK(c.Call(kCmdRead, 0, 512, 0x8000).error == kEinval);
  CHECK(c.Call(kCmdRead, 0, 512, kCmdFlagDf).error == kEinval);  // DF needs structured replies
  CHECK(c.Call(kCmdBlockStatus, 0, 512).error == kEinval);       // no meta context
  CHECK(f.disk->reads() == 0);
  CHECK(f.disk->writes() == 0);
  auto r = c.Call(kCmdRead, 0, 512);
  CHECK(r.error == 0);
  CHECK(r.data.size() == 512);
}

TEST_CASE("handler errors become NBD errnos") {
  ServerFixture f;
  RawClient c(f.path);
  c.Go("disk");
  f.disk->FailNext(Status::IOError("boom", ENOSPC));
  CHECK(c.Call(kCmdWrite, 0, 4, 0, Pattern(4, 0)).error == kEnospc);
  f.disk->FailNext(Status::NotSupported("nope"));
  CHECK(c.Call(kCmdTrim, 0, 4).error == kEnotsup);
  f.disk->FailNext(Status::Unavailable("quorum lost", ETIMEDOUT));
  CHECK(c.Call(kCmdFlush, 0, 0).error == kEio);
  f.disk->FailNext(Status::Corruption("bad checksum"));
  CHECK(c.Call(kCmdRead, 0, 4).error == kEio);  // and no data follows the simple reply
  CHECK(c.Call(kCmdRead, 0, 4).error == 0);
}

TEST_CASE("read-only export refuses writes, trims and zeroes with EPERM") {
  ServerFixture f;
  RawClient c(f.path);
  Info info = c.Go("ro");
  CHECK((info.transmission_flags & kFlagReadOnly) != 0);
  auto data = Pattern(4096, 9);
  CHECK(c.Call(kCmdWrite, 0, data.size(), 0, data).error == kEperm);
  CHECK(c.Call(kCmdTrim, 0, 4096).error == kEperm);
  CHECK(c.Call(kCmdWriteZeroes, 0, 4096).error == kEperm);
  CHECK(f.ro_disk->writes() == 0);
  // The refused payload was consumed: the stream is still in sync.
  CHECK(c.Call(kCmdRead, 0, 16).error == 0);
}

TEST_CASE("a write longer than the maximum payload gets EINVAL and closes the connection") {
  ServerFixture f;
  RawClient c(f.path);
  c.Go("disk");
  c.Request(kCmdWrite, 5, 0, 256 * 1024 + 1);
  auto r = c.RecvReply();
  CHECK(r.cookie == 5);
  CHECK(r.error == kEinval);
  CHECK(c.ClosedByServer());
}

TEST_CASE("garbage request magic closes that connection while another keeps working") {
  ServerFixture f;
  RawClient good(f.path);
  good.Go("disk");
  RawClient bad(f.path);
  bad.Go("disk");
  bad.Send(std::vector<std::byte>(kRequestSize, std::byte{0xee}));
  CHECK(bad.ClosedByServer());
  auto data = Pattern(4096, 5);
  CHECK(good.Call(kCmdWrite, 0, data.size(), 0, data).error == 0);
  CHECK(good.Call(kCmdRead, 0, data.size()).data == data);

  SUBCASE("and a client sending garbage before the handshake does not block others") {
    RawClient garbage(f.path);
    garbage.Send(std::vector<std::byte>(3, std::byte{1}));  // half of its client flags
    RawClient third(f.path);
    third.Go("disk");
    CHECK(third.Call(kCmdRead, 0, 4096).data == data);
  }
}

TEST_CASE("structured replies: reads are OFFSET_DATA chunks and errors ERROR chunks") {
  ServerFixture f;
  RawClient c(f.path);
  Info info = c.Go("disk", /*structured=*/true);
  CHECK((info.transmission_flags & kFlagSendDf) != 0);
  auto data = Pattern(8192, 11);
  CHECK(c.Call(kCmdWrite, 4096, data.size(), 0, data).error == 0);
  auto r = c.Call(kCmdRead, 4096, data.size(), kCmdFlagDf);
  CHECK(r.structured);
  CHECK(r.error == 0);
  CHECK(r.data == data);
  auto zero = c.Call(kCmdRead, 0, 0);
  CHECK(zero.structured);
  CHECK(zero.error == 0);
  auto err = c.Call(kCmdRead, kDiskSize, 1);
  CHECK(err.structured);
  CHECK(err.error == kEinval);
  f.disk->FailNext(Status::IOError("boom"));
  CHECK(c.Call(kCmdRead, 0, 1).error == kEio);
  CHECK(c.Call(kCmdFlush, 0, 0).error == 0);
}

TEST_CASE("meta contexts need structured replies and list base:allocation") {
  ServerFixture f;
  RawClient c(f.path);
  c.Hello();
  auto req = EncodeMetaContextRequest({"disk", {std::string(kBaseAllocation)}});
  CHECK(c.Option(kOptSetMetaContext, req).back().h.type == kRepErrInvalid);
  CHECK(c.Option(kOptListMetaContext, req).back().h.type == kRepErrInvalid);
  REQUIRE(c.Option(kOptStructuredReply).back().h.type == kRepAck);
  auto list = c.Option(kOptListMetaContext, EncodeMetaContextRequest({"disk", {}}));
  REQUIRE(list.size() == 2);
  CHECK(ParseMetaContextReply(list[0].data)->name == kBaseAllocation);
  auto other = c.Option(kOptSetMetaContext, EncodeMetaContextRequest({"disk", {"qemu:x"}}));
  CHECK(other.size() == 1);  // nothing selected: just the ACK
  CHECK(c.Option(kOptSetMetaContext, EncodeMetaContextRequest({"zzz", {}})).back().h.type ==
        kRepErrUnknown);
  CHECK(c.Option(kOptSetMetaContext, std::vector<std::byte>(5)).back().h.type == kRepErrInvalid);
}

TEST_CASE("block status reports holes and data of base:allocation") {
  ServerFixture f;
  RawClient c(f.path);
  c.Go("disk", /*structured=*/true, /*base_allocation=*/true);
  auto data = Pattern(8192, 1);
  REQUIRE(c.Call(kCmdWrite, 8192, data.size(), 0, data).error == 0);
  auto r = c.Call(kCmdBlockStatus, 0, 32768);
  REQUIRE(r.error == 0);
  CHECK(r.context_id == c.context_id());
  std::vector<BlockDescriptor> expect = {
      {8192, kStateHole | kStateZero}, {8192, 0}, {16384, kStateHole | kStateZero}};
  CHECK(r.extents == expect);

  SUBCASE("REQ_ONE returns one extent") {
    auto one = c.Call(kCmdBlockStatus, 0, 32768, kCmdFlagReqOne);
    REQUIRE(one.extents.size() == 1);
    CHECK(one.extents[0] == BlockDescriptor{8192, kStateHole | kStateZero});
  }
  SUBCASE("a handler without block status reports all data") {
    f.disk->SetBlockStatusSupported(false);
    auto all = c.Call(kCmdBlockStatus, 100, 5000);
    REQUIRE(all.error == 0);
    CHECK(all.extents == std::vector<BlockDescriptor>{{5000, 0}});
  }
  SUBCASE("a failing handler gets an error chunk") {
    f.disk->FailNext(Status::IOError("boom"));
    CHECK(c.Call(kCmdBlockStatus, 0, 4096).error == kEio);
  }
  SUBCASE("out of range is EINVAL") {
    CHECK(c.Call(kCmdBlockStatus, kDiskSize - 1, 2).error == kEinval);
  }
}

TEST_CASE("many pipelined requests all get their replies, in any order") {
  ServerFixture f;
  RawClient c(f.path);
  c.Go("disk");
  constexpr int kN = 200;
  std::map<uint64_t, uint32_t> reads;
  std::map<uint64_t, std::vector<std::byte>> expected;
  // A batch of writes of distinct 4 KiB blocks is sent before any reply is read; the reads of
  // the same blocks go out as a second batch once every write is acknowledged.
  std::vector<std::byte> batch;
  for (int i = 0; i < kN; ++i) {
    auto d = Pattern(4096, static_cast<uint8_t>(i));
    auto h = EncodeRequest({0, kCmdWrite, static_cast<uint64_t>(i), uint64_t(i) * 4096, 4096});
    batch.insert(batch.end(), h.begin(), h.end());
    batch.insert(batch.end(), d.begin(), d.end());
    expected[static_cast<uint64_t>(kN + i)] = std::move(d);
  }
  c.Send(batch);
  std::set<uint64_t> got;
  for (int i = 0; i < kN; ++i) {
    auto r = c.RecvReply();
    CHECK(r.error == 0);
    got.insert(r.cookie);
  }
  CHECK(got.size() == kN);
  batch.clear();
  for (int i = 0; i < kN; ++i) {
    auto h = EncodeRequest({0, kCmdRead, static_cast<uint64_t>(kN + i), uint64_t(i) * 4096, 4096});
    batch.insert(batch.end(), h.begin(), h.end());
    reads[static_cast<uint64_t>(kN + i)] = 4096;
  }
  c.Send(batch);
  got.clear();
  for (int i = 0; i < kN; ++i) {
    auto r = c.RecvReply(reads);
    CHECK(r.error == 0);
    CHECK(r.data == expected[r.cookie]);
    got.insert(r.cookie);
  }
  CHECK(got.size() == kN);
}

TEST_CASE("pipelined small and large reads all get whole replies while replies are combined") {
  // Small replies are copied into the outbox of the worker that is sending; a large one waits
  // for its turn. Every reply must arrive whole, exactly once.
  ServerFixture f(NbdServerOptions{8, 64 * 1024});
  RawClient c(f.path);
  c.Go("disk");
  const std::vector<std::byte> data = Pattern(256 * 1024, 9);
  std::vector<std::byte> batch;
  auto h = EncodeRequest({0, kCmdWrite, 1, 0, static_cast<uint32_t>(data.size())});
  batch.insert(batch.end(), h.begin(), h.end());
  batch.insert(batch.end(), data.begin(), data.end());
  c.Send(batch);
  REQUIRE(c.RecvReply().error == 0);
  constexpr int kN = 120;
  std::map<uint64_t, uint32_t> reads;
  batch.clear();
  for (int i = 0; i < kN; ++i) {
    const uint32_t len = i % 5 == 0 ? 256 * 1024 : 4096;
    const uint64_t off = i % 5 == 0 ? 0 : uint64_t(i % 64) * 4096;
    auto r = EncodeRequest({0, kCmdRead, static_cast<uint64_t>(100 + i), off, len});
    batch.insert(batch.end(), r.begin(), r.end());
    reads[static_cast<uint64_t>(100 + i)] = len;
  }
  c.Send(batch);
  std::set<uint64_t> got;
  for (int i = 0; i < kN; ++i) {
    auto r = c.RecvReply(reads);
    CHECK(r.error == 0);
    const int k = static_cast<int>(r.cookie) - 100;
    REQUIRE(k >= 0);
    REQUIRE(k < kN);
    if (k % 5 == 0) {
      CHECK(r.data == data);
    } else {
      const size_t off = size_t(k % 64) * 4096;
      CHECK(std::equal(r.data.begin(), r.data.end(), data.begin() + off));
    }
    got.insert(r.cookie);
  }
  CHECK(got.size() == kN);
}

TEST_CASE("a listener bound to one export serves it whatever name is asked") {
  ServerFixture f;
  std::string path2 = f.path + "2";
  REQUIRE(f.server().Listen("unix:" + path2, "ro").ok());
  RawClient c(path2);
  c.Hello();
  auto list = c.Option(kOptList);
  REQUIRE(list.size() == 2);
  CHECK(ParseRepServer(list[0].data)->name == "ro");
  CHECK(c.Option(kOptGo, EncodeInfoRequest({"anything", {}})).back().h.type == kRepAck);
  CHECK(c.Call(kCmdWrite, 0, 1, 0, Pattern(1, 0)).error == kEperm);
}

TEST_CASE("Listen reports bound addresses and rejects bad specs") {
  MapRegistry reg;
  NbdServer s(reg, {});
  REQUIRE(s.Listen("127.0.0.1:0").ok());
  auto addrs = s.BoundAddresses();
  REQUIRE(addrs.size() == 1);
  CHECK(addrs[0].rfind("127.0.0.1:", 0) == 0);
  CHECK(addrs[0] != "127.0.0.1:0");
  if (s.Listen("[::1]:0").ok()) {  // IPv6 may be disabled on the test machine
    auto v6 = s.BoundAddresses();
    REQUIRE(v6.size() == 2);
    CHECK(v6[1].rfind("[::1]:", 0) == 0);
  }
  CHECK(!s.Listen("127.0.0.1").ok());
  CHECK(!s.Listen("127.0.0.1:99999").ok());
  CHECK(!s.Listen("unix:").ok());
  CHECK(s.Listen(addrs[0]).IsIOError());  // in use
  s.Stop();
  CHECK(s.BoundAddresses().empty());
  CHECK(!s.Listen("127.0.0.1:0").ok());
  s.Stop();  // idempotent
}

TEST_CASE("Listen on a unix socket replaces a stale socket file but not a live one") {
  ServerFixture f;
  MapRegistry reg;
  NbdServer other(reg, {});
  CHECK(other.Listen("unix:" + f.path).IsIOError());  // f's server is live there
  const std::string stale = f.path + ".stale";
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::strncpy(sun.sun_path, stale.c_str(), sizeof(sun.sun_path) - 1);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) == 0);
  ::close(fd);  // the file stays, nobody listens
  CHECK(other.Listen("unix:" + stale).ok());
  other.Stop();
  CHECK(!std::filesystem::exists(stale));
}

TEST_CASE("Stop closes idle connections promptly and removes the unix socket") {
  auto f = std::make_unique<ServerFixture>();
  RawClient idle(f->path);
  idle.Go("disk");
  RawClient handshaking(f->path);
  const std::string path = f->path;
  auto start = std::chrono::steady_clock::now();
  f->server().Stop();
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));
  CHECK(idle.ClosedByServer());
  CHECK(!std::filesystem::exists(path));
}

TEST_CASE("finished connections' threads are reaped") {
  ServerFixture f(NbdServerOptions{8, 64 * 1024});
  const int base = ThreadCount();  // the listener and the reaper already run
  for (int i = 0; i < 20; ++i) {
    RawClient c(f.path);
    c.Go("disk");
    CHECK(c.Call(kCmdFlush, 0, 0).error == 0);
  }
  int now = ThreadCount();
  for (int i = 0; i < 200 && now > base; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    now = ThreadCount();
  }
  CHECK(now == base);
}

TEST_CASE("a client that stops in the middle of a request is disconnected, an idle one is kept") {
  NbdServerOptions o;
  o.threads_per_connection = 4;
  o.client_timeout_ms = 200;
  ServerFixture f(o);
  RawClient idle(f.path);
  idle.Go("disk");
  RawClient header(f.path);
  header.Go("disk");
  RawClient payload(f.path);
  payload.Go("disk");
  // 10 of a request header's 28 bytes; a WRITE header announcing 128 KiB, then 100 bytes of it.
  auto h = EncodeRequest({0, kCmdWrite, 7, 0, 128 * 1024});
  header.Send(std::span(h).first(10));
  payload.Send(h);
  payload.Send(Pattern(100, 3));
  // Closed after about 200 ms; the limit only bounds a failing run.
  CHECK(header.ClosedByServer(std::chrono::seconds(60)));
  CHECK(payload.ClosedByServer(std::chrono::seconds(60)));
  // The idle client, silent for as long, still works, and nothing of the cut write was written.
  CHECK(idle.Call(kCmdFlush, 0, 0).error == 0);
  auto r = idle.Call(kCmdRead, 0, 4096);
  CHECK(r.error == 0);
  CHECK(r.data == std::vector<std::byte>(4096));
}

TEST_CASE("connections beyond max_connections are closed before the greeting; the others keep working") {
  NbdServerOptions o;
  o.threads_per_connection = 2;
  o.max_connections = 2;
  ServerFixture f(o);
  auto a = std::make_unique<RawClient>(f.path);
  a->Go("disk");
  RawClient b(f.path);
  b.Go("disk");
  {
    RawClient refused(f.path);
    CHECK(refused.ClosedByServer(std::chrono::seconds(60)));
  }
  CHECK(b.Call(kCmdFlush, 0, 0).error == 0);
  // Once one leaves, a new client gets in (the server notices the close asynchronously).
  a.reset();
  bool served = false;
  for (int i = 0; i < 6000 && !served; ++i) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::strncpy(sun.sun_path, f.path.c_str(), sizeof(sun.sun_path) - 1);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) == 0);
    std::byte greeting[kServerGreetingSize];
    served = ::recv(fd, greeting, sizeof(greeting), MSG_WAITALL) == sizeof(greeting);
    ::close(fd);
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(served);
}

TEST_CASE("an idle connection has one thread; busy ones add workers up to threads_per_connection") {
  ServerFixture f(NbdServerOptions{8, 64 * 1024});
  const int base = SettledThreadCount();
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 20; ++i) {
    idle.push_back(std::make_unique<RawClient>(f.path));
    idle.back()->Go("disk");
  }
  CHECK(SettledThreadCount() - base == 20);  // 8 each without workers on demand
  // Pipelined requests on one more connection: workers start as every one is busy, never more
  // than 8, and all replies come.
  RawClient busy(f.path);
  busy.Go("disk");
  for (uint64_t i = 0; i < 64; ++i) busy.Request(kCmdWrite, i, i * 4096, 4096, 0, Pattern(4096, 1));
  for (int i = 0; i < 64; ++i) CHECK(busy.RecvReply().error == 0);
  const int extra = ThreadCount() - base - 20;
  CHECK(extra >= 1);
  CHECK(extra <= 8);
}

TEST_CASE("TCP on 127.0.0.1:0 serves the same protocol") {
  MapRegistry reg;
  auto disk = std::make_shared<MemDisk>(kDiskSize);
  auto e = std::make_shared<Export>();
  e->name = "t";
  e->handler = disk;
  reg.Add(e, true);
  NbdServer s(reg, {2, 4096});
  REQUIRE(s.Listen("127.0.0.1:0").ok());
  std::string addr = s.BoundAddresses().at(0);
  int port = std::atoi(addr.substr(addr.rfind(':') + 1).c_str());
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr_in{};
  addr_in.sin_family = AF_INET;
  addr_in.sin_port = htons(static_cast<uint16_t>(port));
  addr_in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr_in), sizeof(addr_in)) == 0);
  std::byte greeting[kServerGreetingSize];
  REQUIRE(::recv(fd, greeting, sizeof(greeting), MSG_WAITALL) == sizeof(greeting));
  CHECK(ParseServerGreeting(greeting).ok());
  ::close(fd);
}
}  // TEST_SUITE("nbd_server")

}  // namespace qbd::test
