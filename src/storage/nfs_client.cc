// Client, declared in nfs_client.h: a backend's libnfs contexts, the loop thread that receives
// their replies, connecting and mounting, and the reconnect breaker. The design is described at
// the top of nfs_backend.cc; how a reply completes a Call is in nfs_call.cc.
#include "storage/nfs_client.h"

#include <fmt/format.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>

#include "qbd/log.h"

namespace qbd {
namespace nfs_client {
namespace {

constexpr int kMaxBackoffSeconds = 10;
// How often the loop lets libnfs look for timed-out calls, and the longest it sleeps in poll().
constexpr int kScanIntervalMs = 100;

// Runs `c` on `*nfs`, a context no other thread uses (Client::Connect sets it up before it is
// published), with a poll loop of its own until `c` completes. When the socket fails first,
// destroys the context, which completes `c` (libnfs cancels it), and sets *nfs to nullptr. Sets
// c->broken when the connection failed.
void RunPrivate(nfs_context** nfs, Call* c) {
  c->client = nullptr;
  c->done.Reset();
  if (c->start(c->start_fn, *nfs, c) != 0) {  // not queued: no callback will come
    const char* e = nfs_get_error(*nfs);
    c->status = -ENOMEM;
    c->error = e != nullptr ? e : "request not queued";
    c->broken = true;
    return;
  }
  while (!c->done.Done()) {
    struct pollfd pfd = {nfs_get_fd(*nfs), static_cast<short>(nfs_which_events(*nfs)), 0};
    const int n = ::poll(&pfd, 1, kScanIntervalMs);
    if (n < 0 && errno == EINTR) continue;  // a signal, not a socket error
    if (nfs_service(*nfs, n < 0 ? -1 : pfd.revents) < 0 && !c->done.Done()) {
      const char* e = nfs_get_error(*nfs);
      std::string text = std::string("connection failed: ") + (e != nullptr ? e : "socket error");
      nfs_destroy_context(*nfs);  // calls back `c`, cancelled
      *nfs = nullptr;
      c->status = -ECONNRESET;
      c->error = std::move(text);
    }
  }
  if (c->status < 0 && ConnectionBroken(-c->status)) c->broken = true;
}

// TCP SYN retries whose total wait (1 + 2 + 4 ... s) stays within the timeout, at least 1.
int SynCountFor(int timeout_ms) {
  int n = 1;
  while (n < 6 && ((2 << (n + 1)) - 1) * 1000 <= timeout_ms) ++n;
  return n;
}

}  // namespace

Result<std::shared_ptr<Client>> Client::Create(std::string url, NfsUrl parsed,
                                               const NfsOptions& options) {
  const int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd < 0) return Status::FromErrno(fmt::format("{}: eventfd", url), errno);
  std::shared_ptr<Client> c(new Client(std::move(url), std::move(parsed), options, efd));
  try {
    c->loop_ = std::thread([raw = c.get()] { raw->Loop(); });
  } catch (const std::system_error& e) {
    return Status::IOError(fmt::format("{}: cannot start its thread: {}", c->url_, e.what()),
                           e.code().value());
  }
  pthread_setname_np(c->loop_.native_handle(), "qbd-nfs");
  return c;
}

Client::~Client() {
  // Handles whose close was deferred are closed now if the server is reachable. Otherwise their
  // few bytes are leaked on purpose (see Close).
  std::vector<nfsfh*> fhs;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (healthy_) fhs.swap(pending_close_);
  }
  if (loop_.joinable()) {
    CloseNow(&fhs);
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
      WakeLocked();
    }
    loop_.join();  // destroys the contexts
  }
  ::close(event_fd_);
}

std::string Client::Name(std::string_view full_path) const {
  std::lock_guard<std::mutex> l(mu_);
  return fmt::format("nfs://{}{}{}", parsed_.host, export_, full_path == "/" ? "" : full_path);
}

