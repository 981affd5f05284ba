// Implements include/qbd/verify.h.
#include "qbd/verify.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <tuple>

#include "qbd/config.h"
#include "qbd/convert.h"
#include "qbd/dirty_map.h"
#include "qbd/replicated_bitmap.h"
#include "qbd/replicated_text.h"
#include "qbd/scrub.h"
#include "qbd/volume_files.h"
#include "qbd/volume_meta.h"

namespace qbd {
namespace {

using SteadyClock = std::chrono::steady_clock;

// Deep reads share one budget of bytes per second.
class Throttle {
 public:
  explicit Throttle(uint64_t bytes_per_sec) : rate_(bytes_per_sec), next_(SteadyClock::now()) {}
  void Take(uint64_t bytes) {
    if (rate_ == 0) return;
    SteadyClock::time_point at;
    {
      std::lock_guard<std::mutex> l(mu_);
      const auto now = SteadyClock::now();
      if (next_ < now) next_ = now;
      at = next_;
      next_ += std::chrono::microseconds(bytes * 1000000 / rate_);
    }
    std::this_thread::sleep_until(at);
  }

 private:
  const uint64_t rate_;
  std::mutex mu_;
  SteadyClock::time_point next_;
};

struct VolumeWork {
  VolumeMeta meta;
  ReplicatedText meta_copies;  // every part's copy of .meta, judged
  std::vector<StorageBackend*> backends;
  std::vector<Status> unreachable;  // per part: not OK when the part cannot be listed
  std::vector<std::map<uint64_t, uint64_t>> files;  // per part: chunk index -> file size
  std::unique_ptr<DirtyMap> chunk_map;              // union of the copies; all zero when none
  bool have_chunk_map = false;
  std::vector<std::unique_ptr<DirtyMap>> dirty;  // per part: union of the copies
  std::vector<uint64_t> chunks;                  // written or present somewhere, ascending
  // The largest generation the volume can have written (its epoch, layout-spec.md §4.6).
  uint64_t max_generation = UINT64_MAX;
  VolumeReport report;

  std::mutex mu;  // guards what the deep pass adds below
  // (part, chunk, kind) -> blocks
  std::map<std::tuple<char, uint64_t, std::string>, std::set<uint64_t>> blocks;
  std::set<uint64_t> degraded, lost;
  std::vector<Finding> deep_findings;

