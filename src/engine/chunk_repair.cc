// RepairWorker::RepairChunk's work on one chunk (repair_worker.h, quorum.h), in named steps. Per
// slice of the chunk (at most 4 MiB): read every reachable part's copy (ReadSlice), judge them
// (JudgeSlice), plan what each part's copy gets (PlanPart) and write it (WritePart); then per part
// make the rewrite durable and report it (Publish) and clear the dirty regions whose copy is good
// now (ClearDirtyRegions); last, log the losses and complete the chunk map (Finish).
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <map>

#include "common/thread_pool.h"
#include "engine/part_health.h"
#include "engine/redundancy.h"
#include "engine/repair_worker.h"
#include "engine/replicated_maps.h"
#include "engine/sequencer.h"
#include "qbd/log.h"
#include "qbd/scrub.h"

namespace qbd {

// One repair of one chunk. REQUIRES: the engine's resize lock held (shared) and the chunk's region
// locks held for the whole run (a rebuilt file replaces the old one under its name, so no client
// write may land in between).
class ChunkRepair {
 public:
  ChunkRepair(RepairWorker& w, uint64_t chunk, uint64_t end_block, const RepairOptions& o)
      : w_(w),
        g_(w.p_.options.geometry),
        o_(o),
        chunk_(chunk),
        end_block_(end_block),
        np_(w.p_.stores.size()),
        rec_(g_.RecordSize()),
        c0_(w.RegionOf(chunk, 0)),
        c1_(w.RegionOf(chunk, end_block - 1)),
        written_(w.p_.maps.ChunkWritten(chunk)),
        accept_(o.accept_loss && !o.dry_run),
        up_(np_),
        t_(np_) {
    report_.chunk = chunk + 1;
    for (size_t p = 0; p < np_; ++p) {
      up_[p] = w.p_.health.Reachable(p);
      if (!up_[p]) {
        const bool full = w.p_.health.state(p) == PartHealth::State::kFull;
        report_.notes.push_back(fmt::format("part {} is down: {}not checked", Name(p),
                                            full ? "no space left on device: " : ""));
      }
      t_[p].region_ok.assign(c1_ - c0_ + 1, 1);
    }
  }

  ChunkRepairReport Run() {
    const uint64_t slice =
        std::min<uint64_t>(g_.BlocksPerChunk(), std::max<uint64_t>(1, (4u << 20) / g_.block_size));
    for (uint64_t first = 0; first < end_block_; first += slice) {
      const uint64_t n = std::min<uint64_t>(slice, end_block_ - first);
      ReadSlice(first, n);
      const SliceVerdict v = JudgeSlice(first, n);
      for (size_t p = 0; p < np_; ++p) {
        if (!up_[p]) continue;
        std::vector<char> change = PlanPart(p, v, first, n);
        if (o_.dry_run || !t_[p].error.ok()) continue;
        WritePart(p, v, first, n, change);
      }
    }
    for (size_t p = 0; p < np_; ++p) {
      if (!up_[p]) continue;
      if (Publish(p)) ClearDirtyRegions(p);
    }
    Finish();
    return std::move(report_);
  }

 private:
  // Per part: the rebuilt file (when its copy is bad as a whole), the in-place rewrite, and the
  // actions by reason.
  struct Target {
    bool whole = false;
    std::string reason;
    std::unique_ptr<PartStore::ChunkRewrite>
        rw;  // through the part's store, the chunk files' one writer
    std::map<std::string, RepairAction> actions;
    Status error;
    std::vector<char> region_ok;  // by region of the chunk: the copy is good there afterwards
    uint64_t blocks_written = 0;
  };

  char Name(size_t p) const { return w_.p_.stores[p]->part(); }

