#include "mem_disk.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace qbd::test {

MemDisk::MemDisk(uint64_t size)
    : size_(size), data_(size), allocated_((size + kPageSize - 1) / kPageSize, false) {}

Status MemDisk::CheckRange(const char* op, uint64_t off, uint64_t len) const {
  if (off > size_ || len > size_ - off) {
    return Status::InvalidArgument(
        fmt::format("memdisk {} [{}, +{}) past end {}", op, off, len, size_));
  }
  return Status::OK();
}

Status MemDisk::TakeFailure() {
  std::lock_guard lk(mu_);
  if (failures_.empty()) return Status::OK();
  Status s = failures_.front();
  failures_.pop_front();
  return s;
}

void MemDisk::FailNext(Status s) {
  std::lock_guard lk(mu_);
  failures_.push_back(std::move(s));
}

Status MemDisk::Read(uint64_t off, std::span<std::byte> out) {
  ++reads_;
  QBD_RETURN_IF_ERROR(TakeFailure());
  QBD_RETURN_IF_ERROR(CheckRange("read", off, out.size()));
  std::lock_guard lk(mu_);
  if (!out.empty()) std::memcpy(out.data(), data_.data() + off, out.size());
  return Status::OK();
}

Status MemDisk::Write(uint64_t off, std::span<const std::byte> in, bool fua) {
  ++writes_;
  if (fua) ++fua_writes_;
  QBD_RETURN_IF_ERROR(TakeFailure());
  QBD_RETURN_IF_ERROR(CheckRange("write", off, in.size()));
  std::lock_guard lk(mu_);
  if (in.empty()) return Status::OK();
  std::memcpy(data_.data() + off, in.data(), in.size());
  for (uint64_t p = off / kPageSize; p <= (off + in.size() - 1) / kPageSize; ++p) {
    allocated_[p] = true;
  }
  return Status::OK();
}

Status MemDisk::Flush() {
  ++flushes_;
  return TakeFailure();
}

void MemDisk::ZeroRangeLocked(uint64_t off, uint64_t len, bool unmap) {
  if (len == 0) return;
  std::memset(data_.data() + off, 0, len);
  const uint64_t end = off + len;
  for (uint64_t p = off / kPageSize; p <= (end - 1) / kPageSize; ++p) {
    const uint64_t page_begin = p * kPageSize;
    const uint64_t page_end = std::min(page_begin + kPageSize, size_);
    const bool whole = off <= page_begin && end >= page_end;
    if (!unmap) {
      allocated_[p] = true;
    } else if (whole) {
      allocated_[p] = false;
    }
  }
}

Status MemDisk::Trim(uint64_t off, uint64_t len, bool fua) {
  ++trims_;
  if (fua) ++fua_writes_;
  QBD_RETURN_IF_ERROR(TakeFailure());
  QBD_RETURN_IF_ERROR(CheckRange("trim", off, len));
  std::lock_guard lk(mu_);
  ZeroRangeLocked(off, len, /*unmap=*/true);
  return Status::OK();
}

Status MemDisk::WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) {
  ++zeroes_;
  if (fua) ++fua_writes_;
  if (!may_trim) ++no_hole_zeroes_;
  QBD_RETURN_IF_ERROR(TakeFailure());
  QBD_RETURN_IF_ERROR(CheckRange("write zeroes", off, len));
  std::lock_guard lk(mu_);
  ZeroRangeLocked(off, len, /*unmap=*/may_trim);
  return Status::OK();
}

Result<std::vector<Extent>> MemDisk::BlockStatus(uint64_t off, uint64_t len) {
  ++block_statuses_;
  QBD_RETURN_IF_ERROR(TakeFailure());
  if (!block_status_supported_) return Status::NotSupported("memdisk block status disabled");
  QBD_RETURN_IF_ERROR(CheckRange("block status", off, len));
  if (len == 0) return Status::InvalidArgument("memdisk block status of 0 bytes");
  std::lock_guard lk(mu_);
  std::vector<Extent> out;
  const uint64_t end = off + len;
  uint64_t pos = off;
  while (pos < end) {
    const uint64_t page = pos / kPageSize;
    const uint64_t next = std::min((page + 1) * kPageSize, end);
    const bool hole = !allocated_[page];
    if (!out.empty() && out.back().hole == hole) {
      out.back().length += next - pos;
    } else {
      out.push_back(Extent{next - pos, hole, hole});
    }
    pos = next;
  }
  return out;
}

std::vector<std::byte> MemDisk::Contents(uint64_t off, uint64_t len) const {
  std::lock_guard lk(mu_);
  return std::vector<std::byte>(data_.begin() + off, data_.begin() + off + len);
}

}  // namespace qbd::test
