#include "qbd/quorum.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <optional>

#include "common/thread_pool.h"
#include "engine/flush_coalescer.h"
#include "engine/part_health.h"
#include "engine/replicated_maps.h"
#include "engine/sequencer.h"
#include "qbd/log.h"
#include "qbd/scrub.h"

namespace qbd {
namespace {

// Per-thread scratch buffers, reused so requests do not allocate.
std::vector<std::byte>& BlockScratch(size_t size) {
  thread_local std::vector<std::byte> buf;
  if (buf.size() < size) buf.resize(size);
  return buf;
}
std::vector<BlockMeta>& MetaScratch(size_t n) {
  thread_local std::vector<BlockMeta> metas;
  if (metas.size() < n) metas.resize(n);
  return metas;
}

bool RangeOk(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

}  // namespace

using RegionGuard = Sequencer::RegionGuard;

QuorumSet::QuorumSet(QuorumOptions options, std::vector<std::unique_ptr<PartStore>> parts,
                     std::vector<std::unique_ptr<DirtyMap>> dirty, std::unique_ptr<DirtyMap> chunk_map)
    : options_(std::move(options)),
      region_size_(static_cast<uint32_t>(std::min<uint64_t>(
          std::max<uint64_t>(options_.region_size, options_.geometry.block_size), options_.geometry.chunk_size))),
      size_(options_.geometry.size),
      append_only_(options_.append_only),
      seq_(std::make_unique<Sequencer>(options_.volume, options_.epoch)),
      flusher_(std::make_unique<FlushCoalescer>()) {
  QBD_CHECK(!parts.empty() && parts.size() <= 26, "volume {}: {} parts", options_.volume, parts.size());
  std::vector<char> names;
  std::vector<StorageBackend*> backends;
  for (const auto& s : parts) {
    names.push_back(s->part());
    backends.push_back(&s->backend());
  }
  health_ = std::make_unique<PartHealth>(options_.volume, options_.volnr, names, backends);
  const uint64_t regions = (options_.geometry.size + region_size_ - 1) / region_size_;
  std::vector<PartStore*> stores;
  for (size_t i = 0; i < parts.size(); ++i) {
    auto p = std::make_unique<Part>();
    p->store = std::move(parts[i]);
    stores.push_back(p->store.get());
    parts_.push_back(std::move(p));
  }
  maps_ = std::make_unique<ReplicatedMaps>(options_.volume, options_.volnr, stores, *health_, region_size_, regions,
                                           std::move(dirty), options_.geometry.chunk_size,
                                           options_.geometry.ChunkCount(), std::move(chunk_map),
                                           [this] { WakeResync(); });
  for (size_t i = 0; i < parts_.size(); ++i) {
    uint64_t n = maps_->dirty(i).CountSet();
    health_->SetInitial(i, n > 0 ? PartHealth::State::kResyncing : PartHealth::State::kUp);
    if (n > 0) {
      QBD_LOG_WARN("volume {} part {}: {} dirty regions ({}) to resync", options_.volume, parts_[i]->store->part(), n,
                   n * region_size_);
    }
  }
  chunk_known_ = std::vector<std::atomic<uint8_t>>(options_.geometry.ChunkCount());
  chunk_compared_ = std::vector<std::atomic<uint32_t>>(options_.geometry.ChunkCount());
  chunk_compare_queued_ = std::vector<std::atomic<uint8_t>>(options_.geometry.ChunkCount());
  for (size_t c = 0; c < chunk_compared_.size(); ++c) {
    if (options_.compare_on_first_access && parts_.size() > 1 && maps_->ChunkWritten(c)) {
      to_reconcile_.fetch_add(1);
    } else {
      chunk_compared_[c].store(~0u);  // never written: nothing can differ
    }
  }
  lost_regions_.resize(parts_.size());
  pool_ = std::make_unique<ThreadPool>(static_cast<int>(parts_.size()));
  scan_pool_ = std::make_unique<ThreadPool>(static_cast<int>(parts_.size()));
  if (options_.start_resync_thread) resync_thread_ = std::thread([this] { ResyncLoop(); });
}

QuorumSet::~QuorumSet() {
  StopResync();
  pool_.reset();
  scan_pool_.reset();
}

void QuorumSet::StopResync() {
  {
    std::lock_guard<std::mutex> l(resync_mu_);
    resync_stop_ = true;
  }
  resync_cv_.notify_all();
  if (resync_thread_.joinable()) resync_thread_.join();
}

uint64_t QuorumSet::DirtyRegions(size_t i) const { return maps_->dirty(i).CountSet(); }

uint64_t QuorumSet::MaxGeneration() const { return seq_->MaxGeneration(); }
bool QuorumSet::Reachable(size_t i) const { return health_->Reachable(i); }
bool QuorumSet::InSync(size_t i) const { return health_->InSync(i); }
void QuorumSet::TEST_SetPartUp(size_t i, bool up) {
  health_->SetInitial(i, up ? PartHealth::State::kUp : PartHealth::State::kDown);
}

uint64_t QuorumSet::RegionOf(uint64_t chunk, uint64_t block_in_chunk) const {
  return (chunk * options_.geometry.chunk_size + block_in_chunk * options_.geometry.block_size) / region_size_;
}

std::vector<int> QuorumSet::ReadOrder(uint64_t r0, uint64_t r1, int exclude) const {
  std::vector<int> order;
  order.reserve(parts_.size());
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (static_cast<int>(i) == exclude || !Reachable(i)) continue;
    if (maps_->dirty(i).AnyIn(r0, r1)) continue;
    order.push_back(static_cast<int>(i));
  }
  return health_->LeastLoadedFirst(std::move(order));
}

// Reads blocks [first, first + n) of `chunk`, trying the parts of `order` in turn.
//  - The first part that answers OK serves every block.
//  - A part whose blocks partly fail their checksum keeps its good blocks; each bad block is
//    read from the other parts, and the bad copy is marked for repair.
//  - A part whose chunk file is missing, short or unreadable is passed over; when another part
//    serves the chunk, the missing or damaged copy is marked for repair (the whole chunk for a
//    missing or short file).
//  - When every part in `order` lacks the chunk file, the blocks were never written: zeros.
// With `locked` the caller holds the region locks (a checksum failure is then final); without,
// a failure is re-read under the locks once, because a read that overlaps a write in flight can
// see a half-written block.
Status QuorumSet::ReadBlocks(const std::vector<int>& order, uint64_t chunk, uint64_t first,
                             std::span<std::byte> data, std::span<BlockMeta> metas, bool locked) {
  const uint64_t n = metas.size();
  const uint64_t bs = options_.geometry.block_size;
  const uint64_t r0 = RegionOf(chunk, first), r1 = RegionOf(chunk, first + n - 1);
  if (order.empty()) {
    return Status::Unavailable(fmt::format("volume {} chunk {}: no part is up and in sync", options_.volume, chunk + 1));
  }
  std::vector<int> missing, whole_bad;
  std::vector<uint64_t> bad;
  for (int p : order) {
    Part& part = *parts_[p];
    bad.clear();
    health_->BeginIo(p);
    Status s = part.store->Read(chunk, first, data, metas, &bad);
    health_->EndIo(p);
    if (s.IsCorruption() && !locked) {
      RegionGuard g(*seq_, r0, r1);
      bad.clear();
      s = part.store->Read(chunk, first, data, metas, &bad);
    }
    if (s.IsNotFound()) {
      missing.push_back(p);
      continue;
    }
    if (s.ok() || s.IsCorruption()) {
      // A good checksum with a generation this volume never issued is a suspect copy (scrub.h).
      const uint64_t max_gen = MaxGeneration();
      const size_t had = bad.size();
      for (uint64_t i = 0; i < n; ++i) {
        if (metas[i].generation > max_gen && std::find(bad.begin(), bad.begin() + had, first + i) == bad.begin() + had) {
          bad.push_back(first + i);
        }
      }
      if (s.ok() && !bad.empty()) s = Status::Corruption("a generation never issued");
    }
    if (!s.ok() && !(s.IsCorruption() && !bad.empty())) {
      counters_.read_repairs.fetch_add(1);
      QBD_LOG_WARN("read-repair: volume {} part {} chunk {} blocks {}-{}: {}; reading another part",
                   options_.volume, part.store->part(), chunk + 1, first, first + n - 1, s.ToString());
      if (s.IsIOError()) {
        MarkDirty(p, r0, r1, /*durable=*/false, "read error").IgnoreError();  // repaired by resync
      } else {
        whole_bad.push_back(p);
      }
      continue;
    }
    // `part` served everything but the blocks in `bad`.
    for (uint64_t b : bad) {
      counters_.read_repairs.fetch_add(1);
      QBD_LOG_WARN("read-repair: volume {} part {} chunk {} block {}: bad copy (checksum mismatch or a generation "
                   "never issued); repairing from another part",
                   options_.volume, part.store->part(), chunk + 1, b);
      const uint64_t i = b - first;
      bool fixed = false;
      for (int q : order) {
        if (q == p) continue;
        std::vector<uint64_t> bad1;
        Status s1 = parts_[q]->store->Read(chunk, b, data.subspan(i * bs, bs), metas.subspan(i, 1), &bad1);
        if (s1.ok() && metas[i].generation <= MaxGeneration()) {
          fixed = true;
          break;
        }
      }
      if (!fixed) {
        QBD_LOG_ERROR("volume {} chunk {} block {}: no good copy on any part: data lost", options_.volume, chunk + 1, b);
        return Status::Corruption(
            fmt::format("volume {} chunk {} block {}: no good copy on any part", options_.volume, chunk + 1, b));
      }
      uint64_t rb = RegionOf(chunk, b);
      MarkDirty(p, rb, rb, /*durable=*/false, "checksum mismatch").IgnoreError();  // repaired by resync
    }
    // Parts passed over that lack the chunk file, or hold a short one, get the whole chunk back.
    if (!missing.empty() && !ChunkKnown(chunk)) {
      // The first write of this chunk may be creating it on the parts right now: wait for it
      // (it holds the create lock) and look again before calling a file lost.
      std::lock_guard<std::mutex> cl(create_locks_[chunk % create_locks_.size()]);
      std::vector<int> still;
      for (int m : missing) {
        auto st = parts_[m]->store->CheckChunk(chunk);
        if (st.ok() && *st != PartStore::ChunkState::kComplete) still.push_back(m);
      }
      missing.swap(still);
      SetChunkKnown(chunk);
    }
    if (!missing.empty() || !whole_bad.empty()) {
      const uint64_t c0 = RegionOf(chunk, 0), c1 = RegionOf(chunk, options_.geometry.BlocksPerChunk() - 1);
      for (int m : missing) {
        counters_.read_repairs.fetch_add(1);
        QBD_LOG_WARN("read-repair: volume {} part {} chunk {}: chunk file missing; repairing from part {}",
                     options_.volume, parts_[m]->store->part(), chunk + 1, part.store->part());
        MarkDirty(m, c0, c1, /*durable=*/false, "chunk file missing").IgnoreError();  // resync repairs it
      }
      for (int w : whole_bad) MarkDirty(w, c0, c1, /*durable=*/false, "chunk file damaged").IgnoreError();
    }
    return Status::OK();
  }
  if (whole_bad.empty() && ChunkWritten(chunk)) {
    // The chunk map says it was written, yet no part in reach has its file. Its first write may
    // be creating the files right now (under the create lock): look again once it is done.
    bool any = false;
    {
      std::lock_guard<std::mutex> cl(create_locks_[chunk % create_locks_.size()]);
      for (int p : order) {
        auto st = parts_[p]->store->CheckChunk(chunk);
        any = any || (st.ok() && *st != PartStore::ChunkState::kAbsent);
      }
    }
    if (any && locked) return ReadBlocks(ReadOrder(r0, r1, -1), chunk, first, data, metas, locked);
    if (any) return ReadChunkPiece(chunk, first, data, metas, /*locked=*/false);
    QBD_LOG_ERROR("volume {} chunk {}: written (chunk map) but its file is missing on every part in reach: data lost",
                  options_.volume, chunk + 1);
    return Status::IOError(
        fmt::format("volume {} chunk {}: chunk file missing on every part in reach", options_.volume, chunk + 1), EIO);
  }
  if (whole_bad.empty()) {
    // No part in sync has the chunk file, and the chunk map does not have it: never written.
    std::memset(data.data(), 0, data.size());
    std::fill(metas.begin(), metas.end(), BlockMeta{});
    return Status::OK();
  }
  QBD_LOG_ERROR("volume {} chunk {} blocks {}-{}: no readable copy on any part", options_.volume, chunk + 1, first,
                first + n - 1);
  return Status::IOError(fmt::format("volume {} chunk {}: no readable copy", options_.volume, chunk + 1));
}

Status QuorumSet::ReadChunkPiece(uint64_t chunk, uint64_t first, std::span<std::byte> data,
                                 std::span<BlockMeta> metas, bool locked) {
  const uint64_t n = metas.size();
  const uint64_t r0 = RegionOf(chunk, first), r1 = RegionOf(chunk, first + n - 1);
  if (!Compared(chunk)) {
    QueueCompare(chunk);
    Status s = ReadJudged(chunk, first, data, metas);
    if (s.ok() || locked || s.IsInvalidArgument()) return s;
    // A write in flight may have been caught between parts: once more under the region locks.
    RegionGuard g(*seq_, r0, r1);
    return ReadJudged(chunk, first, data, metas);
  }
  std::vector<int> order = ReadOrder(r0, r1, -1);
  if (order.empty()) {
    // No part is clean for the whole range: reconcile the regions dirty everywhere, then retry.
    std::optional<RegionGuard> guard;
    if (!locked) guard.emplace(*seq_, r0, r1);
    const Geometry& g = options_.geometry;
    for (uint64_t r = r0; r <= r1; ++r) {
      if (!ReadOrder(r, r, -1).empty()) continue;
      bool all_dirty = true;
      for (size_t q = 0; q < parts_.size(); ++q) all_dirty = all_dirty && maps_->dirty(q).Test(r);
      if (!all_dirty) continue;  // a clean copy is on a part that is down: Unavailable below
      const uint64_t start = r * region_size_;
      const uint64_t end = std::min<uint64_t>(start + region_size_, Size());
      ReconcileRegion(r, start / g.chunk_size, (start % g.chunk_size) / g.block_size,
                      (end - start + g.block_size - 1) / g.block_size);
    }
    order = ReadOrder(r0, r1, -1);
  }
  return ReadBlocks(order, chunk, first, data, metas, locked);
}

Status QuorumSet::Read(uint64_t off, std::span<std::byte> out) {
  std::shared_lock<std::shared_mutex> rl(resize_mu_);
  if (!RangeOk(off, out.size(), Size())) return Status::InvalidArgument("read beyond the end of the volume");
  const Geometry& g = options_.geometry;
  const uint64_t bs = g.block_size;
  uint64_t done = 0;
  while (done < out.size()) {
    const uint64_t pos = off + done;
    const uint64_t chunk = pos / g.chunk_size;
    const uint64_t in_chunk = pos % g.chunk_size;
    const uint64_t len = std::min<uint64_t>(out.size() - done, g.chunk_size - in_chunk);
    const uint64_t first = in_chunk / bs;
    const uint64_t last = (in_chunk + len - 1) / bs;
    const uint64_t n = last - first + 1;
    std::vector<BlockMeta>& metas = MetaScratch(n);
    if (in_chunk % bs == 0 && len % bs == 0) {
      QBD_RETURN_IF_ERROR(ReadChunkPiece(chunk, first, out.subspan(done, len), std::span(metas.data(), n), false));
    } else {
      std::vector<std::byte>& buf = BlockScratch(n * bs);
      QBD_RETURN_IF_ERROR(ReadChunkPiece(chunk, first, std::span(buf.data(), n * bs), std::span(metas.data(), n), false));
      std::memcpy(out.data() + done, buf.data() + (in_chunk % bs), len);
    }
    done += len;
  }
  return Status::OK();
}

Status QuorumSet::Write(uint64_t off, std::span<const std::byte> in, bool fua) {
  std::shared_lock<std::shared_mutex> rl(resize_mu_);
  if (!RangeOk(off, in.size(), Size())) return Status::InvalidArgument("write beyond the end of the volume", ENOSPC);
  const uint64_t cs = options_.geometry.chunk_size;
  uint64_t done = 0;
  while (done < in.size()) {
    const uint64_t pos = off + done;
    const uint64_t len = std::min<uint64_t>(in.size() - done, cs - pos % cs);
    QBD_RETURN_IF_ERROR(WritePiece(pos, len, in.data() + done, fua, false));
    done += len;
  }
  return Status::OK();
}

Status QuorumSet::WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) {
  std::shared_lock<std::shared_mutex> rl(resize_mu_);
  if (!RangeOk(off, len, Size())) return Status::InvalidArgument("zero beyond the end of the volume", ENOSPC);
  const uint64_t cs = options_.geometry.chunk_size;
  uint64_t done = 0;
  while (done < len) {
    const uint64_t pos = off + done;
    const uint64_t piece = std::min<uint64_t>(len - done, cs - pos % cs);
    QBD_RETURN_IF_ERROR(WritePiece(pos, piece, /*src=*/nullptr, fua, may_trim));
    done += piece;
  }
  return Status::OK();
}

