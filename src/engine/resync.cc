// Part of the replication engine (include/qbd/quorum.h): resync (dirty regions copied back from a clean part, regions dirty
// on every part reconciled by the judge) and the background thread that runs it.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <optional>

#include "common/thread_pool.h"
#include "engine/part_health.h"
#include "engine/redundancy.h"
#include "engine/replicated_maps.h"
#include "engine/sequencer.h"
#include "qbd/log.h"
#include "qbd/quorum.h"
#include "qbd/scrub.h"

namespace qbd {

using RegionGuard = Sequencer::RegionGuard;

void QuorumSet::WakeResync() {
  {
    std::lock_guard<std::mutex> l(resync_mu_);
    resync_wake_ = true;
  }
  resync_cv_.notify_one();
}

void QuorumSet::ResyncLoop() {
  std::unique_lock<std::mutex> l(resync_mu_);
  while (!resync_stop_) {
    resync_cv_.wait_for(l, std::chrono::milliseconds(options_.resync_interval_ms),
                        [this] { return resync_stop_ || resync_wake_; });
    if (resync_stop_) break;
    resync_wake_ = false;
    l.unlock();
    if (!options_.background_writes_allowed || options_.background_writes_allowed()) {
      ResyncOnce();
      CompareQueued();
    }
    l.lock();
  }
}

uint64_t QuorumSet::ResyncOnce() {
  std::shared_lock<std::shared_mutex> rl(resize_mu_);
  uint64_t repaired = 0;
  for (size_t i = 0; i < parts_.size(); ++i) {
    Part& p = *parts_[i];
    if (!Reachable(i)) {
      ProbePart(i);  // back: its dirty regions are copied from the next round on
      continue;
    }
    // Copies go out unsynced, in batches of kResyncBatch regions that share one sync (a sync
    // per 64 KiB region made NFS resync ten times slower); a batch is cleared after its sync.
    constexpr size_t kResyncBatch = 64;
    uint64_t before = maps_->dirty(i).CountSet();
    uint64_t done = 0;
    std::vector<uint64_t> pending;
    uint64_t marks = maps_->marks(i);
    for (auto r = maps_->dirty(i).NextSet(0); r && Reachable(i); r = maps_->dirty(i).NextSet(*r + 1)) {
      {
        std::lock_guard<std::mutex> l(resync_mu_);
        if (resync_stop_) break;
      }
      {
        std::lock_guard<std::mutex> l(lost_mu_);
        if (lost_regions_[i].count(*r)) continue;
      }
      if (ResyncRegion(static_cast<int>(i), *r, pending)) ++done;  // reconciled in place
      if (pending.size() >= kResyncBatch) {
        done += SettleResynced(static_cast<int>(i), marks, pending);
        marks = maps_->marks(i);
      }
    }
    if (!pending.empty()) done += SettleResynced(static_cast<int>(i), marks, pending);
    {
      std::lock_guard<std::mutex> l(resync_mu_);
      if (resync_stop_) return repaired + done;
    }
    repaired += done;
    if (done > 0) {
      QBD_LOG_INFO("volume {} part {}: resynced {} regions ({} bytes); {} still dirty", options_.volume,
                   p.store->part(), done, done * region_size_, maps_->dirty(i).CountSet());
    }
    if (maps_->dirty(i).CountSet() == 0 && health_->MarkInSync(i)) {
      QBD_LOG_INFO("volume {} part {}: state up: in sync ({} regions copied since it came back)", options_.volume,
                   p.store->part(), before);
    }
  }
  return repaired;
}

// See quorum.h: the copy goes to `pending`; true only when reconciled (and cleared) here.
bool QuorumSet::ResyncRegion(int p, uint64_t region, std::vector<uint64_t>& pending) {
  const Geometry& g = options_.geometry;
  const uint64_t bs = g.block_size;
  const uint64_t start = region * region_size_;
  if (start >= Size()) {
    ClearDirty(p, region);
    return false;
  }
  const uint64_t end = std::min<uint64_t>(start + region_size_, Size());
  const uint64_t chunk = start / g.chunk_size;
  const uint64_t first = (start % g.chunk_size) / bs;
  const uint64_t n = (end - start + bs - 1) / bs;
  std::optional<RegionGuard> guard(std::in_place, *seq_, region, region);
  std::vector<int> order = ReadOrder(region, region, p);
  if (order.empty()) {
    bool all_dirty = true;
    for (size_t q = 0; q < parts_.size(); ++q) all_dirty = all_dirty && maps_->dirty(q).Test(region);
    if (!all_dirty) return false;  // a clean copy is on a part that is down: wait for it
    return ReconcileRegion(region, chunk, first, n);
  }
  std::vector<std::byte> data(n * bs);
  std::vector<BlockMeta> metas(n);
  Status s = ReadBlocks(order, chunk, first, data, metas, /*locked=*/true);
  Part& target = *parts_[p];
  if (!s.ok()) {
    // The region stays dirty on this part: its copy is stale and must never be served. Without a
    // good source anywhere it is not retried until a repair of the chunk (the admin's act).
    if (s.IsCorruption()) {
      std::lock_guard<std::mutex> l(lost_mu_);
      lost_regions_[p].insert(region);
    }
    QBD_LOG_ERROR("resync: volume {} part {} chunk {} region {}: no good source copy: {}; left dirty", options_.volume,
                  target.store->part(), chunk + 1, region, s.ToString());
    return false;
  }
  bool all_unwritten = std::all_of(metas.begin(), metas.end(), [](const BlockMeta& m) { return m.IsUnwritten(); });
  Status w;
  if (all_unwritten) {
    bool rebuilt = false;
    w = target.store->Unwrite(chunk, first, n, /*sync=*/false, &rebuilt);
  } else {
    bool created = false;
    w = target.store->Write(chunk, first, data, metas, /*sync=*/false, &created);
  }
  if (!w.ok()) {
    QBD_LOG_WARN("resync: volume {} part {} chunk {}: {}", options_.volume, target.store->part(), chunk + 1,
                 w.ToString());
    MarkDown(p, w);
    return false;
  }
  pending.push_back(region);  // cleared by SettleResynced once synced
  if (options_.resync_bytes_per_sec > 0) {
    // Throttle: each region's share of a second, slept without holding its lock.
    guard.reset();
    std::unique_lock<std::mutex> l(resync_mu_);
    resync_cv_.wait_for(l, std::chrono::microseconds((end - start) * 1000000 / options_.resync_bytes_per_sec),
                        [this] { return resync_stop_; });
  }
  return false;  // counted once SettleResynced cleared it
}

uint64_t QuorumSet::SettleResynced(int p, uint64_t marks_before, std::vector<uint64_t>& pending) {
  Part& part = *parts_[p];
  std::vector<uint64_t> failed;
  Status s = part.store->Flush(&failed);
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
    RegionGuard guard(*seq_, region, region);
    if (maps_->marks(p) != marks_before) break;
    ClearDirty(p, region);
    ++cleared;
    const uint64_t start = region * region_size_;
    counters_.resynced_regions.fetch_add(1);
    counters_.resynced_bytes.fetch_add(std::min<uint64_t>(start + region_size_, start_size) - start);
  }
  pending.clear();
  return cleared;
}

