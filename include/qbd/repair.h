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

// The 0-based chunks to visit, ascending: those in any copy of the chunk map, and those whose file
// exists on some part. Parts that cannot be listed are skipped.
std::vector<uint64_t> ChunksToVisit(const VolumeMeta& meta,
                                    const std::vector<StorageBackend*>& backends);

// Restores the volume's metadata on every reachable part: its directories, and the missing or
// older copies of .meta, .epoch, .chunkmap (also copies lacking chunks) and the dirty maps, each
// from the union or the newest of the copies that exist. With `dry_run` only says what it would
// do. Returns one line per file written (or to be written).
std::vector<std::string> RepairMetadata(Catalog& catalog, const VolumeMeta& meta, bool dry_run);

}  // namespace qbd
