// Feeds arbitrary text to the catalog's parsers: ParseVolumesIndex (`.volumesmeta`,
// layout-spec.md §1, read by the catalog on every backend) and Catalog::ParseEpoch (a volume's
// `<volnr>/.epoch`). They must never crash, read out of bounds or allocate without bound, and an
// index that parses must re-encode (EncodeVolumesIndex) to text that parses to the same index.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>

#include "qbd/catalog.h"
#include "qbd/volume_meta.h"

namespace {

void Check(bool cond) {
  if (!cond) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)qbd::Catalog::ParseEpoch(text, "1/.epoch");
  auto idx = qbd::ParseVolumesIndex(text, ".volumesmeta");
  if (!idx.ok()) return 0;
  std::set<uint32_t> numbers;
  for (const auto& [name, nr] : idx->volumes) {
    Check(qbd::ValidateVolumeName(name).ok() && nr != 0 && numbers.insert(nr).second);
  }
  auto again = qbd::ParseVolumesIndex(qbd::EncodeVolumesIndex(*idx), "again");
  Check(again.ok() && again->serial == idx->serial && again->volumes == idx->volumes);
  return 0;
}
