// Implements include/qbd/qos.h. Library code does not throw: JSON is parsed without exceptions
// and every value's type is checked before it is read.
#include "qbd/qos.h"

#include "qbd/volume_meta.h"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <vector>

#include "qbd/config.h"

namespace qbd {

using nlohmann::json;

namespace {

// A bucket without a burst holds a tenth of a second of its limit (Linux blk-throttle's slice):
// enough to absorb a client's queue depth, small enough that a measured rate stays at the limit.
constexpr double kSliceSeconds = 0.1;

struct Key {
  const char* name;
  uint64_t QosSettings::*field;
  bool bytes;  // a size: a number of bytes or a string like "100M"
};

constexpr Key kKeys[] = {
    {"max_iops", &QosSettings::max_iops, false},
    {"max_read_iops", &QosSettings::max_read_iops, false},
    {"max_write_iops", &QosSettings::max_write_iops, false},
    {"max_bps", &QosSettings::max_bps, true},
    {"max_read_bps", &QosSettings::max_read_bps, true},
    {"max_write_bps", &QosSettings::max_write_bps, true},
    {"burst_iops", &QosSettings::burst_iops, false},
    {"burst_bps", &QosSettings::burst_bps, true},
    {"burst_seconds", &QosSettings::burst_seconds, false},
    {"min_iops", &QosSettings::min_iops, false},
    {"min_bps", &QosSettings::min_bps, true},
};

Status Bad(std::string_view key, std::string_view what) {
  return Status::InvalidArgument(fmt::format("qos: {}: {}", key, what));
}

Result<uint64_t> Value(const Key& k, const json& v) {
  uint64_t n = 0;
  if (v.is_number_unsigned()) {
    n = v.get<uint64_t>();
  } else if (v.is_number_integer()) {  // signed: negative (parsed text gives unsigned otherwise)
    if (v.get<int64_t>() < 0) return Bad(k.name, "must not be negative");
    n = static_cast<uint64_t>(v.get<int64_t>());
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d < 0) return Bad(k.name, "must not be negative");
    return Bad(k.name, "a whole number");
  } else if (k.bytes && v.is_string()) {
    const std::string s = v.get<std::string>();
    if (!s.empty() && s.front() == '-') return Bad(k.name, "must not be negative");
    auto r = ParseSize(s);
    if (!r.ok()) return Bad(k.name, r.status().message());
    n = *r;
  } else {
    return Bad(k.name, k.bytes ? "bytes per second: a whole number or a string like \"100M\""
                               : "a whole number");
  }
  if (n > kMaxQosValue) return Bad(k.name, fmt::format("at most {}", kMaxQosValue));
  return n;
}

std::string KnownKeys() {
  std::string s;
  for (const Key& k : kKeys) s += fmt::format("{}{}", s.empty() ? "" : ", ", k.name);
  return s;
}

Status CheckBurst(std::string_view burst_key, uint64_t burst, std::string_view max_key,
                  uint64_t max) {
  if (burst == 0) return Status::OK();
  if (max == 0) return Bad(burst_key, fmt::format("a burst of {}, which is not set", max_key));
  if (burst < max) return Bad(burst_key, fmt::format("below {} ({})", max_key, max));
  return Status::OK();
}

Status CheckMin(std::string_view min_key, uint64_t min, std::string_view max_key, uint64_t max) {
  if (min != 0 && max != 0 && min > max) {
    return Bad(min_key, fmt::format("above {} ({})", max_key, max));
  }
  return Status::OK();
}

void SetBucket(TokenBucket& b, double rate, double capacity, uint64_t now_ms, bool keep) {
  if (keep) {
    b.Refill(now_ms);
    b.tokens = std::min(b.tokens, capacity);
  } else {
    b.tokens = capacity;
  }
  b.rate = rate;
  b.capacity = capacity;
  b.last_ms = now_ms;
}

}  // namespace

