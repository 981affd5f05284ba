// Tests of include/qbd/config.h: the key = value syntax, qbd.conf, sizes and booleans.
#include "qbd/config.h"

#include <doctest/doctest.h>

#include <sys/stat.h>
#include <sys/un.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "testutil/temp_dir.h"

namespace qbd::test {
namespace {

constexpr char kFile[] = "etc/qbd.conf";

Result<Config> Parse(const std::string& text) { return ParseConfig(text, kFile, "/base"); }

// The parse of `text` fails with InvalidArgument and a message naming `file:line`.
void CheckFailsAtLine(const std::string& text, int line, const std::string& words) {
  CAPTURE(text);
  auto c = Parse(text);
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().IsInvalidArgument());
  const std::string msg = c.status().message();
  CAPTURE(msg);
  CHECK(msg.rfind(std::string(kFile) + ":" + std::to_string(line) + ": ", 0) == 0);
  CHECK(msg.find(words) != std::string::npos);
}

const std::string kBackends =
    "[backend n1]\npath = /srv/n1\n[backend n2]\npath = /srv/n2\n[backend n3]\npath = /srv/n3\n";

}  // namespace

TEST_SUITE("config") {
TEST_CASE("ParseConfig reads every key of a complete file") {
  const std::string text =
      "# qbd.conf\n"
      "listen = 0.0.0.0:10809   # all interfaces\n"
      "\n"
      "parts = n1 n2 n3\n"
      "write_quorum = 2\n"
      "threads_per_connection = 8\n"
      "default_export = demo\n"
      "log_level = warn\n"
      "volume_poll_ms = 500\n"
      "allow_shared_failure_domain = yes\n"
      "[backend n1]\n"
      "path = /srv/n1\n"
      "[backend n2]\n"
      "path = rel/n2\n"
      "[ backend   n3 ]\n"
      "url = nfs://127.0.0.1/node3?nfsport=20020&mountport=20021\n"
      "[volume demo]\n"
      "listen = 127.0.0.1:10900\n";
  auto c = Parse(text);
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  CHECK(c->file == kFile);
  CHECK(c->listen == "0.0.0.0:10809");
  CHECK(c->parts == std::vector<std::string>{"n1", "n2", "n3"});
  CHECK(c->write_quorum == 2);
  CHECK(c->threads_per_connection == 8);
  CHECK(c->default_export == "demo");
  CHECK(c->log_level == LogLevel::kWarn);
  CHECK(c->volume_poll_ms == 500);
  CHECK(c->allow_shared_failure_domain);
  REQUIRE(c->backends.size() == 3);
  CHECK(c->backends[0].name == "n1");
  CHECK(c->backends[0].location == "/srv/n1");
  CHECK(c->backends[0].line == 12);
  CHECK(c->backends[1].location == "/base/rel/n2");
  CHECK(c->backends[2].name == "n3");
  CHECK(c->backends[2].location == "nfs://127.0.0.1/node3?nfsport=20020&mountport=20021");
  CHECK(c->volume_listen.at("demo") == "127.0.0.1:10900");
  REQUIRE(c->BackendForPart('a') != nullptr);
  CHECK(c->BackendForPart('a')->name == "n1");
  CHECK(c->BackendForPart('c')->name == "n3");
  CHECK(c->BackendForPart('d') == nullptr);
  CHECK(c->BackendForPart('A') == nullptr);
}

TEST_CASE("ParseConfig applies the defaults when only parts and backends are given") {
  auto c = Parse("parts = n1 n2 n3\n" + kBackends);
  REQUIRE(c.ok());
  CHECK(c->listen == "127.0.0.1:10809");
  CHECK(c->write_quorum == 0);  // majority
  CHECK(c->threads_per_connection == 16);
  CHECK(c->log_level == LogLevel::kInfo);
  CHECK(c->volume_poll_ms == 1000);
  CHECK_FALSE(c->allow_shared_failure_domain);
  CHECK(c->default_export.empty());
}

TEST_CASE("ParseConfig accepts write_quorum majority and a file without a final newline") {
  auto c = Parse("write_quorum = majority\nparts = n1\n[backend n1]\npath = /x");
  REQUIRE(c.ok());
  CHECK(c->write_quorum == 0);
  CHECK(c->backends.at(0).location == "/x");
}

TEST_CASE("ParseConfig resolves relative backend paths against the base directory") {
  auto c = ParseConfig("parts = a b\n[backend a]\npath = data/./a\n[backend b]\npath = ../b/\n",
                       kFile, "/etc/qbd");
  REQUIRE(c.ok());
  CHECK(c->backends[0].location == "/etc/qbd/data/a");
  CHECK(c->backends[1].location == "/etc/b/");
}

TEST_CASE("ParseConfig fails naming the file and line when a line is wrong") {
  SUBCASE("an unknown key") {
    CheckFailsAtLine("parts = n1 n2 n3\nlisen = x\n" + kBackends, 2, "unknown key 'lisen'");
  }
  SUBCASE("a line without '='") {
    CheckFailsAtLine("parts = n1 n2 n3\n\nlisten 127.0.0.1\n" + kBackends, 3, "key = value");
  }
  SUBCASE("a malformed key") { CheckFailsAtLine("par ts = n1\n" + kBackends, 1, "malformed key"); }
  SUBCASE("a section header without ']'") {
    CheckFailsAtLine("parts = n1\n[backend n1\npath = /x\n", 2, "lacks ']'");
  }
  SUBCASE("an unknown section") {
    CheckFailsAtLine("parts = n1 n2 n3\n" + kBackends + "[cache]\nsize = 1G\n", 9,
                     "unknown section [cache]");
  }
  SUBCASE("a global key set twice") {
    CheckFailsAtLine("listen = 127.0.0.1:1\nparts = n1 n2 n3\nlisten = 127.0.0.1:2\n" + kBackends, 3,
                     "set twice (first on line 1)");
  }
  SUBCASE("parts naming a backend without a section") {
    CheckFailsAtLine("# c\nparts = n1 n9 n3\n" + kBackends, 2, "no [backend n9]");
  }
  SUBCASE("parts naming one backend twice") {
    CheckFailsAtLine("parts = n1 n2 n1\n" + kBackends, 1, "holds two parts");
  }
  SUBCASE("parts listing nothing") { CheckFailsAtLine("parts =\n" + kBackends, 1, "no backend"); }
  SUBCASE("more than 26 parts") {
    std::string many = "parts =";
    for (int i = 0; i < 27; ++i) many += " b" + std::to_string(i);
    CheckFailsAtLine(many + "\n", 1, "26");
  }
  SUBCASE("a backend with two locations") {
    CheckFailsAtLine("parts = n1\n[backend n1]\npath = /x\nurl = nfs://h/e\n", 4, "two locations");
  }
  SUBCASE("a backend section given twice") {
    CheckFailsAtLine("parts = n1\n[backend n1]\npath = /x\n[backend n1]\npath = /y\n", 5,
                     "two locations");
  }
  SUBCASE("a backend without a name") {
    CheckFailsAtLine("parts = n1\n[backend]\npath = /x\n", 3, "needs a name");
  }
  SUBCASE("an unknown key in a backend") {
    CheckFailsAtLine("parts = n1\n[backend n1]\ndir = /x\n", 3, "unknown key 'dir'");
  }
  SUBCASE("an empty backend path") {
    CheckFailsAtLine("parts = n1\n[backend n1]\npath =\n", 3, "empty backend location");
  }
  SUBCASE("a url that is not nfs://") {
    CheckFailsAtLine("parts = n1\n[backend n1]\nurl = http://h/e\n", 3, "nfs://");
  }
  SUBCASE("an unknown key in a volume") {
    CheckFailsAtLine("parts = n1\n[backend n1]\npath = /x\n[volume v]\nport = 1\n", 5,
                     "unknown key 'port'");
  }
  SUBCASE("bad values") {
    CheckFailsAtLine("write_quorum = 0\n", 1, "write_quorum");
    CheckFailsAtLine("write_quorum = 27\n", 1, "write_quorum");
    CheckFailsAtLine("threads_per_connection = 0\n", 1, "threads_per_connection");
    CheckFailsAtLine("threads_per_connection = 1x\n", 1, "threads_per_connection");
    CheckFailsAtLine("log_level = loud\n", 1, "log_level");
    CheckFailsAtLine("volume_poll_ms = 10\n", 1, "volume_poll_ms");
    CheckFailsAtLine("\nallow_shared_failure_domain = maybe\n", 2, "allow_shared_failure_domain");
  }
}

TEST_CASE("ParseConfig fails naming the file when parts is missing") {
  auto c = Parse("listen = 127.0.0.1:1\n" + kBackends);
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().IsInvalidArgument());
  CHECK(c.status().message().find(kFile) != std::string::npos);
  CHECK(c.status().message().find("parts") != std::string::npos);
}