std::string Client::FailureDomain() const {
  std::lock_guard<std::mutex> l(mu_);
  return fmt::format("nfs://{}:{}{}", parsed_.host, parsed_.nfsport, export_);
}

std::string Client::Full(std::string_view rel) const {
  std::string s;
  {
    std::lock_guard<std::mutex> l(mu_);
    s = root_;
  }
  if (!rel.empty()) {
    s += '/';
    s += rel;
  }
  return s.empty() ? "/" : s;
}

Status Client::RunAll(std::span<Call* const> calls) {
  std::vector<Call*> retry;  // calls that went unsent
  for (int attempt = 1;; ++attempt) {
    std::vector<nfsfh*> to_close;
    QBD_ASSIGN_OR_RETURN(const bool trial, Admit(&to_close));
    if (!to_close.empty()) CloseNow(&to_close);
    for (Call* c : calls) {
      c->trial = trial;
      c->client = this;
      c->slot = -1;
      c->status = 0;
      c->eof = c->broken = c->unsent = false;
      c->error.clear();
      c->done.Reset();
    }
    for (Call* c : calls) Start(c);
    std::vector<Call*> unsent;
    for (Call* c : calls) {
      c->done.Wait();
      if (c->unsent) unsent.push_back(c);
    }
    // Unsent: every context died between Admit and Start. Nothing was sent, so it is safe to
    // try again (the next Admit connects a context).
    if (unsent.empty() || attempt == 3) return Status::OK();
    if (trial && unsent.size() == calls.size()) EndTrial();
    retry.swap(unsent);
    calls = retry;
  }
}

Status Client::StatusOf(const Call& c) {
  if (c.status >= 0) return Status::OK();
  const int err = -c.status;
  std::string msg =
      fmt::format("{} {}: {}", c.what, c.object, c.error.empty() ? std::strerror(err) : c.error);
  if (c.broken || c.unsent) return Status::IOError(std::move(msg), EIO);
  if (err == ENOENT) return Status::NotFound(std::move(msg));
  return Status::IOError(std::move(msg), err);
}

void Client::Close(nfsfh* fh) {
  std::vector<nfsfh*> fhs{fh};
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!healthy_) {
      pending_close_.push_back(fh);
      return;
    }
  }
  CloseNow(&fhs);
}

Status Client::ConnectFirst() {
  std::vector<nfsfh*> none;
  return Admit(&none).status();
}

void Client::Finished(Call* c) {
  if (c->slot >= 0) slots_[c->slot].inflight.fetch_sub(1, std::memory_order_relaxed);
  if (c->status < 0 && ConnectionBroken(-c->status)) {
    c->broken = true;
    if (c->slot >= 0) MarkDying(slots_[c->slot]);
    NoteOutcome(*c, /*broken=*/true);
  } else if (!c->local) {
    NoteOutcome(*c, /*broken=*/false);
  }
  c->done.Signal();
}

Status Client::Unreachable(std::string_view when) const {
  return Status::IOError(fmt::format("{} unreachable ({})", url_, when));
}

