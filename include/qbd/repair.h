// Repair: what qbd-repair does besides the chunk repairs of QuorumSet::RepairChunk — which chunks
// to visit, and the metadata copies a part must hold (layout-spec.md §1.1: every copy survives
// the loss of any single backend).
//
// Thread-safety: functions of one thread; safe beside a running qbd-master (copies that exist are
// only replaced atomically, and only the chunk map's and the index's).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qbd/backend.h"
#include "qbd/catalog.h"
#include "qbd/volume_meta.h"

namespace qbd {

// The 0-based chunks to visit, ascending: those in any good copy of the chunk map, and those whose
// file exists on some part. Parts that cannot be listed are skipped.
std::vector<uint64_t> ChunksToVisit(const VolumeMeta& meta,
                                    const std::vector<StorageBackend*>& backends);

struct MetadataRepair {
  // One line per copy written (or to be written with dry_run), or that could not be.
  std::vector<std::string> lines;
  int written = 0;  // copies written (or to be written)
  int failed = 0;   // copies whose write failed, and files without a good majority to copy from
};

// Restores the volume's metadata on every reachable part: its directories, and the missing,
// malformed and older copies of .volumesmeta and .meta (from the newest good copy), .epoch (the
// largest good epoch), the chunk map (the union of the good copies and of the chunks whose files
// exist: rebuilt from those files when no copy is good) and the dirty maps (the union of the
// good copies; every region dirty, so the part is resynced whole, when the good copies are not a
// majority). Every copy is read and judged before any is written. `.volumesmeta`, `.meta` and
// `.epoch` without a good majority are left as they are (failed): which copy is right is the
// admin's call. With `dry_run` only says what it would do.
MetadataRepair RepairMetadata(Catalog& catalog, const VolumeMeta& meta, bool dry_run);

}  // namespace qbd
