// Test backends: MemBackend (an in-memory StorageBackend with a crash model) and FaultyBackend (a
// wrapper that injects I/O errors and bit flips into any backend), plus small helpers that read
// and damage files through the StorageBackend seam.
//
// MemBackend keeps every file as a shared buffer under its path; directories are tracked
// explicitly (Create and Rename need the parent directory, as on a real file system). It models
// what survives a crash the way POSIX file systems promise it:
//  - a file's bytes are durable only after ChunkFile::Sync(); until then DropUnsynced() reverts
//    them to the last synced content (or to empty for a file never synced);
//  - a directory entry (a Create, Rename or Remove) is durable only after SyncDir() of the
//    directory holding it; DropUnsynced() brings back the names as of each directory's last
//    SyncDir (a file created and never dir-synced disappears; a rename never dir-synced is undone);
//  - directories themselves are durable as soon as MkDirs returns (a simplification: qbd always
//    syncs the parent after MkDirs, and no test needs a lost directory).
// Handles opened before DropUnsynced() keep pointing at the buffers they had; a handle whose name
// now refers to another buffer (or to nothing) is Detached().
//
// FaultyBackend forwards every call to a borrowed backend and counts them. It can fail the Nth
// matching operation, every operation whose path contains a substring, or operations at a seeded
// rate, always with IOError(EIO) and never by blocking; it can play a full file system (every
// write, create and truncate fails with ENOSPC, reads go on, FreeBytes() says 0); it can flip a
// bit in what reads of one file return (the stored bytes stay intact); and it can call a test's
// hook before an operation.
//
// Thread-safety: both backends are safe for concurrent use, and their ChunkFiles for concurrent
// ReadAt/WriteAt/Sync, as the StorageBackend contract asks. Test hooks are safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/backend.h"

namespace qbd::test {

class MemBackend : public StorageBackend {
 public:
  // `name` appears in Describe() ("mem:<name>"); FailureDomain() is unique per instance.
  explicit MemBackend(std::string name = "mem");
  ~MemBackend() override;

  std::string Describe() const override;
  Result<std::unique_ptr<ChunkFile>> Open(std::string_view path) override;
  Result<std::unique_ptr<ChunkFile>> Create(std::string_view path) override;
  Status Rename(std::string_view from, std::string_view to) override;
  Status Remove(std::string_view path) override;
  Status MkDirs(std::string_view dir) override;
  Status RemoveDir(std::string_view dir) override;
  Status SyncDir(std::string_view dir) override;
  Result<FileInfo> Stat(std::string_view path) override;
  Result<std::vector<std::string>> List(std::string_view dir) override;
  std::string FailureDomain() const override;

  // Crash simulation: every file reverts to its last synced content and every directory to its
  // entries as of its last SyncDir (see the header comment).
  void DropUnsynced();

  // With false, ChunkFile::PunchHole returns NotSupported (callers must write zeros instead).
  void SetPunchHoleSupported(bool supported);

  // The current bytes of the file at `path`. NotFound if absent.
  Result<std::vector<std::byte>> Contents(std::string_view path) const;
  // Every file path, sorted.
  std::vector<std::string> FilePaths() const;
  bool Exists(std::string_view path) const;
  // Successful ChunkFile::Sync and SyncDir calls so far.
  uint64_t file_syncs() const;
  uint64_t dir_syncs() const;

  struct State;  // shared with the open ChunkFiles, so that handles may outlive the backend

 private:
  const std::string name_;
  const uint64_t id_;
  std::shared_ptr<State> state_;
};

class FaultyBackend : public StorageBackend {
 public:
  // Operation kinds, a bit each, for the `ops` masks below.
  enum Op : uint32_t {
    kOpen = 1u << 0,
    kCreate = 1u << 1,
    kRename = 1u << 2,
    kRemove = 1u << 3,
    kMkDirs = 1u << 4,
    kRemoveDir = 1u << 5,
    kSyncDir = 1u << 6,
    kStat = 1u << 7,
    kList = 1u << 8,
    kRead = 1u << 9,        // ChunkFile::ReadAt
    kWrite = 1u << 10,      // ChunkFile::WriteAt
    kSync = 1u << 11,       // ChunkFile::Sync
    kTruncate = 1u << 12,   // ChunkFile::Truncate
    kSize = 1u << 13,       // ChunkFile::Size
    kPunchHole = 1u << 14,  // ChunkFile::PunchHole
  };
  static constexpr uint32_t kAllOps = (1u << 15) - 1;
  // Operations that change stored state.
  static constexpr uint32_t kMutatingOps = kCreate | kRename | kRemove | kMkDirs | kRemoveDir |
                                           kSyncDir | kWrite | kSync | kTruncate | kPunchHole;
  static constexpr uint32_t kReadOps = kOpen | kStat | kList | kRead | kSize;

