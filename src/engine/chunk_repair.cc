// Part of the replication engine (include/qbd/quorum.h): chunk repair (RepairChunk, qbd-repair's and the first-access
// comparison's) and the judged reads of chunks not compared yet.
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

// See quorum.h. The whole chunk stays locked from the first read to the last write: a rebuilt
// file replaces the old one under its name, so no client write may land in between.
Result<ChunkRepairReport> QuorumSet::RepairChunk(uint64_t chunk, const RepairOptions& o) {
  std::shared_lock<std::shared_mutex> rl(resize_mu_);
  // A part that is down may be back (qbd-repair has just recreated a replaced part's directory):
  // look now rather than at the next resync round, so that it is repaired too.
  for (size_t i = 0; i < parts_.size(); ++i) ProbePart(i);
  return RepairChunkLocked(chunk, o);
}

uint64_t QuorumSet::ChunksToReconcile() const { return to_reconcile_.load(); }

uint32_t QuorumSet::ReachableMask() const { return health_->ReachableMask(); }

bool QuorumSet::Compared(uint64_t chunk) const {
  return chunk >= chunk_compared_.size() ||
         (ReachableMask() & ~chunk_compared_[chunk].load(std::memory_order_acquire)) == 0;
}

void QuorumSet::QueueCompare(uint64_t chunk) {
  if (chunk >= chunk_compare_queued_.size() || chunk_compare_queued_[chunk].exchange(1)) return;
  {
    std::lock_guard<std::mutex> l(compare_mu_);
    compare_queue_.push_back(chunk);
  }
  WakeResync();
}

uint64_t QuorumSet::CompareQueued() {
  std::shared_lock<std::shared_mutex> rl(resize_mu_);
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
      bool stop;
      {
        std::lock_guard<std::mutex> l(resync_mu_);
        stop = resync_stop_;
      }
      if (stop) {
        // Not compared: queued again (reads stay judged).
        std::lock_guard<std::mutex> l(compare_mu_);
        compare_queue_.insert(compare_queue_.end(), batch.begin() + i, batch.end());
        return done;
      }
      if (chunk < chunk_compare_queued_.size()) chunk_compare_queued_[chunk].store(0);
      const uint64_t read = CompareChunk(chunk);
      ++done;
      if (options_.compare_bytes_per_sec > 0 && read > 0) {
        // Throttle: this chunk's share of a second, without holding any lock.
        std::unique_lock<std::mutex> l(resync_mu_);
        resync_cv_.wait_for(l, std::chrono::microseconds(read * 1000000 / options_.compare_bytes_per_sec),
                            [this] { return resync_stop_; });
      }
    }
  }
}

// One chunk's copies on every part in reach, judged (JudgeCopies) and repaired where stale or
// damaged: what the first access after a start sets off. REQUIRES: resize_mu_ held (shared).
uint64_t QuorumSet::CompareChunk(uint64_t chunk) {
  if (chunk >= chunk_compared_.size()) return 0;
  std::lock_guard<std::mutex> cl(compare_locks_[chunk % compare_locks_.size()]);
  const uint32_t want = ReachableMask();
  if ((want & ~chunk_compared_[chunk].load(std::memory_order_acquire)) == 0) return 0;  // another thread did it
  auto r = RepairChunkLocked(chunk, RepairOptions{});
  if (!r.ok()) {
    QBD_LOG_WARN("volume {} chunk {}: comparing the copies at first access failed: {}", options_.volume, chunk + 1,
                 r.status().ToString());
    return 0;  // compared again at the next access
  }
  if (!r->actions.empty()) {
    QBD_LOG_WARN("volume {} chunk {}: copies made to agree at first access{} ({} action(s))", options_.volume,
                 chunk + 1, options_.after_crash ? " after an unclean shutdown" : "", r->actions.size());
  }
  uint32_t done = want;
  for (const RepairAction& a : r->actions) {
    if (!a.error.empty()) done &= ~(1u << (a.target - 'a'));  // that copy is compared again later
  }
  const uint32_t before = chunk_compared_[chunk].fetch_or(done);
  if (before == 0 && done != 0 && to_reconcile_.fetch_sub(1) == 1) {
    QBD_LOG_INFO("volume {}: every written chunk compared since the start", options_.volume);
  }
  return r->bytes_read;
}

