// The volume lease (layout-spec.md §8). Why the rules in lease.h keep two masters from both
// acknowledging writes, with L = lease_ms, R = renew_ms, and I/O assumed to take effect between
// the start and the end of the call that made it:
//  - A holder round that counts wrote a majority within R/2 of its start h, and lets the holder
//    acknowledge until h + L - R. Any majority we observe shares a part p with it.
//  - We take over only after every part of a majority kept one content from the end of a read to
//    the start of a later read at least L + R apart (window [c0, c1]). A counted holder round
//    whose write to p landed before c0 started before c0: its acknowledgements end before
//    c0 + L - R < c1. None landed inside the window (we would have seen the counter change).
//    One that landed after c1 started after c1 - R/2, when the holder's previous counted round
//    (before c0) had already run out: it was fenced, so that round needs the verification below.
//  - Verification (ours after a takeover write, the holder's after a round started while fenced):
//    each side writes a part only where it finds what it expects, then reads a majority back no
//    sooner than R/2 after its writes ended. If both saw themselves on a common part q, the later
//    writer of q read q after the earlier one's round had ended and its writes had landed, so it
//    would have found the other's record and not written q. So at most one side verifies.
// The margins (R on each side) absorb differences in clock rates and scheduling; a write held
// up inside a backend for longer than that (a paused NFS server) is outside this model (§8).
#include "qbd/lease.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <functional>
#include <random>

#include "qbd/config.h"
#include "qbd/log.h"

namespace qbd {
namespace {

class SteadyClockImpl : public Clock {
 public:
  uint64_t NowMs() const override {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::steady_clock::now().time_since_epoch())
                                     .count());
  }
};

Result<uint64_t> ParseU64(std::string_view v, int base = 10) {
  if (v.empty()) return Status::InvalidArgument("empty number");
  uint64_t n = 0;
  for (char c : v) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (base == 16 && c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return Status::InvalidArgument(fmt::format("'{}' is not a number", v));
    }
    if (n > (UINT64_MAX - static_cast<uint64_t>(d)) / static_cast<uint64_t>(base)) {
      return Status::InvalidArgument(fmt::format("'{}' is too large", v));
    }
    n = n * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
  }
  return n;
}

// An empty `.owner` (never written by qbd) must not read as "absent".
constexpr std::string_view kEmptyFile = "(empty .owner)";

}  // namespace

Clock& SteadyClock() {
  static SteadyClockImpl clock;
  return clock;
}

std::string LeasePath(uint32_t volnr) { return std::to_string(volnr) + "/.owner"; }

LeaseIdentity LeaseIdentity::ForThisProcess(const std::string& config,
                                            const std::string& admin_socket) {
  LeaseIdentity id;
  std::random_device rd;
  while (id.owner == 0) id.owner = (uint64_t{rd()} << 32) ^ rd();
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) == 0) id.host = host;
  if (id.host.empty()) id.host = "unknown";
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::getline(boot, id.boot_id);
  id.pid = ::getpid();
  id.config = config;
  id.admin_socket = admin_socket;
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  id.started = buf;
  return id;
}

std::string LeaseRecord::Encode() const {
  return fmt::format(
      "# qbd-master serves this volume (layout-spec.md section 8); it rewrites this file every "
      "lease_renew_ms\n"
      "format = 1\nvolume = {}\nowner = {:016x}\ncounter = {}\nhost = {}\nboot_id = {}\npid = {}\n"
      "config = {}\nadmin_socket = {}\nstarted = {}\nlease_ms = {}\nlease_renew_ms = {}\n",
      volnr, who.owner, counter, who.host, who.boot_id, who.pid, who.config, who.admin_socket,
      who.started, lease_ms, renew_ms) +
         (who.nbd.empty() ? std::string() : fmt::format("nbd = {}\n", who.nbd));
}