  // `base` must outlive this wrapper.
  explicit FaultyBackend(StorageBackend& base);
  // Also lets DropUnsynced() reach `base`'s crash simulation.
  explicit FaultyBackend(MemBackend& base);

  // The `n`th (1-based) operation from now that is in `ops` and whose path contains
  // `path_contains` fails, once. A later call replaces an armed one.
  void FailNth(uint64_t n, uint32_t ops = kAllOps, std::string_view path_contains = "");
  // Every operation in `ops` whose path contains `path_contains` fails until ClearFaults().
  void FailMatching(std::string_view path_contains, uint32_t ops = kAllOps);
  // Each operation in `ops` fails with probability `rate`, drawn from an RNG seeded with `seed`.
  void FailAtRate(double rate, uint64_t seed, uint32_t ops = kAllOps);
  // With true, the file system is full: WriteAt, Create and Truncate fail with IOError(ENOSPC)
  // ("No space left on device"), everything else works, and FreeBytes() returns 0. With false,
  // space is back (FreeBytes() is the wrapped backend's). Not disarmed by ClearFaults().
  void SetOutOfSpace(bool full);
  // Reads of the file at `path` return the byte at file offset `offset` with bit `bit` flipped.
  void FlipBitOnRead(std::string_view path, uint64_t offset, int bit = 0);
  // Calls `hook` before every operation (with no lock of this wrapper held), on the calling
  // thread, so that a test can run other work at an exact point of an operation. A hook that
  // waits must only wait for work it started. An empty function removes it.
  using Hook = std::function<void(Op op, std::string_view path)>;
  void SetHook(Hook hook);
  // Disarms every fault above (not the hook).
  void ClearFaults();

  // MemBackend::DropUnsynced() of the wrapped backend; NotSupported when it is not a MemBackend.
  Status DropUnsynced();

  uint64_t ops() const;       // operations seen
  uint64_t injected() const;  // failures and bit flips injected

  std::string Describe() const override;
  Result<std::unique_ptr<ChunkFile>> Open(std::string_view path) override;
  Result<std::unique_ptr<ChunkFile>> Create(std::string_view path) override;
  Status Rename(std::string_view from, std::string_view to) override;
  Status Remove(std::string_view path) override;
  Status MkDirs(std::string_view dir) override;
  Status RemoveDir(std::string_view dir) override;
  Status SyncDir(std::string_view dir) override;
  Result<FileInfo> Stat(std::string_view path) override;
  Result<std::vector<std::string>> List(std::string_view dir) override;
  std::string FailureDomain() const override { return base_.FailureDomain(); }
  bool IsRemote() const override { return base_.IsRemote(); }
  Result<uint64_t> FreeBytes() override;

  struct Faults;  // shared with the open ChunkFiles, so that handles may outlive the wrapper

 private:
  StorageBackend& base_;
  MemBackend* const mem_;  // base_ when it is a MemBackend, else nullptr
  std::shared_ptr<Faults> faults_;
};

// Helpers over any backend, for tests that inspect or damage stored files.
// The whole file. NotFound if absent.
Result<std::vector<std::byte>> ReadWholeFile(StorageBackend& backend, std::string_view path);
// XORs the byte at `offset` of `path` with `mask` (a bit rot on the medium).
Status FlipByte(StorageBackend& backend, std::string_view path, uint64_t offset,
                std::byte mask = std::byte{0x01});
// Writes `contents` at offset 0 of `path` (created or truncated), synced.
Status WriteWholeFile(StorageBackend& backend, std::string_view path,
                      std::span<const std::byte> contents);

}  // namespace qbd::test
