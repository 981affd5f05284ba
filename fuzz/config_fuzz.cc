// Feeds arbitrary text to the qbd.conf parsers of config.h: ParseKvText (the `key = value` format
// shared with .meta and .volumesmeta), ParseConfig, ParseSize and ParseBool. Parsers must never
// crash, read out of bounds or allocate without bound; the lines ParseKvText returns must
// re-encode to text that parses to the same lines, and a parsed size must survive FormatSize.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/config.h"

namespace {

void Check(bool cond) {
  if (!cond) std::abort();
}

// The lines as text again: a header line wherever the section changes, then `key = value`.
std::string EncodeKv(const std::vector<qbd::KvLine>& lines) {
  std::string out, section, arg;
  for (const qbd::KvLine& l : lines) {
    if (l.section != section || l.section_arg != arg) {
      section = l.section;
      arg = l.section_arg;
      out += "[" + section + (arg.empty() ? "" : " " + arg) + "]\n";
    }
    out += l.key + " = " + l.value + "\n";
  }
  return out;
}

void CheckKvRoundTrip(const std::vector<qbd::KvLine>& lines) {
  auto again = qbd::ParseKvText(EncodeKv(lines), "again");
  Check(again.ok() && again->size() == lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    const qbd::KvLine& a = lines[i];
    const qbd::KvLine& b = (*again)[i];
    Check(a.section == b.section && a.section_arg == b.section_arg && a.key == b.key &&
          a.value == b.value);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto lines = qbd::ParseKvText(text, "fuzz.conf"); lines.ok()) CheckKvRoundTrip(*lines);
  (void)qbd::ParseConfig(text, "fuzz.conf", "/etc/qbd");
  (void)qbd::ParseBool(text);
  if (auto n = qbd::ParseSize(text); n.ok()) {
    auto again = qbd::ParseSize(qbd::FormatSize(*n));
    Check(again.ok() && *again == *n);
  }
  return 0;
}