Status QuorumSet::Trim(uint64_t off, uint64_t len, bool fua) { return WriteZeroes(off, len, /*may_trim=*/true, fua); }

// One chunk's piece of a write of `len` bytes from `src`, or of a zeroing when `src` is null.
Status QuorumSet::WritePiece(uint64_t off, uint64_t len, const std::byte* src, bool fua, bool may_trim) {
  const bool zero = src == nullptr;
  const Geometry& g = options_.geometry;
  const uint64_t bs = g.block_size;
  if (len == 0) return Status::OK();
  const uint64_t chunk = off / g.chunk_size;
  const uint64_t in_chunk = off % g.chunk_size;
  const uint64_t first = in_chunk / bs;
  const uint64_t last = (in_chunk + len - 1) / bs;
  const uint64_t n = last - first + 1;
  const uint64_t head = in_chunk % bs;
  const bool partial_head = head != 0;
  const bool partial_tail = (in_chunk + len) % bs != 0;
  const uint64_t r0 = RegionOf(chunk, first), r1 = RegionOf(chunk, last);
  if (!Compared(chunk)) QueueCompare(chunk);  // until then its reads are judged (ReadJudged)
  RegionGuard guard(*seq_, r0, r1);

  std::vector<BlockMeta>& metas = MetaScratch(n);
  if (append_only_.load()) {
    // A written block is never overwritten on an append-only volume.
    std::vector<std::byte> cur(n * bs);
    QBD_RETURN_IF_ERROR(ReadChunkPiece(chunk, first, cur, std::span(metas.data(), n), true));
    for (uint64_t i = 0; i < n; ++i) {
      if (!metas[i].IsUnwritten()) {
        return Status::InvalidArgument(
            fmt::format("volume {} is append-only: block {} is already written", options_.volume,
                        (chunk * g.chunk_size) / bs + first + i),
            EPERM);
      }
    }
  }
  // Whole blocks of a zeroing that may trim become "never written" (layout-spec.md §4.3).
  if (zero && may_trim) {
    const uint64_t full_first = partial_head ? first + 1 : first;
    const uint64_t full_end = partial_tail ? last : last + 1;  // exclusive
    if (full_first < full_end) {
      QBD_RETURN_IF_ERROR(UnwriteOnParts(chunk, full_first, full_end - full_first, fua));
    }
    // The partial edge blocks are written as data below.
    if (!partial_head && !partial_tail) return Status::OK();
    std::vector<std::byte> edge(bs);
    if (partial_head) {
      uint64_t end_in_block = std::min<uint64_t>(bs, head + len);
      BlockMeta m;
      QBD_RETURN_IF_ERROR(ReadChunkPiece(chunk, first, edge, std::span(&m, 1), true));
      std::memset(edge.data() + head, 0, end_in_block - head);
      m = BlockMeta{seq_->NextGeneration(), BlockChecksum(edge)};
      QBD_RETURN_IF_ERROR(WriteToParts(chunk, first, edge, std::span(&m, 1), fua));
    }
    if (partial_tail && (last != first || !partial_head)) {
      uint64_t tail_len = (in_chunk + len) % bs;
      BlockMeta m;
      QBD_RETURN_IF_ERROR(ReadChunkPiece(chunk, last, edge, std::span(&m, 1), true));
      std::memset(edge.data(), 0, tail_len);
      m = BlockMeta{seq_->NextGeneration(), BlockChecksum(edge)};
      QBD_RETURN_IF_ERROR(WriteToParts(chunk, last, edge, std::span(&m, 1), fua));
    }
    return Status::OK();
  }

  if (!zero && !partial_head && !partial_tail) {
    // Whole blocks: checksum and encode straight from the client's buffer.
    std::span<const std::byte> blocks(src, len);
    const uint64_t gen = seq_->NextGeneration();
    for (uint64_t i = 0; i < n; ++i) metas[i] = BlockMeta{gen, BlockChecksum(blocks.subspan(i * bs, bs))};
    return WriteToParts(chunk, first, blocks, std::span(metas.data(), n), fua);
  }
  std::vector<std::byte>& buf = BlockScratch(n * bs);
  std::span<std::byte> blocks(buf.data(), n * bs);
  if (partial_head) {
    QBD_RETURN_IF_ERROR(ReadChunkPiece(chunk, first, blocks.subspan(0, bs), std::span(metas.data(), 1), true));
  }
  if (partial_tail && (last != first || !partial_head)) {
    QBD_RETURN_IF_ERROR(
        ReadChunkPiece(chunk, last, blocks.subspan((n - 1) * bs, bs), std::span(metas.data() + n - 1, 1), true));
  }
  if (zero) {
    std::memset(blocks.data() + head, 0, len);
  } else {
    std::memcpy(blocks.data() + head, src, len);
  }
  const uint64_t gen = seq_->NextGeneration();
  for (uint64_t i = 0; i < n; ++i) metas[i] = BlockMeta{gen, BlockChecksum(blocks.subspan(i * bs, bs))};
  return WriteToParts(chunk, first, blocks, std::span(metas.data(), n), fua);
}

