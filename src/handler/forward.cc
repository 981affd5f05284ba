// Implements include/qbd/forward.h.
#include "qbd/forward.h"

#include <fmt/format.h>

#include <chrono>
#include <utility>

namespace qbd {

ForwardHandler::ForwardHandler(std::string volume, std::shared_ptr<NbdRemote> remote, uint64_t max_wait_ms)
    : volume_(std::move(volume)), max_wait_ms_(max_wait_ms), remote_(std::move(remote)) {}

uint64_t ForwardHandler::Size() const {
  std::lock_guard l(mu_);
  return local_ ? local_->Size() : remote_->info().size;
}

Status ForwardHandler::Run(const RemoteOp& remote_op, const LocalOp& local_op) {
  std::shared_ptr<BlockHandler> local;
  std::shared_ptr<NbdRemote> remote;
  uint64_t ticket = 0, generation = 0;
  {
    std::lock_guard l(mu_);
    if (!failed_.empty()) return Status::IOError(failed_);
    local = local_;
    // Switched, and no request from before is left: no order to keep any more.
    if (!local || !outstanding_.empty()) {
      remote = remote_;
      generation = generation_;
      ticket = next_ticket_++;
      outstanding_.insert(ticket);
    }
  }
  if (ticket == 0) return local_op(*local);  // outside the lock: requests run side by side
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(max_wait_ms_);
  bool waited = false;
  for (;;) {
    NbdRemote::Reply r;
    if (local) {
      r.status = local_op(*local);
    } else {
      r = remote_op(*remote);
    }
    std::unique_lock l(mu_);
    if (!r.lost) {
      outstanding_.erase(ticket);
      if (waited) --waiting_;
      cv_.notify_all();
      return r.status;
    }
    // Lost: wait for a new target, then for every earlier request to end.
    if (!waited) ++waiting_;
    waited = true;
    const bool ready = cv_.wait_until(l, deadline, [&] {
      return !failed_.empty() || (generation_ != generation && *outstanding_.begin() == ticket);
    });
    if (!ready || !failed_.empty()) {
      outstanding_.erase(ticket);
      --waiting_;
      cv_.notify_all();
      if (!failed_.empty()) return Status::IOError(failed_);
      return Status::IOError(fmt::format(
          "volume {}: the master holding it stopped answering and it was not taken over within {} ms: {}",
          volume_, max_wait_ms_, r.status.message()));
    }
    generation = generation_;
    local = local_;
    remote = remote_;
  }
}

Status ForwardHandler::Read(uint64_t off, std::span<std::byte> out) {
  return Run([&](NbdRemote& r) { return r.Read(off, out); }, [&](BlockHandler& h) { return h.Read(off, out); });
}

Status ForwardHandler::Write(uint64_t off, std::span<const std::byte> in, bool fua) {
  return Run([&](NbdRemote& r) { return r.Write(off, in, fua); },
             [&](BlockHandler& h) { return h.Write(off, in, fua); });
}

Status ForwardHandler::Flush() {
  return Run([](NbdRemote& r) { return r.Flush(); }, [](BlockHandler& h) { return h.Flush(); });
}

Status ForwardHandler::Trim(uint64_t off, uint64_t len, bool fua) {
  return Run([&](NbdRemote& r) { return r.Trim(off, len, fua); },
             [&](BlockHandler& h) { return h.Trim(off, len, fua); });
}

Status ForwardHandler::WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) {
  return Run([&](NbdRemote& r) { return r.WriteZeroes(off, len, may_trim, fua); },
             [&](BlockHandler& h) { return h.WriteZeroes(off, len, may_trim, fua); });
}

Result<std::vector<Extent>> ForwardHandler::BlockStatus(uint64_t off, uint64_t len) {
  std::shared_ptr<BlockHandler> local;
  {
    std::lock_guard l(mu_);
    local = local_;
  }
  if (!local) return Status::NotSupported("volume " + volume_ + " is forwarded to the master holding it");
  return local->BlockStatus(off, len);
}

void ForwardHandler::Announce(std::shared_ptr<NbdRemote> old) {
  // Requests still out on the old connection come back lost before the new target is announced,
  // so that they take their turn in the order of arrival with the others.
  if (old) old->Close();
  std::lock_guard l(mu_);
  ++generation_;
  cv_.notify_all();
}

void ForwardHandler::SwitchTo(std::shared_ptr<BlockHandler> local) {
  std::shared_ptr<NbdRemote> old;
  {
    std::lock_guard l(mu_);
    old = std::move(remote_);
    local_ = std::move(local);
  }
  Announce(std::move(old));
}

void ForwardHandler::SetRemote(std::shared_ptr<NbdRemote> remote) {
  std::shared_ptr<NbdRemote> old;
  {
    std::lock_guard l(mu_);
    if (local_) return;  // switched already
    old = std::exchange(remote_, std::move(remote));
  }
  Announce(std::move(old));
}

void ForwardHandler::Fail(const std::string& why) {
  std::shared_ptr<NbdRemote> old;
  {
    std::lock_guard l(mu_);
    failed_ = why.empty() ? "volume " + volume_ + ": forwarding ended" : why;
    old = remote_;
    cv_.notify_all();
  }
  if (old) old->Close();
}

std::shared_ptr<NbdRemote> ForwardHandler::remote() const {
  std::lock_guard l(mu_);
  return remote_;
}

bool ForwardHandler::switched() const {
  std::lock_guard l(mu_);
  return local_ != nullptr;
}

int ForwardHandler::Waiting() const {
  std::lock_guard l(mu_);
  return waiting_;
}

}  // namespace qbd