TEST_CASE("LoadConfig resolves relative paths against the config file's directory") {
  TempDir dir;
  const std::string path = dir.Sub("qbd.conf");
  {
    std::ofstream out(path);
    out << "parts = a\n[backend a]\npath = node-a\n";
  }
  auto c = LoadConfig(path);
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  CHECK(c->file == path);
  CHECK(c->backends.at(0).location == dir.Sub("node-a"));
}

TEST_CASE("LoadConfig returns NotFound when the file is absent") {
  TempDir dir;
  CHECK(LoadConfig(dir.Sub("missing.conf")).status().IsNotFound());
}

TEST_CASE("DefaultConfigText parses into three local parts beside the config") {
  auto c = ParseConfig(DefaultConfigText(), "var/qbd.conf", "/w/var");
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  CHECK(c->parts.size() == 3);
  CHECK(c->default_export == "demo");
  CHECK(c->BackendForPart('b')->location == "/w/var/node-b");
}

TEST_CASE("ParseKvText returns sections, keys, values and line numbers") {
  auto lines = ParseKvText(
      "a = 1\n  # only a comment\n\n[sec  arg one]\n b=two words # note\nc = x=y\r\nd =\n", "f");
  REQUIRE(lines.ok());
  REQUIRE(lines->size() == 4);
  const KvLine& a = (*lines)[0];
  CHECK(a.line == 1);
  CHECK(a.section.empty());
  CHECK(a.key == "a");
  CHECK(a.value == "1");
  const KvLine& b = (*lines)[1];
  CHECK(b.line == 5);
  CHECK(b.section == "sec");
  CHECK(b.section_arg == "arg one");
  CHECK(b.value == "two words");
  CHECK((*lines)[2].key == "c");
  CHECK((*lines)[2].value == "x=y");  // the first '=' separates
  CHECK((*lines)[3].value.empty());
  CHECK((*lines)[3].line == 7);
}

