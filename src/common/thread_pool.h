// ThreadPool: a fixed set of threads running submitted closures, used to fan one request out to
// several parts in parallel. RunAll runs the first task on the calling thread and waits for all.
//
// Thread-safety: Submit and RunAll are safe from any thread. REQUIRES: tasks never wait on other
// tasks of the same pool (no nested RunAll from a pool thread with a full pool).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace qbd {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();  // runs what is queued, then joins
  void Submit(std::function<void()> task);
  // Runs every task, the first on the calling thread, and returns when all have finished.
  void RunAll(std::vector<std::function<void()>>& tasks);

 private:
  void Loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // GUARDED_BY(mu_)
  bool stop_ = false;                        // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

}  // namespace qbd