Result<bool> Client::Admit(std::vector<nfsfh*>* to_close) {
  std::unique_lock<std::mutex> l(mu_);
  bool trial = false;
  for (;;) {
    if (!healthy_ && !trial) {
      if (trial_running_) return Unreachable("reconnect in progress");
      const Clock::time_point now = Clock::now();
      if (now < down_until_) {
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(down_until_ - now).count();
        return Unreachable(fmt::format("reconnect in {} s", (ms + 999) / 1000));
      }
      trial = true;
      trial_running_ = true;
    }
    int live = 0, idle = 0, connecting = 0;
    size_t empty = slots_.size();
    for (size_t i = 0; i < slots_.size(); ++i) {
      switch (slots_[i].state) {
        case Slot::State::kLive:  // unless it failed and the loop has yet to destroy it
          if (!slots_[i].usable.load()) break;
          ++live;
          if (slots_[i].inflight.load(std::memory_order_relaxed) == 0) ++idle;
          break;
        case Slot::State::kConnecting:
          ++connecting;
          break;
        case Slot::State::kEmpty:
          if (empty == slots_.size()) empty = i;
          break;
      }
    }
    if (live > 0 && (idle > 0 || connecting > 0 || empty == slots_.size())) {
      if (healthy_ && !pending_close_.empty()) to_close->swap(pending_close_);
      return trial;
    }
    if (empty == slots_.size()) {  // every slot is being connected or destroyed: wait
      cv_.wait(l);
      continue;
    }
    // Connect without the lock (the slot is ours while kConnecting).
    slots_[empty].state = Slot::State::kConnecting;
    l.unlock();
    Result<nfs_context*> c = Connect();
    l.lock();
    cv_.notify_all();
    if (!c.ok()) {
      slots_[empty].state = Slot::State::kEmpty;
      if (healthy_ || trial) OpenBreakerLocked(c.status().message());
      if (trial) trial_running_ = false;
      // As for a call whose connection failed, the errno is EIO whatever libnfs used (a timed
      // out mount is EINTR); an answer from the server (EACCES, ENOENT...) keeps its own.
      if (ConnectionBroken(c.status().Errno())) return Status::IOError(c.status().message(), EIO);
      return c.status();
    }
    // Published: calls may start on it at once, and the loop polls it from its next turn.
    Slot& s = slots_[empty];
    read_max_.store(std::max<uint64_t>(4096, nfs_get_readmax(*c)));
    write_max_.store(std::max<uint64_t>(4096, nfs_get_writemax(*c)));
    l.unlock();  // Slot::mu before Client::mu_
    {
      std::lock_guard<std::mutex> sl(s.mu);
      s.nfs = *c;
      s.fd.store(nfs_get_fd(*c));
      s.usable.store(true);
    }
    l.lock();
    s.state = Slot::State::kLive;
    WakeLocked();
    if (healthy_ && !pending_close_.empty()) to_close->swap(pending_close_);
    return trial;
  }
}

void Client::EndTrial() {
  std::lock_guard<std::mutex> l(mu_);
  trial_running_ = false;
}

void Client::NoteOutcome(const Call& c, bool broken) {
  // Fast path, without the lock: nothing changes.
  if (!c.trial && healthy_.load(std::memory_order_relaxed) != broken) return;
  std::lock_guard<std::mutex> l(mu_);
  if (broken) {
    if (healthy_ || c.trial) {
      OpenBreakerLocked(fmt::format("{} {}: {}", c.what, c.object, c.error));
    }
  } else if (!healthy_) {
    QBD_LOG_INFO("{} reachable again", url_);
    healthy_ = true;
    backoff_s_ = 1;
  }
  if (c.trial) trial_running_ = false;
}

void Client::OpenBreakerLocked(std::string_view why) {
  backoff_s_ = healthy_ ? 1 : std::min(backoff_s_ * 2, kMaxBackoffSeconds);
  down_until_ = Clock::now() + std::chrono::seconds(backoff_s_);
  if (healthy_) QBD_LOG_WARN("{} unreachable: {}; retrying in {} s", url_, why, backoff_s_);
  healthy_ = false;
  drop_idle_ = true;
  WakeLocked();
}