  bool Reachable(size_t p) const { return unreachable[p].ok(); }
  std::string Where(size_t p, const std::string& path) const {
    return backends[p]->Describe() + "/" + path;
  }
  void Add(Finding f) { report.findings.push_back(std::move(f)); }
};

Finding Make(std::string kind, int severity, char part, uint64_t chunk, std::string where,
             std::string detail) {
  Finding f;
  f.kind = std::move(kind);
  f.severity = severity;
  f.part = part;
  f.chunk = chunk;
  f.where = std::move(where);
  f.detail = std::move(detail);
  return f;
}

// A finding about copy `c` of a metadata file held by part `part` (0: the configuration's
// .volumesmeta), when it is not what it should be; `what` names the file for people.
void ReportCopy(std::vector<Finding>& out, char part, const FileCopy& c, const std::string& what,
                std::string lacking = "") {
  switch (c.state) {
    case MetaCopyState::kMissing:
      out.push_back(Make("metadata", kSevDegraded, part, 0, c.where, fmt::format("{} copy missing", what)));
      break;
    case MetaCopyState::kMalformed:
      out.push_back(Make("metadata", kSevDegraded, part, 0, c.where, c.reason));
      break;
    case MetaCopyState::kUnreachable:
      // The part itself is reported out of reach; a lone configuration file is reported here.
      if (part == 0) out.push_back(Make("unreachable", kSevDegraded, 0, 0, c.backend->Describe(), c.reason));
      break;
    case MetaCopyState::kGood:
      if (!lacking.empty()) {
        out.push_back(Make("metadata", kSevDegraded, part, 0, c.where, std::move(lacking)));
      } else if (c.rewrite) {
        out.push_back(Make("metadata", kSevDegraded, part, 0, c.where, c.reason));
      }
      break;
    case MetaCopyState::kAbsent:
      break;
  }
}

// A file without a good majority: qbd-master refuses the volume until it is repaired.
void ReportVerdict(VolumeWork& w, const Status& verdict, const std::string& path, const std::string& fix) {
  if (verdict.ok() || verdict.IsNotFound() || verdict.IsUnavailable()) return;
  w.Add(Make("metadata", kSevDegraded, 0, 0, path,
             fmt::format("{}: qbd-master refuses to open the volume; {}", verdict.message(), fix)));
}

// The copies of the volume's own metadata files on each reachable part (.meta, .epoch, .chunkmap,
// the dirty maps), through the loaders qbd-master uses, and the union of the bitmaps.
void CheckVolumeMetadata(VolumeWork& w) {
  const VolumeMeta& m = w.meta;
  const size_t np = w.backends.size();
  const uint32_t nr = m.number;
  const uint32_t rs = DirtyRegionSize(m.geometry);
  const uint64_t regions = (m.geometry.size + rs - 1) / rs;
  std::vector<StorageBackend*> reach(np, nullptr);
  for (size_t p = 0; p < np; ++p) {
    if (w.Reachable(p)) reach[p] = w.backends[p];
  }
  auto part = [](size_t p) { return static_cast<char>('a' + p); };
  // .meta: judged when the catalog read it.
  for (size_t p = 0; p < np && p < w.meta_copies.copies().size(); ++p) {
    if (reach[p]) ReportCopy(w.report.findings, part(p), w.meta_copies.copies()[p], ".meta");
  }
  // .epoch: a good copy older than the newest is a note (the part was out of reach at a start).
  ReplicatedText epoch = LoadEpochCopies(reach, nr);
  for (size_t p = 0; p < np; ++p) {
    const FileCopy& c = epoch.copies()[p];
    if (c.state == MetaCopyState::kGood && c.rewrite) {
      w.Add(Make("metadata", kSevNote, part(p), 0, c.where,
                 fmt::format("{}: the part was out of reach when qbd-master last started", c.reason)));
    } else {
      ReportCopy(w.report.findings, part(p), c, ".epoch");
    }
  }
  ReportVerdict(w, epoch.verdict(), Catalog::EpochPath(nr),
                "set every copy to the largest epoch of the good ones by hand (layout-spec.md 4.2)");
  if (epoch.verdict().ok() && epoch.chosen() >= 0) w.max_generation = MaxGenerationOfEpoch(epoch.version());
  // The chunk map.
  ReplicatedBitmap chunks = ReplicatedBitmap::LoadChunkMap(reach, nr, m.geometry.chunk_size, m.geometry.ChunkCount());
  for (size_t p = 0; p < np; ++p) {
    const uint64_t lacking = chunks.Lacking(p);
    ReportCopy(w.report.findings, part(p), chunks.copies()[p], "chunk map",
               lacking == 0 ? "" : fmt::format("chunk map copy lacks {} written chunk(s) the other copies list", lacking));
  }
  const CopyCounts cn = CountCopies(chunks.copies());
  w.have_chunk_map = cn.good > 0;
  if (cn.good == 0 && cn.malformed > 0) {
    w.Add(Make("metadata", kSevDegraded, 0, 0, DirtyMap::ChunkMapPath(nr),
               "no good copy of the chunk map: qbd-master refuses to open the volume; qbd-repair rebuilds it "
               "from the chunk files present on the parts"));
  } else if (cn.good == 0 && cn.missing > 0) {
    w.Add(Make("metadata", kSevDegraded, 0, 0, DirtyMap::ChunkMapPath(nr),
               "no chunk map on any part (qbd-master writes one when it opens the volume): a chunk lost on every "
               "part cannot be told from an unwritten one"));
  } else {
    ReportVerdict(w, chunks.verdict(), DirtyMap::ChunkMapPath(nr), "qbd-repair rewrites the chunk map");
  }
  w.chunk_map = chunks.TakeMerged();
  // Each part's dirty map, on the other parts.
  for (size_t x = 0; x < np; ++x) {
    ReplicatedBitmap dirty = ReplicatedBitmap::LoadDirtyMap(reach, nr, part(x), rs, regions);
    const std::string what = fmt::format("dirty map of part {}:", part(x));
    for (size_t p = 0; p < np; ++p) {
      const uint64_t lacking = dirty.Lacking(p);
      ReportCopy(w.report.findings, part(p), dirty.copies()[p], what,
                 lacking == 0 ? "" : fmt::format("{} copy lacks {} dirty region(s) the other copies mark", what, lacking));
    }
    ReportVerdict(w, dirty.verdict(), DirtyMap::PathFor(nr, part(x)),
                  "qbd-repair rewrites it (from the good copies, or all regions dirty when there is none)");
    w.dirty.push_back(dirty.TakeMerged());
  }
  for (size_t p = 0; p < np; ++p) {
    const uint64_t n = w.dirty[p]->CountSet();
    if (n == 0 || !w.Reachable(p)) continue;
    w.Add(Make("dirty", kSevDegraded, part(p), 0, w.backends[p]->Describe(),
               fmt::format("{} region(s) ({} bytes) missed writes and await resync", n, n * rs)));
  }
}

// Quick pass over one volume: listings with sizes, then every chunk against them.
void QuickPass(VolumeWork& w, int recheck_ms) {
  const Geometry& g = w.meta.geometry;
  const size_t np = w.backends.size();
  const uint32_t nr = w.meta.number;
  w.files.resize(np);
  w.unreachable.assign(np, Status::OK());
  for (size_t p = 0; p < np; ++p) {
    const char part = static_cast<char>('a' + p);
    const std::string dir = PartDir(nr, part);
    auto list = w.backends[p]->ListInfo(dir);
    if (list.status().IsNotFound()) {
      // No part directory: maybe a replaced disk. Is the backend itself there?
      auto root = w.backends[p]->Stat("");
      if (!root.ok() && !root.status().IsNotFound()) {
        w.unreachable[p] = root.status();
      } else {
        w.Add(Make("missing", kSevDegraded, part, 0, w.Where(p, dir), "part directory missing"));
      }
      continue;
    }
    if (!list.ok()) {
      w.unreachable[p] = list.status();
      continue;
    }
    for (const DirEntry& e : *list) {
      const uint64_t file = ChunkFileNumber(e.name);
      const std::string path = dir + "/" + e.name;
      if (file >= 1 && file <= g.ChunkCount() && !e.info.is_dir) {
        w.files[p][file - 1] = e.info.size;
        ++w.report.chunk_files;
      } else if (e.name.size() > 5 && e.name[0] == '.' && e.name.ends_with(".tmp")) {
        w.Add(Make("stray", kSevNote, part, 0, w.Where(p, path),
                   "unfinished chunk file (left by a crash; removable)"));
      } else if (file > g.ChunkCount()) {
        w.Add(Make("stray", kSevNote, part, 0, w.Where(p, path),
                   "chunk file beyond the volume's size"));
      } else {
        w.Add(Make("stray", kSevNote, part, 0, w.Where(p, path), "not a chunk file"));
      }
    }
  }
  for (size_t p = 0; p < np; ++p) {
    if (!w.Reachable(p)) {
      w.Add(Make("unreachable", kSevDegraded, static_cast<char>('a' + p), 0,
                 w.backends[p]->Describe(), w.unreachable[p].message()));
    }
  }
  CheckVolumeMetadata(w);
  std::set<uint64_t> chunks;
  for (auto r = w.chunk_map->NextSet(0); r; r = w.chunk_map->NextSet(*r + 1)) chunks.insert(*r);
  for (const auto& per_part : w.files) {
    for (const auto& [c, size] : per_part) chunks.insert(c);
  }
  w.chunks.assign(chunks.begin(), chunks.end());
  w.report.chunks = g.ChunkCount();
  w.report.written_chunks = w.chunks.size();
  const uint32_t rs = DirtyRegionSize(g);
  bool any_unreachable = false;
  for (size_t p = 0; p < np; ++p) any_unreachable = any_unreachable || !w.Reachable(p);
  // A chunk that a running daemon writes for the first time is in the chunk map a moment before
  // its files exist: a file missing from the listing is looked for once more before it counts.
  std::vector<std::pair<size_t, uint64_t>> absent;
  for (uint64_t c : w.chunks) {
    for (size_t p = 0; p < np; ++p) {
      if (w.Reachable(p) && !w.files[p].count(c)) absent.emplace_back(p, c);
    }
  }
  if (!absent.empty() && recheck_ms > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(recheck_ms));
    for (const auto& [p, c] : absent) {
      auto info = w.backends[p]->Stat(ChunkPath(nr, static_cast<char>('a' + p), c));
      if (info.ok()) {
        w.files[p][c] = info->size;
        ++w.report.chunk_files;
      }
    }
  }
  for (uint64_t c : w.chunks) {
    int present = 0;
    bool degraded = any_unreachable;
    for (size_t p = 0; p < np; ++p) {
      if (!w.Reachable(p)) continue;
      const char part = static_cast<char>('a' + p);
      const std::string path = ChunkPath(nr, part, c);
      auto it = w.files[p].find(c);
      if (it == w.files[p].end()) {
        degraded = true;
        continue;  // reported below, once the other parts are known
      }
      ++present;
      // A format-1 volume being converted (qbdctl convert) has files of either format (§9.1).
      const Geometry fg = ChunkFileGeometry(g, it->second);
      if (it->second != fg.ChunkFileSize()) {
        degraded = true;
        w.Add(Make(it->second < fg.ChunkFileSize() ? "short" : "long", kSevDegraded, part, c + 1,
                   w.Where(p, path),
                   fmt::format("{} bytes, a chunk file has {}", it->second, fg.ChunkFileSize())));
      }
      const uint64_t r0 = c * g.chunk_size / rs, r1 = ((c + 1) * g.chunk_size - 1) / rs;
      if (w.dirty[p]->AnyIn(r0, std::min<uint64_t>(r1, w.dirty[p]->regions() - 1))) degraded = true;
    }
    if (present == 0 && !any_unreachable) {
      w.Add(Make(
          "lost-chunk", kSevLost, 0, c + 1, fmt::format("{}/*/{}", nr, c + 1),
          "data lost: the chunk was written (chunk map) but its file is missing on every part"));
      w.lost.insert(c);
    } else if (present == 0) {
      w.Add(Make("unknown", kSevDegraded, 0, c + 1, fmt::format("{}/*/{}", nr, c + 1),
                 "chunk file missing on every part in reach; a part out of reach may hold it"));
    } else {
      for (size_t p = 0; p < np; ++p) {
        if (!w.Reachable(p) || w.files[p].count(c)) continue;
        const char part = static_cast<char>('a' + p);
        w.Add(Make("missing", kSevDegraded, part, c + 1, w.Where(p, ChunkPath(nr, part, c)),
                   "chunk file missing"));
      }
    }
    if (w.have_chunk_map && !w.chunk_map->Test(c) && present > 0) {
      w.Add(Make("unrecorded", kSevDegraded, 0, c + 1, DirtyMap::ChunkMapPath(nr),
                 "chunk files exist but the chunk map lacks the chunk"));
    }
    if (degraded) w.degraded.insert(c);
  }
}

bool SameVerdict(const SliceVerdict& a, const SliceVerdict& b) {
  return a.lost == b.lost && a.unknown == b.unknown && a.issue == b.issue &&
         a.bad_file == b.bad_file;
}

// Damage that only reading the blocks shows (the file-level kind was seen by the quick pass).
bool BlockDamage(const SliceVerdict& v) {
  for (uint64_t b = 0; b < v.n; ++b) {
    if (v.lost[b] || v.unknown[b]) return true;
  }
  for (const auto& per_part : v.issue) {
    for (BlockIssue i : per_part) {
      if (i == BlockIssue::kCorrupt || i == BlockIssue::kStale || i == BlockIssue::kConflict)
        return true;
    }
  }
  return false;
}

class DeepPass {
 public:
  DeepPass(std::vector<std::unique_ptr<VolumeWork>>& work, const VerifyOptions& o)
      : work_(work), o_(o), throttle_(o.rate_bytes_per_sec) {
    for (auto& w : work_) {
      for (uint64_t c : w->chunks) {
        jobs_.emplace_back(w.get(), c);
        for (size_t p = 0; p < w->backends.size(); ++p) {
          auto it = w->files[p].find(c);
          if (w->Reachable(p) && it != w->files[p].end() &&
              it->second == ChunkFileGeometry(w->meta.geometry, it->second).ChunkFileSize()) {
            total_ += it->second;
          }
        }
      }
    }
  }

