#include "engine/flush_coalescer.h"

namespace qbd {

Status FlushCoalescer::Run(const std::function<Status()>& run) {
  std::unique_lock<std::mutex> l(mu_);
  const uint64_t ticket = ++requested_;
  // Invariant: a run covers every ticket taken before it started (`target`).
  while (completed_ < ticket) {
    if (running_) {
      cv_.wait(l);
      continue;
    }
    running_ = true;
    const uint64_t target = requested_;
    l.unlock();
    Status s = run();
    l.lock();
    running_ = false;
    completed_ = target;
    ++runs_;
    last_ = s;
    cv_.notify_all();
  }
  return last_;
}

uint64_t FlushCoalescer::runs() const {
  std::lock_guard<std::mutex> l(mu_);
  return runs_;
}

}  // namespace qbd
