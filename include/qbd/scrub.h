// Scrub: what qbd-verify, qbd-repair and qbd-master's chunk repair share — reading one part's copy
// of a run of blocks exactly as stored, and judging the parts' copies against each other.
//
// The rules (layout-spec.md §4.2-§4.3, §5, §6): a copy is good when its block passes its check (a
// written block's checksum matches, an unwritten block's data is zero). Among the good copies the
// largest generation is the newest. A part that missed writes has them in its dirty map, and every
// acknowledged write reached every part that is clean there, so a clean part's good copy is the
// newest acknowledged data: the source is the newest good copy among the clean parts, and a dirty
// part's differing copy is stale whatever its generation. With every part dirty at a block (a
// crash between parts), the newest good copy wins. A block is lost when no good copy is left on a
// clean part (only copies on parts known to have missed writes, or none at all); it is unknown
// when such a copy may be on a part out of reach.
// A copy whose generation is larger than any the volume has issued (max_generation: the current
// epoch's last one, layout-spec.md §4.2) is explained by no write, no crash and no dirty map: it is
// suspect (kConflict), never a source, even when it is the newest. Older copies that agree on clean
// parts are then the newest good ones. (A lone newer copy within the issued range is a write the
// others missed — a crash between parts, or older copies put back while the daemon was down — and
// wins.)
//
// Thread-safety: pure functions and values; ReadCopy uses the backend's own thread-safety.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "qbd/backend.h"
#include "qbd/chunk_format.h"
#include "qbd/status.h"

namespace qbd {

// What was found where a part's chunk file should be.
enum class CopyState : uint8_t {
  kPresent,      // the file, at its full size (§4.1)
  kAbsent,       // no file
  kShort,        // shorter than a chunk file (damage)
  kLong,         // longer than a chunk file (damage)
  kUnreadable,   // the backend failed to open or read it
  kUnreachable,  // the part was not asked (its backend is down); never a source or a target
};
const char* CopyStateName(CopyState s);

// One part's copy of blocks [first, first + n) of one chunk.
struct PartCopy {
  CopyState state = CopyState::kAbsent;
  Status error;                    // kUnreadable, kUnreachable: why
  uint64_t file_size = 0;          // kPresent, kShort, kLong
  // kPresent: n records of g.RecordSize() bytes: the block's data, then its stored metadata
  // (format 1: the 16 bytes as stored; format 2: the slot pair, settled for a good copy: the
  // matching slot first, the other empty; as stored for a bad one).
  std::vector<std::byte> records;
  std::vector<BlockMeta> metas;    // kPresent
  std::vector<uint8_t> good;       // kPresent: 1 when the block passes its check
  std::vector<uint8_t> dirty;      // per block: the part's dirty map marks the block's region
                                   // (parts out of reach too: a clean one may hold the newest)
};

// Reads blocks [first, first + n) of 0-based `chunk` of part `part` as stored and checks each.
// Never fails: the copy's state says what was found. `dirty` is left empty (all clean).
PartCopy ReadCopy(StorageBackend& backend, uint32_t volnr, char part, const Geometry& g,
                  uint64_t chunk, uint64_t first, uint64_t n);
// ReadCopy into `c`, reusing its buffers (for loops that read many slices).
void ReadCopyInto(PartCopy& c, StorageBackend& backend, uint32_t volnr, char part, const Geometry& g,
                  uint64_t chunk, uint64_t first, uint64_t n);
// A copy of a part that is not asked.
PartCopy UnreachableCopy(const Status& why);

// How one part's copy of one block compares with the newest good copy.
enum class BlockIssue : uint8_t {
  kNone,
  kMissing,   // the chunk file is absent, short, long or unreadable on this part
  kCorrupt,   // the block fails its check
  kStale,     // good, but an older generation than the newest
  kConflict,  // good and of the newest generation, but other data (never made by qbd), or a
              // generation never issued (suspect)
};
const char* BlockIssueName(BlockIssue i);

struct SliceVerdict {
  uint64_t n = 0;
  // Per block: the part holding the newest good copy (the repair source); -1 when there is none
  // (lost, unknown, or unwritten with no file anywhere).
  std::vector<int> source;
  std::vector<uint8_t> lost;     // no good copy exists: data lost for this block
  std::vector<uint8_t> unknown;  // no good copy in reach, but a part out of reach may hold one
  // issue[p][b]: part p's copy of block b against the source (kNone for parts out of reach).
  std::vector<std::vector<BlockIssue>> issue;
  // file[p]: part p's chunk file is absent (while the chunk is written), short, long or unreadable.
  std::vector<uint8_t> bad_file;

  bool Clean() const;
};

// Judges the parts' copies of one run of blocks (copies[p] is part 'a' + p, all with the same n).
// `chunk_written`: the chunk map has the chunk, or some part has its file. `max_generation`: the
// largest generation the volume has issued (larger ones are suspect).
SliceVerdict JudgeCopies(const std::vector<PartCopy>& copies, bool chunk_written,
                         uint64_t max_generation = UINT64_MAX);

// "3-5, 9, 12-40": sorted block numbers as ranges.
std::string FormatRanges(const std::vector<uint64_t>& sorted);

}  // namespace qbd