  void Run() {
    std::vector<std::thread> threads;
    const int n = std::max(1, o_.threads);
    for (int i = 0; i < n; ++i) threads.emplace_back([this] { Worker(); });
    if (o_.progress) {
      std::unique_lock<std::mutex> l(mu_);
      while (finished_ < n) {
        cv_.wait_for(l, std::chrono::milliseconds(500));
        o_.progress(done_.load(), total_);
      }
    }
    for (auto& t : threads) t.join();
  }

 private:
  void Worker() {
    for (;;) {
      size_t j = next_.fetch_add(1);
      if (j >= jobs_.size()) break;
      Chunk(*jobs_[j].first, jobs_[j].second);
    }
    std::lock_guard<std::mutex> l(mu_);
    ++finished_;
    cv_.notify_all();
  }

  // Reads every part's copy of the slice into `copies` (its buffers are reused).
  void ReadAll(VolumeWork& w, uint64_t c, uint64_t first, uint64_t n, std::vector<PartCopy>& copies) {
    const Geometry& g = w.meta.geometry;
    const uint32_t rs = DirtyRegionSize(g);
    copies.resize(w.backends.size());
    for (size_t p = 0; p < w.backends.size(); ++p) {
      auto it = w.files[p].find(c);
      PartCopy& cp = copies[p];
      if (!w.Reachable(p)) {
        cp = UnreachableCopy(w.unreachable[p]);
      } else {
        // Each file with the geometry of its own format (a volume being converted, §9.1).
        const Geometry fg = it != w.files[p].end() ? ChunkFileGeometry(g, it->second) : g;
        if (it != w.files[p].end() && it->second == fg.ChunkFileSize()) throttle_.Take(n * fg.RecordSize());
        ReadCopyInto(cp, *w.backends[p], w.meta.number, static_cast<char>('a' + p), fg, c, first, n);
      }
      if (cp.state == CopyState::kPresent) {
        done_.fetch_add(cp.records.size());
        std::lock_guard<std::mutex> l(w.mu);
        w.report.bytes_read += cp.records.size();
      }
      cp.dirty.resize(n);
      for (uint64_t b = 0; b < n; ++b) {
        const uint64_t region = (c * g.chunk_size + (first + b) * g.block_size) / rs;
        cp.dirty[b] = region < w.dirty[p]->regions() && w.dirty[p]->Test(region);
      }
    }
  }

