// StorageBackend: the only path from qbd to persistent storage (leveldb's Env).
//
// Production code uses LocalDirBackend (one directory) and NfsBackend (one libnfs export);
// tests use MemBackend and FaultyBackend (tests/testutil). Paths are relative to the backend root,
// '/'-separated, never "..". A backend is safe for concurrent use; a ChunkFile is safe for
// concurrent ReadAt/WriteAt/Sync from several threads (positional I/O, no shared cursor).
// I/O failures are IOError with the errno; an absent file is NotFound.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/status.h"

namespace qbd {

class ChunkFile {
 public:
  virtual ~ChunkFile() = default;
  // Fills all of `out`. Reading past the end of the file is Corruption ("short read"): chunk files
  // are written at full size before they are published (layout-spec.md §4).
  virtual Status ReadAt(uint64_t offset, std::span<std::byte> out) = 0;
  // Writes all of `in`. Durable only after Sync() returns OK.
  virtual Status WriteAt(uint64_t offset, std::span<const std::byte> in) = 0;
  // ReadAt of the bytes [offset, offset + total size of `out`) into the buffers of `out` in turn
  // (preadv), so that interleaved records land in separate buffers without a copy. Same results
  // as ReadAt. The default reads into one buffer and copies out.
  virtual Status ReadAtV(uint64_t offset, std::span<const std::span<std::byte>> out);
  // WriteAt of the buffers of `in` one after the other from `offset` (pwritev). The default
  // copies them into one buffer.
  virtual Status WriteAtV(uint64_t offset, std::span<const std::span<const std::byte>> in);
  // Makes every completed WriteAt/PunchHole/Truncate durable (fsync, NFS COMMIT).
  virtual Status Sync() = 0;
  // Starts writing the file's dirty data back without waiting (a hint, no result): a caller
  // about to Sync() many files starts them all first, so that their writeback overlaps and the
  // file system can commit their metadata together. Nothing by default.
  virtual void StartSync() {}
  // Starts reading [offset, offset + len) into the cache without waiting (a hint, no result): a
  // chunk file's metadata area is asked for whole when the file is opened, so that its slot
  // pairs come from one read rather than one per page. Nothing by default.
  virtual void WillNeed(uint64_t /*offset*/, uint64_t /*len*/) {}
  // Sets the file size; new bytes read as zeros.
  virtual Status Truncate(uint64_t size) = 0;
  virtual Result<uint64_t> Size() = 0;
  // Makes [offset, offset + len) read as zeros and gives the space back where the file system
  // can; NotSupported where it cannot (the caller then writes zeros).
  virtual Status PunchHole(uint64_t offset, uint64_t len) = 0;
  // True when the file was removed or replaced under its name since it was opened, so that this
  // handle no longer reaches the named file and must be dropped.
  virtual bool Detached() = 0;
};

inline Status ChunkFile::ReadAtV(uint64_t offset, std::span<const std::span<std::byte>> out) {
  thread_local std::vector<std::byte> buf;
  size_t total = 0;
  for (const auto& o : out) total += o.size();
  if (buf.size() < total) buf.resize(total);
  QBD_RETURN_IF_ERROR(ReadAt(offset, std::span(buf.data(), total)));
  size_t at = 0;
  for (const auto& o : out) {
    std::copy_n(buf.data() + at, o.size(), o.data());
    at += o.size();
  }
  return Status::OK();
}

inline Status ChunkFile::WriteAtV(uint64_t offset, std::span<const std::span<const std::byte>> in) {
  thread_local std::vector<std::byte> buf;
  size_t total = 0;
  for (const auto& i : in) total += i.size();
  if (buf.size() < total) buf.resize(total);
  size_t at = 0;
  for (const auto& i : in) {
    std::copy_n(i.data(), i.size(), buf.data() + at);
    at += i.size();
  }
  return WriteAt(offset, std::span<const std::byte>(buf.data(), total));
}

struct FileInfo {
  uint64_t size = 0;
  bool is_dir = false;
};

struct DirEntry {
  std::string name;
  FileInfo info;
};

class StorageBackend {
 public:
  virtual ~StorageBackend() = default;
  // "local:/srv/qbd/node1", "nfs://host/export"...: names the backend in messages.
  virtual std::string Describe() const = 0;
  // Opens an existing file for reading and writing. NotFound if `path` is absent.
  virtual Result<std::unique_ptr<ChunkFile>> Open(std::string_view path) = 0;
  // Creates `path` or truncates it to zero length.
  virtual Result<std::unique_ptr<ChunkFile>> Create(std::string_view path) = 0;
  // Atomically replaces `to` with `from`; durable only after SyncDir() of its directory.
  virtual Status Rename(std::string_view from, std::string_view to) = 0;
  virtual Status Remove(std::string_view path) = 0;
  // Creates `dir` and its missing parents; OK when it exists.
  virtual Status MkDirs(std::string_view dir) = 0;
  // Removes an empty directory.
  virtual Status RemoveDir(std::string_view dir) = 0;
  virtual Status SyncDir(std::string_view dir) = 0;
  virtual Result<FileInfo> Stat(std::string_view path) = 0;
  // Names in `dir`, unordered, without "." and "..". NotFound if `dir` is absent.
  virtual Result<std::vector<std::string>> List(std::string_view dir) = 0;
  // List() with each entry's size and type, in one pass where the backend can (readdir + fstatat,
  // NFS READDIRPLUS): qbd-verify's quick pass over 100,000 chunk files. An entry removed between
  // the listing and its stat is left out.
  virtual Result<std::vector<DirEntry>> ListInfo(std::string_view dir);
  // An identity of the file system holding the root ("dev:2049" / "nfs://host/export"), used
  // to refuse two parts of one volume in one failure domain.
  virtual std::string FailureDomain() const = 0;
  // True when each call waits on a network round trip, so that callers fan one request out to
  // several backends in parallel rather than in turn.
  virtual bool IsRemote() const { return false; }
  // Bytes free for new data under the root; NotSupported where the backend cannot tell.
  virtual Result<uint64_t> FreeBytes() { return Status::NotSupported("free space"); }
};

// A backend rooted at a local directory. A missing root is created with `create_if_missing`,
// else NotFound (a disk that is not mounted must not be filled through its empty mount point).
Result<std::unique_ptr<StorageBackend>> NewLocalDirBackend(const std::string& root, bool create_if_missing = true);

struct NfsOptions {
  int timeout_ms = 5000;          // a call to a dead or hung server fails after this long (100..600000)
  int contexts = 8;               // connections to the server: how many calls run at once (1..256)
  bool create_if_missing = true;  // create the URL's SUBDIR when it is absent, else NotFound
};
// A backend on the NFSv3 export of `url`, "nfs://HOST/EXPORT[/SUBDIR]?nfsport=N&mountport=M"
// (userspace libnfs, no kernel mount). InvalidArgument for a malformed URL; the mount's error when
// the server refuses it. An unreachable server is not an error here: calls fail at once with
// IOError "... unreachable (reconnect in N s)" until it answers. See src/storage/nfs_backend.cc.
Result<std::unique_ptr<StorageBackend>> NewNfsBackend(const std::string& url, const NfsOptions& options);

// Helpers over any backend.
// Reads a whole small file (metadata files). NotFound if absent.
Result<std::string> ReadSmallFile(StorageBackend& backend, std::string_view path);
// Atomically replaces `path` with `contents`: temp file, write, sync, rename, sync dir.
Status WriteFileAtomic(StorageBackend& backend, std::string_view path, std::string_view contents);
// Directory part of a '/'-separated path ("" for a top-level name).
std::string DirName(std::string_view path);

}  // namespace qbd
