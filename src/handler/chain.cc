#include "qbd/chain.h"

#include <fmt/format.h>

#include <cassert>

#include "qbd/fence.h"
#include "qbd/log.h"

namespace qbd {

Result<Chain> BuildChain(std::unique_ptr<BlockHandler> bottom, const ChainOptions& options) {
  Chain chain;
  std::shared_ptr<const VolumeMetrics> metrics =
      options.metrics ? options.metrics : VolumeMetrics::Standalone(options.volume, 0);
  std::unique_ptr<BlockHandler> below = std::move(bottom);
  if (options.ssd_dir != nullptr) {
    // What a crash left in a write-back log goes to the parts before anything is served.
    auto replay =
        SsdCacheLayer::Recover(*options.ssd_dir, options.volnr, options.block_size, *below);
    if (!replay.ok()) {
      return replay.status().WithContext(
          fmt::format("volume {}: replaying its SSD cache log {}/{}/log", options.volume,
                      options.ssd_dir->Describe(), options.volnr));
    }
    if (replay->blocks > 0 || replay->skipped > 0) {
      QBD_LOG_WARN(
          "volume {}: replayed {} blocks of write-back data from the SSD cache after a crash "
          "({} torn copies of unflushed writes skipped)",
          options.volume, replay->blocks, replay->skipped);
    }
    auto ssd = std::make_unique<SsdCacheLayer>(std::move(below), *options.ssd_dir, options.volnr,
                                               options.block_size, options.ssd, *replay, metrics);
    chain.ssd_cache = ssd.get();
    below = std::move(ssd);
  }
  if (options.cache != nullptr) {
    // Above the SSD cache and the fan-out: it only ever holds quorum-confirmed data.
    below = std::make_unique<CacheLayer>(std::move(below), *options.cache, options.volnr,
                                         options.block_size, metrics);
  }
  if (options.lease_valid_until != nullptr) {
    assert(options.clock != nullptr);
    // Above the caches: nothing is answered from them once the lease may have run out.
    below = std::make_unique<FenceLayer>(std::move(below), options.volume,
                                         *options.lease_valid_until, *options.clock);
  }
  // Above the fence and the caches: the limits cover cache hits too.
  auto qos =
      std::make_unique<QosLayer>(std::move(below), options.qos,
                                 options.qos_clock != nullptr ? *options.qos_clock : SteadyClock(),
                                 options.qos_scheduler, metrics);
  chain.qos = qos.get();
  below = std::move(qos);
  // Outermost: it counts what the client sees.
  auto stats = std::make_shared<StatsLayer>(std::move(below), std::move(metrics));
  chain.stats = stats.get();
  chain.top = std::move(stats);
  return chain;
}

}  // namespace qbd
