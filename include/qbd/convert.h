// Convert: the engine of `qbdctl convert` — rewrites every chunk file of a volume from format 1
// (layout-spec.md §9) to format 2 (§4), offline, then switches the volume's `.meta` to format 2.
//
// Chunk by chunk, every part's copy is read and judged against the others (scrub.h's JudgeCopies,
// the rule qbd-verify and qbd-repair use). Each block keeps its part's own copy and generation
// when that copy passes its check; a block that fails it (or a file cut short) takes the newest
// good copy of another part. A block without a good copy anywhere stops the conversion before
// anything of its chunk is written: the admin repairs the volume first. A part's format-2 file is
// built under `<part>/.<n>.tmp` (PartStore::BuildReplacement: written blocks only, unwritten ones
// stay holes), synced, read back and checked block by block against the source, and only then
// renamed over `<n>`. A file that already has format 2's size (a conversion that was interrupted)
// is checked as format 2 and kept; a block of it that fails its check is rewritten in place from
// a good copy. `.meta` says `format = 2` (serial + 1, on every part's copy) only once no chunk
// file of format 1 is left: a stopped run leaves a volume that qbd-master still refuses and that
// a rerun finishes. A volume whose `.meta` says format 2 already is left alone (its `.meta`
// copies that are older are rewritten), so that a second run changes nothing.
//
// The volume must not be open anywhere (CheckNotServed): the caller also holds the
// configuration's ProcessLock, so that qbd-master cannot start meanwhile.
//
// Thread-safety: one thread; the backends' own thread-safety.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "qbd/backend.h"
#include "qbd/chunk_format.h"
#include "qbd/lease.h"
#include "qbd/status.h"
#include "qbd/volume_meta.h"

namespace qbd {

// The geometry a chunk file of `file_size` bytes of a volume of geometry `volume` is read with:
// format 2 when the file has format 2's size (a file converted by an interrupted conversion),
// else the volume's.
Geometry ChunkFileGeometry(const Geometry& volume, uint64_t file_size);

// OK when no qbd-master has the volume: `<volnr>/.running` is on none of `parts` (it is there while
// a master has the volume open, and after a master that had it open crashed), and no master other
// than `self`'s configuration's previous run holds its lease (lease.h ForeignLease). Unavailable
// naming the part and the holder otherwise; IOError when a part cannot be asked.
Status CheckNotServed(const VolumeMeta& meta, const std::vector<StorageBackend*>& parts,
                      const LeaseIdentity& self);

struct ConvertProgress {
  uint64_t chunks_done = 0;   // chunks finished (converted or found converted)
  uint64_t chunks_total = 0;  // chunks with a file on some part
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
};

struct ConvertOptions {
  // Called after each chunk.
  std::function<void(const ConvertProgress&)> progress;
};

struct ConvertReport {
  // `.meta` said format 2 already: no chunk file was read.
  bool already_converted = false;
  uint64_t chunks = 0;               // chunks with a file on some part
  uint64_t files_converted = 0;      // format-1 chunk files rewritten in format 2
  uint64_t files_kept = 0;           // chunk files found in format 2 (an earlier run) and kept
  uint64_t blocks_from_other = 0;    // blocks that failed their check on a part, taken from another
  uint64_t meta_copies_written = 0;  // copies of `.meta` written
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  // One line per repair made on the way ("chunk 3 part b: blocks 4-5 failed their check; taken
  // from part a") and per file left alone (a stray chunk number).
  std::vector<std::string> notes;
};

// Converts the volume of `meta` (as the catalog read it) whose part 'a' + i is on `parts[i]`;
// every part must be in reach. Errors name the volume, and the chunk file, part and block:
//  - Corruption: a block has no good copy on any part (nothing of its chunk was written);
//  - Corruption: a converted file did not read back as written (it was not published);
//  - IOError: a backend failed (a rerun resumes); InvalidArgument: `.meta` copies disagree.
// REQUIRES: CheckNotServed passed and nothing else writes to the volume meanwhile.
Result<ConvertReport> ConvertVolume(const VolumeMeta& meta,
                                    const std::vector<StorageBackend*>& parts,
                                    const ConvertOptions& options = {});

}  // namespace qbd
