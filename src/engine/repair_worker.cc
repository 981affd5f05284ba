// RepairWorker (repair_worker.h): resync, reconcile, the first-access comparisons and the judged
// reads of chunks not compared yet, and the background thread. Chunk repair is in chunk_repair.cc.
#include "engine/repair_worker.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <optional>

#include "common/thread_pool.h"
#include "engine/part_health.h"
#include "engine/redundancy.h"
#include "engine/replicated_maps.h"
#include "engine/sequencer.h"
#include "qbd/log.h"
#include "qbd/scrub.h"

namespace qbd {

using RegionGuard = Sequencer::RegionGuard;

RepairWorker::RepairWorker(Pieces pieces) : p_(std::move(pieces)) {
  const size_t np = p_.stores.size();
  chunk_compared_ = std::vector<std::atomic<uint32_t>>(ChunkCount());
  chunk_compare_queued_ = std::vector<std::atomic<uint8_t>>(ChunkCount());
  for (size_t c = 0; c < chunk_compared_.size(); ++c) {
    if (p_.options.compare_on_first_access && np > 1 && p_.maps.ChunkWritten(c)) {
      to_reconcile_.fetch_add(1);
    } else {
      chunk_compared_[c].store(~0u);  // never written: nothing can differ
    }
  }
  lost_regions_.resize(np);
  scan_pool_ = std::make_unique<ThreadPool>(static_cast<int>(np));
}

RepairWorker::~RepairWorker() {
  Stop();
  scan_pool_.reset();
}

void RepairWorker::Start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
}