TEST_CASE("ParseKvText accepts empty text") {
  auto lines = ParseKvText("", "f");
  REQUIRE(lines.ok());
  CHECK(lines->empty());
}

TEST_CASE("ParseSize accepts binary units with optional B or iB") {
  struct Case {
    const char* text;
    uint64_t want;
  };
  const Case cases[] = {
      {"0", 0},
      {"4096", 4096},
      {"512B", 512},
      {"4K", 4096},
      {"4k", 4096},
      {"64KiB", 64 * 1024},
      {"4M", 4ull << 20},
      {"4MB", 4ull << 20},
      {"1G", 1ull << 30},
      {" 2 T ", 2ull << 40},
      {"1P", 1ull << 50},
      {"16383P", 16383ull << 50},
      {"18446744073709551615", ~0ull},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    auto got = ParseSize(c.text);
    REQUIRE_MESSAGE(got.ok(), got.status().ToString());
    CHECK(*got == c.want);
  }
}

TEST_CASE("ParseSize returns InvalidArgument when the text is not a size") {
  for (const char* text : {"", "K", "12Q", "1.5G", "-1", "4 K B", "4KK", "1E", "0x10", "16384P",
                           "18446744073709551616", "5GiBs"}) {
    CAPTURE(text);
    auto got = ParseSize(text);
    CHECK_FALSE(got.ok());
    CHECK(got.status().IsInvalidArgument());
  }
}

TEST_CASE("FormatSize picks the largest binary unit that divides the size") {
  CHECK(FormatSize(0) == "0 B");
  CHECK(FormatSize(4096) == "4 KiB");
  CHECK(FormatSize(4097) == "4097 B");
  CHECK(FormatSize(1ull << 30) == "1 GiB");
  CHECK(FormatSize(3ull << 29) == "1536 MiB");
  CHECK(FormatSize(5ull << 50) == "5 PiB");
  CHECK(FormatSize(1ull << 60) == "1024 PiB");
  for (uint64_t v : {uint64_t{512}, uint64_t{64} << 10, uint64_t{3} << 40}) {
    auto back = ParseSize(FormatSize(v));
    REQUIRE(back.ok());
    CHECK(*back == v);
  }
}

