// DirtyMap: which regions of a volume one part has missed (DRBD's write-intent bitmap, kept for
// the missed writes). One bit per region of `region_size` bytes; a set bit means the part's copy
// of that region may be stale, so reads avoid it there until resync has copied it back.
//
// The file format (layout-spec.md §5) is a 32-byte header then the bitmap:
//   magic "QBDDIRTY" | u32 LE format (1) | u32 LE region_size | u64 LE region count | 8 zero bytes
//   bit r (LSB first) of byte 32 + r / 8 is region r.
// Copies live on the other parts' backends as "<volnr>/.dirty-<part>". The same type, with one
// bit per chunk and the magic "QBDCHUNK", is the volume's chunk map "<volnr>/.chunkmap" (§6).
//
// Thread-safety: Test/Set/Clear are lock-free and safe from any thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/chunk_format.h"
#include "qbd/status.h"

namespace qbd {

inline constexpr size_t kDirtyHeaderSize = 32;
// The same bitmap file serves two maps (layout-spec.md §5, §6), told apart by the magic.
inline constexpr char kDirtyMagic[] = "QBDDIRTY";
inline constexpr char kChunkMapMagic[] = "QBDCHUNK";
inline constexpr uint32_t kDefaultDirtyRegion = 64 * 1024;

// The region size of a volume's dirty maps: 64 KiB, at least one block, at most one chunk.
inline uint32_t DirtyRegionSize(const Geometry& g) {
  uint64_t rs = kDefaultDirtyRegion;
  if (rs < g.block_size) rs = g.block_size;
  if (rs > g.chunk_size) rs = g.chunk_size;
  return static_cast<uint32_t>(rs);
}

class DirtyMap {
 public:
  DirtyMap(uint32_t region_size, uint64_t regions);

  uint32_t region_size() const { return region_size_; }
  uint64_t regions() const { return regions_; }
  bool Test(uint64_t region) const;
  // True when any region in [first, last] is set.
  bool AnyIn(uint64_t first, uint64_t last) const;
  // Sets [first, last]; returns the indices of the bitmap bytes that changed (to persist them).
  std::vector<uint64_t> Set(uint64_t first, uint64_t last);
  // Clears `region`; true when it was set.
  bool Clear(uint64_t region);
  // The number of set regions (O(1)).
  uint64_t CountSet() const;
  // The first set region at or after `from`.
  std::optional<uint64_t> NextSet(uint64_t from) const;
  uint8_t Byte(uint64_t index) const;
  // ORs the bits of `other` (same geometry) into this map.
  void Merge(const DirtyMap& other);
  // Moves every set bit into `dst` (ORed) and clears it here, byte by byte atomically.
  void DrainInto(DirtyMap& dst);

  // The whole file: header then bitmap. `magic`: 8 characters, kDirtyMagic or kChunkMapMagic.
  std::string Encode(const char* magic = kDirtyMagic) const;
  // Parses a file written by Encode (a shorter bitmap is padded with zeros: a grown volume).
  // Corruption naming `file` on a bad magic, format or region size.
  static Result<std::unique_ptr<DirtyMap>> Decode(std::span<const std::byte> bytes, uint32_t region_size,
                                                  uint64_t regions, std::string_view file,
                                                  const char* magic = kDirtyMagic);
  // "<volnr>/.dirty-<part>"
  static std::string PathFor(uint32_t volnr, char part);
  // "<volnr>/.chunkmap": the chunks ever written (layout-spec.md §6), one bit per chunk.
  static std::string ChunkMapPath(uint32_t volnr);

 private:
  const uint32_t region_size_;
  const uint64_t regions_;
  std::unique_ptr<std::atomic<uint8_t>[]> bits_;
  size_t nbytes_;
  std::atomic<uint64_t> count_{0};  // set bits, kept with every change
};

}  // namespace qbd