// Every up part is dirty in the region (several outages, or a crash between parts): no copy is
// known good, so the judge (JudgeCopies, every part dirty) takes each block's newest trusted good
// copy, written to every part that differs. A block with no good copy is left as it is on every
// part (its reads keep failing, verify keeps reporting it). The bits are cleared where the copies
// now agree; with a part out of reach they stay. REQUIRES: the region lock is held.
bool QuorumSet::ReconcileRegion(uint64_t region, uint64_t chunk, uint64_t first, uint64_t n) {
  const uint64_t bs = options_.geometry.block_size;
  const size_t np = parts_.size();
  std::vector<std::vector<std::byte>> data(np, std::vector<std::byte>(n * bs));
  std::vector<PartCopy> copies(np);
  for (size_t i = 0; i < np; ++i) {
    PartCopy& c = copies[i];
    c.dirty.assign(n, 1);
    if (!Reachable(i)) {
      c = UnreachableCopy(Status::Unavailable("part down"));
      c.dirty.assign(n, 1);
      continue;
    }
    c.metas.resize(n);
    std::vector<uint64_t> bad;
    Status s = parts_[i]->store->Read(chunk, first, data[i], c.metas, &bad);
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
  const SliceVerdict v = redundancy_->Judge(copies, ChunkWritten(chunk), MaxGeneration());
  std::vector<std::byte> best(n * bs);
  std::vector<BlockMeta> best_meta(n);
  bool undecided = false;
  for (uint64_t b = 0; b < n; ++b) {
    const int src = v.source[b];
    if (src < 0) {
      undecided = undecided || v.unknown[b];
      if (v.lost[b]) {
        QBD_LOG_ERROR("resync: volume {} chunk {} block {}: no good copy on any part: data lost, left as it is",
                      options_.volume, chunk + 1, first + b);
      }
      continue;
    }
    std::memcpy(best.data() + b * bs, data[src].data() + b * bs, bs);
    best_meta[b] = copies[src].metas[b];
  }
  bool all_ok = true;
  for (size_t i = 0; i < np; ++i) {
    if (!Reachable(i)) continue;
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
      w = parts_[i]->store->Write(chunk, first + b, std::span(best).subspan(b * bs, (e - b) * bs),
                                  std::span(best_meta).subspan(b, e - b), /*sync=*/true, &created);
      b = e;
    }
    if (!w.ok()) {
      MarkDown(static_cast<int>(i), w);
      all_ok = false;
      continue;
    }
    if (!undecided) ClearDirty(static_cast<int>(i), region);
  }
  QBD_LOG_INFO("resync: volume {} region {} (chunk {}) was dirty on every part: reconciled by the newest good copy",
               options_.volume, region, chunk + 1);
  counters_.resynced_regions.fetch_add(1);
  return all_ok && !undecided;
}

}  // namespace qbd

