// Chain: builds one volume's request chain on top of its bottom handler (qbd-master's QuorumSet;
// a MemDisk in tests). This is the only place where layers are assembled; Volume::Open calls it.
//
//   Stats -> Qos -> [Fence] -> [Cache] -> [SsdCache] -> bottom
//
// - Stats is outermost, so it counts what the client sees (refusals and cache hits included, and
//   the time requests waited for QoS in their latency).
// - Qos (qbd/qos.h) sits above the fence and the caches, so that its limits cover cache hits too.
//   It is always there, so that QoS set on a served volume applies at once; without settings it
//   costs two atomic loads a request.
// - Fence (with a lease) sits above the caches: nothing is answered from them once the lease may
//   have run out.
// - Cache (the memory cache) sits above the SSD cache, which keeps what falls out of it; both sit
//   above the fan-out, so they only ever hold quorum-confirmed data.
// A layer in brackets is there only when its option is set. tests/chain_test.cc checks this order
// for every combination.
//
// Thread-safety: BuildChain is for the one thread that opens volumes; the chain it returns is
// safe for concurrent use, like every BlockHandler.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "qbd/backend.h"
#include "qbd/cache.h"
#include "qbd/clock.h"
#include "qbd/handler.h"
#include "qbd/qos.h"
#include "qbd/ssd_cache.h"
#include "qbd/stats.h"
#include "qbd/status.h"

namespace qbd {

struct ChainOptions {
  std::string volume;  // its name, for messages
  uint32_t volnr = 0;  // keys its blocks in the caches and names its SSD log "<volnr>/log"
  uint32_t block_size = 4096;
  // Fencing (qbd/fence.h): with `lease_valid_until` set, requests pass only while
  // clock->NowMs() < *lease_valid_until. Both must outlive the chain; nullptr: no Fence layer.
  const std::atomic<uint64_t>* lease_valid_until = nullptr;
  const Clock* clock = nullptr;  // REQUIRES: set when lease_valid_until is
  // The memory cache shared by the volumes (nullptr: no Cache layer); must outlive the chain.
  BlockCache* cache = nullptr;
  // The SSD cache directory (nullptr: no SsdCache layer); must outlive the chain.
  StorageBackend* ssd_dir = nullptr;
  SsdCacheOptions ssd;
  // The volume's series in the metrics registry (qbd/metrics.h), which Stats and the caches count
  // into; nullptr: a registry of the chain's own (VolumeMetrics::Standalone).
  std::shared_ptr<const VolumeMetrics> metrics;
  // The volume's QoS settings (QosLayer::SetSettings changes them later), the daemon's scheduler
  // of reservations (nullptr: none; must outlive the chain), and the clock of its token buckets
  // (nullptr: SteadyClock(); must outlive the chain).
  QosSettings qos;
  QosScheduler* qos_scheduler = nullptr;
  const Clock* qos_clock = nullptr;
};

// What BuildChain assembled. The pointers are owned through `top` and live as long as it does.
struct Chain {
  std::shared_ptr<BlockHandler> top;  // the head of the chain (the Stats layer)
  StatsLayer* stats = nullptr;
  QosLayer* qos = nullptr;
  SsdCacheLayer* ssd_cache = nullptr;  // nullptr without an SSD cache
};

// Stacks the layers `options` asks for on `bottom` (which the chain then owns). With an SSD cache
// directory, what a crash left in the volume's write-back log is first replayed onto `bottom`
// (SsdCacheLayer::Recover), before anything is served; that replay's error is returned, naming the
// volume and the log, and `bottom` is destroyed with the partial chain.
Result<Chain> BuildChain(std::unique_ptr<BlockHandler> bottom, const ChainOptions& options);

}  // namespace qbd