  void Chunk(VolumeWork& w, uint64_t c) {
    const Geometry& g = w.meta.geometry;
    const uint64_t per_chunk = g.BlocksPerChunk();
    const uint64_t slice =
        std::min<uint64_t>(per_chunk, std::max<uint64_t>(1, (4u << 20) / g.block_size));
    // Blocks past the end of the volume are never written; the last chunk is read up to the end.
    const uint64_t end_block = std::min<uint64_t>(
        per_chunk, (g.size - c * g.chunk_size + g.block_size - 1) / g.block_size);
    const bool written = w.chunk_map->Test(c);
    std::vector<char> unreadable_reported(w.backends.size(), 0);
    for (uint64_t first = 0; first < end_block; first += slice) {
      const uint64_t n = std::min<uint64_t>(slice, end_block - first);
      thread_local std::vector<PartCopy> copies, again;  // buffers reused by every slice
      ReadAll(w, c, first, n, copies);
      SliceVerdict v = JudgeCopies(copies, written, w.max_generation);
      // A write of a running daemon can sit between two parts for a moment: damage stands once
      // two reads agree.
      for (int tries = 0; BlockDamage(v) && tries < 3; ++tries) {
        std::this_thread::sleep_for(std::chrono::milliseconds(o_.recheck_ms));
        ReadAll(w, c, first, n, again);
        SliceVerdict v2 = JudgeCopies(again, written, w.max_generation);
        const bool same = SameVerdict(v, v2);
        v = std::move(v2);
        std::swap(copies, again);
        if (same) break;
      }
      std::lock_guard<std::mutex> l(w.mu);
      for (size_t p = 0; p < copies.size(); ++p) {
        const char part = static_cast<char>('a' + p);
        if (copies[p].state == CopyState::kUnreadable && !unreadable_reported[p]) {
          unreadable_reported[p] = 1;
          w.deep_findings.push_back(Make("unreadable", kSevDegraded, part, c + 1,
                                         w.Where(p, ChunkPath(w.meta.number, part, c)),
                                         copies[p].error.message()));
          w.degraded.insert(c);
        }
        for (uint64_t b = 0; b < n; ++b) {
          const BlockIssue i = v.issue[p][b];
          if (i == BlockIssue::kNone || i == BlockIssue::kMissing) continue;
          w.blocks[{part, c, BlockIssueName(i)}].insert(first + b);
          w.degraded.insert(c);
        }
      }
      for (uint64_t b = 0; b < n; ++b) {
        if (v.lost[b] && !w.lost.count(c)) w.blocks[{0, c, "lost"}].insert(first + b);
        if (v.unknown[b]) w.blocks[{0, c, "unknown"}].insert(first + b);
      }
    }
  }

