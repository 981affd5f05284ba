#include "qbd/fence.h"

#include <fmt/format.h>

#include <cerrno>

namespace qbd {

FenceLayer::FenceLayer(std::unique_ptr<BlockHandler> next, std::string volume,
                       const std::atomic<uint64_t>& valid_until, const Clock& clock)
    : Layer(std::move(next)),
      volume_(std::move(volume)),
      valid_until_(valid_until),
      clock_(clock) {}

Status FenceLayer::Check(const char* op) {
  if (clock_.NowMs() < valid_until_.load(std::memory_order_acquire)) return Status::OK();
  refused_.fetch_add(1, std::memory_order_relaxed);
  return Status::Unavailable(fmt::format("{} volume {}: refused: this master's lease on the volume "
                                         "is not known valid (self-fenced)",
                                         op, volume_),
                             ESHUTDOWN);
}

Status FenceLayer::After(const char* op, Status s) {
  if (!s.ok()) return s;
  return Check(op);
}

Status FenceLayer::Read(uint64_t off, std::span<std::byte> out) {
  QBD_RETURN_IF_ERROR(Check("read"));
  return After("read", next().Read(off, out));
}

Status FenceLayer::Write(uint64_t off, std::span<const std::byte> in, bool fua) {
  QBD_RETURN_IF_ERROR(Check("write"));
  return After("write", next().Write(off, in, fua));
}

Status FenceLayer::Flush() {
  QBD_RETURN_IF_ERROR(Check("flush"));
  return After("flush", next().Flush());
}

Status FenceLayer::Trim(uint64_t off, uint64_t len, bool fua) {
  QBD_RETURN_IF_ERROR(Check("trim"));
  return After("trim", next().Trim(off, len, fua));
}

Status FenceLayer::WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) {
  QBD_RETURN_IF_ERROR(Check("write_zeroes"));
  return After("write_zeroes", next().WriteZeroes(off, len, may_trim, fua));
}

Result<std::vector<Extent>> FenceLayer::BlockStatus(uint64_t off, uint64_t len) {
  QBD_RETURN_IF_ERROR(Check("block_status"));
  auto r = next().BlockStatus(off, len);
  if (!r.ok()) return r;
  QBD_RETURN_IF_ERROR(Check("block_status"));
  return r;
}

}  // namespace qbd