Status QuorumSet::WriteToParts(uint64_t chunk, uint64_t first, std::span<const std::byte> data,
                               std::span<const BlockMeta> metas, bool fua) {
  const size_t np = parts_.size();
  const uint64_t r0 = RegionOf(chunk, first), r1 = RegionOf(chunk, first + metas.size() - 1);
  std::vector<Status> results(np);
  std::vector<char> created(np, 0), attempted(np, 0);
  // One layout of the records serves every part; the data is written from the caller's buffer.
  // (A reference, so that the pool threads' tasks see this thread's instance.)
  thread_local RecordPieces tls_records;
  RecordPieces& records = tls_records;
  records.Assign(options_.geometry, data, metas);
  auto write_one = [&](size_t i) {
    bool c = false;
    results[i] = parts_[i]->store->WriteRecords(chunk, first, records, fua, &c);
    created[i] = c;
  };
  std::vector<size_t> live;
  for (size_t i = 0; i < np; ++i) {
    if (Reachable(i)) live.push_back(i);
  }
  for (size_t i : live) attempted[i] = 1;
  // The first write to a chunk in this process checks which parts hold its file, under a lock
  // so that concurrent first writes do not take each other's new files for lost ones. Later, a
  // part that has to create the file has lost it.
  bool known = ChunkKnown(chunk);
  std::unique_lock<std::mutex> create_lock;
  if (!known || !maps_->ChunkWritten(chunk)) {
    create_lock = std::unique_lock<std::mutex>(create_locks_[chunk % create_locks_.size()]);
    known = ChunkKnown(chunk);
    if (!known) CheckChunkPresence(chunk, live);
    // Waiting for the lock may have taken a while: a part marked down meanwhile is skipped.
    std::erase_if(live, [&](size_t i) {
      if (Reachable(i)) return false;
      attempted[i] = 0;
      return true;
    });
  }
  if ((fua || options_.parallel_io) && live.size() > 1) {
    // Durable writes wait on each part's sync, remote ones on the network: run them side by side.
    std::vector<std::function<void()>> tasks;
    for (size_t i : live) tasks.emplace_back([&, i] { write_one(i); });
    pool_->RunAll(tasks);
  } else {
    // Page-cache writes are faster done in turn than handed to other threads.
    for (size_t i : live) write_one(i);
  }
  int ok = 0;
  bool some_existed = false;
  std::vector<int> missed;
  for (size_t i = 0; i < np; ++i) {
    if (attempted[i] && results[i].ok()) {
      if (InSync(i)) ++ok;  // a part still catching up does not count for the quorum
      if (!created[i]) some_existed = true;
    } else {
      if (attempted[i]) {
        // One warning per outage: writes that were in flight when the part went down say it at
        // debug level only.
        Log(Reachable(i) || results[i].IsInvalidArgument() ? LogLevel::kWarn : LogLevel::kDebug,
            "volume {} part {} chunk {}: write failed: {}", options_.volume, parts_[i]->store->part(), chunk + 1,
            results[i].ToString());
        if (!results[i].IsInvalidArgument()) MarkDown(static_cast<int>(i), results[i]);
      }
      missed.push_back(static_cast<int>(i));
    }
  }
  if (ok > 0 || some_existed) SetChunkKnown(chunk);
  if (known && some_existed) {
    // A part that had to create the chunk file while another part already had it lost the file:
    // it holds only these blocks; the rest of the chunk comes back through resync.
    const uint64_t c0 = RegionOf(chunk, 0), c1 = RegionOf(chunk, options_.geometry.BlocksPerChunk() - 1);
    for (size_t i = 0; i < np; ++i) {
      if (attempted[i] && results[i].ok() && created[i]) {
        counters_.read_repairs.fetch_add(1);
        QBD_LOG_WARN("volume {} part {} chunk {}: chunk file was missing; rebuilding it from the other parts",
                     options_.volume, parts_[i]->store->part(), chunk + 1);
        MarkDirty(static_cast<int>(i), c0, c1, /*durable=*/true, "chunk file missing").IgnoreError();  // best effort
      }
    }
  }
  Status result = CheckQuorum(ok, missed, r0, r1, "write");
  if (create_lock.owns_lock() && (ok > 0 || some_existed) && !maps_->ChunkWritten(chunk)) {
    // The chunk map learns of the chunk once its files exist and before the write is
    // acknowledged, still under the create lock that a read finding no file takes before it
    // calls the chunk lost. A crash in between leaves files the map lacks (added when the volume
    // is opened), never a chunk the map calls written with no file anywhere.
    Status m = RecordChunkWritten(chunk, fua);
    if (!m.ok() && result.ok()) result = m;
  } else if (fua && result.ok() && maps_->ChunkMapPending()) {
    // A durable write into a chunk whose bit may not be on disk yet.
    result = PersistChunkMap();
  }
  return result;
}

