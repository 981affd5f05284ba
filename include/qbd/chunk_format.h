// Chunk format: where each byte of a volume lives on a part, and the per-block metadata.
// Implements layout-spec.md (normative; its section numbers are cited as §N).
//
// A volume of `size` bytes is cut into chunks of `chunk_size` bytes; chunk index c (0-based) is
// stored in the file "<volnr>/<part>/<c+1>" of the part's backend (§3). A chunk holds
// chunk_size / block_size blocks.
//  - Format 2 (§4, what qbd writes): block i's data at byte i * block_size of the chunk file (the
//    data area, 4 KiB-aligned), its two 16-byte metadata slots at chunk_size + i * 32 (the
//    metadata area). A slot's check binds the data to its generation and its address (§4.2).
//  - Format 1 (§9, read for conversion and verification only): block i at byte
//    i * (block_size + 16), its data followed by a 16-byte BlockMeta.
//
// In memory a block's metadata is a BlockMeta: its generation and the XXH3-64 of its data (the
// content checksum). What is stored differs by format; the functions below convert.
//
// Thread-safety: pure functions and values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "qbd/status.h"

namespace qbd {

inline constexpr uint32_t kFormat1 = 1;
inline constexpr uint32_t kFormat2 = 2;
inline constexpr uint32_t kBlockMetaSize = 16;  // format 1: one BlockMeta after each block
inline constexpr uint32_t kSlotSize = 16;       // format 2: one metadata slot
inline constexpr uint32_t kSlotPairSize = 2 * kSlotSize;  // format 2: a block's two slots
// A generation is (epoch << kGenerationBits) + n, n counting writes from 1 within the epoch (§4.2).
inline constexpr uint64_t kGenerationBits = 40;
// The largest generation a volume whose .epoch says `epoch` can have written (§4.6: larger ones
// are suspect).
inline constexpr uint64_t MaxGenerationOfEpoch(uint64_t epoch) { return ((epoch + 1) << kGenerationBits) - 1; }
inline constexpr uint32_t kMinBlockSize = 512;
inline constexpr uint32_t kMaxBlockSize = 64 * 1024;
inline constexpr uint64_t kMaxChunkSize = 1ull << 30;

// A block's metadata in memory. All-zero means "never written or trimmed": the data reads as zeros.
struct BlockMeta {
  uint64_t generation = 0;  // >= 1 once written; larger is newer
  uint64_t checksum = 0;    // XXH3-64 (seed 0) of the block's data
  bool IsUnwritten() const { return generation == 0 && checksum == 0; }
  bool operator==(const BlockMeta&) const = default;
};

// Format 1 (§9.2): the 16 bytes after each block, generation then checksum, little-endian.
void EncodeBlockMeta(const BlockMeta& meta, std::byte* out16);
BlockMeta DecodeBlockMeta(const std::byte* in16);

// XXH3-64 of `data` (the value `xxhsum -H3` prints).
uint64_t BlockChecksum(std::span<const std::byte> data);

// OK when `data` matches `meta`: a written block's checksum agrees, an unwritten block's data is
// all zeros. Corruption otherwise.
Status VerifyBlock(std::span<const std::byte> data, const BlockMeta& meta);

// Where a block belongs (§4.2): the address its format-2 check is bound to.
struct BlockAddress {
  uint32_t volnr = 0;
  uint64_t chunk = 0;  // 0-based chunk index (the file "<chunk + 1>")
  uint64_t block = 0;  // block index within the chunk
};
// XXH3-64 of the 32 bytes volnr, chunk, block, generation (each u64 little-endian): what a
// format-2 slot's check adds (XOR) to the content checksum (§4.2).
uint64_t AddressKey(const BlockAddress& a, uint64_t generation);

// Format 2 slot (§4.2): generation, then check = checksum XOR AddressKey(address, generation).
// `meta` unwritten encodes the "zeros" slot (generation 0, check of an all-zero block); an empty
// slot (16 zero bytes) is written by EncodeEmptySlot. `zero_checksum` is BlockChecksum of an
// all-zero block of the volume's block size.
void EncodeSlot(const BlockMeta& meta, const BlockAddress& a, uint64_t zero_checksum, std::byte* out16);
bool SlotEmpty(const std::byte* in16);

// What a block's two slots say about its data (§4.3 format 2).
struct SlotVerdict {
  int slot = -1;    // the slot that holds: 0 or 1; -1 when none does (corrupt), or for an empty pair
  bool good = false;  // the data passes: it matches `slot`, or the pair is empty and the data zero
  bool pending = false;  // both slots used: a write whose completion is not recorded yet (§4.5)
  BlockMeta meta;   // the block's metadata in memory when good (unwritten for zeros)
};
// Judges `data` against the slot pair `pair32` at address `a`: among the slots that match, the one
// with the larger generation; a "zeros" slot matches all-zero data. `content` is BlockChecksum(data).
SlotVerdict ResolveSlots(std::span<const std::byte> data, uint64_t content, const std::byte* pair32,
                         const BlockAddress& a, uint64_t zero_checksum);

// The geometry of one volume.
struct Geometry {
  uint64_t size = 0;        // bytes, a multiple of block_size
  uint32_t block_size = 4096;
  uint64_t chunk_size = 4ull << 20;  // a multiple of block_size
  uint32_t format = kFormat2;        // of its chunk files: kFormat1 or kFormat2

  uint64_t BlocksPerChunk() const { return chunk_size / block_size; }
  // Stored metadata bytes per block: 16 (format 1), 32 (format 2: the slot pair).
  uint64_t MetaBytes() const { return format == kFormat1 ? kBlockMetaSize : kSlotPairSize; }
  // A record as tools carry it in memory (scrub.h): block_size data bytes, then MetaBytes() of
  // stored metadata. In format 1 it is also the on-disk record.
  uint64_t RecordSize() const { return uint64_t{block_size} + MetaBytes(); }
  // Size of every chunk file, whatever part of it is used (§4.1).
  uint64_t ChunkFileSize() const {
    return format == kFormat1 ? BlocksPerChunk() * RecordSize() : chunk_size + BlocksPerChunk() * kSlotPairSize;
  }
  uint64_t ChunkCount() const { return (size + chunk_size - 1) / chunk_size; }
  uint64_t BlockCount() const { return size / block_size; }
  // Format 2: byte offset of block i's data, and of its slot pair, inside the chunk file (§4.2).
  uint64_t DataOffset(uint64_t block_in_chunk) const { return block_in_chunk * block_size; }
  uint64_t MetaOffset(uint64_t block_in_chunk) const { return chunk_size + block_in_chunk * kSlotPairSize; }
  // Format 1: byte offset of block i's record inside the chunk file (§9.2).
  uint64_t RecordOffset(uint64_t block_in_chunk) const { return block_in_chunk * RecordSize(); }
  // InvalidArgument unless the sizes are powers of two within limits (§2) and the format known.
  Status Validate() const;
};

// "<volnr>/<part>/<chunk+1>", the chunk file of 0-based chunk index `chunk` (§3).
std::string ChunkPath(uint32_t volnr, char part, uint64_t chunk);
// The number <n> of a chunk file name ("1".."N": decimal, no sign, no leading zero), the inverse
// of ChunkPath's last component; 0 for any other name.
uint64_t ChunkFileNumber(std::string_view name);
// "<volnr>/<part>".
std::string PartDir(uint32_t volnr, char part);

}  // namespace qbd