void Client::CloseNow(std::vector<nfsfh*>* fhs) {
  if (fhs->empty()) return;
  const auto start = [](nfs_context* n, Call* c) {
    return nfs_close_async(n, static_cast<nfsfh*>(c->out), OnReply, c);
  };
  std::vector<Call> calls(fhs->size());
  std::vector<Call*> ptrs;
  for (size_t i = 0; i < calls.size(); ++i) {
    calls[i].out = (*fhs)[i];
    calls[i].local = true;
    calls[i].what = "close";
    calls[i].object = url_;
    calls[i].client = this;
    calls[i].SetStart(start);
    ptrs.push_back(&calls[i]);
  }
  for (Call* c : ptrs) Start(c);
  std::vector<nfsfh*> left;
  for (Call& c : calls) {
    c.done.Wait();
    if (c.unsent) left.push_back(static_cast<nfsfh*>(c.out));  // else freed by libnfs
  }
  fhs->clear();
  if (left.empty()) return;
  std::lock_guard<std::mutex> l(mu_);
  pending_close_.insert(pending_close_.end(), left.begin(), left.end());
}

void Client::Start(Call* c) {
  for (;;) {
    size_t best = slots_.size();
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (!slots_[i].usable.load(std::memory_order_relaxed)) continue;
      if (best == slots_.size() || slots_[i].inflight.load(std::memory_order_relaxed) <
                                       slots_[best].inflight.load(std::memory_order_relaxed)) {
        best = i;
      }
    }
    if (best == slots_.size()) {
      c->unsent = true;
      c->status = -ENOTCONN;
      c->error = "not connected";
      c->done.Signal();
      return;
    }
    Slot& s = slots_[best];
    std::unique_lock<std::mutex> l(s.mu);
    if (!s.usable.load()) continue;  // it failed meanwhile: choose again
    c->slot = static_cast<int>(best);
    const bool was_idle = s.inflight.fetch_add(1, std::memory_order_relaxed) == 0;
    if (c->start(c->start_fn, s.nfs, c) != 0) {  // not queued: no callback will come
      const char* e = nfs_get_error(s.nfs);
      c->status = -ENOMEM;
      c->error = e != nullptr ? e : "request not queued";
      Finished(c);
    } else if ((nfs_which_events(s.nfs) & POLLOUT) && nfs_service(s.nfs, POLLOUT) < 0) {
      MarkDying(s);  // its calls, this one too, fail when the loop destroys it
    }
    // From here on `c` may have completed (nfs_close_async calls back at once): not touched.
    // The loop must wake when this context still has bytes to send (a full socket buffer: it
    // polls for POLLOUT) or was idle (the loop may sleep without a timeout then).
    const bool unsent_bytes = NoteWantOut(s);
    l.unlock();
    if (unsent_bytes || was_idle) {
      std::lock_guard<std::mutex> g(mu_);
      if (unsent_bytes || loop_idle_) WakeLocked();
    }
    return;
  }
}

bool Client::NoteWantOut(Slot& s) {
  const bool out = s.usable.load() && (nfs_which_events(s.nfs) & POLLOUT) != 0;
  s.want_out.store(out);
  return out;
}

void Client::MarkDying(Slot& s) {
  s.usable.store(false);
  if (s.dying.exchange(true)) return;
  std::lock_guard<std::mutex> l(mu_);
  WakeLocked();
}

void Client::WakeLocked() {
  dirty_ = true;
  if (sleeping_ && !woken_) {
    woken_ = true;
    const uint64_t one = 1;
    if (::write(event_fd_, &one, sizeof(one)) < 0) {
      // Only EAGAIN is possible (the counter is full), and then the loop is awake anyway.
    }
  }
}