Status QuorumSet::RecordChunkWritten(uint64_t chunk, bool durable) { return maps_->RecordChunkWritten(chunk, durable); }

Status QuorumSet::PersistChunkMap() { return maps_->PersistChunkMap(); }

bool QuorumSet::ChunkWritten(uint64_t chunk) const { return maps_->ChunkWritten(chunk); }

bool QuorumSet::ChunkKnown(uint64_t chunk) const {
  return chunk < chunk_known_.size() && chunk_known_[chunk].load(std::memory_order_acquire);
}

void QuorumSet::SetChunkKnown(uint64_t chunk) {
  if (chunk < chunk_known_.size()) chunk_known_[chunk].store(1, std::memory_order_release);
}

void QuorumSet::CheckChunkPresence(uint64_t chunk, const std::vector<size_t>& live) {
  std::vector<size_t> absent;
  bool any = false;
  for (size_t i : live) {
    auto e = parts_[i]->store->CheckChunk(chunk);
    if (!e.ok()) continue;
    if (*e == PartStore::ChunkState::kComplete) {
      any = true;
    } else {
      absent.push_back(i);  // absent or short
    }
  }
  if (!any) return;  // a new chunk: every part creates it now
  const uint64_t c0 = RegionOf(chunk, 0), c1 = RegionOf(chunk, options_.geometry.BlocksPerChunk() - 1);
  for (size_t i : absent) {
    counters_.read_repairs.fetch_add(1);
    QBD_LOG_WARN("volume {} part {} chunk {}: chunk file missing; rebuilding it from the other parts",
                 options_.volume, parts_[i]->store->part(), chunk + 1);
    MarkDirty(static_cast<int>(i), c0, c1, /*durable=*/true, "chunk file missing").IgnoreError();  // best effort
  }
}

