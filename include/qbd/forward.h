// ForwardHandler: how a master serves a volume that another master still holds, during a live
// migration (master_handoff.cc). A VM moving to this node opens its disk here while it still runs
// on the holder's node; until the holder lets go, every request of this node's clients is
// forwarded to the holder over NBD (NbdRemote), so that one master alone writes the volume and
// its caches. When the holder lets go (the source VM detached there) it closes the forwarded
// connections and releases the lease; this master takes the lease, opens the volume and
// SwitchTo()s it: the clients here never see the change, only a pause.
//
// Requests whose connection to the holder ended before their reply ("lost": the holder may or may
// not have carried them out) wait for the next target: a new connection to the holder
// (SetRemote, after the holder restarted) or the local volume (SwitchTo). They then run there
// one at a time in the order they first arrived, each after every earlier request of the handler
// ended. So a write lost and resent by the kernel (after its request timeout) runs before its
// resent copy, and both before anything the client sends once the resent copy is answered: an
// old copy never lands over newer data. A request that waited `max_wait_ms` in all fails (EIO).
//
// Thread-safety: every method is safe for concurrent calls.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "qbd/handler.h"
#include "qbd/nbd_remote.h"

namespace qbd {

class ForwardHandler : public BlockHandler {
 public:
  ForwardHandler(std::string volume, std::shared_ptr<NbdRemote> remote, uint64_t max_wait_ms);

  uint64_t Size() const override;
  Status Read(uint64_t off, std::span<std::byte> out) override;
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override;
  Status Flush() override;
  Status Trim(uint64_t off, uint64_t len, bool fua) override;
  Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) override;
  // The local volume's answer once switched; NotSupported while forwarding (the NBD server then
  // reports the range allocated).
  Result<std::vector<Extent>> BlockStatus(uint64_t off, uint64_t len) override;

  // From now on requests go to `local` (the volume, opened under its lease); the remote is closed.
  void SwitchTo(std::shared_ptr<BlockHandler> local);
  // A new connection to the holder, after every socket of the previous one ended.
  void SetRemote(std::shared_ptr<NbdRemote> remote);
  // Every waiting and later request fails with EIO naming `why` (the volume detached or deleted).
  void Fail(const std::string& why);

  // The connection to the holder (null once switched).
  std::shared_ptr<NbdRemote> remote() const;
  bool switched() const;
  // Requests waiting for a new target now.
  int Waiting() const;

 private:
  using RemoteOp = std::function<NbdRemote::Reply(NbdRemote&)>;
  using LocalOp = std::function<Status(BlockHandler&)>;
  Status Run(const RemoteOp& remote_op, const LocalOp& local_op);
  // After a new target was set: closes `old` (its requests come back lost), then wakes the
  // waiting requests.
  void Announce(std::shared_ptr<NbdRemote> old);

  const std::string volume_;
  const uint64_t max_wait_ms_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<NbdRemote> remote_;   // GUARDED_BY(mu_): null once switched
  std::shared_ptr<BlockHandler> local_;  // GUARDED_BY(mu_): set by SwitchTo
  uint64_t generation_ = 0;             // GUARDED_BY(mu_): counts the targets set
  uint64_t next_ticket_ = 1;            // GUARDED_BY(mu_)
  std::set<uint64_t> outstanding_;      // GUARDED_BY(mu_): tickets of requests not ended
  int waiting_ = 0;                     // GUARDED_BY(mu_)
  std::string failed_;                  // GUARDED_BY(mu_): Fail's reason
};

}  // namespace qbd
