#include "engine/chunk_presence.h"

namespace qbd {

ChunkPresence::ChunkPresence(std::vector<PartStore*> stores, uint64_t chunks)
    : stores_(std::move(stores)), known_(chunks) {}

bool ChunkPresence::Known(uint64_t chunk) const {
  return chunk < known_.size() && known_[chunk].load(std::memory_order_acquire);
}

void ChunkPresence::SetKnown(uint64_t chunk) {
  if (chunk < known_.size()) known_[chunk].store(1, std::memory_order_release);
}

std::vector<int> ChunkPresence::Incomplete(uint64_t chunk, const std::vector<int>& parts) const {
  std::vector<int> out;
  for (int p : parts) {
    auto st = stores_[p]->CheckChunk(chunk);
    if (st.ok() && *st != PartStore::ChunkState::kComplete) out.push_back(p);
  }
  return out;
}

bool ChunkPresence::AnyFile(uint64_t chunk, const std::vector<int>& parts) const {
  bool any = false;
  for (int p : parts) {
    auto st = stores_[p]->CheckChunk(chunk);
    any = any || (st.ok() && *st != PartStore::ChunkState::kAbsent);
  }
  return any;
}

std::vector<size_t> ChunkPresence::LostOn(uint64_t chunk, const std::vector<size_t>& live) const {
  std::vector<size_t> absent;
  bool any = false;
  for (size_t i : live) {
    auto e = stores_[i]->CheckChunk(chunk);
    if (!e.ok()) continue;
    if (*e == PartStore::ChunkState::kComplete) {
      any = true;
    } else {
      absent.push_back(i);  // absent or short
    }
  }
  if (!any) absent.clear();  // a new chunk: every part creates it now
  return absent;
}

void ChunkPresence::Grow(uint64_t chunks) {
  std::vector<std::atomic<uint8_t>> known(chunks);
  for (size_t c = 0; c < known_.size() && c < chunks; ++c) known[c].store(known_[c].load());
  known_.swap(known);
}

}  // namespace qbd
