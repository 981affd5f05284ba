// The only includer of xxhash.h. BlockChecksum is XXH3-64 with seed 0 (layout-spec.md §4.2), the
// value `xxhsum -H3` prints. A block (512..65536 bytes) takes XXH3's long-input loop, which runs
// here on the widest vector unit the CPU has, picked once: AVX-512, AVX2, else the SSE2 of the
// x86-64 baseline the code is built for (the packaged libxxhash uses only that). Every variant
// computes the same value; xxHash's own xxh_x86dispatch.c picks its variants the same way.
#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define QBD_XXH_DISPATCH 1
#define XXH_X86DISPATCH  // accumulators aligned for AVX-512
#define XXH_DISPATCH_AVX2 1
#define XXH_DISPATCH_AVX512 1
#define XXH_TARGET_AVX2 __attribute__((__target__("avx2")))
#define XXH_TARGET_AVX512 __attribute__((__target__("avx512f")))
#endif
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/coding.h"
#include "qbd/chunk_format.h"

namespace qbd {
namespace {

using LongHash = uint64_t (*)(const void* data, size_t len);

uint64_t LongHashDefault(const void* data, size_t len) { return XXH3_64bits(data, len); }

#ifdef QBD_XXH_DISPATCH
// GCC 12 takes _mm512_undefined_epi32() in its own intrinsics for an uninitialized read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// Each ends with VZEROUPPER, which GCC does not emit by itself in a target("avx2") function of a
// baseline translation unit: without it, every legacy-SSE instruction that runs afterwards on
// this thread (the baseline's memcpy expansions, libxxhash itself) pays the AVX-to-SSE
// transition, which made unrelated SSE2 code 4x slower in a test.
XXH_TARGET_AVX2 uint64_t LongHashAvx2(const void* data, size_t len) {
  const uint64_t h = XXH3_hashLong_64b_internal(data, len, XXH3_kSecret, sizeof(XXH3_kSecret),
                                                XXH3_accumulate_512_avx2, XXH3_scrambleAcc_avx2);
  _mm256_zeroupper();
  return h;
}

XXH_TARGET_AVX512 uint64_t LongHashAvx512(const void* data, size_t len) {
  const uint64_t h =
      XXH3_hashLong_64b_internal(data, len, XXH3_kSecret, sizeof(XXH3_kSecret),
                                 XXH3_accumulate_512_avx512, XXH3_scrambleAcc_avx512);
  _mm256_zeroupper();
  return h;
}
#pragma GCC diagnostic pop
#endif

LongHash PickLongHash() {
#ifdef QBD_XXH_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return LongHashAvx512;
  if (__builtin_cpu_supports("avx2")) return LongHashAvx2;
#endif
  return LongHashDefault;
}

}  // namespace

uint64_t BlockChecksum(std::span<const std::byte> data) {
  // Inputs up to XXH3_MIDSIZE_MAX bytes never reach the long loop.
  if (data.size() <= XXH3_MIDSIZE_MAX) return XXH3_64bits(data.data(), data.size());
  static const LongHash long_hash = PickLongHash();
  return long_hash(data.data(), data.size());
}

uint64_t AddressKey(const BlockAddress& a, uint64_t generation) {
  // layout-spec.md §4.2: XXH3-64 (seed 0) of volnr, chunk, block, generation as u64 LE.
  std::byte key[32];
  EncodeLE64(key, a.volnr);
  EncodeLE64(key + 8, a.chunk);
  EncodeLE64(key + 16, a.block);
  EncodeLE64(key + 24, generation);
  return XXH3_64bits(key, sizeof(key));
}

}  // namespace qbd
