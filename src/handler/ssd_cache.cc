// Implements include/qbd/ssd_cache.h; the log's format is layout-spec.md §7.
#include "qbd/ssd_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cstring>

#include "common/coding.h"
#include "qbd/chunk_format.h"
#include "qbd/config.h"
#include "qbd/log.h"

namespace qbd {
namespace {

constexpr size_t kEntry = kSsdEntrySize;
constexpr char kMagic[8] = {'Q', 'B', 'D', 'S', 'S', 'D', 'L', '1'};
constexpr uint32_t kFlagDirty = kSsdEntryDirty;
constexpr uint64_t kMaxRun = uint64_t{1} << 20;  // destage writes at most this many bytes at once

std::string LogPath(uint32_t volnr) { return std::to_string(volnr) + "/log"; }
std::string CheckpointPath(uint32_t volnr) { return std::to_string(volnr) + "/checkpoint"; }

uint64_t NowMs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

uint32_t EntryCheck(const std::byte* p) { return static_cast<uint32_t>(BlockChecksum(std::span(p, kEntry - 4))); }

// Data slots per segment (one header block of entries, the first describing the segment).
uint64_t SlotsPerSegment(uint32_t block_size) { return block_size / kEntry - 1; }

Status WriteCheckpoint(StorageBackend& dir, uint32_t volnr, uint64_t seq) {
  return WriteFileAtomic(dir, CheckpointPath(volnr), fmt::format("# qbd SSD cache (layout-spec.md 7)\nseq {}\n", seq));
}

Result<uint64_t> ReadCheckpoint(StorageBackend& dir, uint32_t volnr) {
  auto text = ReadSmallFile(dir, CheckpointPath(volnr));
  if (text.status().IsNotFound()) return uint64_t{0};
  if (!text.ok()) return text.status();
  return ParseSsdCheckpoint(*text, fmt::format("{}/{}", dir.Describe(), CheckpointPath(volnr)));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Records

void EncodeSsdSegmentHeader(std::span<std::byte, kSsdEntrySize> out, uint32_t volnr,
                            uint32_t block_size) {
  std::byte* p = out.data();
  std::memset(p, 0, kEntry);
  std::memcpy(p, kMagic, sizeof(kMagic));
  EncodeLE32(p + 8, volnr);
  EncodeLE32(p + 12, block_size);
  EncodeLE32(p + 28, EntryCheck(p));
}

void EncodeSsdLogEntry(std::span<std::byte, kSsdEntrySize> out, const SsdLogEntry& e) {
  std::byte* p = out.data();
  EncodeLE64(p, e.block);
  EncodeLE64(p + 8, e.seq);
  EncodeLE64(p + 16, e.checksum);
  EncodeLE32(p + 24, e.flags);
  EncodeLE32(p + 28, EntryCheck(p));
}

Result<std::vector<std::optional<SsdLogEntry>>> DecodeSsdSegment(std::span<const std::byte> header,
                                                                  uint32_t volnr) {
  if (header.size() < kEntry) {
    return Status::Corruption(
        fmt::format("SSD cache segment of {} bytes: less than one entry", header.size()));
  }
  const std::byte* p = header.data();
  // The 12 bytes before the check are not read: the check covers them.
  if (std::memcmp(p, kMagic, sizeof(kMagic)) != 0 || DecodeLE32(p + 8) != volnr ||
      DecodeLE32(p + 12) != header.size() || DecodeLE32(p + 28) != EntryCheck(p)) {
    return Status::Corruption(fmt::format(
        "not a segment of volume {}'s SSD cache log with {}-byte blocks", volnr, header.size()));
  }
  std::vector<std::optional<SsdLogEntry>> entries(header.size() / kEntry - 1);
  for (size_t j = 0; j < entries.size(); ++j) {
    p = header.data() + (j + 1) * kEntry;
    if (DecodeLE32(p + 28) != EntryCheck(p)) continue;
    entries[j] =
        SsdLogEntry{DecodeLE64(p), DecodeLE64(p + 8), DecodeLE64(p + 16), DecodeLE32(p + 24)};
  }
  return entries;
}

Result<uint64_t> ParseSsdCheckpoint(std::string_view text, std::string_view where) {
  int line = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    const std::string_view l =
        text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++line;
    if (l.empty() || l[0] == '#') continue;
    if (l.starts_with("seq ")) {
      uint64_t n = 0;
      const char* end = l.data() + l.size();
      auto [q, ec] = std::from_chars(l.data() + 4, end, n);
      if (ec == std::errc() && q == end) return n;
    }
    return Status::Corruption(fmt::format("{} line {}: expected 'seq N'; without a valid checkpoint the log "
                                          "cannot be replayed safely (remove the volume's cache directory to "
                                          "discard what it holds)",
                                          where, line));
  }
  return Status::Corruption(fmt::format("{}: no 'seq N' line", where));
}

// ---------------------------------------------------------------------------------------------
// Recovery

Result<SsdReplay> SsdCacheLayer::Recover(StorageBackend& dir, uint32_t volnr, uint32_t block_size, BlockHandler& below) {
  SsdReplay r;
  auto opened = dir.Open(LogPath(volnr));
  if (opened.status().IsNotFound()) return r;
  if (!opened.ok()) return opened.status();
  std::unique_ptr<ChunkFile> log = std::move(opened).value();
  QBD_ASSIGN_OR_RETURN(const uint64_t checkpoint, ReadCheckpoint(dir, volnr));
  r.last_seq = checkpoint;
  QBD_ASSIGN_OR_RETURN(const uint64_t size, log->Size());
  const uint64_t spp = SlotsPerSegment(block_size);
  const uint64_t segment_bytes = (spp + 1) * block_size;

  // Every valid write-back copy past the checkpoint, per block.
  struct Copy {
    uint64_t seq, offset, checksum;
  };
  std::map<uint64_t, std::vector<Copy>> copies;
  std::vector<std::byte> header(block_size);
  for (uint64_t seg = 0; seg < size / segment_bytes; ++seg) {
    QBD_RETURN_IF_ERROR(log->ReadAt(seg * segment_bytes, header));
    auto entries = DecodeSsdSegment(header, volnr);
    if (!entries.ok()) continue;  // never written, or another log's
    for (uint64_t j = 0; j < spp; ++j) {
      const std::optional<SsdLogEntry>& e = (*entries)[j];
      if (!e) continue;
      r.last_seq = std::max(r.last_seq, e->seq);
      if ((e->flags & kFlagDirty) == 0 || e->seq <= checkpoint) continue;
      copies[e->block].push_back(Copy{e->seq, seg * segment_bytes + (j + 1) * block_size, e->checksum});
    }
  }
  // The newest copy whose data matches its checksum (a newer torn one was never flushed).
  std::vector<std::byte> data(block_size);
  for (auto& [block, list] : copies) {
    std::sort(list.begin(), list.end(), [](const Copy& a, const Copy& b) { return a.seq > b.seq; });
    for (const Copy& c : list) {
      QBD_RETURN_IF_ERROR(log->ReadAt(c.offset, data));
      if (BlockChecksum(data) != c.checksum) {
        ++r.skipped;
        continue;
      }
      Status s = below.Write(block * block_size, data, /*fua=*/false);
      if (!s.ok()) return s.WithContext(fmt::format("replaying block {} of the SSD cache log", block));
      ++r.blocks;
      break;
    }
  }
  if (r.blocks > 0) {
    QBD_RETURN_IF_ERROR(below.Flush().WithContext("flushing the blocks replayed from the SSD cache log"));
  }
  if (r.last_seq > checkpoint) {
    QBD_RETURN_IF_ERROR(WriteCheckpoint(dir, volnr, r.last_seq));
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Set-up

SsdCacheLayer::SsdCacheLayer(std::unique_ptr<BlockHandler> next, StorageBackend& dir, uint32_t volnr,
                             uint32_t block_size, const SsdCacheOptions& options, const SsdReplay& replay,
                             std::shared_ptr<const VolumeMetrics> metrics)
    : next_(std::move(next)), dir_(dir), volnr_(volnr), bs_(block_size), options_(options),
      metrics_(std::move(metrics)) {
  log_path_ = fmt::format("{}/{}", dir.Describe(), LogPath(volnr));
  slots_per_segment_ = SlotsPerSegment(block_size);
  segments_ = std::max<uint64_t>(2, options.log_size / ((slots_per_segment_ + 1) * block_size));
  next_seq_ = replay.last_seq + 1;
  checkpoint_ = replay.last_seq;
  slots_.resize(segments_ * slots_per_segment_);
  header_written_ = std::make_unique<std::atomic<bool>[]>(segments_);
  Status s = dir.MkDirs(std::to_string(volnr));
  if (s.ok()) {
    auto created = dir.Create(LogPath(volnr));
    s = created.status();
    if (s.ok()) {
      log_ = std::move(created).value();
      s = log_->Truncate(segments_ * (slots_per_segment_ + 1) * block_size);
    }
    // The log must survive a power cut as soon as a write-back write lands in it.
    if (s.ok()) s = log_->Sync();
    if (s.ok()) s = dir.SyncDir(std::to_string(volnr));
    if (s.ok()) s = dir.SyncDir("");
  }
  if (!s.ok()) {
    Fail(s.ToString());
    return;
  }
  destager_ = std::thread([this] { DestageLoop(); });
}

SsdCacheLayer::~SsdCacheLayer() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (destager_.joinable()) destager_.join();
  bool abandoned;
  {
    std::lock_guard<std::mutex> l(mu_);
    abandoned = abandoned_;
  }
  if (!abandoned) {
    Status s = Drain();
    if (!s.ok()) QBD_LOG_ERROR("{}: could not destage at close: {}", log_path_, s.ToString());
  }
}

void SsdCacheLayer::AbandonForTest() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
    abandoned_ = true;
  }
  cv_.notify_all();
  if (destager_.joinable()) destager_.join();
  std::lock_guard<std::mutex> l(mu_);
  dirty_.clear();
}

void SsdCacheLayer::Fail(const std::string& why) {
  if (bypass_.exchange(true, std::memory_order_acq_rel)) return;
  QBD_LOG_WARN("{}: {}: the SSD cache is off; requests go to the parts{}", log_path_, why,
               options_.write_back ? " (blocks not yet destaged are written from memory)" : "");
  {
    std::lock_guard<std::mutex> l(mu_);
    index_.clear();
    wake_ = true;
  }
  cv_.notify_all();
}

uint64_t SsdCacheLayer::DataOffset(uint64_t slot) const {
  const uint64_t seg = slot / slots_per_segment_, j = slot % slots_per_segment_;
  return (seg * (slots_per_segment_ + 1) + 1 + j) * bs_;
}

uint64_t SsdCacheLayer::EntryOffset(uint64_t slot) const {
  const uint64_t seg = slot / slots_per_segment_, j = slot % slots_per_segment_;
  return seg * (slots_per_segment_ + 1) * bs_ + (1 + j) * kEntry;
}

// ---------------------------------------------------------------------------------------------
// The log

Result<uint64_t> SsdCacheLayer::ReserveLocked(std::unique_lock<std::mutex>& l, size_t n, size_t* got) {
  const uint64_t total = slots_.size();
  if (head_ % slots_per_segment_ == 0) {
    // Entering a segment: its old blocks leave the cache, once none of them awaits destaging.
    const uint64_t first = head_ % total;
    auto reusable = [&] {
      for (uint64_t s = first; s < first + slots_per_segment_; ++s) {
        if (slots_[s].dirty && slots_[s].seq > checkpoint_) return false;
      }
      return true;
    };
    while (!bypass_.load(std::memory_order_acquire) && !reusable()) {
      wake_ = true;
      cv_.notify_all();
      cv_.wait(l);
    }
    if (bypass_.load(std::memory_order_acquire)) return Status::Unavailable("the SSD cache is off");
    for (uint64_t s = first; s < first + slots_per_segment_; ++s) {
      auto it = index_.find(slots_[s].block);
      if (it != index_.end() && it->second == s) index_.erase(it);
      slots_[s] = SlotInfo{};
    }
    header_written_[first / slots_per_segment_].store(false, std::memory_order_release);
  }
  const uint64_t slot = head_ % total;
  *got = std::min<uint64_t>(n, slots_per_segment_ - head_ % slots_per_segment_);
  head_ += *got;
  return slot;
}

Status SsdCacheLayer::AppendAt(uint64_t slot, std::span<const SlotInfo> infos, std::span<const std::byte> data,
                               bool dirty) {
  QBD_RETURN_IF_ERROR(log_->WriteAt(DataOffset(slot), data));
  // The entries after the data: an entry whose data is not all there fails its checksum.
  const bool first_of_segment = slot % slots_per_segment_ == 0;
  std::vector<std::byte> entries((infos.size() + (first_of_segment ? 1 : 0)) * kEntry);
  std::byte* p = entries.data();
  if (first_of_segment) {
    EncodeSsdSegmentHeader(std::span<std::byte, kEntry>(p, kEntry), volnr_, bs_);
    p += kEntry;
  }
  for (const SlotInfo& s : infos) {
    EncodeSsdLogEntry(std::span<std::byte, kEntry>(p, kEntry),
                      SsdLogEntry{s.block, s.seq, s.checksum, dirty ? kFlagDirty : 0u});
    p += kEntry;
  }
  QBD_RETURN_IF_ERROR(log_->WriteAt(EntryOffset(slot) - (first_of_segment ? kEntry : 0), entries));
  const uint64_t seg = slot / slots_per_segment_;
  if (!first_of_segment && !header_written_[seg].load(std::memory_order_acquire)) {
    // The segment's first append has not written its header yet: without it these entries would
    // not be read back after a crash (the same bytes; whichever lands last changes nothing).
    std::array<std::byte, kEntry> header;
    EncodeSsdSegmentHeader(header, volnr_, bs_);
    QBD_RETURN_IF_ERROR(log_->WriteAt(seg * (slots_per_segment_ + 1) * bs_, header));
  }
  header_written_[seg].store(true, std::memory_order_release);
  return Status::OK();
}

template <typename Keep>
void SsdCacheLayer::AppendClean(uint64_t b0, std::span<const std::byte> data, Keep keep) {
  const size_t n = data.size() / bs_;
  std::vector<SlotInfo> infos(n);
  for (size_t i = 0; i < n; ++i) {
    infos[i].block = b0 + i;
    infos[i].checksum = BlockChecksum(data.subspan(i * bs_, bs_));
  }
  std::unique_lock<std::mutex> l(mu_);
  for (size_t i = 0; i < n;) {
    if (bypass_.load(std::memory_order_acquire)) return;
    // The next run of blocks the log should take (those it holds already take no slot).
    auto wanted = [&](size_t k) { return keep(b0 + k) && dirty_.count(b0 + k) == 0; };
    if (!wanted(i)) {
      ++i;
      continue;
    }
    size_t end = i + 1;
    while (end < n && wanted(end)) ++end;
    size_t k = 0;
    auto slot = ReserveLocked(l, end - i, &k);
    if (!slot.ok()) return;
    for (size_t j = i; j < i + k; ++j) {
      infos[j].seq = next_seq_++;
      // Checked again: ReserveLocked may have waited. A block that fails now keeps its slot unused
      // (its entry on disk is clean, so never replayed).
      if (!wanted(j)) continue;
      slots_[*slot + (j - i)] = infos[j];
      index_[b0 + j] = *slot + (j - i);
    }
    l.unlock();
    Status s = AppendAt(*slot, std::span(infos).subspan(i, k), data.subspan(i * bs_, k * bs_), /*dirty=*/false);
    if (!s.ok()) {
      Fail(fmt::format("writing the log: {}", s.ToString()));
      return;
    }
    counters_.fills.fetch_add(k, std::memory_order_relaxed);
    i += k;
    l.lock();
  }
}

void SsdCacheLayer::InvalidateLocked(uint64_t b0, uint64_t b1) {
  auto drop = [&](std::unordered_map<uint64_t, uint64_t>::iterator it) {
    slots_[it->second].block = kNoBlock;
    return index_.erase(it);
  };
  if (b1 - b0 + 1 > index_.size()) {
    for (auto it = index_.begin(); it != index_.end();) it = it->first >= b0 && it->first <= b1 ? drop(it) : std::next(it);
    return;
  }
  for (uint64_t b = b0; b <= b1; ++b) {
    auto it = index_.find(b);
    if (it != index_.end()) drop(it);
  }
}

// ---------------------------------------------------------------------------------------------
// Requests

Status SsdCacheLayer::Read(uint64_t off, std::span<std::byte> out) {
  // A read past the end is the parts' to refuse.
  if (out.empty() || off + out.size() > next_->Size()) return next_->Read(off, out);
  thread_local std::vector<std::byte> scratch;
  const WholeBlocks w(off, out, bs_, scratch);
  const uint64_t n = w.b1 - w.b0 + 1;
  // Where each block is: memory (not yet destaged), the log, or only the parts.
  enum class Where : uint8_t { kParts, kMemory, kLog };
  struct Found {
    Where where = Where::kParts;
    Dirty mem;          // kMemory
    SlotInfo at;        // kLog: what the slot held when looked up
    uint64_t slot = 0;  // kLog
    uint64_t seen = 0;  // WriteTracker::Seen before the read
  };
  std::vector<Found> found(n);
  bool all_cached = true;
  {
    std::lock_guard<std::mutex> l(mu_);
    const bool log_on = !bypass_.load(std::memory_order_acquire);
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t b = w.b0 + i;
      Found& f = found[i];
      f.seen = writes_.Seen(b);
      if (auto d = dirty_.find(b); d != dirty_.end()) {
        f.where = Where::kMemory;
        f.mem = d->second;
      } else if (auto x = log_on ? index_.find(b) : index_.end(); x != index_.end()) {
        f.where = Where::kLog;
        f.slot = x->second;
        f.at = slots_[x->second];
      } else {
        all_cached = false;
      }
    }
  }
  auto from_memory = [&](uint64_t i) {
    std::memcpy(w.whole.data() + i * bs_, found[i].mem.data->data() + found[i].mem.offset, bs_);
  };
  if (all_cached) {
    bool good = true;
    for (uint64_t i = 0; i < n && good; ++i) {
      const Found& f = found[i];
      if (f.where == Where::kMemory) {
        from_memory(i);
        continue;
      }
      std::span<std::byte> dst = w.whole.subspan(i * bs_, bs_);
      Status s = log_->ReadAt(DataOffset(f.slot), dst);
      if (!s.ok()) {
        Fail(fmt::format("reading the log: {}", s.ToString()));
        good = false;
        break;
      }
      std::lock_guard<std::mutex> l(mu_);
      // The slot may have been reused while it was read; then the block is read from the parts.
      const SlotInfo& now = slots_[f.slot];
      good = now.block == w.b0 + i && now.seq == f.at.seq && BlockChecksum(dst) == f.at.checksum;
    }
    if (good) {
      counters_.hits.fetch_add(n, std::memory_order_relaxed);
      if (metrics_) metrics_->ssd_hits->Increment(static_cast<double>(n));
      w.CopyOut();
      return Status::OK();
    }
  }
  counters_.misses.fetch_add(n, std::memory_order_relaxed);
  if (metrics_) metrics_->ssd_misses->Increment(static_cast<double>(n));
  QBD_RETURN_IF_ERROR(next_->Read(w.offset, w.whole));
  // Blocks not yet destaged are newer than what the parts returned.
  bool any_parts = false;
  for (uint64_t i = 0; i < n; ++i) {
    if (found[i].where == Where::kMemory) from_memory(i);
    any_parts = any_parts || found[i].where == Where::kParts;
  }
  w.CopyOut();
  if (any_parts && !bypass_.load(std::memory_order_acquire)) {
    AppendClean(w.b0, w.whole, [&](uint64_t b) {
      const Found& f = found[b - w.b0];
      return f.where == Where::kParts && writes_.Unchanged(b, f.seen) && index_.count(b) == 0;
    });
  }
  return Status::OK();
}