  std::vector<std::unique_ptr<VolumeWork>>& work_;
  const VerifyOptions& o_;
  Throttle throttle_;
  std::vector<std::pair<VolumeWork*, uint64_t>> jobs_;
  std::atomic<size_t> next_{0};
  std::atomic<uint64_t> done_{0};
  uint64_t total_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  int finished_ = 0;
};

// Moves the deep pass's block sets into findings.
void SettleDeep(VolumeWork& w) {
  const uint32_t nr = w.meta.number;
  for (Finding& f : w.deep_findings) w.Add(std::move(f));
  for (auto& [key, set] : w.blocks) {
    const auto& [part, c, kind] = key;
    Finding f;
    f.kind = kind;
    f.part = part;
    f.chunk = c + 1;
    f.blocks.assign(set.begin(), set.end());
    const std::string ranges = FormatRanges(f.blocks);
    if (kind == "lost") {
      f.severity = kSevLost;
      f.where = fmt::format("{}/*/{}", nr, c + 1);
      f.detail = fmt::format(
          "data lost: {} block(s) without a good copy on a part that has every write: {}",
          f.blocks.size(), ranges);
      w.lost.insert(c);
    } else if (kind == "unknown") {
      f.where = fmt::format("{}/*/{}", nr, c + 1);
      f.detail =
          fmt::format("{} block(s) without a good copy in reach (a part is out of reach): {}",
                      f.blocks.size(), ranges);
    } else {
      const size_t p = static_cast<size_t>(part - 'a');
      f.where = w.Where(p, ChunkPath(nr, part, c));
      const char* what = kind == "corrupt" ? "fail their checksum"
                         : kind == "stale"
                             ? "hold an older generation than the other parts"
                             : "differ from another part's copy of the same generation";
      f.detail = fmt::format("{} block(s) {}: {}", f.blocks.size(), what, ranges);
    }
    w.Add(std::move(f));
  }
}

}  // namespace

