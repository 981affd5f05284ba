// QoS: per-volume limits (IOPS and bandwidth, read and write, with bursts) and reservations,
// enforced by a layer of each volume's request chain (qbd/chain.h).
//
// The settings are the volume's `qos` object: set through the REST API (POST or PATCH
// /v1/volumes), stored in `<volnr>/.meta` (VolumeMeta::qos) and parsed by ParseQos, the one parser
// that both the API and the .meta reader call. Keys (all optional; absent or 0: no limit):
//   max_iops, max_read_iops, max_write_iops   requests per second (whole numbers)
//   max_bps, max_read_bps, max_write_bps      bytes per second: a number, or "100M" (binary
//   K/M/G/T) burst_iops, burst_bps    the rate allowed during a burst of max_iops / max_bps (>=
//   that limit) burst_seconds            how long a burst lasts (default 1): the bucket holds burst
//   x seconds min_iops, min_bps        a reservation, honoured when the backends saturate
//   (QosScheduler)
// Combined and per-direction limits all apply: a read draws from max_iops and max_read_iops.
// What a request costs: a read or write, one request and its bytes; a flush, trim or write-zeroes,
// one write request and no bytes (no data crosses the wire); BLOCK_STATUS is not counted.
//
// Limits are token buckets (Ceph librbd's TokenBucketThrottle, Linux blk-throttle's slices): each
// fills at its limit up to a capacity of a tenth of a second of it, or burst x burst_seconds for a
// limit with a burst (whose rate is then capped at the burst rate by a second bucket). A request
// waits until every bucket it draws from holds its cost; one larger than a bucket goes once that
// bucket is full and leaves it in debt, so large requests never starve. Waiting requests of a
// volume go in arrival order, one queue per direction.
//
// Thread-safety: ParseQos and QosBuckets are pure (a QosBuckets is used under its owner's lock);
// QosScheduler and QosLayer are safe for concurrent use.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "qbd/clock.h"
#include "qbd/handler.h"
#include "qbd/metrics.h"
#include "qbd/status.h"

namespace qbd {

// The largest value of any key: far above any device, far below where a double loses whole units.
inline constexpr uint64_t kMaxQosValue = uint64_t{1} << 50;

struct QosSettings {
  uint64_t max_iops = 0, max_read_iops = 0, max_write_iops = 0;  // 0: no limit
  uint64_t max_bps = 0, max_read_bps = 0, max_write_bps = 0;     // 0: no limit
  uint64_t burst_iops = 0, burst_bps = 0;                        // 0: no burst
  uint64_t burst_seconds = 1;
  uint64_t min_iops = 0, min_bps = 0;  // 0: no reservation

  // True when some limit is set (the layer then throttles).
  bool Limited() const {
    return max_iops || max_read_iops || max_write_iops || max_bps || max_read_bps || max_write_bps;
  }
  // True when a reservation is set.
  bool Reserved() const { return min_iops || min_bps; }
  bool operator==(const QosSettings&) const = default;
};

// The settings of a `qos` JSON object; null means none. InvalidArgument, its message starting
// with "qos: " and naming the key, for: not an object, an unknown key, a value that is not a
// whole number (or, for the _bps keys, a size string), a negative value, one above kMaxQosValue,
// burst_iops (burst_bps) without max_iops (max_bps) or below it, burst_seconds of 0 or without a
// burst, a min above the matching max.
Result<QosSettings> ParseQos(const nlohmann::json& qos);
// The same for the text of a .meta `qos` value (compact JSON; "" means none); InvalidArgument
// also when it is not JSON.
Result<QosSettings> ParseQosText(std::string_view text);
// The `qos` value .meta stores for a JSON object (null: "", none): compact ASCII JSON with '#'
// escaped (VolumeMeta::qos); InvalidArgument as ParseQos when it is not valid settings.
Result<std::string> QosMetaText(const nlohmann::json& qos);
// "max_iops 200, burst_iops 400 for 10 s": one line for the log; "none" when nothing is set.
std::string DescribeQos(const QosSettings& settings);

// One token bucket: `rate` tokens a second, up to `capacity`; tokens < 0 is debt.
struct TokenBucket {
  double rate = 0;
  double capacity = 0;
  double tokens = 0;
  uint64_t last_ms = 0;