void Client::Loop() {
  std::vector<struct pollfd> pfds;
  std::vector<size_t> polled;  // the slot of pfds[k + 1]
  Clock::time_point last_scan = Clock::now();
  for (;;) {
    bool drop_idle = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      sleeping_ = woken_ = dirty_ = loop_idle_ = false;
      if (stop_) break;
      drop_idle = std::exchange(drop_idle_, false);
    }
    if (drop_idle) {
      for (Slot& s : slots_) {
        std::lock_guard<std::mutex> l(s.mu);
        if (s.usable.load() && s.inflight.load() == 0) {
          s.usable.store(false);
          s.dying.store(true);
        }
      }
    }
    DestroyDying();

    // Sleep until a socket or the eventfd has something, or the next timeout scan is due (with
    // no call in flight there is nothing to time out: sleep until woken).
    pfds.assign(1, {event_fd_, POLLIN, 0});
    polled.clear();
    for (size_t i = 0; i < slots_.size(); ++i) {
      // Without the context's lock, which a caller may hold while it sends a large WRITE: the
      // socket stays open until this thread destroys the context.
      const Slot& s = slots_[i];
      const int fd = s.fd.load();
      if (fd < 0) continue;
      pfds.push_back({fd, static_cast<short>(POLLIN | (s.want_out.load() ? POLLOUT : 0)), 0});
      polled.push_back(i);
    }
    const auto since_scan =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - last_scan).count();
    int timeout = 0;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!dirty_) {
        // Under mu_: a caller that makes a context busy after this look finds loop_idle_ set
        // when it takes mu_ (Start), and wakes the loop.
        bool busy = false;
        for (const Slot& s : slots_) busy = busy || s.inflight.load() > 0;
        timeout = busy ? static_cast<int>(std::max<int64_t>(0, kScanIntervalMs - since_scan)) : -1;
        sleeping_ = true;
        loop_idle_ = !busy;
      }
    }
    const int n = ::poll(pfds.data(), pfds.size(), timeout);
    if (n > 0) {
      if (pfds[0].revents & POLLIN) {
        uint64_t count;
        if (::read(event_fd_, &count, sizeof(count)) < 0) {
          // EAGAIN: a wake that another read took already.
        }
      }
      for (size_t k = 0; k < polled.size(); ++k) {
        if (pfds[k + 1].revents == 0) continue;
        Slot& s = slots_[polled[k]];
        std::lock_guard<std::mutex> l(s.mu);
        if (!s.usable.load()) continue;
        if (nfs_service(s.nfs, pfds[k + 1].revents) < 0) {
          MarkDying(s);  // a failed socket; or the server closed an idle connection
        } else {
          NoteWantOut(s);
        }
      }
    }
    if (Clock::now() - last_scan >= std::chrono::milliseconds(kScanIntervalMs)) {
      // nfs_service fails the calls whose timeout has passed.
      last_scan = Clock::now();
      for (Slot& s : slots_) {
        if (s.inflight.load(std::memory_order_relaxed) == 0) continue;
        std::lock_guard<std::mutex> l(s.mu);
        if (s.usable.load() && nfs_service(s.nfs, 0) < 0) MarkDying(s);
      }
    }
    DestroyDying();
  }
  // Stopped by ~Client: no caller is left, so no call is in flight.
  for (Slot& s : slots_) {
    std::lock_guard<std::mutex> l(s.mu);
    if (s.nfs != nullptr) nfs_destroy_context(s.nfs);
    s.nfs = nullptr;
  }
}

void Client::DestroyDying() {
  for (Slot& s : slots_) {
    if (!s.dying.load()) continue;
    std::lock_guard<std::mutex> l(s.mu);
    s.usable.store(false);
    s.fd.store(-1);
    s.want_out.store(false);
    if (s.nfs != nullptr) nfs_destroy_context(s.nfs);  // Finished() for each call still on it
    s.nfs = nullptr;
    s.dying.store(false);
    std::lock_guard<std::mutex> g(mu_);
    s.state = Slot::State::kEmpty;
    cv_.notify_all();
  }
}

Result<nfs_context*> Client::Connect() {
  std::string known;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (export_known_) known = export_;
  }
  if (!known.empty()) return Mount(known);
  const std::string& path = parsed_.path;
  for (size_t end = path.find('/', 1);; end = path.find('/', end + 1)) {
    const bool longest = end == std::string::npos;
    const std::string prefix = path.substr(0, end);
    Result<nfs_context*> c = Mount(prefix);
    if (!c.ok()) {
      const int err = c.status().Errno();
      if (longest || (err != EACCES && err != ENOENT && err != EPERM && err != ENOTDIR))
        return c.status();
      continue;
    }
    nfs_context* nfs = *c;
    const std::string sub = longest ? "" : path.substr(end);
    Status s = MakeRoot(&nfs, prefix, sub);
    if (!s.ok()) {
      if (nfs != nullptr) nfs_destroy_context(nfs);
      return s;
    }
    std::lock_guard<std::mutex> l(mu_);
    export_ = prefix;
    root_ = sub;
    export_known_ = true;
    return nfs;
  }
}