TEST_CASE("ParseBool accepts the usual spellings and nothing else") {
  for (const char* t : {"true", "on", "yes", "1"}) CHECK(ParseBool(t).value() == true);
  for (const char* f : {"false", "off", "no", "0"}) CHECK(ParseBool(f).value() == false);
  for (const char* bad : {"", "TRUE", "2", "y"}) CHECK(ParseBool(bad).status().IsInvalidArgument());
}
}  // TEST_SUITE("config")

}  // namespace qbd::test

namespace qbd::test {
TEST_SUITE("config") {
TEST_CASE("ParseConfig reads resync_mb_per_s and compare_mb_per_s and rejects a value out of range") {
  const std::string base = "parts = a\n[backend a]\npath = /x\n";
  for (const std::string key : {"resync_mb_per_s", "compare_mb_per_s"}) {
    CAPTURE(key);
    auto ok = ParseConfig(key + " = 40\n" + base, "q.conf", "/");
    REQUIRE(ok.ok());
    CHECK((key == "resync_mb_per_s" ? ok->resync_mb_per_s : ok->compare_mb_per_s) == 40);
    for (const std::string bad_value : {"lots", "100001"}) {
      auto bad = ParseConfig(key + " = " + bad_value + "\n" + base, "q.conf", "/");
      REQUIRE_FALSE(bad.ok());
      CHECK(bad.status().message().find("q.conf:1") != std::string::npos);
    }
  }
}

TEST_CASE("ParseConfig reads qos_slots and rejects a value out of range") {
  const std::string base = "parts = a\n[backend a]\npath = /x\n";
  auto d = ParseConfig(base, "q.conf", "/");
  REQUIRE(d.ok());
  CHECK(d->qos_slots == 16);
  auto ok = ParseConfig("qos_slots = 0\n" + base, "q.conf", "/");
  REQUIRE(ok.ok());
  CHECK(ok->qos_slots == 0);
  for (const std::string bad_value : {"many", "-1", "65537"}) {
    auto bad = ParseConfig("qos_slots = " + bad_value + "\n" + base, "q.conf", "/");
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.status().message().find("q.conf:1: qos_slots must be 0..65536") != std::string::npos);
  }
}

TEST_CASE("ParseConfig reads the SSD cache keys and keeps cache_dir off the backends") {
  auto c = ParseConfig("parts = a\ncache_dir = ssd\ncache_dir_size = 2G\ncache_mode = writeback\n"
                       "cache_dirty_max = 64M\ncache_destage_delay_ms = 0\n[backend a]\npath = /srv/a\n",
                       kFile, "/etc/qbd");
  REQUIRE(c.ok());
  CHECK(c->cache_dir == "/etc/qbd/ssd");
  CHECK(c->cache_dir_size == (uint64_t{2} << 30));
  CHECK(c->cache_write_back);
  CHECK(c->cache_dirty_max == (uint64_t{64} << 20));
  CHECK(c->cache_destage_delay_ms == 0);
  auto d = Parse("parts = a\n[backend a]\npath = /srv/a\n");
  REQUIRE(d.ok());
  CHECK(d->cache_dir.empty());
  CHECK_FALSE(d->cache_write_back);
  CheckFailsAtLine("parts = n1 n2 n3\ncache_mode = back\n" + kBackends, 2, "writethrough or writeback");
  CheckFailsAtLine("parts = n1 n2 n3\ncache_dir_size = 10K\n" + kBackends, 2, "cache_dir_size must be 1 MiB..16 TiB");
  // Inside a backend, or holding one: refused, naming the cache_dir line.
  for (const char* dir : {"/srv/a/cache", "/srv"}) {
    CAPTURE(dir);
    auto bad = ParseConfig(std::string("parts = a\n\ncache_dir = ") + dir + "\n[backend a]\npath = /srv/a\n", kFile, "/");
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.status().message().rfind(std::string(kFile) + ":3: ", 0) == 0);
    CHECK(bad.status().message().find("overlaps backend 'a'") != std::string::npos);
  }
  CHECK(ParseConfig("parts = a\ncache_dir = /srv/ab\n[backend a]\npath = /srv/a\n", kFile, "/").ok());
}