Result<QosSettings> ParseQos(const json& qos) {
  QosSettings q;
  if (qos.is_null()) return q;
  if (!qos.is_object()) return Status::InvalidArgument("qos: a JSON object");
  bool seconds_given = false;
  for (const auto& [name, value] : qos.items()) {
    const Key* key = nullptr;
    for (const Key& k : kKeys) {
      if (name == k.name) key = &k;
    }
    if (key == nullptr) {
      return Status::InvalidArgument(
          fmt::format("qos: unknown key '{}' (known: {})", name, KnownKeys()));
    }
    QBD_ASSIGN_OR_RETURN(q.*(key->field), Value(*key, value));
    if (key->field == &QosSettings::burst_seconds) seconds_given = true;
  }
  QBD_RETURN_IF_ERROR(CheckBurst("burst_iops", q.burst_iops, "max_iops", q.max_iops));
  QBD_RETURN_IF_ERROR(CheckBurst("burst_bps", q.burst_bps, "max_bps", q.max_bps));
  if (q.burst_seconds == 0) return Bad("burst_seconds", "at least 1");
  if (seconds_given && q.burst_iops == 0 && q.burst_bps == 0) {
    return Bad("burst_seconds",
               "the length of a burst, and neither burst_iops nor burst_bps is set");
  }
  QBD_RETURN_IF_ERROR(CheckMin("min_iops", q.min_iops, "max_iops", q.max_iops));
  QBD_RETURN_IF_ERROR(CheckMin("min_bps", q.min_bps, "max_bps", q.max_bps));
  return q;
}

Result<QosSettings> ParseQosText(std::string_view text) {
  if (text.empty()) return QosSettings{};
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::InvalidArgument("qos: not valid JSON");
  return ParseQos(j);
}

Result<std::string> QosMetaText(const nlohmann::json& qos) {
  if (qos.is_null()) return std::string();
  QBD_RETURN_IF_ERROR(ParseQos(qos).status());
  const std::string text =
      qos.dump(-1, ' ', /*ensure_ascii=*/true, nlohmann::json::error_handler_t::replace);
  std::string out;
  for (char c : text) out += c == '#' ? std::string("\\u0023") : std::string(1, c);
  QBD_RETURN_IF_ERROR(CheckQosText(out));
  return out;
}

std::string DescribeQos(const QosSettings& q) {
  std::string s;
  auto add = [&s](std::string part) { s += (s.empty() ? "" : ", ") + part; };
  for (const Key& k : kKeys) {
    const uint64_t v = q.*(k.field);
    if (k.field == &QosSettings::burst_seconds) continue;
    if (v == 0) continue;
    add(fmt::format("{} {}", k.name, k.bytes ? FormatSize(v) + "/s" : std::to_string(v)));
  }
  if (q.burst_iops || q.burst_bps) add(fmt::format("bursts of {} s", q.burst_seconds));
  return s.empty() ? "none" : s;
}

void TokenBucket::Refill(uint64_t now_ms) {
  if (now_ms <= last_ms) return;
  tokens = std::min(capacity, tokens + rate * static_cast<double>(now_ms - last_ms) / 1000.0);
  last_ms = now_ms;
}

uint64_t TokenBucket::WaitMs(double cost) const {
  const double need = std::min(cost, capacity) - tokens;
  if (need <= 0) return 0;
  return std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(need * 1000.0 / rate)));
}

QosBuckets::QosBuckets(const QosSettings& settings, uint64_t now_ms) { Reset(settings, now_ms); }