Status SsdCacheLayer::WriteBack(uint64_t b0, std::span<const std::byte> in, bool fua) {
  const size_t n = in.size() / bs_;
  auto buf = std::make_shared<const std::vector<std::byte>>(in.begin(), in.end());
  std::vector<SlotInfo> infos(n);
  for (size_t i = 0; i < n; ++i) {
    infos[i].block = b0 + i;
    infos[i].checksum = BlockChecksum(in.subspan(i * bs_, bs_));
    infos[i].dirty = true;
  }
  Status st;
  {
    std::shared_lock<std::shared_mutex> dl(direct_mu_);
    std::unique_lock<std::mutex> l(mu_);
    // Memory for blocks not yet destaged is bounded: wait for the destager.
    while (!bypass_.load(std::memory_order_acquire) && !dirty_.empty() && (dirty_.size() + n) * bs_ > options_.dirty_max) {
      wake_ = true;
      cv_.notify_all();
      cv_.wait(l);
    }
    if (bypass_.load(std::memory_order_acquire)) {
      st = Status::Unavailable("the SSD cache is off");
    } else {
      for (size_t i = 0; i < n; ++i) writes_.Begin(b0 + i);
      for (size_t done = 0; done < n && st.ok();) {
        size_t k = 0;
        auto slot = ReserveLocked(l, n - done, &k);
        if (!slot.ok()) {
          st = slot.status();
          break;
        }
        if (dirty_.empty()) oldest_dirty_ms_ = NowMs();
        for (size_t i = done; i < done + k; ++i) {
          infos[i].seq = next_seq_++;
          const uint64_t s = *slot + (i - done);
          if (auto old = index_.find(infos[i].block); old != index_.end()) slots_[old->second].block = kNoBlock;
          slots_[s] = infos[i];
          index_[infos[i].block] = s;
          dirty_[infos[i].block] = Dirty{infos[i].seq, buf, i * bs_};
        }
        l.unlock();
        st = AppendAt(*slot, std::span(infos).subspan(done, k), in.subspan(done * bs_, k * bs_), /*dirty=*/true);
        l.lock();
        if (!st.ok()) st = st.WithContext("writing the log");
        done += k;
      }
      for (size_t i = 0; i < n; ++i) writes_.End(b0 + i);
    }
  }
  if (st.ok() && fua) {
    st = log_->Sync();
    counters_.syncs.fetch_add(1, std::memory_order_relaxed);
    if (!st.ok()) st = st.WithContext("syncing the log");
  }
  if (st.ok()) return st;
  if (!st.IsUnavailable()) Fail(st.ToString());
  // The blocks logged so far are in memory; everything goes to the parts, then this write.
  const uint64_t b1 = b0 + n - 1;
  return Direct(b0, b1, [&] { return next_->Write(b0 * bs_, in, fua); });
}

