// Feeds arbitrary text to ParseVolumeMeta (a volume's `<volnr>/.meta`, layout-spec.md §2). It
// must never crash, read out of bounds or allocate without bound, and whatever parses must
// re-encode (EncodeVolumeMeta, what the catalog writes) to text that parses to the same volume.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "qbd/volume_meta.h"

namespace {

void Check(bool cond) {
  if (!cond) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto m = qbd::ParseVolumeMeta(text, "1/.meta");
  if (!m.ok()) return 0;
  // The encoding names every field, so equal encodings are equal volumes.
  const std::string enc = qbd::EncodeVolumeMeta(*m);
  auto again = qbd::ParseVolumeMeta(enc, "again");
  Check(again.ok() && qbd::EncodeVolumeMeta(*again) == enc);
  Check(again->geometry.Validate().ok() && again->write_quorum <= again->replicas);
  return 0;
}
