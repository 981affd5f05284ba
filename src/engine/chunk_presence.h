// ChunkPresence: which chunks' files the engine has seen on the parts in this process, and the
// create locks that order a chunk's first write (which creates its files) against a read that
// finds no file (which must not call the chunk lost while those files are being created).
//
// A chunk is "known" once a write or read in this process found its file on some part; until
// then, a part lacking the file may be one the first write has not reached yet, and the engine
// looks again under the chunk's create lock before calling the file lost (a lost file on one part
// is rebuilt from the others by resync).
//
// Thread-safety: all methods are safe for concurrent use, except Grow. REQUIRES: the engine's
// resize lock held shared around every call, exclusive around Grow. Lock order: region locks ->
// create lock -> the maps' and PartStore's internal locks (a write holds its region locks, then the
// create lock while it checks and creates the files and records them).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "qbd/part_store.h"

namespace qbd {

class ChunkPresence {
 public:
  // stores[p] is part 'a' + p; the stores must outlive this. `chunks`: the volume's chunk count.
  ChunkPresence(std::vector<PartStore*> stores, uint64_t chunks);

  // A file of `chunk` was seen on some part in this process.
  bool Known(uint64_t chunk) const;
  void SetKnown(uint64_t chunk);
  // The lock a chunk's first write holds while it creates the files.
  std::mutex& CreateLock(uint64_t chunk) { return create_locks_[chunk % create_locks_.size()]; }

  // Of `parts`, those whose file of `chunk` is absent or short (a part whose state cannot be read
  // is left out).
  std::vector<int> Incomplete(uint64_t chunk, const std::vector<int>& parts) const;
  // Some part of `parts` has a file of `chunk` (complete or short).
  bool AnyFile(uint64_t chunk, const std::vector<int>& parts) const;
  // Of `live`, the parts whose file of `chunk` is absent or short while another part of `live`
  // has a complete one (their file was lost); empty when none has it (a new chunk).
  std::vector<size_t> LostOn(uint64_t chunk, const std::vector<size_t>& live) const;

  // The volume grew to `chunks` chunks. REQUIRES: the resize lock exclusive.
  void Grow(uint64_t chunks);

 private:
  const std::vector<PartStore*> stores_;
  std::vector<std::atomic<uint8_t>> known_;
  std::array<std::mutex, 64> create_locks_;
};

}  // namespace qbd