TEST_CASE("ParseConfig reads the lease keys and refuses a renewal interval above a third of the lease") {
  auto d = Parse("parts = a\n[backend a]\npath = /srv/a\n");
  REQUIRE(d.ok());
  CHECK(d->lease_ms == 10000);
  CHECK(d->lease_renew_ms == 2000);
  auto c = Parse("parts = a\nlease_ms = 3000\nlease_renew_ms = 500\n[backend a]\npath = /srv/a\n");
  REQUIRE(c.ok());
  CHECK(c->lease_ms == 3000);
  CHECK(c->lease_renew_ms == 500);
  CheckFailsAtLine("parts = n1 n2 n3\nlease_ms = soon\n" + kBackends, 2, "lease_ms must be 300..600000");
  CheckFailsAtLine("parts = n1 n2 n3\nlease_renew_ms = 10\n" + kBackends, 2, "lease_renew_ms must be 100..200000");
  // The later of the two lines is named: lease_ms = 3000 with the default renewal of 2000.
  CheckFailsAtLine("parts = n1 n2 n3\n\nlease_ms = 3000\n" + kBackends, 3, "must be at most lease_ms / 3 (1000)");
  CheckFailsAtLine("parts = n1 n2 n3\nlease_ms = 3000\nlease_renew_ms = 1001\n" + kBackends, 3, "at most lease_ms / 3");
}

TEST_CASE("ParseConfig accepts every option of qbd.conf.example") {
  auto c = LoadConfig(std::string(QBD_SOURCE_DIR) + "/qbd.conf.example");
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  CHECK(c->parts.size() == 3);
}
}  // TEST_SUITE("config")
}  // namespace qbd::test