Result<LeaseRecord> LeaseRecord::Parse(std::string_view text, std::string_view file) {
  QBD_ASSIGN_OR_RETURN(std::vector<KvLine> lines, ParseKvText(text, file));
  LeaseRecord r;
  bool format = false, owner = false, counter = false, lease = false, renew = false;
  for (const KvLine& l : lines) {
    auto bad = [&](const Status& s) {
      return Status::InvalidArgument(
          fmt::format("{}:{}: {}: {}", file, l.line, l.key, s.message()));
    };
    auto num = [&](int base = 10) { return ParseU64(l.value, base); };
    if (l.key == "format") {
      if (l.value != "1")
        return bad(Status::InvalidArgument(fmt::format("format {} is not 1", l.value)));
      format = true;
    } else if (l.key == "owner") {
      auto n = num(16);
      if (!n.ok() || *n == 0) return bad(n.ok() ? Status::InvalidArgument("owner 0") : n.status());
      r.who.owner = *n;
      owner = true;
    } else if (l.key == "counter") {
      auto n = num();
      if (!n.ok()) return bad(n.status());
      r.counter = *n;
      counter = true;
    } else if (l.key == "lease_ms" || l.key == "lease_renew_ms" || l.key == "volume" ||
               l.key == "pid") {
      auto n = num();
      if (!n.ok() || *n > UINT32_MAX)
        return bad(n.ok() ? Status::InvalidArgument("too large") : n.status());
      if (l.key == "lease_ms") {
        r.lease_ms = static_cast<uint32_t>(*n);
        lease = true;
      } else if (l.key == "lease_renew_ms") {
        r.renew_ms = static_cast<uint32_t>(*n);
        renew = true;
      } else if (l.key == "volume") {
        r.volnr = static_cast<uint32_t>(*n);
      } else {
        r.who.pid = static_cast<int64_t>(*n);
      }
    } else if (l.key == "host") {
      r.who.host = l.value;
    } else if (l.key == "boot_id") {
      r.who.boot_id = l.value;
    } else if (l.key == "config") {
      r.who.config = l.value;
    } else if (l.key == "admin_socket") {
      r.who.admin_socket = l.value;
    } else if (l.key == "started") {
      r.who.started = l.value;
    } else if (l.key == "nbd") {
      r.who.nbd = l.value;
    }  // other keys: ignored (a later format may add some)
  }
  if (!format || !owner || !counter || !lease || !renew) {
    return Status::InvalidArgument(
        fmt::format("{}: format, owner, counter, lease_ms and lease_renew_ms are required", file));
  }
  return r;
}

std::string LeaseRecord::Describe() const {
  return fmt::format("qbd-master on host {} (pid {}, config {}, started {}, owner {:016x})",
                     who.host, who.pid, who.config.empty() ? "?" : who.config,
                     who.started.empty() ? "?" : who.started, who.owner);
}

// One worker thread per part, each running at most one task at a time: a part that hangs keeps
// its thread busy, and the rounds that follow skip it until it answers.
class VolumeLease::PartThreads {
 public:
  explicit PartThreads(size_t n) : slots_(n) {
    for (size_t i = 0; i < n; ++i) threads_.emplace_back([this, i] { Loop(i); });
  }
  ~PartThreads() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Starts `task` on part i's thread; false when that thread is still busy.
  bool Start(size_t i, std::function<void()> task) {
    {
      std::unique_lock<std::mutex> l(mu_);
      // The part's previous task may have reported its result a moment before its thread freed
      // the slot: wait for that briefly. A task still busy after that is hung (a dead NFS server):
      // the part sits this round out.
      if (!cv_.wait_for(l, std::chrono::milliseconds(200), [&] { return stop_ || !slots_[i]; }) || stop_) {
        return false;
      }
      slots_[i] = std::move(task);
    }
    cv_.notify_all();
    return true;
  }