Status QuorumSet::UnwriteOnParts(uint64_t chunk, uint64_t first, uint64_t n, bool fua) {
  const size_t np = parts_.size();
  const uint64_t r0 = RegionOf(chunk, first), r1 = RegionOf(chunk, first + n - 1);
  int ok = 0;
  std::vector<int> missed;
  for (size_t i = 0; i < np; ++i) {
    if (!Reachable(i)) {
      missed.push_back(static_cast<int>(i));
      continue;
    }
    bool rebuilt = false;
    Status s = parts_[i]->store->Unwrite(chunk, first, n, fua, &rebuilt);
    if (s.ok()) {
      if (InSync(i)) ++ok;
      if (rebuilt) {
        // The part's chunk file was short: the rest of its copy comes back through resync.
        const uint64_t c0 = RegionOf(chunk, 0), c1 = RegionOf(chunk, options_.geometry.BlocksPerChunk() - 1);
        MarkDirty(static_cast<int>(i), c0, c1, /*durable=*/true, "chunk file short").IgnoreError();  // best effort
      }
    } else {
      QBD_LOG_WARN("volume {} part {} chunk {}: trim failed: {}", options_.volume, parts_[i]->store->part(), chunk + 1,
                   s.ToString());
      MarkDown(static_cast<int>(i), s);
      missed.push_back(static_cast<int>(i));
    }
  }
  return CheckQuorum(ok, missed, r0, r1, "trim");
}