int VolumeReport::Severity() const {
  int s = kSevNote;
  for (const Finding& f : findings) s = std::max(s, f.severity);
  return s;
}

std::string VolumeReport::Status() const {
  switch (Severity()) {
    case kSevNote:
      return "ok";
    case kSevDegraded:
      return "degraded";
    case kSevLost:
      return "data lost";
  }
  return "not checked";
}

int VerifyReport::ExitCode() const {
  int s = kSevNote;
  for (const Finding& f : findings) s = std::max(s, f.severity);
  for (const VolumeReport& v : volumes) s = std::max(s, v.Severity());
  return s;
}

Result<VerifyReport> Verify(Catalog& catalog, const VerifyOptions& options) {
  const auto start = SteadyClock::now();
  VerifyReport report;
  report.deep = options.deep;
  // .volumesmeta on every backend, judged as qbd-master judges it.
  ReplicatedText index_copies = catalog.ReadIndexCopies();
  for (const FileCopy& c : index_copies.copies()) ReportCopy(report.findings, 0, c, ".volumesmeta");
  VolumesIndex idx;
  const Status& iv = index_copies.verdict();
  if (!iv.ok() && !iv.IsNotFound()) {
    // Without a good majority there is no list of volumes to check.
    report.findings.push_back(Make("metadata", kSevNotChecked, 0, 0, kVolumesMetaPath,
                                   fmt::format("{}: qbd-master refuses to start; no volume was checked",
                                               Printable(iv.message(), 600))));
    report.seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
    return report;
  }
  if (iv.ok()) {
    QBD_ASSIGN_OR_RETURN(idx, ParseVolumesIndex(index_copies.text(),
                                                index_copies.copies()[index_copies.chosen()].where));
  }
  std::vector<std::pair<std::string, uint32_t>> wanted;
  if (options.volumes.empty()) {
    for (const auto& [name, nr] : idx.volumes) wanted.emplace_back(name, nr);
  } else {
    for (const std::string& name : options.volumes) {
      const uint32_t nr = idx.Find(name);
      if (nr == 0) return Status::NotFound(fmt::format("no volume named '{}'", name));
      wanted.emplace_back(name, nr);
    }
  }
  std::vector<std::unique_ptr<VolumeWork>> work;
  for (const auto& [name, nr] : wanted) {
    auto w = std::make_unique<VolumeWork>();
    w->report.name = name;
    w->report.number = nr;
    w->meta_copies = catalog.ReadMetaCopies(nr);
    auto meta = catalog.LoadMeta(nr);
    if (!meta.ok()) {
      for (size_t p = 0; p < w->meta_copies.copies().size(); ++p) {
        ReportCopy(w->report.findings, static_cast<char>('a' + p), w->meta_copies.copies()[p], ".meta");
      }
      w->report.findings.push_back(Make("metadata", kSevNotChecked, 0, 0, MetaPath(nr),
                                        Printable(meta.status().message(), 600)));
      report.volumes.push_back(std::move(w->report));
      continue;
    }
    w->meta = *meta;
    w->report.replicas = meta->replicas;
    w->backends = catalog.BackendsFor(*meta);
    QuickPass(*w, options.recheck_ms);
    work.push_back(std::move(w));
  }
  if (options.deep) DeepPass(work, options).Run();
  for (auto& w : work) {
    if (options.deep) SettleDeep(*w);
    bool all_unreachable = true;
    for (size_t p = 0; p < w->backends.size(); ++p)
      all_unreachable = all_unreachable && !w->Reachable(p);
    if (all_unreachable) {
      w->Add(Make("unreachable", kSevNotChecked, 0, 0, w->meta.name,
                  "no part of the volume can be reached"));
    }
    for (uint64_t c : w->lost) w->degraded.insert(c);
    w->report.degraded_chunks = w->degraded.size();
    w->report.lost_chunks = w->lost.size();
    report.bytes_read += w->report.bytes_read;
    std::stable_sort(w->report.findings.begin(), w->report.findings.end(),
                     [](const Finding& a, const Finding& b) {
                       return std::tie(a.chunk, a.part) < std::tie(b.chunk, b.part);
                     });
    report.volumes.push_back(std::move(w->report));
  }
  report.seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  return report;
}

