// Verify: qbd-verify's engine — walks every part of every volume of one qbd.conf through the same
// backends as qbd-master and reports what is missing, damaged, stale or lost.
//
// Quick pass (always): the metadata copies (.volumesmeta, .meta, .epoch, .chunkmap, dirty maps)
// on every backend, one listing with sizes of every part directory (READDIRPLUS on NFS), and from
// those alone: missing, short and long chunk files, chunks whose file is gone from every part,
// regions awaiting resync, stray files. Deep pass (`deep`): reads every block of every copy,
// checks its checksum and compares the copies (scrub.h's rules): corrupt blocks, stale copies,
// blocks whose newest copy is gone. A damaged slice is read again before it is reported, so that
// a write of the running daemon caught between two parts is not taken for damage.
//
// Read-only: nothing is written. Safe beside a running qbd-master.
// Thread-safety: Verify runs its own worker threads; the callbacks are called from one at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "qbd/catalog.h"
#include "qbd/status.h"

namespace qbd {

struct VerifyOptions {
  bool deep = false;
  std::vector<std::string> volumes;  // names; empty: every volume
  uint64_t rate_bytes_per_sec = 0;   // deep reads at most this fast (0: no limit)
  int threads = 4;                   // chunks read side by side in the deep pass
  // Deep pass progress: bytes read so far and the total expected (called at most every 0.5 s).
  std::function<void(uint64_t done, uint64_t total)> progress;
  int recheck_ms = 100;  // the pause before a damaged slice is read again
};

// Severities, also the exit status they lead to.
inline constexpr int kSevNote = 0, kSevDegraded = 1, kSevLost = 2, kSevNotChecked = 4;

struct Finding {
  // unreachable, metadata, dirty, missing, short, long, unreadable, corrupt, stale, conflict,
  // lost, lost-chunk, unknown, unrecorded, stray
  std::string kind;
  int severity = kSevDegraded;
  char part = 0;                 // 0: not about one part
  uint64_t chunk = 0;            // chunk file number (1 = the first chunk); 0: not about one chunk
  std::vector<uint64_t> blocks;  // block numbers inside the chunk, sorted
  std::string where;             // the file or backend concerned
  std::string detail;
};

struct VolumeReport {
  std::string name;
  uint32_t number = 0;
  uint32_t replicas = 0;
  uint64_t chunks = 0;           // chunks of the volume's size
  uint64_t written_chunks = 0;   // chunks written (chunk map, or a file on some part)
  uint64_t degraded_chunks = 0;  // written chunks with fewer than `replicas` good copies
  uint64_t lost_chunks = 0;      // chunks with data lost (some block without a good copy)
  uint64_t chunk_files = 0;      // chunk files found on all parts
  uint64_t bytes_read = 0;       // deep pass
  std::vector<Finding> findings;
  int Severity() const;
  // "ok", "degraded", "data lost", "not checked"
  std::string Status() const;
};

struct VerifyReport {
  bool deep = false;
  std::vector<Finding> findings;  // about the whole configuration (.volumesmeta, backends)
  std::vector<VolumeReport> volumes;
  double seconds = 0;
  uint64_t bytes_read = 0;
  // 0 clean, 1 degraded but recoverable, 2 data lost, 4 something could not be checked.
  int ExitCode() const;
};

// Verifies the volumes of `catalog`. Fails only when a named volume does not exist (NotFound); a
// `.volumesmeta` without a good majority is a finding of severity kSevNotChecked and no volume.
Result<VerifyReport> Verify(Catalog& catalog, const VerifyOptions& options);

// The report for people: per volume its status and what is wrong where, then a summary. With
// `only_problems`, volumes that are OK are left out, and a clean report is empty (for cron).
std::string FormatReportText(const VerifyReport& report, bool only_problems = false);
// The same as one JSON document (documented in the README).
std::string FormatReportJson(const VerifyReport& report);
// `s` as a JSON string literal, quotes included.
std::string JsonString(std::string_view s);

}  // namespace qbd