void QosBuckets::Reset(const QosSettings& q, uint64_t now_ms) {
  // A limit's rate (0: not set), capacity, unit (requests or bytes) and directions.
  struct Spec {
    uint64_t rate;
    double capacity;
    bool iops, read, write;
  };
  // At least one request (or byte): a bucket always lets something through when full.
  auto slice = [](uint64_t rate) {
    return std::max(static_cast<double>(rate) * kSliceSeconds, 1.0);
  };
  auto with_burst = [&](uint64_t rate, uint64_t burst) {
    if (burst == 0) return slice(rate);
    return std::max(slice(rate), static_cast<double>(burst) * static_cast<double>(q.burst_seconds));
  };
  const bool peak_iops = q.burst_iops > q.max_iops && q.max_iops != 0;
  const bool peak_bps = q.burst_bps > q.max_bps && q.max_bps != 0;
  const Spec specs[kLimits] = {
      {q.max_iops, with_burst(q.max_iops, q.burst_iops), true, true, true},
      {q.max_read_iops, slice(q.max_read_iops), true, true, false},
      {q.max_write_iops, slice(q.max_write_iops), true, false, true},
      {peak_iops ? q.burst_iops : 0, slice(q.burst_iops), true, true, true},
      {q.max_bps, with_burst(q.max_bps, q.burst_bps), false, true, true},
      {q.max_read_bps, slice(q.max_read_bps), false, true, false},
      {q.max_write_bps, slice(q.max_write_bps), false, false, true},
      {peak_bps ? q.burst_bps : 0, slice(q.burst_bps), false, true, true},
  };
  for (int i = 0; i < kLimits; ++i) {
    Limit& l = limits_[i];
    const Spec& s = specs[i];
    const bool keep = l.set && s.rate != 0;
    l.set = s.rate != 0;
    l.iops = s.iops;
    l.dir[kRead] = s.read;
    l.dir[kWrite] = s.write;
    if (l.set) SetBucket(l.bucket, static_cast<double>(s.rate), s.capacity, now_ms, keep);
  }
}

uint64_t QosBuckets::TryTake(Dir dir, uint64_t bytes, uint64_t now_ms) {
  uint64_t wait = 0;
  for (Limit& l : limits_) {
    if (!l.set || !l.dir[dir]) continue;
    const double cost = l.iops ? 1.0 : static_cast<double>(bytes);
    if (cost == 0) continue;
    l.bucket.Refill(now_ms);
    wait = std::max(wait, l.bucket.WaitMs(cost));
  }
  if (wait != 0) return wait;
  for (Limit& l : limits_) {
    if (!l.set || !l.dir[dir]) continue;
    l.bucket.tokens -= l.iops ? 1.0 : static_cast<double>(bytes);
  }
  return 0;
}

// --- QosScheduler ---

QosScheduler::QosScheduler(uint32_t slots, const Clock& clock) : slots_(slots), clock_(clock) {}

uint64_t QosScheduler::Register() {
  std::lock_guard<std::mutex> l(mu_);
  const uint64_t id = next_client_++;
  clients_[id];
  return id;
}

void QosScheduler::SetReservation(uint64_t client, uint64_t min_iops, uint64_t min_bps) {
  std::lock_guard<std::mutex> l(mu_);
  Client& c = clients_[client];
  c.min_iops = min_iops;
  c.min_bps = min_bps;
  UpdateEngagedLocked();
}

void QosScheduler::Unregister(uint64_t client) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = clients_.find(client);
  if (it == clients_.end()) return;
  assert(it->second.waiting.empty());
  clients_.erase(it);
  UpdateEngagedLocked();
}

void QosScheduler::UpdateEngagedLocked() {
  bool any = false;
  for (const auto& [id, c] : clients_) any = any || c.min_iops != 0 || c.min_bps != 0;
  engaged_.store(any && slots_ > 0, std::memory_order_release);
}

double QosScheduler::ReservationCostMs(const Client& c, uint64_t bytes) {
  double ms = 0;
  if (c.min_iops != 0) ms = 1000.0 / static_cast<double>(c.min_iops);
  if (c.min_bps != 0) {
    ms = std::max(ms, static_cast<double>(bytes) * 1000.0 / static_cast<double>(c.min_bps));
  }
  return ms;
}

void QosScheduler::ChargeLocked(Client& c, uint64_t bytes, uint64_t arrival_ms) {
  // mClock: R = max(R_prev + cost, arrival). A volume that was idle does not bank reservation.
  c.r_tag_ms = std::max(c.r_tag_ms + ReservationCostMs(c, bytes), static_cast<double>(arrival_ms));
}

