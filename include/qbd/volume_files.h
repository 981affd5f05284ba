// VolumeFiles: the replicated files of one volume that qbd-master reads when it opens it — the
// epoch (layout-spec.md §4.2), each part's dirty map (§5) and the chunk map (§6) — loaded through
// the one loader of each kind (ReplicatedText, ReplicatedBitmap), checked before anything is
// written, then committed.
//
// Load reads and judges every copy and writes nothing: it fails, naming the file and line, when a
// file has no good majority (replicated_file.h). Commit logs one line per copy that is not good,
// then (unless `no_writes`) writes the new epoch to every part in reach and rewrites every copy
// of the maps that is missing, malformed or lacks bits of the union — qbd-master writes into those
// files while it serves, so a damaged copy cannot wait for qbd-repair. (`.volumesmeta` and `.meta`
// are the catalog's: a malformed copy of those is reported and left for qbd-repair.)
//
// Thread-safety: one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "qbd/backend.h"
#include "qbd/catalog.h"
#include "qbd/dirty_map.h"
#include "qbd/replicated_bitmap.h"
#include "qbd/replicated_text.h"
#include "qbd/volume_meta.h"

namespace qbd {

// The text of `<volnr>/.epoch` holding `epoch`.
std::string EncodeEpoch(uint64_t epoch);
// Every copy of `<volnr>/.epoch` on `parts`, judged; its version is the epoch (the largest wins).
ReplicatedText LoadEpochCopies(const std::vector<StorageBackend*>& parts, uint32_t volnr);
// The 0-based chunks that have a chunk file on some part (part 'a' + i on parts[i]); parts that
// cannot be listed (or whose `down` entry is not OK) are skipped.
std::set<uint64_t> ChunksWithFiles(const VolumeMeta& meta,
                                   const std::vector<StorageBackend*>& parts,
                                   const std::vector<Status>& down = {});

class VolumeFiles {
 public:
  // `backends[i]` holds part 'a' + i and must outlive this object.
  static Result<std::unique_ptr<VolumeFiles>> Load(const VolumeMeta& meta,
                                                   std::vector<StorageBackend*> backends);

  // Logs the copies that are not good (one line each) and, unless `no_writes`, writes the epoch
  // after the largest found to every part in reach and rewrites the maps' bad and stale copies.
  // Returns the new epoch. IOError when the epoch could not be written on any part.
  Result<uint64_t> Commit(bool no_writes);

  // Per part: not OK when its backend could not be read (the part starts down).
  const std::vector<Status>& down() const { return down_; }
  // A malformed copy of a dirty map was ignored: a bit only it held is unknown, so the copies of
  // each written chunk are to be compared before they are served.
  bool dirty_copy_lost() const { return dirty_copy_lost_; }
  // The union of each part's dirty map copies (all set when no copy was in reach), and of the
  // chunk map's copies with the chunks that have files. REQUIRES: after Commit; once.
  std::vector<std::unique_ptr<DirtyMap>> TakeDirtyMaps();
  std::unique_ptr<DirtyMap> TakeChunkMap();

 private:
  VolumeFiles() = default;
  VolumeMeta meta_;
  std::vector<StorageBackend*> backends_;
  std::vector<Status> down_;
  ReplicatedText epoch_;
  std::vector<ReplicatedBitmap> dirty_;
  std::vector<char> dirty_unknown_;  // per part: no copy of its dirty map was in reach
  ReplicatedBitmap chunk_map_;
  uint64_t chunks_added_ = 0;  // chunks with files that no good chunk map copy listed
  bool dirty_copy_lost_ = false;
};

// Checks, reading only, that every volume of the catalog can be opened as far as its metadata
// goes: `.volumesmeta`, each `.meta`, `.epoch`, dirty maps and chunk map have a good majority.
// The first failure names the file and line. qbd-master calls it before it writes anything.
Status CheckVolumeFiles(Catalog& catalog);

}  // namespace qbd