  // Step 1: every reachable part's copy of blocks [first, first + n), read side by side (a cold
  // chunk costs one read's time, not np), with the parts' dirty bits.
  void ReadSlice(uint64_t first, uint64_t n) {
    copies_.resize(np_);
    std::vector<std::function<void()>> reads;
    for (size_t p = 0; p < np_; ++p) {
      if (up_[p]) {
        reads.emplace_back([&, p] {
          ReadCopyInto(copies_[p], w_.p_.stores[p]->backend(), w_.p_.options.volnr, Name(p), g_,
                       chunk_, first, n);
        });
      } else {
        copies_[p] = UnreachableCopy(Status::Unavailable("part down"));
      }
    }
    w_.scan_pool_->RunAll(reads);  // never queued behind (or ahead of) requests
    for (size_t p = 0; p < np_; ++p) {
      PartCopy& c = copies_[p];
      report_.bytes_read += c.records.size();
      c.dirty.resize(n);
      for (uint64_t b = 0; b < n; ++b)
        c.dirty[b] = w_.p_.maps.dirty(p).Test(w_.RegionOf(chunk_, first + b));
    }
  }

  // Step 2: the judge's verdict on the slice; records lost and unknown blocks, and on the first
  // slice the parts whose file is rebuilt whole.
  SliceVerdict JudgeSlice(uint64_t first, uint64_t n) {
    SliceVerdict v = w_.p_.redundancy.Judge(copies_, written_, w_.p_.seq.MaxGeneration());
    for (const PartCopy& c : copies_) {
      any_file_ =
          any_file_ || (c.state != CopyState::kAbsent && c.state != CopyState::kUnreachable);
    }
    if (first == 0) {
      bool any_present = false;
      for (const PartCopy& c : copies_) any_present = any_present || c.state == CopyState::kPresent;
      if (!any_present && written_)
        report_.notes.push_back("no readable copy of the chunk file on any part in reach");
      for (size_t p = 0; p < np_; ++p) {
        // A file is rebuilt only from some copy: with none, a new file would turn lost data into
        // unwritten blocks (which only the admin's accept_loss may do).
        if ((!any_present && !o_.accept_loss) || !up_[p] || !v.bad_file[p] ||
            !(o_.targets & (1u << p)))
          continue;
        t_[p].whole = true;
        t_[p].reason = CopyStateName(copies_[p].state);
      }
    }
    // accept_loss: a lost block becomes unwritten on every part (the zero record, §4.3).
    for (uint64_t b = 0; b < n; ++b) {
      if (v.lost[b]) (accept_ ? report_.accepted : report_.lost).push_back(first + b);
      if (v.unknown[b]) report_.unknown.push_back(first + b);
    }
    return v;
  }

