// Feeds arbitrary text to the admin socket's protocol (admin.h): each line as a request
// (SplitAdminRequest, then ParseRepairRequest, as qbd-master's handler does) and the whole text as
// a "repair" reply (DecodeRepairReport, as qbd-repair does). Nothing may crash, read out of bounds
// or allocate without bound; a request's words joined by spaces must split to the same words, and
// a reply that decodes must re-encode (EncodeRepairReport) to text that decodes to the same report.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/admin.h"

namespace {

void Check(bool cond) {
  if (!cond) std::abort();
}

bool SameAction(const qbd::RepairAction& a, const qbd::RepairAction& b) {
  return a.target == b.target && a.sources == b.sources && a.whole_file == b.whole_file &&
         a.reason == b.reason && a.blocks == b.blocks && a.error == b.error;
}

bool SameReport(const qbd::ChunkRepairReport& a, const qbd::ChunkRepairReport& b) {
  if (a.actions.size() != b.actions.size()) return false;
  for (size_t i = 0; i < a.actions.size(); ++i) {
    if (!SameAction(a.actions[i], b.actions[i])) return false;
  }
  return a.chunk == b.chunk && a.lost == b.lost && a.accepted == b.accepted &&
         a.unknown == b.unknown && a.notes == b.notes && a.bytes_read == b.bytes_read &&
         a.bytes_written == b.bytes_written;
}

void Request(std::string_view line) {
  const std::vector<std::string> words = qbd::SplitAdminRequest(line);
  if (words.empty()) return;
  std::string joined;
  for (const std::string& w : words) {
    Check(!w.empty());
    joined += (joined.empty() ? "" : " ") + w;
  }
  Check(qbd::SplitAdminRequest(joined) == words);
  if (auto r = qbd::ParseRepairRequest(words); r.ok())
    Check(words.size() >= 3 && r->volume == words[1]);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (size_t pos = 0; pos <= text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    Request(std::string_view(text).substr(pos, nl - pos));
    pos = nl + 1;
  }
  auto r = qbd::DecodeRepairReport(text);
  if (!r.ok()) return 0;
  auto again = qbd::DecodeRepairReport(qbd::EncodeRepairReport(*r));
  Check(again.ok() && SameReport(*r, *again));
  return 0;
}