namespace qbd::test {
namespace {

// ParseListenAddress fails on `spec` with InvalidArgument holding `words`.
void CheckListenFails(const std::string& spec, const std::string& words) {
  CAPTURE(spec);
  auto a = ParseListenAddress(spec);
  REQUIRE_FALSE(a.ok());
  CHECK(a.status().IsInvalidArgument());
  CAPTURE(a.status().message());
  CHECK(a.status().message().find(words) != std::string::npos);
}

// A qbd.conf in `dir` with local parts node-a, node-b (created unless `make_dirs` is false) and
// the extra global `lines`, parsed; its path is dir/qbd.conf.
Config HostConfig(const TempDir& dir, const std::string& lines, bool make_dirs = true) {
  if (make_dirs) {
    std::filesystem::create_directories(dir.Sub("node-a"));
    std::filesystem::create_directories(dir.Sub("node-b"));
  }
  const std::string path = dir.Sub("qbd.conf");
  {
    std::ofstream out(path);
    out << "listen = 127.0.0.1:10999\nparts = node-a node-b\n" << lines
        << "[backend node-a]\npath = node-a\n[backend node-b]\npath = node-b\n";
  }
  auto c = LoadConfig(path);
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  return *c;
}

// CheckConfigOnHost refuses `c` naming `file:line` and `words`.
void CheckHostFails(const Config& c, const HostCheck& hc, int line, const std::string& words) {
  Status s = CheckConfigOnHost(c, hc);
  REQUIRE_FALSE(s.ok());
  CHECK(s.IsInvalidArgument());
  CAPTURE(s.message());
  CHECK(s.message().rfind(c.file + ":" + std::to_string(line) + ": ", 0) == 0);
  CHECK(s.message().find(words) != std::string::npos);
}

}  // namespace

TEST_SUITE("config") {
TEST_CASE("ParseListenAddress accepts HOST:PORT, [IPV6]:PORT, every interface and unix paths") {
  struct Case {
    const char* spec;
    ListenAddress::Kind kind;
    const char* host;
    uint16_t port;
  };
  const Case cases[] = {
      {"127.0.0.1:10809", ListenAddress::Kind::kIPv4, "127.0.0.1", 10809},
      {"0.0.0.0:1", ListenAddress::Kind::kIPv4, "0.0.0.0", 1},
      {"[::1]:65535", ListenAddress::Kind::kIPv6, "::1", 65535},
      {"[fe80::1:2]:80", ListenAddress::Kind::kIPv6, "fe80::1:2", 80},
      {"*:10809", ListenAddress::Kind::kAny, "", 10809},
      {":10809", ListenAddress::Kind::kAny, "", 10809},
      {"localhost:10809", ListenAddress::Kind::kHostName, "localhost", 10809},
      {"nas-1.example.org.:2049", ListenAddress::Kind::kHostName, "nas-1.example.org.", 2049},
  };
  for (const Case& c : cases) {
    CAPTURE(c.spec);
    auto a = ParseListenAddress(c.spec);
    REQUIRE_MESSAGE(a.ok(), a.status().ToString());
    CHECK(a->kind == c.kind);
    CHECK(a->host == c.host);
    CHECK(a->port == c.port);
  }
  auto u = ParseListenAddress("unix:/run/qbd/v.sock");
  REQUIRE(u.ok());
  CHECK(u->kind == ListenAddress::Kind::kUnix);
  CHECK(u->path == "/run/qbd/v.sock");
  const std::string longest(sizeof(sockaddr_un{}.sun_path) - 1, 'p');
  CHECK(ParseListenAddress("unix:/" + longest.substr(1)).ok());
}

TEST_CASE("ParseListenAddress returns InvalidArgument for a bad port, trailing garbage or a bad host") {
  CheckListenFails("127.0.0.1:0", "port 0 is not 1..65535");
  CheckListenFails("127.0.0.1:99999", "port 99999 is not 1..65535");
  CheckListenFails("127.0.0.1:" + std::string(100, '9'), "is not 1..65535");
  CheckListenFails("127.0.0.1:10809 extra", "' extra' follows the port");
  CheckListenFails("127.0.0.1:10809x", "'x' follows the port");
  CheckListenFails("127.0.0.1:", "port is missing");
  CheckListenFails("127.0.0.1:-1", "port is missing or not a number");
  CheckListenFails("127.0.0.1", "is not HOST:PORT");
  CheckListenFails("", "empty address");
  CheckListenFails("999.1.1.1:10809", "999.1.1.1 is not an IPv4 address");
  CheckListenFails("1.2.3:10809", "is not an IPv4 address");
  CheckListenFails("::1:10809", "in brackets");
  CheckListenFails("[::1:10809", "without ']'");
  CheckListenFails("[::1]10809", "is not [IPV6]:PORT");
  CheckListenFails("[::zz]:10809", "is not an IPv6 address");
  CheckListenFails("[127.0.0.1]:10809", "is not an IPv6 address");
  CheckListenFails("bad_host:10809", "is not a host name");
  CheckListenFails("-bad.example:10809", "is not a host name");
  CheckListenFails("a..b:10809", "is not a host name");
  CheckListenFails(std::string(64, 'l') + ".example:1", "is not a host name");
  CheckListenFails("unix:", "needs a socket path");
  CheckListenFails("unix:/" + std::string(sizeof(sockaddr_un{}.sun_path), 'p'), "at most 107 fit");
}

TEST_CASE("ParseConfig checks every listener, naming the line, and makes unix paths absolute") {
  CheckFailsAtLine("parts = n1 n2 n3\nlisten = 127.0.0.1:10809 extra\n" + kBackends, 2, "follows the port");
  CheckFailsAtLine("\nlisten = 127.0.0.1:99999\nparts = n1 n2 n3\n" + kBackends, 2, "1..65535");
  CheckFailsAtLine("listen = 999.1.1.1:10809\nparts = n1 n2 n3\n" + kBackends, 1, "not an IPv4 address");
  CheckFailsAtLine("parts = n1 n2 n3\n" + kBackends + "[volume v]\nlisten = 127.0.0.1:0\n", 9, "1..65535");
  CheckFailsAtLine("parts = n1 n2 n3\n" + kBackends + "[volume v]\nlisten = unix:\n", 9, "socket path");
  CheckFailsAtLine("parts = n1 n2 n3\n" + kBackends + "[volume v]\nlisten = unix:/a\nlisten = unix:/b\n", 10,
                   "listen twice (first on line 9)");
  auto c = ParseConfig("parts = n1\nlisten = unix:run/main.sock\n[backend n1]\npath = /x\n[volume v]\n"
                       "listen = unix:../v.sock\n",
                       kFile, "/etc/qbd");
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  CHECK(c->listen == "unix:/etc/qbd/run/main.sock");
  CHECK(c->volume_listen.at("v") == "unix:/etc/v.sock");
  CHECK(c->Line("listen") == 2);
  CHECK(c->volume_listen_lines.at("v") == 6);
  // A relative path that becomes too long for sun_path once resolved.
  auto deep = ParseConfig("parts = n1\nlisten = unix:x.sock\n[backend n1]\npath = /x\n", kFile,
                          "/" + std::string(120, 'd'));
  REQUIRE_FALSE(deep.ok());
  CHECK(deep.status().message().rfind(std::string(kFile) + ":2: ", 0) == 0);
}

TEST_CASE("ParseConfig refuses two listeners on one address, naming the later line") {
  const std::string head = "parts = n1 n2 n3\n" + kBackends;  // lines 1-7
  CheckFailsAtLine("listen = 127.0.0.1:10900\n" + head + "[volume v]\nlisten = 127.0.0.1:10900\n", 10,
                   "takes the address of line 1");
  CheckFailsAtLine("listen = *:10900\n" + head + "[volume v]\nlisten = 127.0.0.1:10900\n", 10, "line 1");
  CheckFailsAtLine(head + "[volume v]\nlisten = unix:/r/s\n[volume w]\nlisten = unix:/r/s\n", 11, "line 9");
  CHECK(Parse("listen = 127.0.0.1:10900\n" + head + "[volume v]\nlisten = 127.0.0.2:10900\n").ok());
  CHECK(Parse("listen = 127.0.0.1:10900\n" + head + "[volume v]\nlisten = 127.0.0.1:10901\n").ok());
}

TEST_CASE("ParseConfig enforces the bounds of names, sizes and value lengths") {
  CheckFailsAtLine("parts = n1 n2 n3\ncache_size = 2T\n" + kBackends, 2, "cache_size must be 0 B..1 TiB");
  CheckFailsAtLine("parts = n1 n2 n3\nnbd_memory = 1M\n" + kBackends, 2, "nbd_memory must be 64 MiB..1 TiB");
  CheckFailsAtLine("parts = n1 n2 n3\nmax_connections = 0\n" + kBackends, 2, "max_connections must be 1..65536");
  CheckFailsAtLine("parts = n1 n2 n3\nclient_timeout_ms = 999\n" + kBackends, 2, "client_timeout_ms must be");
  CheckFailsAtLine("parts = n1 n2 n3\nnfs_timeout_ms = 99\n" + kBackends, 2, "nfs_timeout_ms must be 100..600000");
  CheckFailsAtLine("parts = n1 n2 n3\ncache_destage_delay_ms = 3600001\n" + kBackends, 2, "cache_destage_delay_ms");
  CheckFailsAtLine("parts = n1 n2 n3\ncache_dir = /ssd\ncache_dir_size = 64M\ncache_dirty_max = 128M\n" + kBackends,
                   4, "cache_dirty_max (128 MiB) must be at most cache_dir_size (64 MiB)");
  CheckFailsAtLine("parts = n1 n2 n3\nadmin_socket = /" + std::string(5000, 's') + "\n" + kBackends, 2,
                   "at most 4096");
  CheckFailsAtLine("parts = n1 n2 n3\nadmin_socket = /" + std::string(120, 's') + "\n" + kBackends, 2,
                   "longer than 100");
  CheckFailsAtLine("parts = n1 n2 n3\nadmin_socket =\n" + kBackends, 2, "empty path");
  CheckFailsAtLine("parts = n1 n2 n/3\n" + kBackends, 1, "backend name 'n/3'");
  CheckFailsAtLine("parts = n1 n2 n3\ndefault_export = -x\n" + kBackends, 2, "default_export");
  CheckFailsAtLine("parts = n1 n2 n3\n" + kBackends + "[volume bad!name]\nlisten = 127.0.0.1:1\n", 9, "bad!name");
  CheckFailsAtLine("parts = n1\n[backend n1]\nurl = nfs:///export\n", 3, "names no server");
  CheckFailsAtLine("parts = n1\n[backend n1]\nurl = nfs://host\n", 3, "names no export");
  CheckFailsAtLine("parts = n1\n[backend n1]\npath = /x\nmount = /m\nmount = /n\n", 5, "set twice");
  CheckFailsAtLine(std::string(100, 'k') + " = 1\n", 1, "malformed key");
  // The default admin socket beside a config in a deep directory does not fit sun_path.
  auto deep = ParseConfig("parts = n1\n[backend n1]\npath = /x\n", kFile, "/" + std::string(120, 'd'));
  REQUIRE_FALSE(deep.ok());
  CHECK(deep.status().message().find("set admin_socket") != std::string::npos);
}

TEST_CASE("LoadConfig refuses a file larger than 1 MiB and one that is not a regular file") {
  TempDir dir;
  {
    std::ofstream out(dir.Sub("big.conf"));
    out << "parts = a\n[backend a]\npath = a\n" << std::string(kMaxConfigFileSize, '#') << "\n";
  }
  auto big = LoadConfig(dir.Sub("big.conf"));
  REQUIRE_FALSE(big.ok());
  CHECK(big.status().IsInvalidArgument());
  CHECK(big.status().message().find("larger than 1 MiB") != std::string::npos);
  std::filesystem::create_directories(dir.Sub("d.conf"));
  auto d = LoadConfig(dir.Sub("d.conf"));
  REQUIRE_FALSE(d.ok());
  CHECK(d.status().IsIOError());
}

TEST_CASE("CheckConfigOnHost accepts a configuration whose directories and addresses exist") {
  TempDir dir;
  std::filesystem::create_directories(dir.Sub("run"));
  Config c = HostConfig(dir, "admin_socket = run/qbd.sock\ncache_dir = ssd\n[volume v]\nlisten = unix:run/v.sock\n"
                             "[volume w]\nlisten = localhost:10998\n");
  HostCheck hc;
  hc.local_addresses = true;
  Status s = CheckConfigOnHost(c, hc);
  CHECK_MESSAGE(s.ok(), s.ToString());
  CHECK_FALSE(std::filesystem::exists(dir.Sub("ssd")));  // checked, not created
}

TEST_CASE("CheckConfigOnHost refuses what this machine lacks, naming the file and line") {
  TempDir dir;
  SUBCASE("the admin socket's directory") {
    CheckHostFails(HostConfig(dir, "admin_socket = nowhere/qbd.sock\n"), {}, 3, "nowhere does not exist");
  }
  SUBCASE("the default admin socket's directory is the config's: always there") {
    CHECK(CheckConfigOnHost(HostConfig(dir, "")).ok());
  }
  SUBCASE("cache_dir and its parent") {
    CheckHostFails(HostConfig(dir, "cache_dir = no/ssd\n"), {}, 3, "neither it nor its parent");
    std::ofstream(dir.Sub("file")) << "x";
    CheckHostFails(HostConfig(dir, "cache_dir = file\n"), {}, 3, "is not a directory");
  }
  SUBCASE("a part's directory, unless the tool creates them") {
    Config c = HostConfig(dir, "", /*make_dirs=*/false);
    std::filesystem::create_directories(dir.Sub("node-a"));
    CheckHostFails(c, {}, 6, "backend 'node-b' (part b)");
    HostCheck create;
    create.backend_dirs = false;
    CHECK(CheckConfigOnHost(c, create).ok());
  }
  SUBCASE("a unix listener's directory, or a file in the way") {
    CheckHostFails(HostConfig(dir, "[volume v]\nlisten = unix:gone/v.sock\n"), {}, 4, "gone does not exist");
    std::ofstream(dir.Sub("v.sock")) << "x";
    CheckHostFails(HostConfig(dir, "[volume v]\nlisten = unix:v.sock\n"), {}, 4, "not a socket is in the way");
  }
  SUBCASE("an address no interface has, for qbd-master only") {
    // 192.0.2.0/24 is TEST-NET-1: no machine has it, unless the kernel binds any address.
    std::ifstream nonlocal("/proc/sys/net/ipv4/ip_nonlocal_bind");
    int v = 0;
    const bool any = nonlocal >> v && v != 0;
    Config c = HostConfig(dir, "[volume v]\nlisten = 192.0.2.1:10999\n");
    HostCheck master;
    master.local_addresses = true;
    CHECK(CheckConfigOnHost(c, {}).ok());
    if (!any) CheckHostFails(c, master, 4, "not an address of this machine");
  }
}
}  // TEST_SUITE("config")
}  // namespace qbd::test