  // Step 3: what part p's copy of the slice gets. A rebuilt file's records go to out_; for an
  // in-place rewrite, the blocks that change (returned). Records the actions and the regions
  // whose copy stays bad.
  std::vector<char> PlanPart(size_t p, const SliceVerdict& v, uint64_t first, uint64_t n) {
    Target& tp = t_[p];
    const bool may = o_.targets & (1u << p);
    std::vector<char> change(n, 0);
    if (tp.whole) out_.assign(n * rec_, std::byte{0});
    for (uint64_t b = 0; b < n; ++b) {
      const int src = v.source[b];
      const BlockIssue issue = v.issue[p][b];
      const uint64_t region = w_.RegionOf(chunk_, first + b) - c0_;
      if (src < 0 && v.lost[b] && accept_) {
        // The rebuilt file keeps it a hole; an existing copy gets the zero record.
        if (!tp.whole && copies_[p].state == CopyState::kPresent && may) {
          change[b] = 1;
          tp.actions["loss-accepted"].blocks.push_back(first + b);
        } else if (!tp.whole && copies_[p].state == CopyState::kPresent) {
          tp.region_ok[region] = 0;
        }
        continue;
      }
      if (src < 0) {
        if (v.lost[b] || v.unknown[b]) tp.region_ok[region] = 0;
        if (tp.whole) {
          // No good copy: the rebuilt file carries a damaged copy as it is, so the block stays
          // reported as lost rather than turning into an unwritten one.
          for (size_t q = 0; q < np_; ++q) {
            if (copies_[q].state != CopyState::kPresent) continue;
            std::memcpy(out_.data() + b * rec_, copies_[q].records.data() + b * rec_, rec_);
            break;
          }
        }
        continue;
      }
      if (tp.whole) {
        std::memcpy(out_.data() + b * rec_, copies_[src].records.data() + b * rec_, rec_);
        if (!copies_[src].metas[b].IsUnwritten() || issue != BlockIssue::kNone) {
          RepairAction& a = tp.actions[tp.reason];
          if (static_cast<size_t>(src) != p && a.sources.find(Name(src)) == std::string::npos)
            a.sources += Name(src);
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
      if (a.sources.find(Name(src)) == std::string::npos) a.sources += Name(src);
    }
    return change;
  }

  // Step 4: writes part p's planned slice through its store: a rebuilt file's non-zero runs (zero
  // records stay holes, read as unwritten), or the changed blocks in place, a run from one source
  // in one write.
  void WritePart(size_t p, const SliceVerdict& v, uint64_t first, uint64_t n,
                 const std::vector<char>& change) {
    Target& tp = t_[p];
    if (tp.whole) {
      if (!tp.rw) {
        auto rw = w_.p_.stores[p]->BuildReplacement(chunk_);
        if (!rw.ok()) {
          tp.error = rw.status();
          return;
        }
        tp.rw = std::move(rw).value();
      }
      auto zero = [&](uint64_t k) {
        const std::byte* r = out_.data() + k * rec_;
        return std::all_of(r, r + rec_, [](std::byte x) { return x == std::byte{0}; });
      };
      for (uint64_t b = 0; b < n && tp.error.ok();) {
        if (zero(b)) {
          ++b;
          continue;
        }
        uint64_t e = b + 1;
        while (e < n && !zero(e)) ++e;
        tp.error =
            tp.rw->WriteRecords(first + b, std::span(out_.data() + b * rec_, (e - b) * rec_));
        report_.bytes_written += (e - b) * rec_;
        b = e;
      }
      return;
    }
    thread_local std::vector<std::byte> zero_record;
    zero_record.assign(rec_, std::byte{0});
    for (uint64_t b = 0; b < n && tp.error.ok();) {
      if (!change[b]) {
        ++b;
        continue;
      }
      uint64_t e = b + 1;
      while (e < n && change[e] && v.source[e] == v.source[b]) ++e;
      if (!tp.rw) {
        auto rw = w_.p_.stores[p]->RewriteInPlace(chunk_);
        if (!rw.ok()) {
          tp.error = rw.status();
          return;
        }
        tp.rw = std::move(rw).value();
      }
      if (v.source[b] < 0) {
        for (uint64_t k = b; k < e && tp.error.ok(); ++k)
          tp.error = tp.rw->WriteRecords(first + k, zero_record);
      } else {
        tp.error = tp.rw->WriteRecords(
            first + b, std::span(copies_[v.source[b]].records.data() + b * rec_, (e - b) * rec_));
      }
      report_.bytes_written += (e - b) * rec_;
      tp.blocks_written += e - b;
      b = e;
    }
  }

  // Step 5: syncs part p's rewrite (a rebuilt file is published under the chunk's name, an
  // unfinished one removed) and reports its actions. True when its copy was rewritten for real.
  bool Publish(size_t p) {
    Target& tp = t_[p];
    if (tp.whole && tp.actions.empty()) tp.actions[tp.reason];  // a file of unwritten blocks only
    if (!o_.dry_run && tp.error.ok() && tp.rw) tp.error = tp.rw->Commit();
    tp.rw.reset();
    for (auto& [reason, a] : tp.actions) {
      a.target = Name(p);
      a.whole_file = tp.whole;
      a.reason = reason;
      if (!tp.error.ok()) a.error = tp.error.ToString();
      report_.actions.push_back(std::move(a));
    }
    if (!tp.error.ok()) {
      QBD_LOG_WARN("repair: volume {} part {} chunk {}: {}", w_.p_.options.volume, Name(p),
                   chunk_ + 1, tp.error.ToString());
      // Out of space: the part is not written again until it has room (part_health.h), so the
      // next chunks say so once instead of failing one by one.
      if (tp.error.Errno() == ENOSPC) w_.p_.health.MarkDown(p, tp.error);
      return false;
    }
    if (o_.dry_run) return false;
    if (!tp.actions.empty()) {
      QBD_LOG_INFO("repair: volume {} part {} chunk {}: {}", w_.p_.options.volume, Name(p),
                   chunk_ + 1,
                   tp.whole ? fmt::format("chunk file rebuilt ({})", tp.reason)
                            : fmt::format("{} block(s) rewritten", tp.blocks_written));
    }
    return true;
  }

  // Step 6: the copy is good now wherever a good copy existed: its dirty regions there are done.
  void ClearDirtyRegions(size_t p) {
    for (uint64_t r = c0_; r <= c1_; ++r) {
      if (t_[p].region_ok[r - c0_] && w_.p_.maps.dirty(p).Test(r)) w_.p_.maps.ClearDirty(p, r);
    }
  }

  // Last: the losses logged; a chunk with files that the chunk map lacks is added to it.
  void Finish() {
    const std::string& volume = w_.p_.options.volume;
    if (!report_.lost.empty()) {
      QBD_LOG_ERROR(
          "repair: volume {} chunk {}: {} block(s) have no good copy on any part: data lost ({})",
          volume, chunk_ + 1, report_.lost.size(), FormatRanges(report_.lost));
    }
    if (!report_.accepted.empty()) {
      QBD_LOG_WARN(
          "repair: volume {} chunk {}: loss accepted by the admin: block(s) {} had no good copy on "
          "any part "
          "and now read as zeros",
          volume, chunk_ + 1, FormatRanges(report_.accepted));
    }
    if (!written_ && any_file_) {
      if (o_.dry_run) {
        report_.notes.push_back("the chunk map lacks this chunk: it would be added");
      } else {
        Status s = w_.p_.maps.RecordChunkWritten(chunk_, /*durable=*/true);
        report_.notes.push_back(s.ok() ? "added to the chunk map"
                                       : "chunk map not updated: " + s.ToString());
      }
    }
  }

  RepairWorker& w_;
  const Geometry& g_;  // block and chunk size; the size is the worker's
  const RepairOptions& o_;
  const uint64_t chunk_, end_block_;
  const size_t np_;
  const uint64_t rec_;
  const uint64_t c0_, c1_;  // the chunk's dirty-map regions
  const bool written_;      // the chunk map has the chunk
  const bool accept_;       // accept_loss, for real
  std::vector<char> up_;    // per part: reachable when the repair began
  std::vector<Target> t_;
  ChunkRepairReport report_;
  bool any_file_ = false;
  // The copies' and the rebuilt file's buffers are reused from slice to slice and from call to
  // call (a fresh 4 MiB buffer per read costs page faults). References: the pool's tasks fill
  // this thread's instance.
  std::vector<PartCopy>& copies_ = TlsCopies();
  std::vector<std::byte>& out_ = TlsOut();
  static std::vector<PartCopy>& TlsCopies() {
    thread_local std::vector<PartCopy> copies;
    return copies;
  }
  static std::vector<std::byte>& TlsOut() {
    thread_local std::vector<std::byte> out;
    return out;
  }
};

Result<ChunkRepairReport> RepairWorker::RepairChunkLocked(uint64_t chunk, const RepairOptions& o) {
  const Geometry& g = p_.options.geometry;
  const uint64_t chunks = ChunkCount();
  if (chunk >= chunks) {
    return Status::InvalidArgument(
        fmt::format("volume {}: no chunk {} (it has {})", p_.options.volume, chunk + 1, chunks));
  }
  const uint64_t end_block = std::min<uint64_t>(
      g.BlocksPerChunk(), (Size() - chunk * g.chunk_size + g.block_size - 1) / g.block_size);
  const uint64_t c0 = RegionOf(chunk, 0), c1 = RegionOf(chunk, end_block - 1);
  Sequencer::RegionGuard guard(p_.seq, c0, c1);
  {
    // Resync tries these regions again after the repair.
    std::lock_guard<std::mutex> l(lost_mu_);
    for (auto& lost : lost_regions_) lost.erase(lost.lower_bound(c0), lost.upper_bound(c1));
  }
  ChunkRepairReport report = ChunkRepair(*this, chunk, end_block, o).Run();
  // A repair may have copied a part's last dirty regions (qbd-repair's runs have no resync).
  for (size_t p = 0; p < p_.stores.size(); ++p) {
    if (p_.maps.dirty(p).CountSet() == 0 && p_.health.MarkInSync(p)) {
      QBD_LOG_INFO("volume {} part {}: state up: in sync (repaired)", p_.options.volume, p_.stores[p]->part());
    }
  }
  return report;
}

}  // namespace qbd