// Blocks [first, first + n) of a chunk not compared yet: every part in reach is read (side by
// side) and the judge picks each block's copy, so a stale or damaged copy is never served
// while the whole chunk waits for its comparison. Lost blocks: Corruption; unknown: Unavailable.
Status QuorumSet::ReadJudged(uint64_t chunk, uint64_t first, std::span<std::byte> data, std::span<BlockMeta> metas) {
  const Geometry& g = options_.geometry;
  const uint64_t n = metas.size(), bs = g.block_size, rec = g.RecordSize();
  const size_t np = parts_.size();
  thread_local std::vector<PartCopy> tls_copies;
  std::vector<PartCopy>& copies = tls_copies;  // a reference: the pool's tasks fill this thread's
  copies.resize(np);
  std::vector<std::function<void()>> reads;
  for (size_t p = 0; p < np; ++p) {
    if (Reachable(p)) {
      reads.emplace_back([&, p] {
        ReadCopyInto(copies[p], parts_[p]->store->backend(), options_.volnr, parts_[p]->store->part(), g, chunk,
                     first, n);
      });
    } else {
      copies[p] = UnreachableCopy(Status::Unavailable("part down"));
    }
  }
  pool_->RunAll(reads);
  for (size_t p = 0; p < np; ++p) {
    copies[p].dirty.resize(n);
    for (uint64_t b = 0; b < n; ++b) copies[p].dirty[b] = maps_->dirty(p).Test(RegionOf(chunk, first + b));
  }
  const bool written = ChunkWritten(chunk);
  if (written && std::none_of(copies.begin(), copies.end(), [](const PartCopy& c) {
        return c.state != CopyState::kAbsent && c.state != CopyState::kUnreachable;
      })) {
    QBD_LOG_ERROR("volume {} chunk {}: written (chunk map) but its file is missing on every part in reach: data lost",
                  options_.volume, chunk + 1);
    return Status::IOError(
        fmt::format("volume {} chunk {}: chunk file missing on every part in reach", options_.volume, chunk + 1), EIO);
  }
  const SliceVerdict v = redundancy_->Judge(copies, written, MaxGeneration());
  for (uint64_t b = 0; b < n; ++b) {
    const int src = v.source[b];
    if (src >= 0) {
      std::memcpy(data.data() + b * bs, copies[src].records.data() + b * rec, bs);
      metas[b] = copies[src].metas[b];
      continue;
    }
    if (v.lost[b]) {
      QBD_LOG_ERROR("volume {} chunk {} block {}: no good copy on any part: data lost", options_.volume, chunk + 1,
                    first + b);
      return Status::Corruption(
          fmt::format("volume {} chunk {} block {}: no good copy on any part", options_.volume, chunk + 1, first + b));
    }
    if (v.unknown[b]) {
      return Status::Unavailable(fmt::format("volume {} chunk {} block {}: no good copy on a part in reach",
                                             options_.volume, chunk + 1, first + b));
    }
    // Never written (no file anywhere): zeros.
    std::memset(data.data() + b * bs, 0, bs);
    metas[b] = BlockMeta{};
  }
  return Status::OK();
}

