// The replication engine's request path (include/qbd/quorum.h): construction, reads, writes,
// flush, trim and block status, over the pieces of src/engine/.
#include "qbd/quorum.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <optional>

#include "common/thread_pool.h"
#include "engine/chunk_presence.h"
#include "engine/flush_coalescer.h"
#include "engine/part_health.h"
#include "engine/redundancy.h"
#include "engine/repair_worker.h"
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

// The options without the volume's size, which lives in QuorumSet::size_ only.
QuorumOptions WithoutSize(QuorumOptions o) {
  o.geometry.size = 0;
  return o;
}

}  // namespace

using RegionGuard = Sequencer::RegionGuard;

QuorumSet::QuorumSet(QuorumOptions options, std::vector<std::unique_ptr<PartStore>> parts,
                     std::vector<std::unique_ptr<DirtyMap>> dirty, std::unique_ptr<DirtyMap> chunk_map)
    : size_(options.geometry.size),
      options_(WithoutSize(std::move(options))),
      region_size_(static_cast<uint32_t>(std::min<uint64_t>(
          std::max<uint64_t>(options_.region_size, options_.geometry.block_size), options_.geometry.chunk_size))),
      append_only_(options_.append_only),
      seq_(std::make_unique<Sequencer>(options_.volume, options_.epoch)),
      flusher_(std::make_unique<FlushCoalescer>()) {
  QBD_CHECK(!parts.empty() && parts.size() <= 26, "volume {}: {} parts", options_.volume, parts.size());
  metrics_ = options_.metrics && options_.metrics->parts.size() >= parts.size()
                 ? options_.metrics
                 : VolumeMetrics::Standalone(options_.volume, parts.size());
  std::vector<char> names;
  std::vector<StorageBackend*> backends;
  for (const auto& s : parts) {
    names.push_back(s->part());
    backends.push_back(&s->backend());
  }
  // A part out of space comes back once it has room for a chunk file (the most one write needs)
  // beyond what its store keeps free for metadata.
  health_ = std::make_unique<PartHealth>(options_.volume, options_.volnr, names, backends,
                                         options_.geometry.ChunkFileSize() + PartStore::kReservedBytes,
                                         options_.clock);
  const uint64_t regions = (Size() + region_size_ - 1) / region_size_;
  std::vector<PartStore*> stores;
  for (size_t i = 0; i < parts.size(); ++i) {
    auto p = std::make_unique<Part>();
    p->store = std::move(parts[i]);
    stores.push_back(p->store.get());
    parts_.push_back(std::move(p));
  }
  maps_ = std::make_unique<ReplicatedMaps>(options_.volume, options_.volnr, stores, *health_, region_size_, regions,
                                           std::move(dirty), options_.geometry.chunk_size,
                                           ChunkCount(), std::move(chunk_map),
                                           [this] {
                                             if (repair_) repair_->Wake();
                                           });
  redundancy_ = std::make_unique<Replicate>(*health_, *maps_);
  for (size_t i = 0; i < parts_.size(); ++i) {
    uint64_t n = maps_->dirty(i).CountSet();
    health_->SetInitial(i, n > 0 ? PartHealth::State::kResyncing : PartHealth::State::kUp);
    if (n > 0) {
      QBD_LOG_WARN("volume {} part {}: {} dirty regions ({}) to resync", options_.volume, parts_[i]->store->part(), n,
                   n * region_size_);
    }
  }
  presence_ = std::make_unique<ChunkPresence>(stores, ChunkCount());
  pool_ = std::make_unique<ThreadPool>(static_cast<int>(parts_.size()));
  repair_ = std::make_unique<RepairWorker>(RepairWorker::Pieces{
      .options = options_,
      .region_size = region_size_,
      .size = size_,
      .resize_mu = resize_mu_,
      .seq = *seq_,
      .health = *health_,
      .maps = *maps_,
      .stores = stores,
      .redundancy = *redundancy_,
      .request_pool = *pool_,
      .counters = counters_,
      .metrics = *metrics_,
      .read_blocks =
          [this](const std::vector<int>& order, uint64_t chunk, uint64_t first, std::span<std::byte> data,
                 std::span<BlockMeta> metas) { return ReadBlocks(order, chunk, first, data, metas, /*locked=*/true); },
  });
  if (options_.start_resync_thread) repair_->Start();
}

QuorumSet::~QuorumSet() {
  repair_.reset();  // stops its thread first
  pool_.reset();
}

