// Chunk format: where each byte of a volume lives on a part, and the per-block metadata record.
// Implements layout-spec.md (normative; its section numbers are cited as §N).
//
// A volume of `size` bytes is cut into chunks of `chunk_size` bytes; chunk index c (0-based) is
// stored in the file "<volnr>/<part>/<c+1>" of the part's backend (§3). A chunk holds
// chunk_size / block_size blocks; block i of a chunk sits at byte i * (block_size + 16) of the
// chunk file: block_size bytes of data, then a 16-byte BlockMeta (§4).
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

inline constexpr uint32_t kBlockMetaSize = 16;
// A generation is (epoch << kGenerationBits) + n, n counting writes from 1 within the epoch (§4.2).
inline constexpr uint64_t kGenerationBits = 40;
// The largest generation a volume whose .epoch says `epoch` can have written (§4.6: larger ones
// are suspect).
inline constexpr uint64_t MaxGenerationOfEpoch(uint64_t epoch) { return ((epoch + 1) << kGenerationBits) - 1; }
inline constexpr uint32_t kMinBlockSize = 512;
inline constexpr uint32_t kMaxBlockSize = 64 * 1024;
inline constexpr uint64_t kMaxChunkSize = 1ull << 30;

// The 16 bytes after each block (§4.2): generation then checksum, both little-endian u64.
// All-zero means "never written or trimmed": the data reads as zeros.
struct BlockMeta {
  uint64_t generation = 0;  // >= 1 once written; larger is newer
  uint64_t checksum = 0;    // XXH3-64 of the block's data
  bool IsUnwritten() const { return generation == 0 && checksum == 0; }
  bool operator==(const BlockMeta&) const = default;
};

void EncodeBlockMeta(const BlockMeta& meta, std::byte* out16);
BlockMeta DecodeBlockMeta(const std::byte* in16);

// XXH3-64 of `data` (the value `xxhsum -H3` prints).
uint64_t BlockChecksum(std::span<const std::byte> data);

// OK when `data` matches `meta`: a written block's checksum agrees, an unwritten block's data is
// all zeros. Corruption otherwise.
Status VerifyBlock(std::span<const std::byte> data, const BlockMeta& meta);

// The geometry of one volume.
struct Geometry {
  uint64_t size = 0;        // bytes, a multiple of block_size
  uint32_t block_size = 4096;
  uint64_t chunk_size = 4ull << 20;  // a multiple of block_size

  uint64_t RecordSize() const { return uint64_t{block_size} + kBlockMetaSize; }
  uint64_t BlocksPerChunk() const { return chunk_size / block_size; }
  // Size of every chunk file, whatever part of it is used (§4.1).
  uint64_t ChunkFileSize() const { return BlocksPerChunk() * RecordSize(); }
  uint64_t ChunkCount() const { return (size + chunk_size - 1) / chunk_size; }
  uint64_t BlockCount() const { return size / block_size; }
  // Byte offset of block `block_in_chunk` inside its chunk file.
  uint64_t RecordOffset(uint64_t block_in_chunk) const { return block_in_chunk * RecordSize(); }
  // InvalidArgument unless the sizes are powers of two within limits (§2).
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