 private:
  void Loop(size_t i) {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      cv_.wait(l, [&] { return stop_ || slots_[i]; });
      if (stop_) return;
      auto task = slots_[i];
      l.unlock();
      task();
      l.lock();
      slots_[i] = nullptr;
      cv_.notify_all();  // Start may wait for the slot
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::function<void()>> slots_;  // GUARDED_BY(mu_): the running task, or empty
  bool stop_ = false;                         // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

// The outcome of one round over the parts. Shared with the part threads, so that a task still
// running when its round has given up on it writes into a round nobody reads any more.
struct VolumeLease::Round {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Content> content;  // GUARDED_BY(mu)
  std::vector<bool> wrote;       // GUARDED_BY(mu)
  std::vector<bool> done;        // GUARDED_BY(mu)
  explicit Round(size_t n) : content(n), wrote(n, false), done(n, false) {}
};

namespace {

std::optional<std::string> ReadOwner(StorageBackend& b, const std::string& path) {
  auto text = ReadSmallFile(b, path);
  if (text.ok()) return text->empty() ? std::string(kEmptyFile) : std::move(text).value();
  if (text.status().IsNotFound()) return std::string();
  QBD_LOG_DEBUG("{} on {}: {}", path, b.Describe(), text.status().ToString());
  return std::nullopt;
}

// The owner id a record names; 0 for an absent, empty or malformed one.
uint64_t OwnerOf(const std::string& content, const std::string& path) {
  if (content.empty()) return 0;
  auto r = LeaseRecord::Parse(content, path);
  return r.ok() ? r->who.owner : 0;
}

std::string DescribeContent(const std::string& content, const std::string& path) {
  auto r = LeaseRecord::Parse(content, path);
  if (r.ok()) return r->Describe();
  return fmt::format("an unreadable record ({})", r.status().message());
}

}  // namespace

VolumeLease::VolumeLease(uint32_t volnr, std::string volume, std::vector<StorageBackend*> parts,
                         LeaseIdentity self, LeaseOptions options, Clock& clock)
    : volnr_(volnr),
      volume_(std::move(volume)),
      path_(LeasePath(volnr)),
      parts_(std::move(parts)),
      self_(std::move(self)),
      options_(options),
      clock_(clock),
      seen_(parts_.size()) {
  if (options_.parallel) threads_ = std::make_unique<PartThreads>(parts_.size());
}

VolumeLease::~VolumeLease() {
  StopRenewing();
  threads_.reset();  // joins the part threads before the members they use go
}

void VolumeLease::RunRound(const std::vector<bool>& which,
                           const std::function<void(size_t, Round&)>& fn,
                           const std::shared_ptr<Round>& round, size_t enough) {
  if (!threads_) {
    for (size_t i = 0; i < parts_.size(); ++i) {
      if (which[i]) fn(i, *round);
    }
    return;
  }
  std::vector<bool> started(parts_.size(), false);
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (which[i]) started[i] = threads_->Start(i, [fn, round, i] { fn(i, *round); });
  }
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(RoundLimitMs());
  std::unique_lock<std::mutex> l(round->mu);
  round->cv.wait_until(l, until, [&] {
    size_t wrote = 0;
    bool all = true;
    for (size_t i = 0; i < parts_.size(); ++i) {
      wrote += round->wrote[i] ? 1 : 0;
      all = all && (!started[i] || round->done[i]);
    }
    return all || wrote >= enough;
  });
}

std::vector<VolumeLease::Content> VolumeLease::ReadAll() {
  auto round = std::make_shared<Round>(parts_.size());
  const std::string path = path_;
  const std::vector<StorageBackend*> parts = parts_;
  RunRound(
      std::vector<bool>(parts_.size(), true),
      [path, parts](size_t i, Round& r) {
        auto c = ReadOwner(*parts[i], path);
        std::lock_guard<std::mutex> l(r.mu);
        r.content[i] = std::move(c);
        r.done[i] = true;
        r.cv.notify_all();
      },
      round, parts_.size() + 1);
  std::lock_guard<std::mutex> l(round->mu);
  std::vector<Content> out(parts_.size());
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (round->done[i]) out[i] = round->content[i];
  }
  return out;
}

VolumeLease::Written VolumeLease::WriteWhere(
    const std::vector<bool>& want, const std::string& text,
    std::function<bool(size_t, const std::string&)> allowed) {
  auto round = std::make_shared<Round>(parts_.size());
  const std::string path = path_;
  const std::vector<StorageBackend*> parts = parts_;
  RunRound(
      want,
      [path, parts, text, allowed](size_t i, Round& r) {
        auto c = ReadOwner(*parts[i], path);
        bool wrote = false;
        if (c && allowed(i, *c)) {
          // A part whose volume directory is gone (a replaced disk) gets it back, as at open.
          Status s = c->empty() ? parts[i]->MkDirs(DirName(path)) : Status::OK();
          if (s.ok()) s = WriteFileAtomic(*parts[i], path, text);
          wrote = s.ok();
          if (!s.ok()) QBD_LOG_DEBUG("{} on {}: {}", path, parts[i]->Describe(), s.ToString());
        }
        std::lock_guard<std::mutex> l(r.mu);
        r.content[i] = std::move(c);
        r.wrote[i] = wrote;
        r.done[i] = true;
        r.cv.notify_all();
      },
      round, Majority());
  std::lock_guard<std::mutex> l(round->mu);
  Written w;
  w.wrote = round->wrote;
  w.found.resize(parts_.size());
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (round->done[i]) w.found[i] = round->content[i];
  }
  return w;
}

std::string VolumeLease::MyRecord(uint64_t counter) const {
  LeaseRecord r;
  r.who = self_;
  r.volnr = volnr_;
  r.counter = counter;
  r.lease_ms = options_.lease_ms;
  r.renew_ms = options_.renew_ms;
  return r.Encode();
}