Status QuorumSet::CheckQuorum(int ok_parts, const std::vector<int>& missed, uint64_t r0, uint64_t r1,
                              std::string_view op) {
  Status persist;
  for (int p : missed) {
    counters_.missed_writes.fetch_add(1);
    Status s = MarkDirty(p, r0, r1, /*durable=*/true, op);
    if (!s.ok() && persist.ok()) persist = s;
  }
  if (ok_parts < static_cast<int>(options_.write_quorum)) {
    return Status::Unavailable(fmt::format("volume {}: {} reached {} of {} parts, write quorum is {}", options_.volume,
                                           op, ok_parts, parts_.size(), options_.write_quorum));
  }
  // The reply must not go out before the parts that missed the write are recorded durably.
  return persist;
}

Status QuorumSet::MarkDirty(int p, uint64_t r0, uint64_t r1, bool durable, std::string_view why) {
  return maps_->MarkDirty(static_cast<size_t>(p), r0, r1, durable, why);
}

void QuorumSet::ClearDirty(int p, uint64_t region) { maps_->ClearDirty(static_cast<size_t>(p), region); }

void QuorumSet::MarkDown(int p, const Status& why) { health_->MarkDown(static_cast<size_t>(p), why); }

void QuorumSet::FlushFailed(int p, const Status& why, const std::vector<uint64_t>& chunks) {
  // A failed sync may have lost any write to those chunks since their last good sync (an NFS
  // server that restarted drops its uncommitted writes): they are resynced from the others.
  MarkDown(p, why);
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  if (chunks.empty()) {
    QBD_LOG_ERROR("volume {} part {}: flush failed: {}; the whole part will be resynced", options_.volume,
                  parts_[p]->store->part(), why.ToString());
    ranges.emplace_back(0, (Size() + region_size_ - 1) / region_size_ - 1);
  } else {
    QBD_LOG_ERROR("volume {} part {}: flush failed: {}; {} chunk(s) written since their last sync will be resynced",
                  options_.volume, parts_[p]->store->part(), why.ToString(), chunks.size());
    const uint64_t last_block = options_.geometry.BlocksPerChunk() - 1;
    for (uint64_t c : chunks) ranges.emplace_back(RegionOf(c, 0), RegionOf(c, last_block));
  }
  for (const auto& [r0, r1] : ranges) {
    Status m = MarkDirty(p, r0, r1, /*durable=*/true, "flush failed");
    if (!m.ok()) QBD_LOG_ERROR("volume {}: {}", options_.volume, m.ToString());
  }
}

