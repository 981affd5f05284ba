// Feeds arbitrary bytes, as the copies of a volume's chunk map `<volnr>/.chunkmap` (layout-spec.md
// §6) on up to four parts, to ReplicatedBitmap::FromCopies: the decoding (DirtyMap::Decode with
// the chunk map magic), merging and judging that ReplicatedBitmap::Load does after reading them.
// Layout of the input: byte 0 = copy count - 1 (low 2 bits), byte 1 = each copy's state (2 bits:
// good, missing, out of reach, not a holder), bytes 2-5 = chunk count, then 2-byte lengths of all
// copies but the last, then the copies. Nothing may crash, read out of bounds or allocate without
// bound; the merged map must be the union of the good copies, and its encoding (what Rewrite
// writes) must decode to the same map.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "common/coding.h"
#include "qbd/dirty_map.h"
#include "qbd/replicated_bitmap.h"

namespace {

constexpr uint32_t kChunkSize = 4u << 20;

void Check(bool cond) {
  if (!cond) std::abort();
}

std::span<const std::byte> Bytes(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using qbd::MetaCopyState;
  if (size < 6) return 0;
  auto in = std::as_bytes(std::span(data, size));
  const size_t n = (data[0] & 3) + 1;
  const uint8_t states = data[1];
  const uint64_t chunks = qbd::DecodeLE32(in.data() + 2) % (1u << 12);  // small maps: fast runs
  size_t pos = 6;
  std::vector<size_t> lengths;
  for (size_t i = 0; i + 1 < n; ++i) {
    if (pos + 2 > size) return 0;
    lengths.push_back(qbd::DecodeLE16(in.data() + pos));
    pos += 2;
  }
  std::vector<qbd::FileCopy> copies(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t len = i + 1 < n ? std::min(lengths[i], size - pos) : size - pos;
    qbd::FileCopy& c = copies[i];
    c.where = "part-" + std::to_string(i) + "/1/.chunkmap";
    switch ((states >> (2 * i)) & 3) {
      case 0:
        c.state = MetaCopyState::kGood;
        c.bytes.assign(reinterpret_cast<const char*>(data + pos), len);
        break;
      case 1:
        c.state = MetaCopyState::kMissing;
        c.rewrite = true;
        break;
      case 2:
        c.state = MetaCopyState::kUnreachable;
        c.error = qbd::Status::IOError("down");
        break;
      default:
        c.state = MetaCopyState::kAbsent;
        c.where.clear();
    }
    pos += len;
  }
  const std::vector<qbd::FileCopy> read = copies;

  auto m = qbd::ReplicatedBitmap::FromCopies(std::move(copies), "1/.chunkmap", kChunkSize, chunks,
                                             qbd::kChunkMapMagic);
  Check(m.copies().size() == n);
  bool any_good = false;
  qbd::DirtyMap uni(kChunkSize, chunks);
  for (size_t i = 0; i < n; ++i) {
    const qbd::FileCopy& c = m.copies()[i];
    auto own =
        qbd::DirtyMap::Decode(Bytes(read[i].bytes), kChunkSize, chunks, "own", qbd::kChunkMapMagic);
    if (read[i].state != MetaCopyState::kGood) {
      Check(c.state == read[i].state && m.Lacking(i) == 0);
    } else if (own.ok()) {
      Check(c.state == MetaCopyState::kGood && (*own)->CountSet() <= m.merged().CountSet());
      Check(m.Lacking(i) == m.merged().CountSet() - (*own)->CountSet());
      uni.Merge(**own);
      any_good = true;
    } else {
      Check(c.state == MetaCopyState::kMalformed && c.rewrite && !c.error.ok() && m.Damaged(i) &&
            m.NeedsRewrite(i));
    }
  }
  Check(!m.verdict().ok() || any_good);
  Check(m.merged().Encode(qbd::kChunkMapMagic) == uni.Encode(qbd::kChunkMapMagic));
  const std::string enc = m.Encoded();
  auto again = qbd::DirtyMap::Decode(Bytes(enc), kChunkSize, chunks, "again", qbd::kChunkMapMagic);
  Check(again.ok() && (*again)->Encode(qbd::kChunkMapMagic) == enc);
  return 0;
}