  void Refill(uint64_t now_ms);
  // Milliseconds until `cost` may be taken (0: now): when the bucket holds `cost`, or is full
  // when `cost` exceeds its capacity.
  uint64_t WaitMs(double cost) const;
};

// The buckets of one volume's limits. Not thread-safe: QosLayer holds its lock around it.
class QosBuckets {
 public:
  enum Dir { kRead = 0, kWrite = 1 };

  QosBuckets() = default;
  // Buckets for `settings`, full at `now_ms`.
  QosBuckets(const QosSettings& settings, uint64_t now_ms);
  // New settings at `now_ms`. A bucket that stays keeps its tokens (at most the new capacity, its
  // debt included), so changing the settings never grants more than a full bucket.
  void Reset(const QosSettings& settings, uint64_t now_ms);

  // Takes one request of `bytes` in direction `dir` from every bucket it draws from and returns
  // 0, or takes nothing and returns the milliseconds to wait before trying again.
  uint64_t TryTake(Dir dir, uint64_t bytes, uint64_t now_ms);

 private:
  struct Limit {
    TokenBucket bucket;
    bool set = false;
    bool iops = true;            // costs 1 a request, else its bytes
    bool dir[2] = {true, true};  // which directions draw from it
  };
  static constexpr int kLimits = 8;  // iops, read, write, iops peak, bps, read, write, bps peak
  Limit limits_[kLimits];
};

// A daemon-wide scheduler of the requests of every volume (qbd-master owns one and gives it to
// each volume's QosLayer), which makes the reservations (min_iops, min_bps) hold when the
// backends saturate.
//
// Saturation is counted, not guessed: `slots` requests in flight below the QoS layers of all
// volumes together (qbd.conf `qos_slots`). Below that, a request takes a slot and goes at once.
// At it, a request waits, and a freed slot goes first to the volume whose reservation is most
// overdue (mClock's reservation tags: a volume's next request is due at
// max(previous tag + cost, arrival), its cost max(1 / min_iops, bytes / min_bps) seconds), then
// round-robin among the volumes waiting (one request each per turn). A reservation is a floor:
// what a volume gets in its round-robin turns counts towards it.
//
// The scheduler is engaged only while some volume has a reservation and `slots` > 0; otherwise
// Engaged() is false and the layers never call it (no shared counter on the hot path).
//
// Thread-safety: all methods are safe for concurrent use.
class QosScheduler {
 public:
  // `clock` must outlive the scheduler. `slots` 0: never waits.
  QosScheduler(uint32_t slots, const Clock& clock);
  QosScheduler(const QosScheduler&) = delete;
  QosScheduler& operator=(const QosScheduler&) = delete;

  // A volume's place in the scheduler, with its reservation; Unregister when its layer goes.
  uint64_t Register();
  void SetReservation(uint64_t client, uint64_t min_iops, uint64_t min_bps);
  // REQUIRES: no request of `client` holds a slot or waits.
  void Unregister(uint64_t client);

  bool Engaged() const { return engaged_.load(std::memory_order_acquire); }
  // Blocks until `client` holds a slot for a request of `bytes`. Returns the milliseconds waited.
  uint64_t Acquire(uint64_t client, uint64_t bytes);
  // Gives back a slot taken by Acquire (to the next waiting request, if any).
  void Release();

  // The scheduling decision without threads or slots (tests): queues a request of `client` that
  // arrived at `arrival_ms`, and picks the request that a slot freed at `now_ms` goes to,
  // returning its client (0 when none waits).
  void TEST_Push(uint64_t client, uint64_t bytes, uint64_t arrival_ms);
  uint64_t TEST_Pop(uint64_t now_ms);
  uint32_t TEST_InFlight();

