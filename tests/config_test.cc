// Tests of include/qbd/config.h: the key = value syntax, qbd.conf, sizes and booleans.
#include "qbd/config.h"

#include <doctest/doctest.h>

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
    CheckFailsAtLine("listen = a\nparts = n1 n2 n3\nlisten = b\n" + kBackends, 3, "set twice");
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
  CheckFailsAtLine("parts = n1 n2 n3\ncache_dir_size = 10K\n" + kBackends, 2, "at least 1M");
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
