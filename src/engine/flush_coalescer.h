// FlushCoalescer: concurrent flushes coalesce into one run. A caller that arrives while a run is
// in progress waits for it and then for the next run, which starts after its call and so covers
// every write it acknowledged before; callers that arrive together share that next run.
//
// Used by VolumeEngine::Flush (quorum.h): one sync of every part serves all the flushes that
// queued up behind the previous one.
//
// Thread-safety: Run is safe from any thread; `run` is never called twice at once.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>

#include "qbd/status.h"

namespace qbd {

class FlushCoalescer {
 public:
  // Calls `run` (on this thread) or waits for a call of another thread's `run` that started after
  // this call began; returns the status of that run.
  Status Run(const std::function<Status()>& run);

  // Runs of `run` so far.
  uint64_t runs() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t requested_ = 0;  // GUARDED_BY(mu_): tickets handed out
  uint64_t completed_ = 0;  // GUARDED_BY(mu_): every ticket up to this one is covered
  uint64_t runs_ = 0;       // GUARDED_BY(mu_)
  bool running_ = false;    // GUARDED_BY(mu_)
  Status last_;             // GUARDED_BY(mu_)
};

}  // namespace qbd
