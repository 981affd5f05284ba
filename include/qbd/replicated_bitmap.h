// ReplicatedBitmap: every copy of one bitmap file — a part's dirty map `<volnr>/.dirty-<p>` (on the
// other parts' backends, layout-spec.md §5) or the chunk map `<volnr>/.chunkmap` (on every part's
// backend, §6) — read, decoded and judged in one place for qbd-master, qbd-verify and qbd-repair.
//
// A set bit is an "at least" fact (a region may be stale, a chunk was written), so the good copies
// are merged: a bit set on any good copy counts. A malformed copy (bad magic, format or header,
// cut short, empty) is ignored and to be rewritten, as are missing copies and good ones that lack
// bits of the merged map. The file is refused as replicated_file.h says (no good copy, or
// malformed copies on half of the holders or more).
//
// Thread-safety: a value; Rewrite writes through the borrowed backends.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qbd/dirty_map.h"
#include "qbd/replicated_file.h"

namespace qbd {

class ReplicatedBitmap {
 public:
  // Reads and decodes `path` on every non-null entry of `holders` (entry i: backend i), as a map
  // of `bits` bits of `bytes_per_bit` each, with `magic` (kDirtyMagic or kChunkMapMagic). A
  // holder whose entry in `down` is not OK is out of reach and not read.
  // `backends`: as CopiesVerdict's (0: the holders).
  static ReplicatedBitmap Load(const std::vector<StorageBackend*>& holders, std::string path,
                               uint32_t bytes_per_bit, uint64_t bits, const char* magic,
                               const std::vector<Status>& down = {}, size_t backends = 0);
  // Load's judgement of copies already read (ReadCopies, one entry per backend): decodes each
  // good copy (a copy that does not decode becomes malformed), merges them and gives the verdict.
  // Reads and writes nothing; Rewrite needs the copies' backends.
  static ReplicatedBitmap FromCopies(std::vector<FileCopy> copies, std::string path,
                                     uint32_t bytes_per_bit, uint64_t bits, const char* magic,
                                     size_t backends = 0);
  // The dirty map of `part` (on every other part's backend; its malformed copies must be a
  // minority of all the parts) and the chunk map of a volume.
  static ReplicatedBitmap LoadDirtyMap(const std::vector<StorageBackend*>& parts, uint32_t volnr,
                                       char part, uint32_t region_size, uint64_t regions,
                                       const std::vector<Status>& down = {});
  static ReplicatedBitmap LoadChunkMap(const std::vector<StorageBackend*>& parts, uint32_t volnr,
                                       uint64_t chunk_size, uint64_t chunks,
                                       const std::vector<Status>& down = {});

  const std::string& path() const { return path_; }
  const std::vector<FileCopy>& copies() const { return copies_; }
  // OK when the good copies can be used, else why not (naming the first malformed copy).
  const Status& verdict() const { return verdict_; }
  // The union of the good copies (the caller may set more bits, e.g. chunks found on the parts).
  DirtyMap& merged() { return *merged_; }
  std::unique_ptr<DirtyMap> TakeMerged() { return std::move(merged_); }
  // Bits of the merged map that good copy i lacks (0 for other copies).
  uint64_t Lacking(size_t i) const;
  bool AllMissing() const;
  // The file as Rewrite writes it: the merged map.
  std::string Encoded() const;
  // Copy i is missing, malformed, or good but lacking bits of the merged map: it does not hold
  // what it should (qbd-verify reports it, qbd-repair rewrites it).
  bool Damaged(size_t i) const;
  // Copy i is a holder in reach whose bytes differ from Encoded(): missing, malformed, lacking
  // bits, or written for a smaller volume.
  bool NeedsRewrite(size_t i) const;
  // Replaces copy i with Encoded() (atomically, layout-spec.md §1.1).
  Status Rewrite(size_t i);

 private:
  std::string path_;
  const char* magic_ = kDirtyMagic;
  std::vector<FileCopy> copies_;
  std::vector<uint64_t> counts_;  // set bits per good copy
  std::unique_ptr<DirtyMap> merged_;
  Status verdict_;
};

}  // namespace qbd