std::string FormatReportText(const VerifyReport& r, bool only_problems) {
  std::string out;
  if (only_problems && r.ExitCode() == 0) return out;
  for (const Finding& f : r.findings) out += fmt::format("{}: {}: {}\n", f.kind, f.where, f.detail);
  int ok = 0, degraded = 0, lost = 0, unchecked = 0;
  for (const VolumeReport& v : r.volumes) {
    const int sev = v.Severity();
    (sev == kSevNote ? ok : sev == kSevDegraded ? degraded : sev == kSevLost ? lost : unchecked)++;
    if (only_problems && sev == kSevNote) continue;
    std::string status = v.Status();
    for (char& ch : status) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    out += fmt::format("volume {} ({}): {}: {} of {} chunks written, {} chunk files on {} parts",
                       v.name, v.number, status, v.written_chunks, v.chunks, v.chunk_files,
                       v.replicas);
    if (v.degraded_chunks > 0)
      out += fmt::format("; {} chunk(s) below {} good copies", v.degraded_chunks, v.replicas);
    if (v.lost_chunks > 0) out += fmt::format("; {} chunk(s) with data lost", v.lost_chunks);
    out += "\n";
    for (const Finding& f : v.findings) {
      std::string who = f.part ? fmt::format("part {}", f.part) : std::string("volume");
      if (f.chunk) who += fmt::format(" chunk {}", f.chunk);
      out += fmt::format("  {:<10} {}: {} ({})\n", f.kind, who, f.detail, f.where);
    }
  }
  out += fmt::format(
      "summary: {} volume(s), {} ok, {} degraded, {} with data lost{}; {} pass, {:.1f} s",
      r.volumes.size(), ok, degraded, lost,
      unchecked ? fmt::format(", {} not checked", unchecked) : "", r.deep ? "deep" : "quick",
      r.seconds);
  if (r.deep) {
    out += fmt::format(", {:.1f} MiB read ({:.0f} MB/s)", r.bytes_read / 1048576.0,
                       r.seconds > 0 ? r.bytes_read / 1e6 / r.seconds : 0.0);
  }
  out += fmt::format("; exit {}\n", r.ExitCode());
  return out;
}

