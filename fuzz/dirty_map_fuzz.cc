// Feeds arbitrary bytes to DirtyMap::Decode, the decoder of a part's dirty map `<volnr>/.dirty-<p>`
// (layout-spec.md §5). The first 4 bytes choose the map's length (regions) and whether the
// expected region size is the file's own (to get past that check) or the default 64 KiB; the rest
// is the file. Decode must never crash, read out of bounds or allocate without bound, and a map
// that decodes must re-encode to a file that decodes to the same map.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "common/coding.h"
#include "qbd/dirty_map.h"

namespace {

void Check(bool cond) {
  if (!cond) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  auto in = std::as_bytes(std::span(data, size));
  const uint32_t ctl = qbd::DecodeLE32(in.data());
  const uint64_t regions = ctl % (1u << 14);  // up to 2 KiB of bitmap: fast runs
  auto file = in.subspan(4);
  uint32_t region_size = qbd::kDefaultDirtyRegion;
  if ((ctl & 0x80000000u) != 0 && file.size() >= qbd::kDirtyHeaderSize)
    region_size = qbd::DecodeLE32(file.data() + 12);

  auto map = qbd::DirtyMap::Decode(file, region_size, regions, "1/.dirty-a");
  if (!map.ok()) return 0;
  const qbd::DirtyMap& m = **map;
  Check(m.region_size() == region_size && m.regions() == regions && m.CountSet() <= regions);
  uint64_t seen = 0;
  for (auto r = m.NextSet(0); r; r = m.NextSet(*r + 1)) {
    Check(*r < regions && m.Test(*r));
    ++seen;
  }
  Check(seen == m.CountSet());
  const std::string enc = m.Encode();
  auto again = qbd::DirtyMap::Decode(std::as_bytes(std::span(enc.data(), enc.size())), region_size,
                                     regions, "again");
  Check(again.ok() && (*again)->Encode() == enc && (*again)->CountSet() == m.CountSet());
  return 0;
}