QosScheduler::Waiter* QosScheduler::PopLocked(uint64_t now_ms, uint64_t* client) {
  *client = 0;
  if (waiting_ == 0) return nullptr;
  // First: the most overdue reservation.
  Client* best = nullptr;
  uint64_t best_id = 0;
  double best_tag = 0;
  for (auto& [id, c] : clients_) {
    if (c.waiting.empty() || (c.min_iops == 0 && c.min_bps == 0)) continue;
    const Waiter* w = c.waiting.front();
    const double tag =
        std::max(c.r_tag_ms + ReservationCostMs(c, w->bytes), static_cast<double>(w->arrival_ms));
    if (tag <= static_cast<double>(now_ms) && (best == nullptr || tag < best_tag)) {
      best = &c;
      best_id = id;
      best_tag = tag;
    }
  }
  // Then round-robin: the next waiting volume after the last one served this way.
  if (best == nullptr) {
    auto it = clients_.upper_bound(rr_last_);
    for (size_t n = 0; n <= clients_.size(); ++n, ++it) {
      if (it == clients_.end()) it = clients_.begin();
      if (!it->second.waiting.empty()) break;
    }
    best = &it->second;
    best_id = it->first;
    rr_last_ = best_id;
  }
  Waiter* w = best->waiting.front();
  best->waiting.pop_front();
  --waiting_;
  ChargeLocked(*best, w->bytes, w->arrival_ms);
  *client = best_id;
  return w;
}

uint64_t QosScheduler::Acquire(uint64_t client, uint64_t bytes) {
  std::unique_lock<std::mutex> l(mu_);
  const uint64_t start = clock_.NowMs();
  Client& c = clients_[client];
  if (in_flight_ < slots_ && waiting_ == 0) {
    ++in_flight_;
    ChargeLocked(c, bytes, start);
    return 0;
  }
  std::condition_variable cv;
  Waiter w;
  w.bytes = bytes;
  w.arrival_ms = start;
  w.cv = &cv;
  c.waiting.push_back(&w);
  ++waiting_;
  // A slot freed before we queued (none in flight) would wait forever: take it now.
  if (in_flight_ < slots_) {
    uint64_t id = 0;
    Waiter* next = PopLocked(start, &id);
    ++in_flight_;
    next->granted = true;
    if (next->cv != nullptr) next->cv->notify_one();
  }
  cv.wait(l, [&w] { return w.granted; });
  const uint64_t now = clock_.NowMs();
  return now > start ? now - start : 0;
}

void QosScheduler::Release() {
  std::lock_guard<std::mutex> l(mu_);
  uint64_t id = 0;
  Waiter* next = PopLocked(clock_.NowMs(), &id);
  if (next == nullptr) {
    assert(in_flight_ > 0);
    --in_flight_;
    return;
  }
  // The slot passes to `next`: in_flight_ stays.
  next->granted = true;
  if (next->cv != nullptr) next->cv->notify_one();
}

void QosScheduler::TEST_Push(uint64_t client, uint64_t bytes, uint64_t arrival_ms) {
  std::lock_guard<std::mutex> l(mu_);
  Waiter& w = test_waiters_.emplace_back();
  w.bytes = bytes;
  w.arrival_ms = arrival_ms;
  clients_[client].waiting.push_back(&w);
  ++waiting_;
}

uint64_t QosScheduler::TEST_Pop(uint64_t now_ms) {
  std::lock_guard<std::mutex> l(mu_);
  uint64_t id = 0;
  PopLocked(now_ms, &id);
  return id;
}

uint32_t QosScheduler::TEST_InFlight() {
  std::lock_guard<std::mutex> l(mu_);
  return in_flight_;
}

// --- QosLayer ---