template <typename Op>
Status SsdCacheLayer::Direct(uint64_t b0, uint64_t b1, Op op) {
  std::unique_lock<std::shared_mutex> dl(direct_mu_, std::defer_lock);
  if (options_.write_back) {
    dl.lock();
    QBD_RETURN_IF_ERROR(Drain());
    direct_since_flush_.store(true, std::memory_order_release);
  }
  const bool wide = WriteTracker::Wide(b0, b1);
  {
    std::lock_guard<std::mutex> l(mu_);
    if (wide) {
      writes_.BeginAll();
    } else {
      for (uint64_t b = b0; b <= b1; ++b) writes_.Begin(b);
    }
    InvalidateLocked(b0, b1);
  }
  Status s = op();
  std::lock_guard<std::mutex> l(mu_);
  if (wide) {
    writes_.EndAll();
  } else {
    for (uint64_t b = b0; b <= b1; ++b) writes_.End(b);
  }
  return s;
}

Status SsdCacheLayer::Write(uint64_t off, std::span<const std::byte> in, bool fua) {
  if (in.empty()) return next_->Write(off, in, fua);
  const uint64_t b0 = off / bs_, b1 = (off + in.size() - 1) / bs_;
  const bool whole = off % bs_ == 0 && in.size() % bs_ == 0;
  const bool log_on = !bypass_.load(std::memory_order_acquire);
  if (options_.write_back && whole && log_on && off + in.size() <= next_->Size()) return WriteBack(b0, in, fua);
  if (options_.write_back || !whole || !log_on || WriteTracker::Wide(b0, b1)) {
    return Direct(b0, b1, [&] { return next_->Write(off, in, fua); });
  }
  // Write-through: the parts first; then the log takes the blocks no other write overlapped.
  std::vector<uint64_t> begun(b1 - b0 + 1);
  {
    std::lock_guard<std::mutex> l(mu_);
    for (uint64_t b = b0; b <= b1; ++b) begun[b - b0] = writes_.Begin(b);
    InvalidateLocked(b0, b1);
  }
  Status s = next_->Write(off, in, fua);
  if (s.ok()) AppendClean(b0, in, [&](uint64_t b) { return writes_.Sole(b, begun[b - b0]); });
  std::lock_guard<std::mutex> l(mu_);
  for (uint64_t b = b0; b <= b1; ++b) writes_.End(b);
  return s;
}

