// Feeds arbitrary bytes to the SSD cache log's record decoders (ssd_cache.h, layout-spec.md §7),
// which SsdCacheLayer::Recover runs on a log left by a crash: DecodeSsdSegment on the input as a
// segment's header block, and ParseSsdCheckpoint on it as a checkpoint file. The first byte
// chooses the volume number and whether the segment's checks are made right first (so that the
// entries behind them are decoded too). Nothing may crash, read out of bounds or allocate without
// bound, and a segment that decodes must re-encode (EncodeSsdSegmentHeader, EncodeSsdLogEntry, as
// the layer writes them) to a block that decodes to the same entries.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "common/coding.h"
#include "qbd/ssd_cache.h"

namespace {

constexpr size_t kE = qbd::kSsdEntrySize;

void Check(bool cond) {
  if (!cond) std::abort();
}

std::span<std::byte, kE> Entry(std::vector<std::byte>& block, size_t i) {
  return std::span<std::byte, kE>(block.data() + i * kE, kE);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint32_t volnr = data[0] & 0x7f;
  const bool fix_checks = (data[0] & 0x80) != 0;
  auto in = std::as_bytes(std::span(data + 1, size - 1));
  (void)qbd::ParseSsdCheckpoint(
      std::string_view(reinterpret_cast<const char*>(in.data()), in.size()), "1/checkpoint");

  std::vector<std::byte> block(in.begin(), in.end());
  if (fix_checks && block.size() >= kE) {
    // Entry 0 as the layer writes it; every other entry re-encoded, so its check holds.
    qbd::EncodeSsdSegmentHeader(Entry(block, 0), volnr, static_cast<uint32_t>(block.size()));
    for (size_t i = 1; i < block.size() / kE; ++i) {
      const std::byte* p = block.data() + i * kE;
      if ((qbd::DecodeLE32(p + 24) & 0x80000000u) != 0) continue;  // left as it is: a torn entry
      qbd::EncodeSsdLogEntry(Entry(block, i),
                             qbd::SsdLogEntry{qbd::DecodeLE64(p), qbd::DecodeLE64(p + 8),
                                              qbd::DecodeLE64(p + 16), qbd::DecodeLE32(p + 24)});
    }
  }
  auto seg = qbd::DecodeSsdSegment(block, volnr);
  Check(!fix_checks || block.size() < kE || seg.ok());
  if (!seg.ok()) return 0;
  Check(seg->size() == block.size() / kE - 1);

  std::vector<std::byte> again(block.size());
  qbd::EncodeSsdSegmentHeader(Entry(again, 0), volnr, static_cast<uint32_t>(again.size()));
  for (size_t j = 0; j < seg->size(); ++j) {
    if ((*seg)[j]) qbd::EncodeSsdLogEntry(Entry(again, j + 1), *(*seg)[j]);
  }
  auto reseg = qbd::DecodeSsdSegment(again, volnr);
  // Slots without an entry are zeros in `again`: an all-zero entry must fail its check too.
  Check(reseg.ok() && *reseg == *seg);
  return 0;
}
