// Test data for chunk files: blocks whose every byte depends on a tag and its position (no two
// blocks alike), their metadata as a write of generation `gen` stamps it, what a chunk file's
// bytes say about a block, and a guard that quiets
// the expected WARN lines while a test runs. Header-only; used by the engine's unit tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "qbd/chunk_format.h"
#include "qbd/log.h"

namespace qbd::test {

inline std::vector<std::byte> TaggedBlocks(uint64_t tag, uint64_t n, uint32_t bs) {
  std::vector<std::byte> out(n * bs);
  for (size_t i = 0; i < out.size(); ++i) out[i] = std::byte((tag * 131 + i * 7 + i / bs) % 253);
  return out;
}

inline std::vector<BlockMeta> TaggedMetas(std::span<const std::byte> data, uint64_t gen, uint32_t bs) {
  std::vector<BlockMeta> metas(data.size() / bs);
  for (size_t i = 0; i < metas.size(); ++i) metas[i] = BlockMeta{gen, BlockChecksum(data.subspan(i * bs, bs))};
  return metas;
}

// What the bytes of a format-2 chunk file (layout-spec.md §4.2) say about block `a.block`: the
// slot its data matches, and the metadata in memory.
inline SlotVerdict StoredSlots(std::span<const std::byte> file, const Geometry& g, const BlockAddress& a) {
  std::span<const std::byte> data = file.subspan(g.DataOffset(a.block), g.block_size);
  const std::vector<std::byte> zeros(g.block_size);
  return ResolveSlots(data, BlockChecksum(data), file.data() + g.MetaOffset(a.block), a, BlockChecksum(zeros));
}

// Raises the log level for a test's lifetime (errors only by default; kOff for tests whose
// injected crashes log hundreds of expected errors).
class QuietLog {
 public:
  explicit QuietLog(LogLevel level = LogLevel::kError) : saved_(GetLogLevel()) { SetLogLevel(level); }
  ~QuietLog() { SetLogLevel(saved_); }

 private:
  LogLevel saved_;
};

}  // namespace qbd::test