 private:
  struct Waiter {
    uint64_t bytes = 0;
    uint64_t arrival_ms = 0;
    std::condition_variable* cv = nullptr;  // nullptr: a TEST_Push
    bool granted = false;
  };
  struct Client {
    uint64_t min_iops = 0, min_bps = 0;
    double r_tag_ms = 0;  // the reservation tag of its last request
    std::deque<Waiter*> waiting;
  };
  // The cost of a request of `bytes` against `c`'s reservation, in milliseconds (0: none).
  static double ReservationCostMs(const Client& c, uint64_t bytes);
  void ChargeLocked(Client& c, uint64_t bytes, uint64_t arrival_ms);
  // The waiter the next free slot goes to, removed from its queue; nullptr when none waits.
  Waiter* PopLocked(uint64_t now_ms, uint64_t* client);
  void UpdateEngagedLocked();

  const uint32_t slots_;
  const Clock& clock_;
  std::atomic<bool> engaged_{false};
  std::mutex mu_;
  uint32_t in_flight_ = 0;              // GUARDED_BY(mu_)
  uint64_t next_client_ = 1;            // GUARDED_BY(mu_)
  uint64_t rr_last_ = 0;                // GUARDED_BY(mu_): the client of the last turn
  size_t waiting_ = 0;                  // GUARDED_BY(mu_)
  std::map<uint64_t, Client> clients_;  // GUARDED_BY(mu_)
  std::deque<Waiter> test_waiters_;     // GUARDED_BY(mu_): TEST_Push's
};

// The QoS layer of a volume's chain, below Stats (which counts what the client sees, throttled
// time included) and above Fence and the caches (so that limits cover cache hits too).
//
// A request first waits for the volume's own limits (QosBuckets), then for a slot of the
// scheduler when it is engaged; the time it waited is added to the volume's
// qbd_volume_qos_throttled_seconds_total. Waiting blocks the NBD worker thread, which is how the
// server applies back-pressure to the client. With no limit set and the scheduler not engaged, a
// request costs two atomic loads and no lock.
//
// SetSettings applies new settings at once: waiting requests re-evaluate against them.
// Thread-safety: safe for concurrent use.
class QosLayer : public Layer {
 public:
  // `clock` and `scheduler` (nullptr: none) must outlive the layer; `metrics` gets the throttled
  // time.
  QosLayer(std::unique_ptr<BlockHandler> next, const QosSettings& settings, const Clock& clock,
           QosScheduler* scheduler, std::shared_ptr<const VolumeMetrics> metrics);
  ~QosLayer() override;

  void SetSettings(const QosSettings& settings);
  QosSettings settings() const;

  Status Read(uint64_t off, std::span<std::byte> out) override;
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override;
  Status Flush() override;
  Status Trim(uint64_t off, uint64_t len, bool fua) override;
  Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) override;

  // Tests: waits call `sleep(ms)` (which advances a ManualClock) instead of blocking.
  void TEST_SetSleep(std::function<void(uint64_t)> sleep);
  // Requests waiting for the limits now.
  uint64_t TEST_Waiting() const;

 private:
  template <typename F>
  Status Run(QosBuckets::Dir dir, uint64_t bytes, F&& op);
  // Waits in `dir`'s queue until the buckets allow the request; returns the milliseconds waited.
  uint64_t Throttle(QosBuckets::Dir dir, uint64_t bytes);

  const Clock& clock_;
  QosScheduler* const scheduler_;
  const std::shared_ptr<const VolumeMetrics> metrics_;
  uint64_t client_ = 0;  // in scheduler_
  std::atomic<bool> limited_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  QosSettings settings_;          // GUARDED_BY(mu_)
  QosBuckets buckets_;            // GUARDED_BY(mu_)
  uint64_t next_ticket_[2] = {};  // GUARDED_BY(mu_): per direction, in arrival order
  uint64_t serving_[2] = {};      // GUARDED_BY(mu_): the ticket at the head of each queue
  std::function<void(uint64_t)> test_sleep_;
};

}  // namespace qbd
