// Inspect: the engine of `qbdctl block` — everything the parts hold about one block of a volume,
// read from the backends only (the daemon may be down; nothing is written).
//
// For the block at a device byte offset: its chunk file and index, and for every part the file
// (backend and path), where the block's data and metadata lie in it, the metadata as stored
// (format 2: both slots of the pair, layout-spec.md §4.2; format 1: the 16-byte record trailer,
// §9.2), the XXH3-64 of the data, which slot matches, and the part's verdict; then the judge's
// verdict across the parts (scrub.h JudgeCopies, with the volume's epoch and dirty maps: the rule
// qbd-master, qbd-verify and qbd-repair use). A chunk file of format 2's size in a format-1
// volume (a conversion that was interrupted) is read as format 2.
//
// Thread-safety: functions of one thread; the backends' own thread-safety.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "qbd/backend.h"
#include "qbd/chunk_format.h"
#include "qbd/scrub.h"
#include "qbd/status.h"
#include "qbd/volume_meta.h"

namespace qbd {

// One stored format-2 metadata slot.
struct SlotView {
  uint64_t generation = 0;
  uint64_t check = 0;    // as stored: content checksum XOR AddressKey
  bool empty = true;     // 16 zero bytes
  bool matches = false;  // the data matches it (ResolveSlots' choice)
  // "empty", "zeros" (generation 0: the block reads as zeros) or "written"
  const char* Kind() const { return empty ? "empty" : generation == 0 ? "zeros" : "written"; }
};

// One part's copy of the block.
struct PartBlockView {
  char part = 0;
  std::string file;  // "<backend>/<volnr>/<part>/<n>"
  CopyState state = CopyState::kAbsent;
  std::string error;              // kUnreadable: why
  uint64_t file_size = 0;         // kPresent, kShort, kLong
  uint32_t format = kFormat2;     // the format the file is read in
  uint64_t data_offset = 0;       // format 2: the data; format 1: the record (data, then metadata)
  uint64_t meta_offset = 0;       // format 2: the slot pair; format 1: the 16-byte metadata
  std::array<SlotView, 2> slots;  // format 2 (kPresent)
  BlockMeta stored;               // format 1 (kPresent): the metadata as stored
  uint64_t content = 0;           // kPresent: XXH3-64 of the data
  bool data_zero = false;         // kPresent: the data is all zeros
  int slot = -1;                  // format 2: the slot that matches; -1 when none does
  bool dirty = false;             // the part's dirty map marks the block's region
  BlockMeta meta;                 // the metadata in memory when good
  // "good", "corrupt", "missing", "unwritten" or "pending" (format 2: good, but both slots in use:
  // a write whose completion was not recorded yet)
  std::string verdict;
  BlockIssue issue = BlockIssue::kNone;  // the judge's word on this copy
};

struct BlockView {
  std::string volume;
  uint32_t volnr = 0;
  Geometry geometry;                     // the volume's (its `.meta`)
  uint64_t offset = 0;                   // as asked
  uint64_t chunk = 0;                    // 0-based chunk index; the file is "<chunk + 1>"
  uint64_t block = 0;                    // block index within the chunk
  uint64_t max_generation = UINT64_MAX;  // from `.epoch`; UINT64_MAX when unknown
  bool chunk_written = false;            // the chunk map lists the chunk, or some part has its file
  std::vector<PartBlockView> parts;
  int source = -1;       // the part holding the newest good copy; -1 when none
  bool lost = false;     // no good copy on any clean part
  bool unknown = false;  // no good copy in reach, but a part out of reach may hold one

  uint64_t ChunkFileNumber() const { return chunk + 1; }
  // A good copy exists, or the block was never written anywhere (it reads as zeros).
  bool Readable() const { return source >= 0 || !chunk_written; }
};

// Looks at the block holding device byte `offset` of the volume of `meta`, whose part 'a' + i is
// on `parts[i]` (null: out of reach). InvalidArgument when `offset` is not below the volume's
// size. A part that cannot be read is reported in its view, never as an error.
Result<BlockView> InspectBlock(const VolumeMeta& meta, const std::vector<StorageBackend*>& parts,
                               uint64_t offset);

// For people: a few lines per part, then the judge's verdict.
std::string FormatBlockText(const BlockView& v);
// The same as one JSON object.
std::string FormatBlockJson(const BlockView& v);

}  // namespace qbd
