// Tests of LocalDirBackend (src/storage/local_backend.cc) and the helpers of backend_util.cc.
//
// The StorageBackend contract cases run on LocalDirBackend and on the test MemBackend alike, so
// that MemBackend, which the other unit tests stand on, is held to the real backend's behaviour.
// The crash model of MemBackend and the faults of FaultyBackend are checked at the end.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "qbd/backend.h"
#include "qbd/catalog.h"
#include "testutil/backend_envs.h"
#include "testutil/mem_backend.h"
#include "testutil/temp_dir.h"

namespace qbd::test {
namespace {

std::vector<std::byte> Bytes(std::string_view s) {
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}


// Creates `path` holding `text`.
void Put(StorageBackend& b, std::string_view path, std::string_view text) {
  auto f = b.Create(path);
  REQUIRE(f.ok());
  REQUIRE((*f)->WriteAt(0, Bytes(text)).ok());
}

std::string Get(StorageBackend& b, std::string_view path) {
  auto r = ReadSmallFile(b, path);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  return *r;
}

}  // namespace

TEST_SUITE("local_backend") {
TEST_CASE("NewLocalDirBackend creates the root and describes it") {
  TempDir dir;
  const std::string root = dir.Sub("a/b/c");
  auto b = NewLocalDirBackend(root + "/");
  REQUIRE(b.ok());
  CHECK(std::filesystem::is_directory(root));
  CHECK((*b)->Describe() == "local:" + root);
  struct stat st{};
  REQUIRE(stat(root.c_str(), &st) == 0);
  CHECK((*b)->FailureDomain() ==
        fmt::format("the file system on device {}:{}", major(st.st_dev), minor(st.st_dev)));
  auto other = NewLocalDirBackend(dir.Sub("other"));
  REQUIRE(other.ok());
  CHECK((*other)->FailureDomain() == (*b)->FailureDomain());  // one file system
  struct stat shm{};
  if (stat("/dev/shm", &shm) == 0 && shm.st_dev != st.st_dev) {
    const std::string shm_dir = fmt::format("/dev/shm/qbd-test-{}", getpid());
    auto elsewhere = NewLocalDirBackend(shm_dir);
    REQUIRE(elsewhere.ok());
    CHECK((*elsewhere)->FailureDomain() != (*b)->FailureDomain());  // another file system
    // Parts a and c on one file system, b elsewhere: one line, naming a and c only.
    std::vector<std::string> shared = SharedFailureDomains({b->get(), elsewhere->get(), other->get()});
    REQUIRE(shared.size() == 1);
    CHECK(shared[0] == fmt::format("parts a ({}), c ({}) share {}", (*b)->Describe(), (*other)->Describe(),
                                   (*b)->FailureDomain()));
    CHECK(SharedFailureDomains({b->get(), elsewhere->get(), nullptr}).empty());
    std::filesystem::remove_all(shm_dir);
  }
}

TEST_CASE("NewLocalDirBackend fails when the root is a regular file") {
  TempDir dir;
  std::ofstream(dir.Sub("file")) << "x";
  CHECK_FALSE(NewLocalDirBackend(dir.Sub("file")).ok());
}

TEST_CASE("LocalDirBackend stores files under the root, visible to ordinary tools") {
  LocalEnv env;
  REQUIRE(env.backend().MkDirs("7/a").ok());
  Put(env.backend(), "7/a/1", "hello");
  std::ifstream in(env.dir.Sub("root/7/a/1"));
  std::string text;
  in >> text;
  CHECK(text == "hello");
}

TEST_CASE("LocalDirBackend never recreates its directory once it was moved away") {
  LocalEnv env;
  REQUIRE(env.backend().MkDirs("7/a").ok());
  std::filesystem::rename(env.dir.Sub("root"), env.dir.Sub("aside"));
  Status s = env.backend().MkDirs("7/b");
  CHECK(!s.ok());
  CHECK(s.message().find("is gone") != std::string::npos);
  CHECK(!std::filesystem::exists(env.dir.Sub("root")));  // no bare directory takes its place
  CHECK(!env.backend().Create(".volumesmeta.tmp").ok());
  CHECK(!std::filesystem::exists(env.dir.Sub("root")));
  // Back in place, it works again.
  std::filesystem::rename(env.dir.Sub("aside"), env.dir.Sub("root"));
  CHECK(env.backend().MkDirs("7/b").ok());
  CHECK(std::filesystem::is_directory(env.dir.Sub("root/7/b")));
}

TEST_CASE_TEMPLATE("ReadAt returns what WriteAt wrote at any offset", E, MemEnv, LocalEnv) {
  E env;
  StorageBackend& b = env.backend();
  auto f = b.Create("f");
  REQUIRE(f.ok());
  REQUIRE((*f)->WriteAt(10, Bytes("world")).ok());
  REQUIRE((*f)->WriteAt(0, Bytes("hello")).ok());
  auto size = (*f)->Size();
  REQUIRE(size.ok());
  CHECK(*size == 15);
  std::vector<std::byte> got(15);
  REQUIRE((*f)->ReadAt(0, got).ok());
  const std::vector<std::byte> want = Bytes(std::string_view("hello\0\0\0\0\0world", 15));
  CHECK(got == want);
  CHECK((*f)->Sync().ok());
  auto info = b.Stat("f");
  REQUIRE(info.ok());
  CHECK(info->size == 15);
  CHECK_FALSE(info->is_dir);
}

TEST_CASE_TEMPLATE("ReadAt returns Corruption when it runs past the end of the file", E, MemEnv,
                   LocalEnv) {
  E env;
  Put(env.backend(), "f", "abc");
  auto f = env.backend().Open("f");
  REQUIRE(f.ok());
  std::vector<std::byte> got(4);
  Status s = (*f)->ReadAt(0, got);
  CHECK(s.IsCorruption());
  CHECK(s.message().find("short read") != std::string::npos);
  CHECK((*f)->ReadAt(3, std::span(got).first(1)).IsCorruption());
  CHECK((*f)->ReadAt(3, std::span(got).first(0)).ok());
}

TEST_CASE_TEMPLATE("WriteAtV and ReadAtV move many buffers as one run of file bytes", E, MemEnv,
                   LocalEnv) {
  // More buffers than one preadv/pwritev takes (IOV_MAX 1024), of odd sizes, some empty: the
  // interleaved data and metadata of a chunk file's records.
  E env;
  auto f = env.backend().Create("f");
  REQUIRE(f.ok());
  std::vector<std::vector<std::byte>> bufs;
  std::mt19937 rng(7);
  size_t total = 0;
  for (int i = 0; i < 2500; ++i) {
    std::vector<std::byte> b(i % 5 == 0 ? 0 : 1 + rng() % 40);
    for (auto& x : b) x = std::byte(rng());
    total += b.size();
    bufs.push_back(std::move(b));
  }
  std::vector<std::span<const std::byte>> in(bufs.begin(), bufs.end());
  REQUIRE((*f)->WriteAtV(3, in).ok());
  std::vector<std::byte> flat(total), got(total);
  size_t at = 0;
  for (const auto& b : bufs) {
    std::copy(b.begin(), b.end(), flat.begin() + at);
    at += b.size();
  }
  REQUIRE((*f)->ReadAt(3, got).ok());
  CHECK(got == flat);

  std::vector<std::vector<std::byte>> back;
  for (const auto& b : bufs) back.emplace_back(b.size());
  std::vector<std::span<std::byte>> out(back.begin(), back.end());
  REQUIRE((*f)->ReadAtV(3, out).ok());
  CHECK(back == bufs);
  SUBCASE("and a write that spans several aligned write windows lands whole") {
    // LocalDirBackend cuts writes at 256 KiB boundaries of the file.
    std::vector<std::byte> big(700 << 10), mid(4112), back_big(big.size()), back_mid(mid.size());
    for (size_t i = 0; i < big.size(); ++i) big[i] = std::byte(i * 7 + i / 4096);
    for (size_t i = 0; i < mid.size(); ++i) mid[i] = std::byte(i * 13);
    std::vector<std::span<const std::byte>> pieces = {big, mid, big};
    const uint64_t where = (256 << 10) - 5;
    REQUIRE((*f)->WriteAtV(where, pieces).ok());
    std::vector<std::span<std::byte>> into = {back_big, back_mid};
    REQUIRE((*f)->ReadAtV(where, into).ok());
    CHECK(back_big == big);
    CHECK(back_mid == mid);
    REQUIRE((*f)->ReadAt(where + big.size() + mid.size(), back_big).ok());
    CHECK(back_big == big);
  }
  SUBCASE("and ReadAtV returns Corruption when it runs past the end of the file") {
    std::vector<std::byte> one(10), two(10);
    std::vector<std::span<std::byte>> past = {one, two};
    Status s = (*f)->ReadAtV(3 + total - 15, past);
    CHECK(s.IsCorruption());
    CHECK(s.message().find("short read") != std::string::npos);
  }
}

TEST_CASE_TEMPLATE("Open returns NotFound with ENOENT when the file is absent", E, MemEnv,
                   LocalEnv) {
  E env;
  auto f = env.backend().Open("nope");
  REQUIRE_FALSE(f.ok());
  CHECK(f.status().IsNotFound());
  CHECK(f.status().Errno() == ENOENT);
  CHECK(env.backend().Stat("nope").status().IsNotFound());
  CHECK(env.backend().Remove("nope").IsNotFound());
  CHECK(env.backend().Rename("nope", "x").IsNotFound());
  CHECK(env.backend().List("nodir").status().IsNotFound());
  CHECK(env.backend().SyncDir("nodir").IsNotFound());
}

TEST_CASE_TEMPLATE("Create fails when the parent directory is absent", E, MemEnv, LocalEnv) {
  E env;
  CHECK_FALSE(env.backend().Create("no/such/file").ok());
}

TEST_CASE_TEMPLATE("Create truncates an existing file", E, MemEnv, LocalEnv) {
  E env;
  Put(env.backend(), "f", "long contents");
  auto f = env.backend().Create("f");
  REQUIRE(f.ok());
  auto size = (*f)->Size();
  REQUIRE(size.ok());
  CHECK(*size == 0);
}

TEST_CASE_TEMPLATE("Truncate sets the size and new bytes read as zeros", E, MemEnv, LocalEnv) {
  E env;
  Put(env.backend(), "f", "abcdef");
  auto f = env.backend().Open("f");
  REQUIRE(f.ok());
  REQUIRE((*f)->Truncate(3).ok());
  REQUIRE((*f)->Truncate(8).ok());
  std::vector<std::byte> got(8);
  REQUIRE((*f)->ReadAt(0, got).ok());
  CHECK(got == Bytes(std::string_view("abc\0\0\0\0\0", 8)));
}

TEST_CASE_TEMPLATE("PunchHole zeroes the range and keeps the size", E, MemEnv, LocalEnv) {
  E env;
  auto f = env.backend().Create("f");
  REQUIRE(f.ok());
  std::vector<std::byte> data(64 * 1024, std::byte{0x5A});
  REQUIRE((*f)->WriteAt(0, data).ok());
  REQUIRE((*f)->PunchHole(4096, 8192).ok());
  REQUIRE((*f)->PunchHole(60 * 1024, 1 << 20).ok());  // past the end: still no growth
  CHECK((*f)->PunchHole(0, 0).ok());
  auto size = (*f)->Size();
  REQUIRE(size.ok());
  CHECK(*size == data.size());
  std::vector<std::byte> got(data.size());
  REQUIRE((*f)->ReadAt(0, got).ok());
  for (size_t i = 0; i < got.size(); ++i) {
    const bool hole = (i >= 4096 && i < 12288) || i >= 60 * 1024;
    if (got[i] != (hole ? std::byte{0} : std::byte{0x5A})) {
      FAIL_CHECK("byte " << i << " is wrong");
      break;
    }
  }
}

TEST_CASE("PunchHole gives the space back on a local file system") {
  LocalEnv env;
  auto f = env.backend().Create("f");
  REQUIRE(f.ok());
  std::vector<std::byte> data(1 << 20, std::byte{1});
  REQUIRE((*f)->WriteAt(0, data).ok());
  REQUIRE((*f)->Sync().ok());
  struct stat before, after;
  REQUIRE(::stat(env.dir.Sub("root/f").c_str(), &before) == 0);
  REQUIRE((*f)->PunchHole(0, 1 << 20).ok());
  REQUIRE(::stat(env.dir.Sub("root/f").c_str(), &after) == 0);
  CHECK(after.st_blocks < before.st_blocks);
  CHECK(after.st_size == before.st_size);
}

TEST_CASE_TEMPLATE("Detached is true once the file is removed", E, MemEnv, LocalEnv) {
  E env;
  Put(env.backend(), "f", "x");
  auto f = env.backend().Open("f");
  REQUIRE(f.ok());
  CHECK_FALSE((*f)->Detached());
  REQUIRE(env.backend().Remove("f").ok());
  CHECK((*f)->Detached());
}

TEST_CASE_TEMPLATE("Detached is true once another file is renamed over the name", E, MemEnv,
                   LocalEnv) {
  E env;
  Put(env.backend(), "f", "old");
  Put(env.backend(), "g", "new");
  auto f = env.backend().Open("f");
  REQUIRE(f.ok());
  REQUIRE(env.backend().Rename("g", "f").ok());
  CHECK((*f)->Detached());
  CHECK(Get(env.backend(), "f") == "new");
  CHECK(env.backend().Stat("g").status().IsNotFound());
  auto again = env.backend().Open("f");
  REQUIRE(again.ok());
  CHECK_FALSE((*again)->Detached());
}

TEST_CASE_TEMPLATE("Detached returns true when the file was renamed away from its name", E, MemEnv,
                   LocalEnv) {
  // backend.h: "True when the file was removed or replaced under its name". A repair tool that
  // moves a bad chunk file aside (same file system: the inode keeps one link) removes it from
  // its name just as unlink does.
  E env;
  Put(env.backend(), "f", "x");
  auto f = env.backend().Open("f");
  REQUIRE(f.ok());
  REQUIRE(env.backend().Rename("f", "f.bad").ok());
  CHECK((*f)->Detached());
}

TEST_CASE_TEMPLATE("MkDirs creates parents, List names entries, RemoveDir needs an empty dir", E,
                   MemEnv, LocalEnv) {
  E env;
  StorageBackend& b = env.backend();
  REQUIRE(b.MkDirs("7/a").ok());
  REQUIRE(b.MkDirs("7/a").ok());  // idempotent
  REQUIRE(b.MkDirs("7/b").ok());
  Put(b, "7/.meta", "m");
  Put(b, "7/a/1", "c");
  auto info = b.Stat("7/a");
  REQUIRE(info.ok());
  CHECK(info->is_dir);
  auto names = b.List("7");
  REQUIRE(names.ok());
  CHECK(Sorted(*names) == std::vector<std::string>{".meta", "a", "b"});
  auto root = b.List("");
  REQUIRE(root.ok());
  CHECK(*root == std::vector<std::string>{"7"});
  Status s = b.RemoveDir("7/a");
  CHECK(s.IsIOError());
  CHECK(s.Errno() == ENOTEMPTY);
  CHECK(b.RemoveDir("7/b").ok());
  CHECK(b.Stat("7/b").status().IsNotFound());
  CHECK(b.SyncDir("7").ok());
  CHECK(b.SyncDir("").ok());
}

TEST_CASE_TEMPLATE("WriteFileAtomic replaces a file that ReadSmallFile reads back", E, MemEnv,
                   LocalEnv) {
  E env;
  StorageBackend& b = env.backend();
  REQUIRE(b.MkDirs("7").ok());
  REQUIRE(WriteFileAtomic(b, "7/.meta", "format = 1\n").ok());
  CHECK(Get(b, "7/.meta") == "format = 1\n");
  REQUIRE(WriteFileAtomic(b, "7/.meta", "v2").ok());
  CHECK(Get(b, "7/.meta") == "v2");
  REQUIRE(WriteFileAtomic(b, "top", "").ok());  // a top-level name, empty contents
  CHECK(Get(b, "top").empty());
  auto names = b.List("7");
  REQUIRE(names.ok());
  CHECK(*names == std::vector<std::string>{".meta"});  // no temporary file left
}

TEST_CASE_TEMPLATE("ReadSmallFile returns NotFound when absent and Corruption when huge", E, MemEnv,
                   LocalEnv) {
  E env;
  CHECK(ReadSmallFile(env.backend(), "nope").status().IsNotFound());
  auto f = env.backend().Create("big");
  REQUIRE(f.ok());
  REQUIRE((*f)->Truncate((16u << 20) + 1).ok());
  CHECK(ReadSmallFile(env.backend(), "big").status().IsCorruption());
}

TEST_CASE("WriteFileAtomic keeps the old contents and no temporary file when the rename fails") {
  LocalEnv env;
  FaultyBackend faulty(env.backend());
  REQUIRE(faulty.MkDirs("7").ok());
  REQUIRE(WriteFileAtomic(faulty, "7/.meta", "old").ok());
  faulty.FailMatching("7/.meta", FaultyBackend::kRename);
  Status s = WriteFileAtomic(faulty, "7/.meta", "new");
  CHECK(s.IsIOError());
  CHECK(s.Errno() == EIO);
  CHECK(Get(env.backend(), "7/.meta") == "old");
  auto names = env.backend().List("7");
  REQUIRE(names.ok());
  CHECK(*names == std::vector<std::string>{".meta"});
}

TEST_CASE("WriteFileAtomic keeps the old contents when the sync fails") {
  LocalEnv env;
  FaultyBackend faulty(env.backend());
  REQUIRE(WriteFileAtomic(faulty, "m", "old").ok());
  faulty.FailNth(1, FaultyBackend::kSync);
  CHECK(WriteFileAtomic(faulty, "m", "new").IsIOError());
  CHECK(Get(env.backend(), "m") == "old");
}

TEST_CASE("DirName returns the directory part of a path") {
  CHECK(DirName("7/a/1") == "7/a");
  CHECK(DirName("7/.meta") == "7");
  CHECK(DirName(".volumesmeta") == "");
  CHECK(DirName("") == "");
}

// The test backends themselves.

TEST_CASE("MemBackend DropUnsynced reverts data to the last Sync") {
  MemBackend mem;
  {
    auto f = mem.Create("f");
    REQUIRE(f.ok());
    REQUIRE((*f)->WriteAt(0, Bytes("one")).ok());
    REQUIRE((*f)->Sync().ok());
    REQUIRE((*f)->WriteAt(0, Bytes("TWO!")).ok());
  }
  REQUIRE(mem.SyncDir("").ok());
  mem.DropUnsynced();
  CHECK(Get(mem, "f") == "one");
}

TEST_CASE("MemBackend DropUnsynced drops names never made durable by SyncDir") {
  MemBackend mem;
  REQUIRE(mem.MkDirs("d").ok());
  Put(mem, "d/kept", "k");
  REQUIRE(mem.SyncDir("d").ok());
  Put(mem, "d/new", "n");  // created after the SyncDir
  {
    auto f = mem.Open("d/kept");
    REQUIRE(f.ok());
    REQUIRE((*f)->Sync().ok());
  }
  REQUIRE(mem.Rename("d/kept", "d/moved").ok());  // never synced: undone
  mem.DropUnsynced();
  CHECK(mem.FilePaths() == std::vector<std::string>{"d/kept"});
  CHECK(Get(mem, "d/kept") == "k");
}

TEST_CASE("MemBackend DropUnsynced keeps a rename made durable by SyncDir") {
  MemBackend mem;
  REQUIRE(WriteFileAtomic(mem, "m", "v1").ok());
  REQUIRE(WriteFileAtomic(mem, "m", "v2").ok());
  mem.DropUnsynced();
  CHECK(Get(mem, "m") == "v2");
  CHECK(mem.FilePaths() == std::vector<std::string>{"m"});
}

TEST_CASE("MemBackend handles see the crash and detach from names that vanished") {
  MemBackend mem;
  Put(mem, "f", "x");  // never dir-synced
  auto f = mem.Open("f");
  REQUIRE(f.ok());
  mem.DropUnsynced();
  CHECK((*f)->Detached());
  CHECK_FALSE(mem.Exists("f"));
}

TEST_CASE("MemBackend PunchHole returns NotSupported when switched off") {
  MemBackend mem;
  mem.SetPunchHoleSupported(false);
  Put(mem, "f", "abc");
  auto f = mem.Open("f");
  REQUIRE(f.ok());
  CHECK((*f)->PunchHole(0, 1).IsNotSupported());
}

TEST_CASE("FaultyBackend fails the Nth matching operation once") {
  MemBackend mem;
  FaultyBackend faulty(mem);
  Put(faulty, "a", "1");
  Put(faulty, "b", "2");
  faulty.FailNth(2, FaultyBackend::kOpen, "b");
  CHECK(faulty.Open("b").ok());
  CHECK(faulty.Open("a").ok());  // does not match: not counted
  auto failed = faulty.Open("b");
  CHECK(failed.status().IsIOError());
  CHECK(failed.status().Errno() == EIO);
  CHECK(faulty.Open("b").ok());  // once only
  CHECK(faulty.injected() == 1);
  CHECK(faulty.ops() > 4);
}

TEST_CASE("FaultyBackend fails every matching operation until cleared") {
  MemBackend mem;
  FaultyBackend faulty(mem);
  Put(faulty, "f", "1");
  faulty.FailMatching("f", FaultyBackend::kWrite | FaultyBackend::kSync);
  auto f = faulty.Open("f");
  REQUIRE(f.ok());
  CHECK((*f)->WriteAt(0, Bytes("2")).IsIOError());
  CHECK((*f)->Sync().IsIOError());
  std::vector<std::byte> got(1);
  CHECK((*f)->ReadAt(0, got).ok());  // reads are not in the mask
  faulty.ClearFaults();
  CHECK((*f)->WriteAt(0, Bytes("2")).ok());
}

TEST_CASE("FaultyBackend fails at a seeded rate, the same way for the same seed") {
  const uint64_t seed = std::random_device{}();
  INFO("seed = " << seed);
  auto run = [seed] {
    MemBackend mem;
    FaultyBackend faulty(mem);
    Put(mem, "f", "x");
    faulty.FailAtRate(0.3, seed, FaultyBackend::kStat);
    std::vector<bool> failed;
    for (int i = 0; i < 200; ++i) failed.push_back(!faulty.Stat("f").ok());
    return failed;
  };
  std::vector<bool> first = run();
  CHECK(first == run());
  const auto n = std::count(first.begin(), first.end(), true);
  CHECK(n > 20);
  CHECK(n < 120);
}

TEST_CASE("FaultyBackend flips a bit on reads without touching the stored byte") {
  MemBackend mem;
  FaultyBackend faulty(mem);
  Put(mem, "f", "abcd");
  faulty.FlipBitOnRead("f", 2, 0);
  auto f = faulty.Open("f");
  REQUIRE(f.ok());
  std::vector<std::byte> got(2);
  REQUIRE((*f)->ReadAt(1, got).ok());
  CHECK(got == Bytes("bb"));  // 'c' ^ 1 == 'b'
  REQUIRE((*f)->ReadAt(0, std::span(got).first(2)).ok());
  CHECK(got == Bytes("ab"));  // the flip is outside this read
  CHECK(Get(mem, "f") == "abcd");
  CHECK(faulty.DropUnsynced().ok());
  TempDir dir;
  auto local = NewLocalDirBackend(dir.path());
  REQUIRE(local.ok());
  FaultyBackend not_mem(**local);
  CHECK(not_mem.DropUnsynced().IsNotSupported());
}
}  // TEST_SUITE("local_backend")

}  // namespace qbd::test