std::string JsonString(std::string_view s) {
  // Valid UTF-8 always: bytes from damaged files that are not well-formed UTF-8 become "\\xNN".
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    const auto u = static_cast<unsigned char>(s[i]);
    const size_t len = Utf8SequenceAt(s, i);
    if (u == '"' || u == '\\') {
      out += '\\';
      out += static_cast<char>(u);
    } else if (u < 0x20 || u == 0x7f) {
      out += fmt::format("\\u{:04x}", u);
    } else if (len == 0) {
      out += fmt::format("\\\\x{:02x}", u);
    } else {
      out.append(s.substr(i, len));
      i += len;
      continue;
    }
    ++i;
  }
  return out + "\"";
}

namespace {

std::string FindingJson(const Finding& f) {
  std::string blocks;
  for (uint64_t b : f.blocks) blocks += fmt::format("{}{}", blocks.empty() ? "" : ",", b);
  return fmt::format(
      R"({{"kind":{},"severity":{},"part":{},"chunk":{},"blocks":[{}],"where":{},"detail":{}}})",
      JsonString(f.kind), f.severity, f.part ? JsonString(std::string(1, f.part)) : "null",
      f.chunk ? std::to_string(f.chunk) : "null", blocks, JsonString(f.where),
      JsonString(f.detail));
}

}  // namespace

std::string FormatReportJson(const VerifyReport& r) {
  std::string out =
      fmt::format(R"({{"mode":{},"exit":{},"seconds":{:.3f},"bytes_read":{},"findings":[)",
                  JsonString(r.deep ? "deep" : "quick"), r.ExitCode(), r.seconds, r.bytes_read);
  for (size_t i = 0; i < r.findings.size(); ++i) out += (i ? "," : "") + FindingJson(r.findings[i]);
  out += "],\"volumes\":[";
  for (size_t k = 0; k < r.volumes.size(); ++k) {
    const VolumeReport& v = r.volumes[k];
    out += fmt::format(
        R"({}{{"name":{},"number":{},"status":{},"replicas":{},"chunks":{},"written_chunks":{},"chunk_files":{},)"
        R"("degraded_chunks":{},"lost_chunks":{},"bytes_read":{},"findings":[)",
        k ? "," : "", JsonString(v.name), v.number, JsonString(v.Status()), v.replicas, v.chunks,
        v.written_chunks, v.chunk_files, v.degraded_chunks, v.lost_chunks, v.bytes_read);
    for (size_t i = 0; i < v.findings.size(); ++i)
      out += (i ? "," : "") + FindingJson(v.findings[i]);
    out += "]}";
  }
  return out + "]}\n";
}

}  // namespace qbd
