// ProcessLock: the lock that keeps one process at a time in charge of a configuration's volumes.
//
// An exclusive flock on "<admin_socket>.lock" (admin_socket in qbd.conf), holding its owner's name
// and pid. qbd-master holds it while it runs; an offline qbd-repair or `qbdctl convert` holds it
// while it writes without a daemon, so neither starts while the other writes.
//
// Thread-safety: a ProcessLock is one process's; HeldBy may be called from any thread.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "qbd/status.h"

namespace qbd {

class ProcessLock {
 public:
  // Takes the lock at `path` (created if absent) without waiting. Unavailable naming the holder's
  // pid when another process holds it.
  static Result<std::unique_ptr<ProcessLock>> Acquire(const std::string& path,
                                                      const std::string& who);
  // Who holds the lock at `path` now ("qbd-master (pid 123)"), without taking it; nullopt when
  // nobody does (or the file does not exist).
  static std::optional<std::string> HeldBy(const std::string& path);
  ~ProcessLock();

 private:
  ProcessLock() = default;
  int fd_ = -1;
};

}  // namespace qbd
