// MemDisk: an in-memory BlockHandler for tests of the NBD server and of layers above a disk.
//
// The disk is a std::vector<std::byte> of a fixed size plus a per-4-KiB-page "allocated" bit:
// pages never written (or trimmed / zeroed with may_trim) are reported by BlockStatus as holes
// that read as zeros. It counts calls (reads, writes, FUA writes, flushes, ...) and can be told
// to fail the next call(s) with a given Status.
//
// Thread-safety: safe for concurrent calls; one mutex guards the data.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <span>
#include <vector>

#include "qbd/handler.h"

namespace qbd::test {

class MemDisk : public BlockHandler {
 public:
  static constexpr uint64_t kPageSize = 4096;

  explicit MemDisk(uint64_t size);

  uint64_t Size() const override { return size_; }
  Status Read(uint64_t off, std::span<std::byte> out) override;
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override;
  Status Flush() override;
  Status Trim(uint64_t off, uint64_t len, bool fua) override;
  Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) override;
  // Runs of allocated pages are {hole=false, zero=false}; never-written pages {true, true}.
  // NotSupported after SetBlockStatusSupported(false).
  Result<std::vector<Extent>> BlockStatus(uint64_t off, uint64_t len) override;

  // The next call of Read/Write/Flush/Trim/WriteZeroes/BlockStatus returns `s` (queued: calling
  // FailNext twice fails the next two calls) without touching the data. REQUIRES: !s.ok().
  void FailNext(Status s);
  void SetBlockStatusSupported(bool supported) { block_status_supported_ = supported; }

  // A copy of [off, off + len). REQUIRES: the range is inside the disk.
  std::vector<std::byte> Contents(uint64_t off, uint64_t len) const;

  uint64_t reads() const { return reads_; }
  uint64_t writes() const { return writes_; }
  uint64_t fua_writes() const { return fua_writes_; }  // FUA Write, Trim and WriteZeroes calls
  uint64_t flushes() const { return flushes_; }
  uint64_t trims() const { return trims_; }
  uint64_t zeroes() const { return zeroes_; }
  uint64_t no_hole_zeroes() const { return no_hole_zeroes_; }  // WriteZeroes with !may_trim
  uint64_t block_statuses() const { return block_statuses_; }

 private:
  Status CheckRange(const char* op, uint64_t off, uint64_t len) const;
  // Pops an injected failure, if any.
  Status TakeFailure();
  // Zeroes [off, off + len); pages entirely inside become holes when `unmap`, else allocated.
  // REQUIRES: mu_ held, range checked.
  void ZeroRangeLocked(uint64_t off, uint64_t len, bool unmap);

  const uint64_t size_;
  mutable std::mutex mu_;
  std::vector<std::byte> data_;  // guarded by mu_
  std::vector<bool> allocated_;  // guarded by mu_; one bit per kPageSize page
  std::deque<Status> failures_;  // guarded by mu_
  std::atomic<bool> block_status_supported_{true};

  std::atomic<uint64_t> reads_{0}, writes_{0}, fua_writes_{0}, flushes_{0}, trims_{0}, zeroes_{0},
      no_hole_zeroes_{0}, block_statuses_{0};
};

}  // namespace qbd::test