Result<nfs_context*> Client::Mount(const std::string& export_path) {
  nfs_context* nfs = nfs_init_context();
  if (nfs == nullptr)
    return Status::IOError(fmt::format("{}: nfs_init_context failed", url_), ENOMEM);
  nfs_set_tcp_syncnt(nfs,
                     SynCountFor(options_.timeout_ms));  // a tcp-syncnt in the URL overrides it
  nfs_url* u = nfs_parse_url_dir(nfs, url_.c_str());     // applies nfsport, mountport...
  if (u == nullptr) {
    Status s = Status::InvalidArgument(fmt::format("{}: {}", url_, nfs_get_error(nfs)));
    nfs_destroy_context(nfs);
    return s;
  }
  nfs_destroy_url(u);
  // Before nfs_mount, and after the URL so that it cannot override them.
  nfs_set_timeout(nfs, options_.timeout_ms);
  nfs_set_autoreconnect(nfs, 0);
  nfs_set_dircache(nfs, 0);  // another context may change a directory this one has cached
  // Synchronous, unlike every other call: on failure nfs_mount cancels its own requests.
  const int rc = nfs_mount(nfs, parsed_.host.c_str(), export_path.c_str());
  if (rc != 0) {
    const int err = rc < -1 ? -rc : EIO;
    const char* text = nfs_get_error(nfs);
    Status s = Status::IOError(fmt::format("mount nfs://{}{}: {}", parsed_.host, export_path,
                                           text != nullptr ? text : std::strerror(err)),
                               err);
    nfs_destroy_context(nfs);
    return s;
  }
  return nfs;
}

Status Client::MakeRoot(nfs_context** nfs, const std::string& export_path, const std::string& sub) {
  if (sub.empty()) return Status::OK();
  auto name = [&](const std::string& p) {
    return fmt::format("nfs://{}{}{}", parsed_.host, export_path, p);
  };
  struct nfs_stat_64 st = {};
  const auto stat = [&sub](nfs_context* n, Call* c) {
    return nfs_stat64_async(n, sub.c_str(), OnReply, c);
  };
  Call c;
  c.kind = Call::Kind::kStat;
  c.out = &st;
  c.SetStart(stat);
  RunPrivate(nfs, &c);
  if (c.status == 0) {
    if (S_ISDIR(st.nfs_mode)) return Status::OK();
    return Status::IOError(fmt::format("{}: not a directory", name(sub)), ENOTDIR);
  }
  if (c.status != -ENOENT)
    return Status::IOError(fmt::format("stat {}: {}", name(sub), c.error), -c.status);
  if (!options_.create_if_missing) {
    return Status::NotFound(fmt::format("{}: no such directory on the server", name(sub)));
  }
  for (size_t end = sub.find('/', 1);; end = sub.find('/', end + 1)) {
    const std::string p = sub.substr(0, end);
    const auto mkdir = [&p](nfs_context* n, Call* m) {
      return nfs_mkdir_async(n, p.c_str(), OnReply, m);
    };
    Call m;
    m.SetStart(mkdir);
    RunPrivate(nfs, &m);
    if (m.status < 0 && m.status != -EEXIST)
      return Status::IOError(fmt::format("mkdir {}: {}", name(p), m.error), -m.status);
    if (end == std::string::npos) return Status::OK();
  }
}

}  // namespace nfs_client
}  // namespace qbd