Status SsdCacheLayer::Trim(uint64_t off, uint64_t len, bool fua) {
  if (len == 0) return next_->Trim(off, len, fua);
  return Direct(off / bs_, (off + len - 1) / bs_, [&] { return next_->Trim(off, len, fua); });
}

Status SsdCacheLayer::WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) {
  if (len == 0) return next_->WriteZeroes(off, len, may_trim, fua);
  return Direct(off / bs_, (off + len - 1) / bs_, [&] { return next_->WriteZeroes(off, len, may_trim, fua); });
}

Result<std::vector<Extent>> SsdCacheLayer::BlockStatus(uint64_t off, uint64_t len) {
  if (options_.write_back && len > 0) {
    // The parts describe blocks not yet destaged as they were: destage those first.
    bool pending;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = dirty_.lower_bound(off / bs_);
      pending = it != dirty_.end() && it->first <= (off + len - 1) / bs_;
    }
    if (pending) QBD_RETURN_IF_ERROR(Drain());
  }
  return next_->BlockStatus(off, len);
}

Status SsdCacheLayer::Flush() {
  if (!options_.write_back) return next_->Flush();
  Status s;
  if (!bypass_.load(std::memory_order_acquire)) {
    // Durable in the log is durable: a crash replays it.
    s = log_->Sync();
    counters_.syncs.fetch_add(1, std::memory_order_relaxed);
    if (!s.ok()) Fail(fmt::format("syncing the log: {}", s.ToString()));
  }
  if (bypass_.load(std::memory_order_acquire)) return Drain();
  // What went straight to the parts (TRIM, WRITE_ZEROES, partial blocks) is made durable there.
  if (direct_since_flush_.exchange(false, std::memory_order_acq_rel)) return next_->Flush();
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Destaging

uint64_t SsdCacheLayer::dirty_bytes() const {
  std::lock_guard<std::mutex> l(mu_);
  return dirty_.size() * bs_;
}

Status SsdCacheLayer::Drain() {
  if (!options_.write_back) return Status::OK();
  for (;;) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (dirty_.empty() || abandoned_) return Status::OK();
    }
    QBD_RETURN_IF_ERROR(DestageRound());
  }
}