QosLayer::QosLayer(std::unique_ptr<BlockHandler> next, const QosSettings& settings,
                   const Clock& clock, QosScheduler* scheduler,
                   std::shared_ptr<const VolumeMetrics> metrics)
    : Layer(std::move(next)), clock_(clock), scheduler_(scheduler), metrics_(std::move(metrics)) {
  if (scheduler_ != nullptr) client_ = scheduler_->Register();
  SetSettings(settings);
}

QosLayer::~QosLayer() {
  if (scheduler_ != nullptr) scheduler_->Unregister(client_);
}

void QosLayer::SetSettings(const QosSettings& settings) {
  {
    std::lock_guard<std::mutex> l(mu_);
    settings_ = settings;
    buckets_.Reset(settings, clock_.NowMs());
    limited_.store(settings.Limited(), std::memory_order_release);
  }
  if (scheduler_ != nullptr)
    scheduler_->SetReservation(client_, settings.min_iops, settings.min_bps);
  cv_.notify_all();  // waiting requests re-evaluate against the new limits
}

QosSettings QosLayer::settings() const {
  std::lock_guard<std::mutex> l(mu_);
  return settings_;
}

void QosLayer::TEST_SetSleep(std::function<void(uint64_t)> sleep) {
  std::lock_guard<std::mutex> l(mu_);
  test_sleep_ = std::move(sleep);
}

uint64_t QosLayer::TEST_Waiting() const {
  std::lock_guard<std::mutex> l(mu_);
  return (next_ticket_[0] - serving_[0]) + (next_ticket_[1] - serving_[1]);
}

uint64_t QosLayer::Throttle(QosBuckets::Dir dir, uint64_t bytes) {
  std::unique_lock<std::mutex> l(mu_);
  const uint64_t start = clock_.NowMs();
  const uint64_t ticket = next_ticket_[dir]++;
  for (;;) {
    if (serving_[dir] != ticket) {
      cv_.wait(l);  // the head of the queue wakes everyone when it goes
      continue;
    }
    const uint64_t wait = buckets_.TryTake(dir, bytes, clock_.NowMs());
    if (wait == 0) break;
    if (test_sleep_) {
      auto sleep = test_sleep_;
      l.unlock();
      sleep(wait);
      l.lock();
    } else {
      // Woken early by SetSettings (or spuriously): the loop re-evaluates.
      cv_.wait_for(l, std::chrono::milliseconds(wait));
    }
  }
  ++serving_[dir];
  l.unlock();
  cv_.notify_all();
  const uint64_t now = clock_.NowMs();
  return now > start ? now - start : 0;
}

template <typename F>
Status QosLayer::Run(QosBuckets::Dir dir, uint64_t bytes, F&& op) {
  const bool limited = limited_.load(std::memory_order_acquire);
  const bool scheduled = scheduler_ != nullptr && scheduler_->Engaged();
  if (!limited && !scheduled) return op();  // the hot path of a volume without QoS
  uint64_t waited_ms = limited ? Throttle(dir, bytes) : 0;
  if (scheduled) waited_ms += scheduler_->Acquire(client_, bytes);
  if (waited_ms != 0) metrics_->qos_throttled_seconds->Increment(waited_ms / 1000.0);
  Status s = op();
  if (scheduled) scheduler_->Release();
  return s;
}

Status QosLayer::Read(uint64_t off, std::span<std::byte> out) {
  return Run(QosBuckets::kRead, out.size(), [&] { return next().Read(off, out); });
}

Status QosLayer::Write(uint64_t off, std::span<const std::byte> in, bool fua) {
  return Run(QosBuckets::kWrite, in.size(), [&] { return next().Write(off, in, fua); });
}

Status QosLayer::Flush() {
  return Run(QosBuckets::kWrite, 0, [&] { return next().Flush(); });
}

Status QosLayer::Trim(uint64_t off, uint64_t len, bool fua) {
  return Run(QosBuckets::kWrite, 0, [&] { return next().Trim(off, len, fua); });
}

Status QosLayer::WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) {
  return Run(QosBuckets::kWrite, 0, [&] { return next().WriteZeroes(off, len, may_trim, fua); });
}

}  // namespace qbd