bool VolumeLease::FreeForUs(const std::string& content) const {
  if (content.empty()) return true;
  auto r = LeaseRecord::Parse(content, path_);
  if (!r.ok()) return false;
  if (r->who.owner == self_.owner) return true;
  // Our configuration's previous run on this boot of this host: we hold its ProcessLock, so it
  // has ended (a crash or SIGKILL) and can write nothing more.
  return !self_.boot_id.empty() && r->who.host == self_.host && r->who.boot_id == self_.boot_id &&
         r->who.admin_socket == self_.admin_socket;
}

void VolumeLease::RemoveWhereOurs(const std::vector<bool>& where) {
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (!where[i]) continue;
    auto c = ReadOwner(*parts_[i], path_);
    if (!c || OwnerOf(*c, path_) != self_.owner) continue;  // never another master's record
    Status s = parts_[i]->Remove(path_);
    if (s.ok()) s = parts_[i]->SyncDir(std::to_string(volnr_));
    if (!s.ok() && !s.IsNotFound()) {
      QBD_LOG_WARN("volume {}: cannot remove {} on {}: {}", volume_, path_, parts_[i]->Describe(),
                   s.ToString());
    }
  }
}

VolumeLease::Progress VolumeLease::Acquire() {
  Progress p;
  const uint64_t now = clock_.NowMs();
  const uint64_t own_wait = uint64_t{options_.lease_ms} + options_.renew_ms;
  if (phase_ == Phase::kHeld) {
    p.phase = Phase::kHeld;
    return p;
  }
  if (phase_ == Phase::kVerifying) {
    if (now < verify_at_ms_) {
      p.phase = Phase::kVerifying;
      p.retry_at_ms = verify_at_ms_;
      return p;
    }
    std::vector<Content> found = ReadAll();
    size_t mine = 0;
    std::string other;
    for (size_t i = 0; i < parts_.size(); ++i) {
      if (!found[i]) continue;
      if (*found[i] == text_) {
        ++mine;
      } else if (!found[i]->empty()) {
        other = DescribeContent(*found[i], path_);
      }
    }
    if (mine >= Majority()) {
      phase_ = Phase::kHeld;
      valid_until_ = take_start_ms_ + options_.lease_ms - options_.renew_ms;
      fenced_logged_ = false;
      lost_ = false;
      p.phase = Phase::kHeld;
      p.waited_ms = take_waited_ms_;
      p.previous = take_previous_;
      return p;
    }
    // Another master wrote between our write and this read: it may have won; step back.
    QBD_LOG_WARN(
        "volume {}: {} of {} parts still name us after taking the lease ({} wrote meanwhile): "
        "not served, observing again",
        volume_, mine, parts_.size(), other.empty() ? "another master" : other);
    RemoveWhereOurs(taken_);
    phase_ = Phase::kObserving;
    seen_.assign(parts_.size(), Observation{});
    p.phase = Phase::kObserving;
    p.holder = other.empty() ? "another master (it wrote .owner while we took the volume)" : other;
    p.retry_at_ms = clock_.NowMs() + options_.renew_ms;
    return p;
  }

  // Observing: read every part, note what changed, and see whether a majority is ours to take.
  std::vector<Content> found = ReadAll();
  const uint64_t read_end = clock_.NowMs();
  size_t readable = 0, takeable = 0;
  std::vector<bool> take(parts_.size(), false);
  uint64_t waited = 0;
  uint64_t retry = read_end + options_.renew_ms;
  std::string holder, previous;
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (!found[i]) {
      seen_[i] = Observation{};
      continue;
    }
    ++readable;
    const std::string& c = *found[i];
    if (!seen_[i].valid || seen_[i].content != c) seen_[i] = Observation{c, read_end, true};
    if (FreeForUs(c)) {
      take[i] = true;
      ++takeable;
      continue;
    }
    // Another master's record: it may be taken once it stayed the same for its holder's lease
    // plus renewal interval (and ours, whichever is longer), from the end of the read that first
    // saw it to the start of this one.
    uint64_t wait = own_wait;
    auto rec = LeaseRecord::Parse(c, path_);
    if (rec.ok()) wait = std::max<uint64_t>(wait, uint64_t{rec->lease_ms} + rec->renew_ms);
    const uint64_t unchanged = now > seen_[i].since_ms ? now - seen_[i].since_ms : 0;
    if (unchanged >= wait) {
      take[i] = true;
      ++takeable;
      waited = std::max(waited, unchanged);
      previous = DescribeContent(c, path_);
    } else {
      holder = DescribeContent(c, path_);
      retry = std::min(retry, seen_[i].since_ms + wait);
    }
  }
  p.phase = Phase::kObserving;
  p.retry_at_ms = retry;
  if (takeable < Majority()) {
    p.holder = !holder.empty() ? holder
                               : fmt::format("unknown: only {} of {} parts could be read", readable,
                                             parts_.size());
    return p;
  }
  // Take it: our record goes where each part still holds exactly what we observed there.
  const uint64_t start = clock_.NowMs();
  counter_ = 1;
  text_ = MyRecord(counter_);
  std::vector<Observation> seen = seen_;
  Written w = WriteWhere(take, text_,
                         [seen](size_t i, const std::string& c) { return seen[i].content == c; });
  const uint64_t end = clock_.NowMs();
  const size_t wrote = static_cast<size_t>(std::count(w.wrote.begin(), w.wrote.end(), true));
  if (wrote < Majority() || end - start > RoundLimitMs()) {
    QBD_LOG_WARN(
        "volume {}: taking the lease reached {} of {} parts in {} ms (a majority within {} ms is "
        "needed): not served, trying again",
        volume_, wrote, parts_.size(), end - start, RoundLimitMs());
    RemoveWhereOurs(w.wrote);
    seen_.assign(parts_.size(), Observation{});
    p.holder = fmt::format("nobody (the lease could be written on only {} of {} parts)", wrote,
                           parts_.size());
    p.retry_at_ms = end + options_.renew_ms;
    return p;
  }
  phase_ = Phase::kVerifying;
  take_start_ms_ = start;
  verify_at_ms_ = end + RoundLimitMs();
  taken_ = w.wrote;
  take_waited_ms_ = previous.empty() ? 0 : waited;
  take_previous_ = previous;
  p.phase = Phase::kVerifying;
  p.retry_at_ms = verify_at_ms_;
  return p;
}