Status SsdCacheLayer::DestageRound() {
  std::lock_guard<std::mutex> round(destage_mu_);
  std::vector<std::pair<uint64_t, Dirty>> batch;
  {
    std::lock_guard<std::mutex> l(mu_);
    batch.assign(dirty_.begin(), dirty_.end());  // in block order
  }
  if (batch.empty()) return Status::OK();
  // Runs of consecutive blocks go down as one write each.
  std::vector<std::byte> run;
  for (size_t i = 0; i < batch.size();) {
    size_t j = i + 1;
    while (j < batch.size() && batch[j].first == batch[j - 1].first + 1 && (j - i + 1) * bs_ <= kMaxRun) ++j;
    run.resize((j - i) * bs_);
    for (size_t k = i; k < j; ++k) {
      std::memcpy(run.data() + (k - i) * bs_, batch[k].second.data->data() + batch[k].second.offset, bs_);
    }
    QBD_RETURN_IF_ERROR(next_->Write(batch[i].first * bs_, run, /*fua=*/false).WithContext("destaging"));
    i = j;
  }
  QBD_RETURN_IF_ERROR(next_->Flush().WithContext("flushing destaged blocks"));
  // Destaged and durable on the parts: memory and the log's slots are freed up to the checkpoint.
  uint64_t checkpoint;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [block, d] : batch) {
      auto it = dirty_.find(block);
      if (it != dirty_.end() && it->second.seq == d.seq) dirty_.erase(it);
    }
    checkpoint = next_seq_ - 1;
    for (const auto& [block, d] : dirty_) checkpoint = std::min(checkpoint, d.seq - 1);
    if (!dirty_.empty()) oldest_dirty_ms_ = NowMs();
  }
  counters_.destaged.fetch_add(batch.size(), std::memory_order_relaxed);
  if (!bypass_.load(std::memory_order_acquire) && log_->Detached()) Fail("the log was removed");
  if (!bypass_.load(std::memory_order_acquire)) {
    Status s = WriteCheckpoint(dir_, volnr_, checkpoint);
    if (!s.ok()) Fail(fmt::format("writing the checkpoint: {}", s.ToString()));
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    checkpoint_ = std::max(checkpoint_, checkpoint);
  }
  cv_.notify_all();
  return Status::OK();
}