void QuorumSet::StopResync() {
  repair_->Stop();
  if (stop_reported_.exchange(true)) return;
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (Reachable(i)) continue;
    const uint64_t n = maps_->dirty(i).CountSet();
    QBD_LOG_WARN("volume {} part {}: {} at stop; {} dirty regions ({} bytes) to resync once it is back",
                 options_.volume, parts_[i]->store->part(), health_->Describe(i), n, n * region_size_);
  }
}

bool QuorumSet::PartFull(size_t i) const { return health_->state(i) == PartHealth::State::kFull; }

std::string QuorumSet::PartState(size_t i) const { return health_->Describe(i); }

uint64_t QuorumSet::ResyncOnce() { return repair_->ResyncOnce(); }

Result<ChunkRepairReport> QuorumSet::RepairChunk(uint64_t chunk, const RepairOptions& options) {
  return repair_->RepairChunk(chunk, options);
}

uint64_t QuorumSet::ChunksToReconcile() const { return repair_->ChunksToReconcile(); }

uint64_t QuorumSet::CompareQueued() { return repair_->CompareQueued(); }

uint64_t QuorumSet::DirtyRegions(size_t i) const { return maps_->dirty(i).CountSet(); }

uint64_t QuorumSet::ChunkCount() const {
  return (Size() + options_.geometry.chunk_size - 1) / options_.geometry.chunk_size;
}

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
  return redundancy_->PlanRead(r0, r1, exclude);
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
    const auto io_start = std::chrono::steady_clock::now();
    Status s = part.store->Read(chunk, first, data, metas, &bad);
    metrics_->parts[p].read_duration->Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - io_start).count());
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
    if (s.ok() || (s.IsCorruption() && !bad.empty())) {
      // A good checksum with a generation this volume never issued is a suspect copy (scrub.h).
      // (A Corruption without bad blocks is a short file: `metas` holds nothing of it.)
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
      CountReadRepair(p);
      if (s.IsIOError()) {
        metrics_->parts[p].errors->Increment();
      } else {
        metrics_->parts[p].checksum_failures->Increment();
      }
      QBD_LOG_WARN("read-repair: volume {} part {} chunk {} blocks {}-{}: {}; reading another part",
                   options_.volume, part.store->part(), chunk + 1, first, first + n - 1, s.ToString());
      if (s.IsIOError()) {
        repair_->MarkForRepair(p, r0, r1, "read error");
      } else {
        whole_bad.push_back(p);
      }
      continue;
    }
    // `part` served everything but the blocks in `bad`.
    for (uint64_t b : bad) {
      CountReadRepair(p);
      metrics_->parts[p].checksum_failures->Increment();
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
      repair_->MarkForRepair(p, rb, rb, "checksum mismatch");
    }
    // Parts passed over that lack the chunk file, or hold a short one, get the whole chunk back.
    if (!missing.empty() && !presence_->Known(chunk)) {
      // The first write of this chunk may be creating it on the parts right now: wait for it
      // (it holds the create lock) and look again before calling a file lost.
      std::lock_guard<std::mutex> cl(presence_->CreateLock(chunk));
      missing = presence_->Incomplete(chunk, missing);
      presence_->SetKnown(chunk);
    }
    if (!missing.empty() || !whole_bad.empty()) {
      const uint64_t c0 = RegionOf(chunk, 0), c1 = RegionOf(chunk, options_.geometry.BlocksPerChunk() - 1);
      for (int m : missing) {
        CountReadRepair(m);
        QBD_LOG_WARN("read-repair: volume {} part {} chunk {}: chunk file missing; repairing from part {}",
                     options_.volume, parts_[m]->store->part(), chunk + 1, part.store->part());
        repair_->MarkForRepair(m, c0, c1, "chunk file missing");
      }
      for (int w : whole_bad) repair_->MarkForRepair(w, c0, c1, "chunk file damaged");
    }
    return Status::OK();
  }
  if (whole_bad.empty() && ChunkWritten(chunk)) {
    // The chunk map says it was written, yet no part in reach has its file. Its first write may
    // be creating the files right now (under the create lock): look again once it is done.
    bool any = false;
    {
      std::lock_guard<std::mutex> cl(presence_->CreateLock(chunk));
      any = presence_->AnyFile(chunk, order);
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
  if (!repair_->Compared(chunk)) {
    repair_->QueueCompare(chunk);
    Status s = repair_->ReadJudged(chunk, first, data, metas);
    if (s.ok() || locked || s.IsInvalidArgument()) return s;
    // A write in flight may have been caught between parts: once more under the region locks.
    RegionGuard g(*seq_, r0, r1);
    return repair_->ReadJudged(chunk, first, data, metas);
  }
  std::vector<int> order = ReadOrder(r0, r1, -1);
  if (order.empty()) {
    // No part is clean for the whole range: reconcile the regions dirty everywhere, then retry.
    std::optional<RegionGuard> guard;
    if (!locked) guard.emplace(*seq_, r0, r1);
    repair_->ReconcileRange(r0, r1);
    order = ReadOrder(r0, r1, -1);
    // Still no part clean for the whole range: regions clean on different parts, or dirty
    // everywhere with a reconcile that could not write (parts out of space). Each block comes
    // from the copy the judge picks; Unavailable when its clean copy is on a part that is down.
    if (order.empty()) return repair_->ReadJudged(chunk, first, data, metas);
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
  if (!repair_->Compared(chunk)) repair_->QueueCompare(chunk);  // until then its reads are judged (ReadJudged)
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
  records.Assign(options_.geometry, BlockAddress{options_.volnr, chunk, first}, data, metas);
  auto write_one = [&](size_t i) {
    bool c = false;
    const auto io_start = std::chrono::steady_clock::now();
    results[i] = parts_[i]->store->WriteRecords(chunk, first, records, fua, &c);
    metrics_->parts[i].write_duration->Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - io_start).count());
    created[i] = c;
  };
  const uint32_t holding = redundancy_->PartsHolding(chunk);
  std::vector<size_t> live;
  for (size_t i = 0; i < np; ++i) {
    if (Reachable(i) && (holding & (1u << i))) live.push_back(i);
  }
  for (size_t i : live) attempted[i] = 1;
  // The first write to a chunk in this process checks which parts hold its file, under a lock
  // so that concurrent first writes do not take each other's new files for lost ones. Later, a
  // part that has to create the file has lost it.
  bool known = presence_->Known(chunk);
  std::unique_lock<std::mutex> create_lock;
  if (!known || !maps_->ChunkWritten(chunk)) {
    create_lock = std::unique_lock<std::mutex>(presence_->CreateLock(chunk));
    known = presence_->Known(chunk);
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
  if (ok > 0 || some_existed) presence_->SetKnown(chunk);
  if (known && some_existed) {
    // A part that had to create the chunk file while another part already had it lost the file:
    // it holds only these blocks; the rest of the chunk comes back through resync.
    const uint64_t c0 = RegionOf(chunk, 0), c1 = RegionOf(chunk, options_.geometry.BlocksPerChunk() - 1);
    for (size_t i = 0; i < np; ++i) {
      if (attempted[i] && results[i].ok() && created[i]) {
        CountReadRepair(static_cast<int>(i));
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

void QuorumSet::CheckChunkPresence(uint64_t chunk, const std::vector<size_t>& live) {
  const std::vector<size_t> absent = presence_->LostOn(chunk, live);
  if (absent.empty()) return;  // a new chunk (every part creates it now), or no file lost
  const uint64_t c0 = RegionOf(chunk, 0), c1 = RegionOf(chunk, options_.geometry.BlocksPerChunk() - 1);
  for (size_t i : absent) {
    CountReadRepair(static_cast<int>(i));
    QBD_LOG_WARN("volume {} part {} chunk {}: chunk file missing; rebuilding it from the other parts",
                 options_.volume, parts_[i]->store->part(), chunk + 1);
    MarkDirty(static_cast<int>(i), c0, c1, /*durable=*/true, "chunk file missing").IgnoreError();  // best effort
  }
}

Status QuorumSet::UnwriteOnParts(uint64_t chunk, uint64_t first, uint64_t n, bool fua) {
  const size_t np = parts_.size();
  const uint64_t r0 = RegionOf(chunk, first), r1 = RegionOf(chunk, first + n - 1);
  const uint32_t holding = redundancy_->PartsHolding(chunk);
  int ok = 0;
  std::vector<int> missed;
  for (size_t i = 0; i < np; ++i) {
    if (!(holding & (1u << i))) continue;
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
  if (ok_parts < static_cast<int>(options_.write_quorum)) return QuorumLost(op, ok_parts);
  // The reply must not go out before the parts that missed the write are recorded durably.
  return persist;
}

Status QuorumSet::QuorumLost(std::string_view op, int ok_parts) const {
  // The parts that did not count, and why. The client is told ENOSPC when parts out of space are
  // what it lacks (freeing space is the cure), EIO otherwise.
  std::string why;
  int err = EIO;
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (InSync(i)) continue;
    if (health_->state(i) == PartHealth::State::kFull) err = ENOSPC;
    why += fmt::format("; part {}: {}", parts_[i]->store->part(), health_->Describe(i));
  }
  return Status::Unavailable(fmt::format("volume {}: {} reached {} of {} parts, write quorum is {}{}", options_.volume,
                                         op, ok_parts, parts_.size(), options_.write_quorum, why),
                             err);
}

Status QuorumSet::MarkDirty(int p, uint64_t r0, uint64_t r1, bool durable, std::string_view why) {
  return maps_->MarkDirty(static_cast<size_t>(p), r0, r1, durable, why);
}

void QuorumSet::ClearDirty(int p, uint64_t region) { maps_->ClearDirty(static_cast<size_t>(p), region); }

void QuorumSet::MarkDown(int p, const Status& why) {
  metrics_->parts[p].errors->Increment();
  health_->MarkDown(static_cast<size_t>(p), why);
}

void QuorumSet::CountReadRepair(int p) {
  counters_.read_repairs.fetch_add(1);
  metrics_->read_repairs->Increment();
  metrics_->parts[p].read_repairs->Increment();
}

void QuorumSet::UpdatePartGauges() const {
  for (size_t i = 0; i < parts_.size(); ++i) {
    const PartMetrics& m = metrics_->parts[i];
    m.SetState(static_cast<int>(health_->state(i)));
    m.dirty_bytes->Set(static_cast<double>(DirtyRegions(i) * region_size_));
  }
}

Status QuorumSet::Flush() {
  // Concurrent flushes coalesce: one that starts after this call covers it.
  return flusher_->Run([this] {
    std::vector<Status> results(parts_.size());
    std::vector<std::vector<uint64_t>> failed(parts_.size());
    std::vector<std::function<void()>> tasks;
    for (size_t i = 0; i < parts_.size(); ++i) {
      // A part out of space is synced too: writes it took before it filled up were acknowledged.
      if (!health_->Readable(i)) {
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
      } else if (health_->Readable(i)) {
        repair_->FlushFailed(static_cast<int>(i), results[i], failed[i]);
      }
    }
    Status s = ok >= static_cast<int>(options_.write_quorum) ? Status::OK() : QuorumLost("flush", ok);
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
  // Per block, from the slot pairs alone (layout-spec.md §4.3): a hole only where every part in
  // sync says unwritten, so that one part's damaged metadata never makes clients skip data that
  // the others hold; zero where every one says unwritten or zero data. A chunk with no file on
  // any of them is a hole unless the chunk map says it was written (its files are lost: data,
  // and reads fail).
  const uint64_t first = (off % g.chunk_size) / g.block_size;
  const uint64_t last = (off % g.chunk_size + seg - 1) / g.block_size;
  const uint64_t n = last - first + 1;
  std::vector<uint8_t> hole(n, 1), zero(n, 1);
  std::vector<PartStore::BlockState> states;
  bool any_file = false;
  for (int p : order) {
    Status s = parts_[p]->store->BlockStates(chunk, first, n, &states);
    if (s.IsNotFound()) continue;
    if (!s.ok()) return Status::NotSupported("block state unknown");
    any_file = true;
    for (uint64_t i = 0; i < n; ++i) {
      hole[i] = hole[i] && states[i] == PartStore::BlockState::kUnwritten;
      zero[i] = zero[i] && states[i] != PartStore::BlockState::kData;
    }
  }
  if (!any_file && ChunkWritten(chunk)) {
    std::fill(hole.begin(), hole.end(), 0);
    std::fill(zero.begin(), zero.end(), 0);
  }
  std::vector<Extent> out;
  for (uint64_t i = 0; i < n; ++i) {
    // The first and last blocks may be cut by the range.
    const uint64_t b0 = std::max<uint64_t>(off, chunk * g.chunk_size + (first + i) * g.block_size);
    const uint64_t b1 = std::min<uint64_t>(off + seg, chunk * g.chunk_size + (first + i + 1) * g.block_size);
    if (!out.empty() && out.back().hole == static_cast<bool>(hole[i]) && out.back().zero == static_cast<bool>(zero[i])) {
      out.back().length += b1 - b0;
      continue;
    }
    Extent e;
    e.length = b1 - b0;
    e.hole = hole[i];
    e.zero = zero[i];
    out.push_back(e);
  }
  return out;
}

void QuorumSet::SetSize(uint64_t size) {
  std::unique_lock<std::shared_mutex> wl(resize_mu_);
  if (size <= Size()) return;
  const uint64_t regions = (size + region_size_ - 1) / region_size_;
  Geometry g = options_.geometry;
  g.size = size;
  maps_->Grow(regions, g.ChunkCount());
  presence_->Grow(g.ChunkCount());
  repair_->Grow(g.ChunkCount());
  size_.store(size, std::memory_order_release);
}

}  // namespace qbd