uint64_t VolumeLease::Renew() {
  const uint64_t L = options_.lease_ms, R = options_.renew_ms;
  uint64_t now = clock_.NowMs();
  if (lost_ || phase_ != Phase::kHeld) return now + R;
  auto lose = [&](const std::string& to) {
    valid_until_ = 0;
    {
      std::lock_guard<std::mutex> l(lost_mu_);
      lost_to_ = to;
    }
    lost_ = true;
    QBD_LOG_ERROR(
        "volume {}: a majority of its parts name another master ({}): lease lost, it stops serving "
        "the volume",
        volume_, to);
  };
  auto foreign = [&](const std::vector<Content>& found, std::string* who) {
    size_t n = 0;
    for (const Content& c : found) {
      if (c && !c->empty() && OwnerOf(*c, path_) != self_.owner) {
        ++n;
        *who = DescribeContent(*c, path_);
      }
    }
    return n;
  };
  if (recover_verify_at_ != 0) {
    // A round started while fenced: it counts only if a majority still holds it now.
    if (now < recover_verify_at_) return recover_verify_at_;
    recover_verify_at_ = 0;
    std::vector<Content> found = ReadAll();
    size_t mine = 0;
    for (const Content& c : found) mine += (c && *c == text_) ? 1 : 0;
    std::string who;
    if (mine >= Majority()) {
      valid_until_ = recover_start_ms_ + L - R;
      fenced_logged_ = false;
      QBD_LOG_WARN("volume {}: lease renewed on {} of {} parts: no longer fenced, serving again",
                   volume_, mine, parts_.size());
    } else if (foreign(found, &who) >= Majority()) {
      lose(who);
    }
    return std::max(clock_.NowMs(), recover_start_ms_ + R);
  }
  const uint64_t start = now;
  const bool fenced = start >= valid_until_;
  ++counter_;
  text_ = MyRecord(counter_);
  const std::string path = path_;
  const uint64_t me = self_.owner;
  // A part is rewritten only while it names us (or nobody): never over another master's record.
  Written w = WriteWhere(
      std::vector<bool>(parts_.size(), true), text_,
      [path, me](size_t, const std::string& c) { return c.empty() || OwnerOf(c, path) == me; });
  const uint64_t end = clock_.NowMs();
  const size_t wrote = static_cast<size_t>(std::count(w.wrote.begin(), w.wrote.end(), true));
  if (wrote >= Majority() && end - start <= RoundLimitMs()) {
    if (fenced) {
      recover_start_ms_ = start;
      recover_verify_at_ = end + RoundLimitMs();
      return recover_verify_at_;
    }
    valid_until_ = start + L - R;
    return start + R;
  }
  std::string who;
  if (foreign(w.found, &who) >= Majority()) {
    lose(who);
  } else {
    QBD_LOG_DEBUG("volume {}: lease renewal reached {} of {} parts in {} ms", volume_, wrote,
                  parts_.size(), end - start);
  }
  return start + R;
}

