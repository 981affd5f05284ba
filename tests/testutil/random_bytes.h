// RandomBytes: reproducible test data, `n` bytes drawn from a generator seeded with `seed`, so that
// two buffers with different seeds differ everywhere (with overwhelming probability).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace qbd::test {

inline std::vector<std::byte> RandomBytes(uint64_t seed, size_t n) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> out(n);
  uint64_t word = 0;
  for (size_t i = 0; i < n; ++i) {
    if (i % 8 == 0) word = rng();
    out[i] = std::byte(word >> (8 * (i % 8)));
  }
  return out;
}

}  // namespace qbd::test
