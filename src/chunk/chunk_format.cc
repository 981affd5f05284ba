// Implements layout-spec.md §2-§4 (format 2) and §9 (format 1).
#include "qbd/chunk_format.h"

#include <fmt/format.h>

#include <charconv>

#include <algorithm>

#include "common/coding.h"

namespace qbd {

void EncodeBlockMeta(const BlockMeta& meta, std::byte* out16) {
  EncodeLE64(out16, meta.generation);  // §4.2: bytes 0-7
  EncodeLE64(out16 + 8, meta.checksum);  // §4.2: bytes 8-15
}

BlockMeta DecodeBlockMeta(const std::byte* in16) {
  return BlockMeta{DecodeLE64(in16), DecodeLE64(in16 + 8)};
}

Status VerifyBlock(std::span<const std::byte> data, const BlockMeta& meta) {
  if (meta.IsUnwritten()) {
    // §4.3: an unwritten block must read as zeros; anything else lost its metadata.
    bool zero = std::all_of(data.begin(), data.end(), [](std::byte b) { return b == std::byte{0}; });
    if (!zero) return Status::Corruption("data present under all-zero metadata");
    return Status::OK();
  }
  if (meta.generation == 0) return Status::Corruption("generation 0 with a checksum");
  uint64_t sum = BlockChecksum(data);
  if (sum != meta.checksum) {
    return Status::Corruption(
        fmt::format("checksum mismatch: stored {:016x}, computed {:016x}", meta.checksum, sum));
  }
  return Status::OK();
}

void EncodeSlot(const BlockMeta& meta, const BlockAddress& a, uint64_t zero_checksum, std::byte* out16) {
  // §4.2: generation, then the content checksum bound to the address and the generation. A
  // "zeros" slot (generation 0) carries the check of an all-zero block: never 16 zero bytes.
  const uint64_t content = meta.IsUnwritten() ? zero_checksum : meta.checksum;
  EncodeLE64(out16, meta.generation);
  EncodeLE64(out16 + 8, content ^ AddressKey(a, meta.generation));
}

bool SlotEmpty(const std::byte* in16) {
  return DecodeLE64(in16) == 0 && DecodeLE64(in16 + 8) == 0;
}

SlotVerdict ResolveSlots(std::span<const std::byte> data, uint64_t content, const std::byte* pair32,
                         const BlockAddress& a, uint64_t zero_checksum) {
  (void)data;
  SlotVerdict v;
  const bool empty0 = SlotEmpty(pair32), empty1 = SlotEmpty(pair32 + kSlotSize);
  if (empty0 && empty1) {
    // §4.3: never written (or trimmed): the data must be zeros.
    v.good = content == zero_checksum;
    return v;
  }
  v.pending = !empty0 && !empty1;
  uint64_t best_generation = 0;
  for (int s = 0; s < 2; ++s) {
    const std::byte* p = pair32 + s * kSlotSize;
    if (s == 0 ? empty0 : empty1) continue;
    const uint64_t generation = DecodeLE64(p);
    const uint64_t stored = DecodeLE64(p + 8) ^ AddressKey(a, generation);
    const bool match = generation == 0 ? stored == zero_checksum && content == zero_checksum : stored == content;
    if (!match || (v.good && generation <= best_generation)) continue;
    v.good = true;
    v.slot = s;
    best_generation = generation;
    v.meta = generation == 0 ? BlockMeta{} : BlockMeta{generation, content};
  }
  return v;
}

static bool IsPow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

Status Geometry::Validate() const {
  if (!IsPow2(block_size) || block_size < kMinBlockSize || block_size > kMaxBlockSize) {
    return Status::InvalidArgument(fmt::format(
        "block size {} must be a power of two from {} to {}", block_size, kMinBlockSize, kMaxBlockSize));
  }
  if (!IsPow2(chunk_size) || chunk_size < block_size || chunk_size > kMaxChunkSize) {
    return Status::InvalidArgument(fmt::format(
        "chunk size {} must be a power of two from the block size to {}", chunk_size, kMaxChunkSize));
  }
  if (format != kFormat1 && format != kFormat2) {
    return Status::InvalidArgument(fmt::format("chunk format {} is unknown (1 or 2)", format));
  }
  if (size == 0 || size % block_size != 0) {
    return Status::InvalidArgument(
        fmt::format("volume size {} must be a non-zero multiple of the block size {}", size, block_size));
  }
  return Status::OK();
}

std::string ChunkPath(uint32_t volnr, char part, uint64_t chunk) {
  return fmt::format("{}/{}/{}", volnr, part, chunk + 1);
}

std::string PartDir(uint32_t volnr, char part) { return fmt::format("{}/{}", volnr, part); }

uint64_t ChunkFileNumber(std::string_view name) {
  if (name.empty() || name[0] == '0') return 0;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), v);
  return ec == std::errc() && end == name.data() + name.size() ? v : 0;
}

}  // namespace qbd