Status QuorumSet::Flush() {
  // Concurrent flushes coalesce: one that starts after this call covers it.
  return flusher_->Run([this] {
    std::vector<Status> results(parts_.size());
    std::vector<std::vector<uint64_t>> failed(parts_.size());
    std::vector<std::function<void()>> tasks;
    for (size_t i = 0; i < parts_.size(); ++i) {
      if (!Reachable(i)) {
        results[i] = Status::Unavailable("part down");
        continue;
      }
      tasks.emplace_back([this, i, &results, &failed] { results[i] = parts_[i]->store->Flush(&failed[i]); });
    }
    pool_->RunAll(tasks);
    int ok = 0;
    for (size_t i = 0; i < parts_.size(); ++i) {
      if (results[i].ok()) {
        if (InSync(i)) ++ok;
      } else if (Reachable(i)) {
        FlushFailed(static_cast<int>(i), results[i], failed[i]);
      }
    }
    Status s = ok >= static_cast<int>(options_.write_quorum)
                   ? Status::OK()
                   : Status::Unavailable(fmt::format("volume {}: flush reached {} of {} parts, write quorum is {}",
                                                     options_.volume, ok, parts_.size(), options_.write_quorum));
    if (s.ok()) s = PersistChunkMap();
    return s;
  });
}

