// The only includer of xxhash.h.
#include <xxhash.h>

#include "qbd/chunk_format.h"

namespace qbd {

uint64_t BlockChecksum(std::span<const std::byte> data) {
  return XXH3_64bits(data.data(), data.size());
}

}  // namespace qbd