void VolumeLease::RenewLoop() {
  uint64_t next = clock_.NowMs() + options_.renew_ms;
  std::unique_lock<std::mutex> l(run_mu_);
  while (!stop_) {
    const uint64_t now = clock_.NowMs();
    const uint64_t until = valid_until_.load();
    if (now >= until && !fenced_logged_ && !lost_) {
      fenced_logged_ = true;
      QBD_LOG_ERROR(
          "volume {}: self-fenced: its lease was not renewed on a majority of parts within {} ms "
          "of "
          "the last renewal's start (lease_ms {} - lease_renew_ms {}): requests fail with "
          "ESHUTDOWN "
          "until it is renewed",
          volume_, options_.lease_ms - options_.renew_ms, options_.lease_ms, options_.renew_ms);
    }
    if (now >= next) {
      l.unlock();
      next = Renew();
      l.lock();
      continue;
    }
    // Wake for the next step, or at the deadline to log the fencing on time.
    uint64_t wake = next;
    if (!fenced_logged_ && until > now) wake = std::min(wake, until);
    run_cv_.wait_for(l, std::chrono::milliseconds(wake - now));
  }
}

void VolumeLease::StartRenewing() {
  StopRenewing();
  {
    std::lock_guard<std::mutex> l(run_mu_);
    stop_ = false;
  }
  renewer_ = std::thread([this] { RenewLoop(); });
}

void VolumeLease::StopRenewing() {
  {
    std::lock_guard<std::mutex> l(run_mu_);
    stop_ = true;
  }
  run_cv_.notify_all();
  if (renewer_.joinable()) renewer_.join();
}

std::string VolumeLease::lost_to() const {
  std::lock_guard<std::mutex> l(lost_mu_);
  return lost_to_;
}

void VolumeLease::Reset() {
  phase_ = Phase::kObserving;
  seen_.assign(parts_.size(), Observation{});
  valid_until_ = 0;
  counter_ = 0;
  text_.clear();
  recover_verify_at_ = 0;
  fenced_logged_ = false;
  lost_ = false;
}

std::vector<bool> VolumeLease::PartsNamingUs() {
  std::vector<Content> found = ReadAll();
  std::vector<bool> out(parts_.size(), false);
  for (size_t i = 0; i < parts_.size(); ++i)
    out[i] = found[i] && OwnerOf(*found[i], path_) == self_.owner;
  return out;
}

Status VolumeLease::Release() {
  StopRenewing();
  valid_until_ = 0;
  Status result;
  for (size_t i = 0; i < parts_.size(); ++i) {
    auto c = ReadOwner(*parts_[i], path_);
    if (!c || OwnerOf(*c, path_) != self_.owner) continue;  // never another master's record
    Status s = parts_[i]->Remove(path_);
    if (s.ok()) s = parts_[i]->SyncDir(std::to_string(volnr_));
    if (!s.ok() && !s.IsNotFound() && result.ok()) result = s.WithContext(parts_[i]->Describe());
  }
  phase_ = Phase::kObserving;
  seen_.assign(parts_.size(), Observation{});
  return result;
}

std::optional<LeaseRecord> ForeignLease(uint32_t volnr, const std::vector<StorageBackend*>& parts,
                                        const LeaseIdentity& self) {
  const std::string path = LeasePath(volnr);
  for (StorageBackend* b : parts) {
    auto c = ReadOwner(*b, path);
    if (!c || c->empty()) continue;
    auto r = LeaseRecord::Parse(*c, b->Describe() + "/" + path);
    if (!r.ok()) {
      LeaseRecord unknown;
      unknown.who.host = fmt::format("unknown ({})", r.status().message());
      return unknown;
    }
    const bool previous_run = !self.boot_id.empty() && r->who.host == self.host &&
                              r->who.boot_id == self.boot_id &&
                              r->who.admin_socket == self.admin_socket;
    if (r->who.owner != self.owner && !previous_run) return std::move(r).value();
  }
  return std::nullopt;
}

}  // namespace qbd