void RepairWorker::Stop() {
  {
    std::lock_guard<std::mutex> l(resync_mu_);
    stop_ = true;
  }
  resync_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void RepairWorker::Wake() {
  {
    std::lock_guard<std::mutex> l(resync_mu_);
    wake_ = true;
  }
  resync_cv_.notify_one();
}

bool RepairWorker::Stopping() {
  std::lock_guard<std::mutex> l(resync_mu_);
  return stop_;
}

uint64_t RepairWorker::ChunkCount() const {
  return (Size() + p_.options.geometry.chunk_size - 1) / p_.options.geometry.chunk_size;
}

uint64_t RepairWorker::RegionOf(uint64_t chunk, uint64_t block_in_chunk) const {
  return (chunk * p_.options.geometry.chunk_size +
          block_in_chunk * p_.options.geometry.block_size) /
         p_.region_size;
}

void RepairWorker::MarkForRepair(int p, uint64_t r0, uint64_t r1, std::string_view why) {
  p_.maps.MarkDirty(p, r0, r1, /*durable=*/false, why).IgnoreError();  // repaired by resync
}

void RepairWorker::ReconcileRange(uint64_t r0, uint64_t r1) {
  const Geometry& g = p_.options.geometry;
  for (uint64_t r = r0; r <= r1; ++r) {
    if (!p_.redundancy.PlanRead(r, r, -1).empty()) continue;
    bool all_dirty = true;
    for (size_t q = 0; q < p_.stores.size(); ++q) all_dirty = all_dirty && p_.maps.dirty(q).Test(r);
    if (!all_dirty) continue;  // a clean copy is on a part that is down: the caller's read fails
    const uint64_t start = r * p_.region_size;
    const uint64_t end = std::min<uint64_t>(start + p_.region_size, Size());
    ReconcileRegion(r, start / g.chunk_size, (start % g.chunk_size) / g.block_size,
                    (end - start + g.block_size - 1) / g.block_size);
  }
}

void RepairWorker::Grow(uint64_t chunks) {
  std::vector<std::atomic<uint32_t>> compared(chunks);
  for (size_t c = 0; c < compared.size(); ++c) {
    compared[c].store(c < chunk_compared_.size() ? chunk_compared_[c].load()
                                                 : ~0u);  // new: unwritten
  }
  chunk_compared_.swap(compared);
  std::vector<std::atomic<uint8_t>> queued(chunks);
  for (size_t c = 0; c < chunk_compare_queued_.size(); ++c)
    queued[c].store(chunk_compare_queued_[c].load());
  chunk_compare_queued_.swap(queued);
}

void RepairWorker::Loop() {
  std::unique_lock<std::mutex> l(resync_mu_);
  while (!stop_) {
    resync_cv_.wait_for(l, std::chrono::milliseconds(p_.options.resync_interval_ms),
                        [this] { return stop_ || wake_; });
    if (stop_) break;
    wake_ = false;
    l.unlock();
    if (!p_.options.background_writes_allowed || p_.options.background_writes_allowed()) {
      ResyncOnce();
      CompareQueued();
    }
    l.lock();
  }
}

uint64_t RepairWorker::ResyncOnce() {
  std::shared_lock<std::shared_mutex> rl(p_.resize_mu);
  // Map copies that missed updates while their part was out of reach or out of space.
  p_.maps.CatchUp();
  uint64_t repaired = 0;
  for (size_t i = 0; i < p_.stores.size(); ++i) {
    const char name = p_.stores[i]->part();
    if (!p_.health.Reachable(i)) {
      ProbePart(i);  // back: its dirty regions are copied from the next round on
      continue;
    }
    // Copies go out unsynced, in batches of kResyncBatch regions that share one sync (a sync
    // per 64 KiB region made NFS resync ten times slower); a batch is cleared after its sync.
    constexpr size_t kResyncBatch = 64;
    uint64_t before = p_.maps.dirty(i).CountSet();
    uint64_t done = 0;
    std::vector<uint64_t> pending;
    uint64_t marks = p_.maps.marks(i);
    for (auto r = p_.maps.dirty(i).NextSet(0); r && p_.health.Reachable(i);
         r = p_.maps.dirty(i).NextSet(*r + 1)) {
      if (Stopping()) break;
      {
        std::lock_guard<std::mutex> l(lost_mu_);
        if (lost_regions_[i].count(*r)) continue;
      }
      if (ResyncRegion(static_cast<int>(i), *r, pending)) ++done;  // reconciled in place
      if (pending.size() >= kResyncBatch) {
        done += SettleResynced(static_cast<int>(i), marks, pending);
        marks = p_.maps.marks(i);
      }
    }
    if (!pending.empty()) done += SettleResynced(static_cast<int>(i), marks, pending);
    if (Stopping()) return repaired + done;
    repaired += done;
    if (done > 0) {
      QBD_LOG_INFO("volume {} part {}: resynced {} regions ({} bytes); {} still dirty",
                   p_.options.volume, name, done, done * p_.region_size,
                   p_.maps.dirty(i).CountSet());
    }
    if (p_.maps.dirty(i).CountSet() == 0 && p_.health.MarkInSync(i)) {
      QBD_LOG_INFO("volume {} part {}: state up: in sync ({} regions copied since it came back)",
                   p_.options.volume, name, before);
    }
  }
  return repaired;
}

// See quorum.h: the copy goes to `pending`; true only when reconciled (and cleared) here.
bool RepairWorker::ResyncRegion(int p, uint64_t region, std::vector<uint64_t>& pending) {
  const Geometry& g = p_.options.geometry;
  const uint64_t bs = g.block_size;
  const uint64_t start = region * p_.region_size;
  if (start >= Size()) {
    p_.maps.ClearDirty(p, region);
    return false;
  }
  const uint64_t end = std::min<uint64_t>(start + p_.region_size, Size());
  const uint64_t chunk = start / g.chunk_size;
  const uint64_t first = (start % g.chunk_size) / bs;
  const uint64_t n = (end - start + bs - 1) / bs;
  std::optional<RegionGuard> guard(std::in_place, p_.seq, region, region);
  std::vector<int> order = p_.redundancy.PlanRead(region, region, p);
  if (order.empty()) {
    bool all_dirty = true;
    for (size_t q = 0; q < p_.stores.size(); ++q)
      all_dirty = all_dirty && p_.maps.dirty(q).Test(region);
    if (!all_dirty) return false;  // a clean copy is on a part that is down: wait for it
    return ReconcileRegion(region, chunk, first, n);
  }
  std::vector<std::byte> data(n * bs);
  std::vector<BlockMeta> metas(n);
  Status s = p_.read_blocks(order, chunk, first, data, metas);
  PartStore& target = *p_.stores[p];
  if (!s.ok()) {
    // The region stays dirty on this part: its copy is stale and must never be served. Without a
    // good source anywhere it is not retried until a repair of the chunk (the admin's act).
    if (s.IsCorruption()) {
      std::lock_guard<std::mutex> l(lost_mu_);
      lost_regions_[p].insert(region);
    }
    QBD_LOG_ERROR(
        "resync: volume {} part {} chunk {} region {}: no good source copy: {}; left dirty",
        p_.options.volume, target.part(), chunk + 1, region, s.ToString());
    return false;
  }
  bool all_unwritten =
      std::all_of(metas.begin(), metas.end(), [](const BlockMeta& m) { return m.IsUnwritten(); });
  Status w;
  // A short file (damage) gets its full size back from the write below, and the rest of its
  // chunk is then missing on this part though no dirty bit says so: resynced too. (A file that
  // is absent is created: its written regions are dirty already.)
  auto state = target.CheckChunk(chunk);
  const bool was_short = state.ok() && *state == PartStore::ChunkState::kShort;
  bool created = false;
  if (all_unwritten) {
    w = target.Unwrite(chunk, first, n, /*sync=*/false, &created);
  } else {
    w = target.Write(chunk, first, data, metas, /*sync=*/false, &created);
  }
  if (!w.ok()) {
    QBD_LOG_WARN("resync: volume {} part {} chunk {}: {}", p_.options.volume, target.part(),
                 chunk + 1, w.ToString());
    p_.metrics.parts[p].errors->Increment();
    p_.health.MarkDown(p, w);
    return false;
  }
  if (was_short) {
    // Only the regions not dirty already: a read that found the file short marked the chunk.
    for (uint64_t r = RegionOf(chunk, 0); r <= RegionOf(chunk, p_.options.geometry.BlocksPerChunk() - 1); ++r) {
      if (r != region && !p_.maps.dirty(p).Test(r)) MarkForRepair(p, r, r, "short chunk file restored during resync");
    }
  }
  pending.push_back(region);  // cleared by SettleResynced once synced
  if (p_.options.resync_bytes_per_sec > 0) {
    // Throttle: each region's share of a second, slept without holding its lock.
    guard.reset();
    std::unique_lock<std::mutex> l(resync_mu_);
    resync_cv_.wait_for(
        l, std::chrono::microseconds((end - start) * 1000000 / p_.options.resync_bytes_per_sec),
        [this] { return stop_; });
  }
  return false;  // counted once SettleResynced cleared it
}

uint64_t RepairWorker::SettleResynced(int p, uint64_t marks_before,
                                      std::vector<uint64_t>& pending) {
  std::vector<uint64_t> failed;
  Status s = p_.stores[p]->Flush(&failed);
  if (!s.ok()) {
    FlushFailed(p, s, failed);  // the batch stays dirty too: copied again when the part is back
    pending.clear();
    return 0;
  }
  const uint64_t start_size = Size();
  uint64_t cleared = 0;
  for (uint64_t region : pending) {
    // Under the region's lock no write is in flight there; a region marked dirty again since the
    // batch began (a write that missed this part, a repair) stays dirty and is copied again.
    RegionGuard guard(p_.seq, region, region);
    if (p_.maps.marks(p) != marks_before) break;
    p_.maps.ClearDirty(p, region);
    ++cleared;
    const uint64_t start = region * p_.region_size;
    p_.counters.resynced_regions.fetch_add(1);
    const uint64_t bytes = std::min<uint64_t>(start + p_.region_size, start_size) - start;
    p_.counters.resynced_bytes.fetch_add(bytes);
    p_.metrics.parts[p].resync_bytes->Increment(static_cast<double>(bytes));
  }
  pending.clear();
  return cleared;
}

// Every up part is dirty in the region (several outages, or a crash between parts): no copy is
// known good, so the judge (JudgeCopies, every part dirty) takes each block's newest trusted good
// copy, written to every part that differs. A block with no good copy is left as it is on every
// part (its reads keep failing, verify keeps reporting it). The bits are cleared where the copies
// now agree; with a part out of reach they stay. REQUIRES: the region lock is held.
bool RepairWorker::ReconcileRegion(uint64_t region, uint64_t chunk, uint64_t first, uint64_t n) {
  const uint64_t bs = p_.options.geometry.block_size;
  const size_t np = p_.stores.size();
  std::vector<std::vector<std::byte>> data(np, std::vector<std::byte>(n * bs));
  std::vector<PartCopy> copies(np);
  for (size_t i = 0; i < np; ++i) {
    PartCopy& c = copies[i];
    c.dirty.assign(n, 1);
    if (!p_.health.Readable(i)) {
      c = UnreachableCopy(Status::Unavailable("part down"));
      c.dirty.assign(n, 1);
      continue;
    }
    c.metas.resize(n);
    std::vector<uint64_t> bad;
    Status s = p_.stores[i]->Read(chunk, first, data[i], c.metas, &bad);
    if (s.IsNotFound()) {
      c.state = CopyState::kAbsent;
      continue;
    }
    if (!s.ok() && bad.empty()) {
      c.state = CopyState::kUnreadable;
      c.error = s;
      continue;
    }
    c.state = CopyState::kPresent;
    c.good.assign(n, 1);
    for (uint64_t b : bad) c.good[b - first] = 0;
  }
  const SliceVerdict v =
      p_.redundancy.Judge(copies, p_.maps.ChunkWritten(chunk), p_.seq.MaxGeneration());
  std::vector<std::byte> best(n * bs);
  std::vector<BlockMeta> best_meta(n);
  bool undecided = false;
  for (uint64_t b = 0; b < n; ++b) {
    const int src = v.source[b];
    if (src < 0) {
      undecided = undecided || v.unknown[b];
      if (v.lost[b]) {
        QBD_LOG_ERROR(
            "resync: volume {} chunk {} block {}: no good copy on any part: data lost, left as it "
            "is",
            p_.options.volume, chunk + 1, first + b);
      }
      continue;
    }
    std::memcpy(best.data() + b * bs, data[src].data() + b * bs, bs);
    best_meta[b] = copies[src].metas[b];
  }
  bool all_ok = true;
  for (size_t i = 0; i < np; ++i) {
    if (!p_.health.Readable(i)) continue;
    bool needs_write = false;
    for (uint64_t b = 0; b < n; ++b) needs_write = needs_write || (v.source[b] >= 0 && v.issue[i][b] != BlockIssue::kNone);
    if (needs_write && !p_.health.Reachable(i)) {
      all_ok = false;  // out of space: its copy stays dirty until it is back
      continue;
    }
    Status w;
    // Runs of blocks that this part gets from the judged source.
    for (uint64_t b = 0; b < n && w.ok();) {
      if (v.source[b] < 0 || v.issue[i][b] == BlockIssue::kNone) {
        ++b;
        continue;
      }
      uint64_t e = b + 1;
      while (e < n && v.source[e] >= 0 && v.issue[i][e] != BlockIssue::kNone) ++e;
      bool created = false;
      w = p_.stores[i]->Write(chunk, first + b, std::span(best).subspan(b * bs, (e - b) * bs),
                              std::span(best_meta).subspan(b, e - b), /*sync=*/true, &created);
      b = e;
    }
    if (!w.ok()) {
      p_.metrics.parts[static_cast<size_t>(i)].errors->Increment();
      p_.health.MarkDown(static_cast<int>(i), w);
      all_ok = false;
      continue;
    }
    if (!undecided) p_.maps.ClearDirty(static_cast<int>(i), region);
  }
  QBD_LOG_INFO(
      "resync: volume {} region {} (chunk {}) was dirty on every part: reconciled by the newest "
      "good copy",
      p_.options.volume, region, chunk + 1);
  p_.counters.resynced_regions.fetch_add(1);
  return all_ok && !undecided;
}

// See quorum.h. The whole chunk stays locked from the first read to the last write: a rebuilt
// file replaces the old one under its name, so no client write may land in between.
Result<ChunkRepairReport> RepairWorker::RepairChunk(uint64_t chunk, const RepairOptions& o) {
  std::shared_lock<std::shared_mutex> rl(p_.resize_mu);
  // A part that is down may be back (qbd-repair has just recreated a replaced part's directory):
  // look now rather than at the next resync round, so that it is repaired too.
  for (size_t i = 0; i < p_.stores.size(); ++i) ProbePart(i);
  return RepairChunkLocked(chunk, o);
}

bool RepairWorker::Compared(uint64_t chunk) const {
  return chunk >= chunk_compared_.size() ||
         (p_.health.ReachableMask() & ~chunk_compared_[chunk].load(std::memory_order_acquire)) == 0;
}

void RepairWorker::QueueCompare(uint64_t chunk) {
  if (chunk >= chunk_compare_queued_.size() || chunk_compare_queued_[chunk].exchange(1)) return;
  {
    std::lock_guard<std::mutex> l(compare_mu_);
    compare_queue_.push_back(chunk);
  }
  Wake();
}

uint64_t RepairWorker::CompareQueued() {
  std::shared_lock<std::shared_mutex> rl(p_.resize_mu);
  uint64_t done = 0;
  for (;;) {
    std::vector<uint64_t> batch;
    {
      std::lock_guard<std::mutex> l(compare_mu_);
      batch.swap(compare_queue_);
    }
    if (batch.empty()) return done;
    for (size_t i = 0; i < batch.size(); ++i) {
      const uint64_t chunk = batch[i];
      if (Stopping()) {
        // Not compared: queued again (reads stay judged).
        std::lock_guard<std::mutex> l(compare_mu_);
        compare_queue_.insert(compare_queue_.end(), batch.begin() + i, batch.end());
        return done;
      }
      if (chunk < chunk_compare_queued_.size()) chunk_compare_queued_[chunk].store(0);
      const uint64_t read = CompareChunk(chunk);
      ++done;
      if (p_.options.compare_bytes_per_sec > 0 && read > 0) {
        // Throttle: this chunk's share of a second, without holding any lock.
        std::unique_lock<std::mutex> l(resync_mu_);
        resync_cv_.wait_for(
            l, std::chrono::microseconds(read * 1000000 / p_.options.compare_bytes_per_sec),
            [this] { return stop_; });
      }
    }
  }
}

// One chunk's copies on every part in reach, judged (JudgeCopies) and repaired where stale or
// damaged: what the first access after a start sets off. REQUIRES: resize lock held (shared).
uint64_t RepairWorker::CompareChunk(uint64_t chunk) {
  if (chunk >= chunk_compared_.size()) return 0;
  std::lock_guard<std::mutex> cl(compare_locks_[chunk % compare_locks_.size()]);
  const uint32_t want = p_.health.ReachableMask();
  if ((want & ~chunk_compared_[chunk].load(std::memory_order_acquire)) == 0)
    return 0;  // another thread did it
  auto r = RepairChunkLocked(chunk, RepairOptions{});
  if (!r.ok()) {
    QBD_LOG_WARN("volume {} chunk {}: comparing the copies at first access failed: {}",
                 p_.options.volume, chunk + 1, r.status().ToString());
    return 0;  // compared again at the next access
  }
  if (!r->actions.empty()) {
    QBD_LOG_WARN("volume {} chunk {}: copies made to agree at first access{} ({} action(s))",
                 p_.options.volume, chunk + 1,
                 p_.options.after_crash ? " after an unclean shutdown" : "", r->actions.size());
  }
  uint32_t done = want;
  for (const RepairAction& a : r->actions) {
    if (!a.error.empty()) done &= ~(1u << (a.target - 'a'));  // that copy is compared again later
  }
  const uint32_t before = chunk_compared_[chunk].fetch_or(done);
  if (before == 0 && done != 0 && to_reconcile_.fetch_sub(1) == 1) {
    QBD_LOG_INFO("volume {}: every written chunk compared since the start", p_.options.volume);
  }
  return r->bytes_read;
}

// Blocks [first, first + n) of a chunk not compared yet: every part in reach is read (side by
// side) and the judge picks each block's copy, so a stale or damaged copy is never served
// while the whole chunk waits for its comparison. Lost blocks: Corruption; unknown: Unavailable.
Status RepairWorker::ReadJudged(uint64_t chunk, uint64_t first, std::span<std::byte> data,
                                std::span<BlockMeta> metas) {
  const Geometry& g = p_.options.geometry;
  const uint64_t n = metas.size(), bs = g.block_size, rec = g.RecordSize();
  const size_t np = p_.stores.size();
  thread_local std::vector<PartCopy> tls_copies;
  std::vector<PartCopy>& copies = tls_copies;  // a reference: the pool's tasks fill this thread's
  copies.resize(np);
  std::vector<std::function<void()>> reads;
  for (size_t p = 0; p < np; ++p) {
    if (p_.health.Readable(p)) {
      reads.emplace_back([&, p] {
        ReadCopyInto(copies[p], p_.stores[p]->backend(), p_.options.volnr, p_.stores[p]->part(), g,
                     chunk, first, n);
      });
    } else {
      copies[p] = UnreachableCopy(Status::Unavailable("part down"));
    }
  }
  p_.request_pool.RunAll(reads);
  for (size_t p = 0; p < np; ++p) {
    copies[p].dirty.resize(n);
    for (uint64_t b = 0; b < n; ++b)
      copies[p].dirty[b] = p_.maps.dirty(p).Test(RegionOf(chunk, first + b));
  }
  const bool written = p_.maps.ChunkWritten(chunk);
  if (written && std::none_of(copies.begin(), copies.end(), [](const PartCopy& c) {
        return c.state != CopyState::kAbsent && c.state != CopyState::kUnreachable;
      })) {
    QBD_LOG_ERROR(
        "volume {} chunk {}: written (chunk map) but its file is missing on every part in reach: "
        "data lost",
        p_.options.volume, chunk + 1);
    return Status::IOError(
        fmt::format("volume {} chunk {}: chunk file missing on every part in reach",
                    p_.options.volume, chunk + 1),
        EIO);
  }
  const SliceVerdict v = p_.redundancy.Judge(copies, written, p_.seq.MaxGeneration());
  for (uint64_t b = 0; b < n; ++b) {
    const int src = v.source[b];
    if (src >= 0) {
      std::memcpy(data.data() + b * bs, copies[src].records.data() + b * rec, bs);
      metas[b] = copies[src].metas[b];
      continue;
    }
    if (v.lost[b]) {
      QBD_LOG_ERROR("volume {} chunk {} block {}: no good copy on any part: data lost",
                    p_.options.volume, chunk + 1, first + b);
      return Status::Corruption(fmt::format("volume {} chunk {} block {}: no good copy on any part",
                                            p_.options.volume, chunk + 1, first + b));
    }
    if (v.unknown[b]) {
      return Status::Unavailable(
          fmt::format("volume {} chunk {} block {}: no good copy on a part in reach",
                      p_.options.volume, chunk + 1, first + b));
    }
    // Never written (no file anywhere): zeros.
    std::memset(data.data() + b * bs, 0, bs);
    metas[b] = BlockMeta{};
  }
  return Status::OK();
}

void RepairWorker::FlushFailed(int p, const Status& why, const std::vector<uint64_t>& chunks) {
  // A failed sync may have lost any write to those chunks since their last good sync (an NFS
  // server that restarted drops its uncommitted writes): they are resynced from the others.
  p_.metrics.parts[p].errors->Increment();
  p_.health.MarkDown(p, why);
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  if (chunks.empty()) {
    QBD_LOG_ERROR("volume {} part {}: flush failed: {}; the whole part will be resynced",
                  p_.options.volume, p_.stores[p]->part(), why.ToString());
    ranges.emplace_back(0, (Size() + p_.region_size - 1) / p_.region_size - 1);
  } else {
    QBD_LOG_ERROR(
        "volume {} part {}: flush failed: {}; {} chunk(s) written since their last sync will be "
        "resynced",
        p_.options.volume, p_.stores[p]->part(), why.ToString(), chunks.size());
    const uint64_t last_block = p_.options.geometry.BlocksPerChunk() - 1;
    for (uint64_t c : chunks) ranges.emplace_back(RegionOf(c, 0), RegionOf(c, last_block));
  }
  bool recorded = true;
  for (const auto& [r0, r1] : ranges) {
    Status m = p_.maps.MarkDirty(p, r0, r1, /*durable=*/true, "flush failed");
    if (!m.ok()) QBD_LOG_ERROR("volume {}: {}", p_.options.volume, m.ToString());
    recorded = recorded && m.ok();
  }
  // Recorded dirty, those chunks come back through resync: their handles are dropped rather than
  // synced again. A second sync of the same handle proves nothing (after a failed fsync the kernel
  // may have dropped the pages; an NFS server that lost them fails every later COMMIT of the
  // handle too, bringing the part down again and resyncing the same regions once more).
  if (recorded) {
    for (uint64_t c : chunks) p_.stores[p]->DropReplaced(c, /*same_file=*/true);
  }
}

bool RepairWorker::ProbePart(size_t i) {
  return p_.health.ProbePart(i, [this, i] {
    QBD_LOG_INFO(
        "volume {} part {}: state resyncing: backend reachable again; {} dirty regions ({} bytes) "
        "to copy",
        p_.options.volume, p_.stores[i]->part(), p_.maps.dirty(i).CountSet(),
        p_.maps.dirty(i).CountSet() * p_.region_size);
    Wake();
  });
}

}  // namespace qbd