void SsdCacheLayer::DestageLoop() {
  std::unique_lock<std::mutex> l(mu_);
  uint64_t retry_at = 0;
  bool failing = false;
  while (!stop_) {
    cv_.wait_for(l, std::chrono::milliseconds(100), [&] { return stop_ || wake_; });
    if (stop_) break;
    if (!bypass_.load(std::memory_order_acquire) && log_->Detached()) {
      l.unlock();
      Fail("the log was removed");
      l.lock();
    }
    if (dirty_.empty()) {
      wake_ = false;
      cv_.notify_all();
      continue;
    }
    const uint64_t now = NowMs();
    const bool due = wake_ || bypass_.load(std::memory_order_acquire) || dirty_.size() * bs_ >= options_.dirty_max / 2 ||
                     now - oldest_dirty_ms_ >= options_.destage_delay_ms;
    if (!due || now < retry_at) continue;
    wake_ = false;
    l.unlock();
    Status s = DestageRound();
    l.lock();
    if (s.ok()) {
      if (failing) QBD_LOG_INFO("{}: destaging works again", log_path_);
      failing = false;
      retry_at = 0;
    } else {
      if (!failing) QBD_LOG_ERROR("{}: {} (retrying every second)", log_path_, s.ToString());
      failing = true;
      retry_at = NowMs() + 1000;
      cv_.notify_all();
    }
  }
}

std::string SsdCacheLayer::Summary() const {
  uint64_t used, dirty;
  {
    std::lock_guard<std::mutex> l(mu_);
    used = index_.size() * uint64_t{bs_};
    dirty = dirty_.size() * uint64_t{bs_};
  }
  const uint64_t h = counters_.hits.load(), m = counters_.misses.load();
  return fmt::format("ssd cache {}: {} {}, {} used, hits {} ({:.1f}%), misses {}, fills {}, not yet destaged {}, "
                     "destaged {}, log syncs {}{}",
                     log_path_, FormatSize(segments_ * (slots_per_segment_ + 1) * bs_),
                     options_.write_back ? "write-back" : "write-through", FormatSize(used), h,
                     h + m ? 100.0 * h / (h + m) : 0.0, m, counters_.fills.load(), FormatSize(dirty),
                     counters_.destaged.load(), counters_.syncs.load(), healthy() ? "" : ", off (failed or removed)");
}

}  // namespace qbd