Result<ChunkRepairReport> QuorumSet::RepairChunkLocked(uint64_t chunk, const RepairOptions& o) {
  const Geometry& g = options_.geometry;  // block and chunk size; the size is Size()
  const uint64_t chunks = ChunkCount();
  if (chunk >= chunks) {
    return Status::InvalidArgument(fmt::format("volume {}: no chunk {} (it has {})", options_.volume, chunk + 1,
                                               chunks));
  }
  const size_t np = parts_.size();
  const uint64_t bs = g.block_size, rec = g.RecordSize();
  const uint64_t per_chunk = g.BlocksPerChunk();
  const uint64_t end_block = std::min<uint64_t>(per_chunk, (Size() - chunk * g.chunk_size + bs - 1) / bs);
  const uint64_t slice = std::min<uint64_t>(per_chunk, std::max<uint64_t>(1, (4u << 20) / bs));
  const uint64_t c0 = RegionOf(chunk, 0), c1 = RegionOf(chunk, end_block - 1);
  RegionGuard guard(*seq_, c0, c1);
  {
    // Resync tries these regions again after the repair.
    std::lock_guard<std::mutex> l(lost_mu_);
    for (auto& lost : lost_regions_) lost.erase(lost.lower_bound(c0), lost.upper_bound(c1));
  }
  ChunkRepairReport report;
  report.chunk = chunk + 1;
  const bool written = ChunkWritten(chunk);
  std::vector<char> up(np);
  for (size_t p = 0; p < np; ++p) {
    up[p] = Reachable(p);
    if (!up[p]) report.notes.push_back(fmt::format("part {} is down: not checked", parts_[p]->store->part()));
  }
  // The copies' buffers are reused from slice to slice and from call to call (a fresh 4 MiB
  // buffer per read costs page faults).
  thread_local std::vector<PartCopy> tls_copies;
  std::vector<PartCopy>& copies = tls_copies;  // a reference: the pool's tasks fill this thread's
  auto read_slice = [&](uint64_t first, uint64_t n) {
    copies.resize(np);
    // The parts' copies are read side by side: a cold chunk costs one read's time, not np.
    std::vector<std::function<void()>> reads;
    for (size_t p = 0; p < np; ++p) {
      if (up[p]) {
        reads.emplace_back([&, p] {
          ReadCopyInto(copies[p], parts_[p]->store->backend(), options_.volnr, parts_[p]->store->part(), g, chunk,
                       first, n);
        });
      } else {
        copies[p] = UnreachableCopy(Status::Unavailable("part down"));
      }
    }
    scan_pool_->RunAll(reads);  // never queued behind (or ahead of) requests
    for (size_t p = 0; p < np; ++p) {
      PartCopy& c = copies[p];
      report.bytes_read += c.records.size();
      c.dirty.resize(n);
      for (uint64_t b = 0; b < n; ++b) c.dirty[b] = maps_->dirty(p).Test(RegionOf(chunk, first + b));
    }
  };
  // Per part: the rebuilt file (when its copy is bad as a whole), the in-place rewrite, and the
  // actions by reason.
  struct Target {
    bool whole = false;
    std::string reason;
    std::unique_ptr<PartStore::ChunkRewrite> rw;  // through the part's store, the chunk files' one writer
    std::map<std::string, RepairAction> actions;
    Status error;
    std::vector<char> region_ok;  // by region of the chunk: the copy is good there afterwards
    uint64_t blocks_written = 0;
  };
  std::vector<Target> t(np);
  bool any_file = false;
  for (size_t p = 0; p < np; ++p) t[p].region_ok.assign(c1 - c0 + 1, 1);
  for (uint64_t first = 0; first < end_block; first += slice) {
    const uint64_t n = std::min<uint64_t>(slice, end_block - first);
    read_slice(first, n);
    SliceVerdict v = redundancy_->Judge(copies, written, MaxGeneration());
    for (const PartCopy& c : copies) any_file = any_file || (c.state != CopyState::kAbsent && c.state != CopyState::kUnreachable);
    if (first == 0) {
      bool any_present = false;
      for (const PartCopy& c : copies) any_present = any_present || c.state == CopyState::kPresent;
      if (!any_present && written) report.notes.push_back("no readable copy of the chunk file on any part in reach");
      for (size_t p = 0; p < np; ++p) {
        // A file is rebuilt only from some copy: with none, a new file would turn lost data into
        // unwritten blocks (which only the admin's accept_loss may do).
        if ((!any_present && !o.accept_loss) || !up[p] || !v.bad_file[p] || !(o.targets & (1u << p))) continue;
        t[p].whole = true;
        t[p].reason = CopyStateName(copies[p].state);
      }
    }
    // accept_loss: a lost block becomes unwritten on every part (the zero record, §4.3).
    const bool accept = o.accept_loss && !o.dry_run;
    for (uint64_t b = 0; b < n; ++b) {
      if (v.lost[b]) (accept ? report.accepted : report.lost).push_back(first + b);
      if (v.unknown[b]) report.unknown.push_back(first + b);
    }
    thread_local std::vector<std::byte> zero_record;
    zero_record.assign(rec, std::byte{0});
    for (size_t p = 0; p < np; ++p) {
      if (!up[p]) continue;
      Target& tp = t[p];
      const bool may = o.targets & (1u << p);
      // The records this part's copy gets, and which blocks change.
      thread_local std::vector<std::byte> out;  // the rebuilt file's records (reused)
      std::vector<char> change(n, 0);
      if (tp.whole) out.assign(n * rec, std::byte{0});
      for (uint64_t b = 0; b < n; ++b) {
        const int src = v.source[b];
        const BlockIssue issue = v.issue[p][b];
        const uint64_t region = RegionOf(chunk, first + b) - c0;
        if (src < 0 && v.lost[b] && accept) {
          // The rebuilt file keeps it a hole; an existing copy gets the zero record.
          if (!tp.whole && copies[p].state == CopyState::kPresent && may) {
            change[b] = 1;
            RepairAction& a = tp.actions["loss-accepted"];
            a.blocks.push_back(first + b);
          } else if (!tp.whole && copies[p].state == CopyState::kPresent) {
            tp.region_ok[region] = 0;
          }
          continue;
        }
        if (src < 0) {
          if (v.lost[b] || v.unknown[b]) tp.region_ok[region] = 0;
          if (tp.whole) {
            // No good copy: the rebuilt file carries a damaged copy as it is, so the block stays
            // reported as lost rather than turning into an unwritten one.
            for (size_t q = 0; q < np; ++q) {
              if (copies[q].state != CopyState::kPresent) continue;
              std::memcpy(out.data() + b * rec, copies[q].records.data() + b * rec, rec);
              break;
            }
          }
          continue;
        }
        if (tp.whole) {
          std::memcpy(out.data() + b * rec, copies[src].records.data() + b * rec, rec);
          if (!copies[src].metas[b].IsUnwritten() || issue != BlockIssue::kNone) {
            RepairAction& a = tp.actions[tp.reason];
            if (static_cast<size_t>(src) != p && a.sources.find(parts_[src]->store->part()) == std::string::npos) {
              a.sources += parts_[src]->store->part();
            }
          }
          continue;
        }
        if (issue == BlockIssue::kNone) continue;
        if (!may) {
          tp.region_ok[region] = 0;
          continue;
        }
        change[b] = 1;
        RepairAction& a = tp.actions[BlockIssueName(issue)];
        a.blocks.push_back(first + b);
        const char sp = parts_[src]->store->part();
        if (a.sources.find(sp) == std::string::npos) a.sources += sp;
      }
      if (o.dry_run || !tp.error.ok()) continue;
      if (tp.whole) {
        if (!tp.rw) {
          auto rw = parts_[p]->store->BuildReplacement(chunk);
          if (!rw.ok()) {
            tp.error = rw.status();
            continue;
          }
          tp.rw = std::move(rw).value();
        }
        // Runs of non-zero records go out; zero ones stay holes (sparse, read as unwritten).
        for (uint64_t b = 0; b < n && tp.error.ok();) {
          auto zero = [&](uint64_t k) {
            const std::byte* r = out.data() + k * rec;
            return std::all_of(r, r + rec, [](std::byte x) { return x == std::byte{0}; });
          };
          if (zero(b)) {
            ++b;
            continue;
          }
          uint64_t e = b + 1;
          while (e < n && !zero(e)) ++e;
          tp.error = tp.rw->WriteRecords(first + b, std::span(out.data() + b * rec, (e - b) * rec));
          report.bytes_written += (e - b) * rec;
          b = e;
        }
        continue;
      }
      for (uint64_t b = 0; b < n && tp.error.ok();) {
        if (!change[b]) {
          ++b;
          continue;
        }
        // A run of blocks from one source goes out in one write.
        uint64_t e = b + 1;
        while (e < n && change[e] && v.source[e] == v.source[b]) ++e;
        if (!tp.rw) {
          auto rw = parts_[p]->store->RewriteInPlace(chunk);
          if (!rw.ok()) {
            tp.error = rw.status();
            break;
          }
          tp.rw = std::move(rw).value();
        }
        if (v.source[b] < 0) {
          for (uint64_t k = b; k < e && tp.error.ok(); ++k) tp.error = tp.rw->WriteRecords(first + k, zero_record);
        } else {
          tp.error = tp.rw->WriteRecords(first + b, std::span(copies[v.source[b]].records.data() + b * rec, (e - b) * rec));
        }
        report.bytes_written += (e - b) * rec;
        tp.blocks_written += e - b;
        b = e;
      }
    }
  }
  // Make the rewrites durable and publish the rebuilt files.
  for (size_t p = 0; p < np; ++p) {
    Target& tp = t[p];
    if (!up[p]) continue;
    const char part = parts_[p]->store->part();
    if (tp.whole && tp.actions.empty()) tp.actions[tp.reason];  // a file of unwritten blocks only
    // Syncs; a rebuilt file is published under the chunk's name (an unfinished one is removed).
    if (!o.dry_run && tp.error.ok() && tp.rw) tp.error = tp.rw->Commit();
    tp.rw.reset();
    for (auto& [reason, a] : tp.actions) {
      a.target = part;
      a.whole_file = tp.whole;
      a.reason = reason;
      if (!tp.error.ok()) a.error = tp.error.ToString();
      report.actions.push_back(std::move(a));
    }
    if (!tp.error.ok()) {
      QBD_LOG_WARN("repair: volume {} part {} chunk {}: {}", options_.volume, part, chunk + 1, tp.error.ToString());
      continue;
    }
    if (o.dry_run) continue;
    if (!tp.actions.empty()) {
      QBD_LOG_INFO("repair: volume {} part {} chunk {}: {}", options_.volume, part, chunk + 1,
                   tp.whole ? fmt::format("chunk file rebuilt ({})", tp.reason)
                            : fmt::format("{} block(s) rewritten", tp.blocks_written));
    }
    // The copy is good now wherever a good copy existed: its dirty regions there are done.
    for (uint64_t r = c0; r <= c1; ++r) {
      if (tp.region_ok[r - c0] && maps_->dirty(p).Test(r)) ClearDirty(static_cast<int>(p), r);
    }
  }
  if (!report.lost.empty()) {
    QBD_LOG_ERROR("repair: volume {} chunk {}: {} block(s) have no good copy on any part: data lost ({})",
                  options_.volume, chunk + 1, report.lost.size(), FormatRanges(report.lost));
  }
  if (!report.accepted.empty()) {
    QBD_LOG_WARN("repair: volume {} chunk {}: loss accepted by the admin: block(s) {} had no good copy on any part "
                 "and now read as zeros",
                 options_.volume, chunk + 1, FormatRanges(report.accepted));
  }
  if (!written && any_file) {
    if (o.dry_run) {
      report.notes.push_back("the chunk map lacks this chunk: it would be added");
    } else {
      Status s = RecordChunkWritten(chunk, /*durable=*/true);
      report.notes.push_back(s.ok() ? "added to the chunk map" : "chunk map not updated: " + s.ToString());
    }
  }
  return report;
}

}  // namespace qbd