Result<std::vector<Extent>> QuorumSet::BlockStatus(uint64_t off, uint64_t len) {
  std::shared_lock<std::shared_mutex> rl(resize_mu_);
  if (!RangeOk(off, len, Size()) || len == 0) return Status::InvalidArgument("block status beyond the end");
  const Geometry& g = options_.geometry;
  const uint64_t chunk = off / g.chunk_size;
  const uint64_t seg = std::min<uint64_t>(len, g.chunk_size - off % g.chunk_size);
  const uint64_t c0 = RegionOf(chunk, 0), c1 = RegionOf(chunk, g.BlocksPerChunk() - 1);
  std::vector<int> order = ReadOrder(c0, c1, -1);
  if (order.empty()) return Status::NotSupported("no part in sync");
  // A hole only when no part in sync has the chunk file: one part's lost file must not make
  // clients skip data the others hold.
  bool any = false;
  for (int p : order) {
    auto state = parts_[p]->store->CheckChunk(chunk);
    if (!state.ok()) return Status::NotSupported("chunk state unknown");
    any = any || *state != PartStore::ChunkState::kAbsent;
    if (any) break;
  }
  Extent e;
  e.length = seg;
  // A written chunk whose files are gone is data (reads fail), never a hole clients skip.
  e.hole = e.zero = !any && !ChunkWritten(chunk);
  return std::vector<Extent>{e};
}

void QuorumSet::SetSize(uint64_t size) {
  std::unique_lock<std::shared_mutex> wl(resize_mu_);
  if (size <= Size()) return;
  const uint64_t regions = (size + region_size_ - 1) / region_size_;
  Geometry g = options_.geometry;
  g.size = size;
  maps_->Grow(regions, g.ChunkCount());
  std::vector<std::atomic<uint8_t>> known(g.ChunkCount());
  for (size_t c = 0; c < chunk_known_.size(); ++c) known[c].store(chunk_known_[c].load());
  chunk_known_.swap(known);
  std::vector<std::atomic<uint32_t>> compared(g.ChunkCount());
  for (size_t c = 0; c < compared.size(); ++c) {
    compared[c].store(c < chunk_compared_.size() ? chunk_compared_[c].load() : ~0u);  // new: unwritten
  }
  chunk_compared_.swap(compared);
  std::vector<std::atomic<uint8_t>> queued(g.ChunkCount());
  for (size_t c = 0; c < chunk_compare_queued_.size(); ++c) queued[c].store(chunk_compare_queued_[c].load());
  chunk_compare_queued_.swap(queued);
  size_.store(size, std::memory_order_release);
}

bool QuorumSet::ProbePart(size_t i) {
  return health_->ProbePart(i, [this, i] {
    const Part& p = *parts_[i];
    QBD_LOG_INFO("volume {} part {}: state resyncing: backend reachable again; {} dirty regions ({} bytes) to copy",
                 options_.volume, p.store->part(), maps_->dirty(i).CountSet(), maps_->dirty(i).CountSet() * region_size_);
    WakeResync();
  });
}

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

}  // namespace qbd

namespace qbd {

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
  const SliceVerdict v = JudgeCopies(copies, ChunkWritten(chunk), MaxGeneration());
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

namespace qbd {

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
  const SliceVerdict v = JudgeCopies(copies, written, MaxGeneration());
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
  const uint64_t chunks = (Size() + g.chunk_size - 1) / g.chunk_size;
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
    SliceVerdict v = JudgeCopies(copies, written, MaxGeneration());
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
