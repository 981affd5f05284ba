// Implements layout-spec.md §5.
#include "qbd/dirty_map.h"

#include <fmt/format.h>

#include <bit>
#include <cstring>

#include "common/coding.h"

namespace qbd {


DirtyMap::DirtyMap(uint32_t region_size, uint64_t regions)
    : region_size_(region_size), regions_(regions), nbytes_((regions + 7) / 8) {
  bits_ = std::make_unique<std::atomic<uint8_t>[]>(nbytes_ == 0 ? 1 : nbytes_);
  for (size_t i = 0; i < nbytes_; ++i) bits_[i].store(0, std::memory_order_relaxed);
}

bool DirtyMap::Test(uint64_t region) const {
  if (region >= regions_) return false;
  return (bits_[region / 8].load(std::memory_order_acquire) >> (region % 8)) & 1;
}

bool DirtyMap::AnyIn(uint64_t first, uint64_t last) const {
  for (uint64_t r = first; r <= last && r < regions_; ++r) {
    if (r % 8 == 0 && r + 7 <= last && bits_[r / 8].load(std::memory_order_acquire) == 0) {
      r += 7;
      continue;
    }
    if (Test(r)) return true;
  }
  return false;
}

std::vector<uint64_t> DirtyMap::Set(uint64_t first, uint64_t last) {
  std::vector<uint64_t> changed;
  for (uint64_t r = first; r <= last && r < regions_; ++r) {
    uint8_t bit = static_cast<uint8_t>(1u << (r % 8));
    uint8_t old = bits_[r / 8].fetch_or(bit, std::memory_order_acq_rel);
    if (!(old & bit)) {
      count_.fetch_add(1, std::memory_order_relaxed);
      if (changed.empty() || changed.back() != r / 8) changed.push_back(r / 8);
    }
  }
  return changed;
}

bool DirtyMap::Clear(uint64_t region) {
  if (region >= regions_) return false;
  uint8_t bit = static_cast<uint8_t>(1u << (region % 8));
  bool was = bits_[region / 8].fetch_and(static_cast<uint8_t>(~bit), std::memory_order_acq_rel) & bit;
  if (was) count_.fetch_sub(1, std::memory_order_relaxed);
  return was;
}

uint64_t DirtyMap::CountSet() const { return count_.load(std::memory_order_relaxed); }

std::optional<uint64_t> DirtyMap::NextSet(uint64_t from) const {
  for (uint64_t i = from / 8; i < nbytes_; ++i) {
    uint8_t b = bits_[i].load(std::memory_order_acquire);
    if (i == from / 8) b &= static_cast<uint8_t>(0xff << (from % 8));
    if (b != 0) {
      uint64_t r = i * 8 + static_cast<uint64_t>(std::countr_zero(b));
      if (r < regions_) return r;
    }
  }
  return std::nullopt;
}

uint8_t DirtyMap::Byte(uint64_t index) const {
  return index < nbytes_ ? bits_[index].load(std::memory_order_acquire) : 0;
}

void DirtyMap::Merge(const DirtyMap& other) {
  size_t n = std::min(nbytes_, other.nbytes_);
  for (size_t i = 0; i < n; ++i) {
    uint8_t add = other.Byte(i);
    uint8_t old = bits_[i].fetch_or(add, std::memory_order_acq_rel);
    count_.fetch_add(static_cast<uint64_t>(std::popcount(static_cast<uint8_t>(add & ~old))), std::memory_order_relaxed);
  }
}

void DirtyMap::DrainInto(DirtyMap& dst) {
  size_t n = std::min(nbytes_, dst.nbytes_);
  for (size_t i = 0; i < n; ++i) {
    uint8_t b = bits_[i].exchange(0, std::memory_order_acq_rel);
    if (b == 0) continue;
    count_.fetch_sub(static_cast<uint64_t>(std::popcount(b)), std::memory_order_relaxed);
    uint8_t old = dst.bits_[i].fetch_or(b, std::memory_order_acq_rel);
    dst.count_.fetch_add(static_cast<uint64_t>(std::popcount(static_cast<uint8_t>(b & ~old))),
                         std::memory_order_relaxed);
  }
}

std::string DirtyMap::Encode(const char* magic) const {
  std::string out(kDirtyHeaderSize + nbytes_, '\0');
  auto* p = reinterpret_cast<std::byte*>(out.data());
  std::memcpy(p, magic, 8);
  EncodeLE32(p + 8, 1);
  EncodeLE32(p + 12, region_size_);
  EncodeLE64(p + 16, regions_);
  for (size_t i = 0; i < nbytes_; ++i) out[kDirtyHeaderSize + i] = static_cast<char>(Byte(i));
  return out;
}

Result<std::unique_ptr<DirtyMap>> DirtyMap::Decode(std::span<const std::byte> bytes, uint32_t region_size,
                                                   uint64_t regions, std::string_view file, const char* magic) {
  const char* what = std::memcmp(magic, kChunkMapMagic, 8) == 0 ? "chunk map" : "dirty map";
  if (bytes.empty()) return Status::Corruption(fmt::format("{}: empty file (0 bytes)", file));
  if (bytes.size() < kDirtyHeaderSize) {
    return Status::Corruption(fmt::format("{}: cut short: {} bytes, less than the {}-byte header of a {}", file,
                                          bytes.size(), kDirtyHeaderSize, what));
  }
  if (std::memcmp(bytes.data(), magic, 8) != 0) {
    return Status::Corruption(fmt::format("{}: bytes 0-7: not a {} (bad magic)", file, what));
  }
  uint32_t format = DecodeLE32(bytes.data() + 8);
  uint32_t rs = DecodeLE32(bytes.data() + 12);
  if (format != 1) return Status::Corruption(fmt::format("{}: bytes 8-11: {} format {} unsupported", file, what, format));
  if (rs != region_size) {
    return Status::Corruption(
        fmt::format("{}: bytes 12-15: region size {} where {} was expected", file, rs, region_size));
  }
  if (DecodeLE64(bytes.data() + 24) != 0) {
    return Status::Corruption(fmt::format("{}: bytes 24-31: not zero", file));
  }
  // Every copy is first written whole (layout-spec.md §5, §6) and never shrinks: a bitmap shorter
  // than its header's count was cut short.
  const uint64_t count = DecodeLE64(bytes.data() + 16);
  if (count > (bytes.size() - kDirtyHeaderSize) * 8) {
    return Status::Corruption(fmt::format("{}: cut short: {} bytes of bitmap for the {} bits its header counts",
                                          file, bytes.size() - kDirtyHeaderSize, count));
  }
  auto map = std::make_unique<DirtyMap>(region_size, regions);
  size_t have = bytes.size() - kDirtyHeaderSize;
  for (size_t i = 0; i < std::min(have, map->nbytes_); ++i) {
    map->bits_[i].store(static_cast<uint8_t>(bytes[kDirtyHeaderSize + i]), std::memory_order_relaxed);
  }
  // Bits past `regions` (a file from a larger map) are dropped.
  if (regions % 8 != 0 && map->nbytes_ > 0) {
    map->bits_[map->nbytes_ - 1].fetch_and(static_cast<uint8_t>((1u << (regions % 8)) - 1));
  }
  uint64_t n = 0;
  for (size_t i = 0; i < map->nbytes_; ++i) n += static_cast<uint64_t>(std::popcount(map->Byte(i)));
  map->count_.store(n);
  return map;
}

std::string DirtyMap::PathFor(uint32_t volnr, char part) { return fmt::format("{}/.dirty-{}", volnr, part); }

std::string DirtyMap::ChunkMapPath(uint32_t volnr) { return fmt::format("{}/.chunkmap", volnr); }

}  // namespace qbd
