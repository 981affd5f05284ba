// Fixed-width integer encoding for on-disk and wire fields: big-endian (NBD) and little-endian
// (chunk files). Fields are always written with these helpers, never by memcpy of structs.
//
// Each Encode writes exactly N/8 bytes at `dst`; each Decode reads exactly N/8 bytes at `src`.
// REQUIRES: the caller has checked that the bytes exist. No alignment is needed.
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qbd {

inline void EncodeBE16(std::byte* dst, uint16_t v) {
  dst[0] = std::byte(v >> 8);
  dst[1] = std::byte(v);
}
inline void EncodeBE32(std::byte* dst, uint32_t v) {
  for (int i = 0; i < 4; ++i) dst[i] = std::byte(v >> (24 - 8 * i));
}
inline void EncodeBE64(std::byte* dst, uint64_t v) {
  for (int i = 0; i < 8; ++i) dst[i] = std::byte(v >> (56 - 8 * i));
}
inline uint16_t DecodeBE16(const std::byte* src) {
  return static_cast<uint16_t>((uint16_t(src[0]) << 8) | uint16_t(src[1]));
}
inline uint32_t DecodeBE32(const std::byte* src) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | uint32_t(src[i]);
  return v;
}
inline uint64_t DecodeBE64(const std::byte* src) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | uint64_t(src[i]);
  return v;
}

inline void EncodeLE16(std::byte* dst, uint16_t v) {
  dst[0] = std::byte(v);
  dst[1] = std::byte(v >> 8);
}
inline void EncodeLE32(std::byte* dst, uint32_t v) {
  for (int i = 0; i < 4; ++i) dst[i] = std::byte(v >> (8 * i));
}
inline void EncodeLE64(std::byte* dst, uint64_t v) {
  for (int i = 0; i < 8; ++i) dst[i] = std::byte(v >> (8 * i));
}
inline uint16_t DecodeLE16(const std::byte* src) {
  return static_cast<uint16_t>(uint16_t(src[0]) | (uint16_t(src[1]) << 8));
}
inline uint32_t DecodeLE32(const std::byte* src) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | uint32_t(src[i]);
  return v;
}
inline uint64_t DecodeLE64(const std::byte* src) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | uint64_t(src[i]);
  return v;
}

}  // namespace qbd
