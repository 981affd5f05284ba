#include "nbd/budget.h"

#include <cassert>

namespace qbd {

PayloadBudget::PayloadBudget(uint64_t limit, uint64_t reserve) : limit_(limit), reserve_(reserve) {
  assert(reserve < limit);
}

void PayloadBudget::Take(Hold& hold, uint64_t n, bool continuing) {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    // The reserve's holder never waits: what others hold is at most limit - reserve, and its
    // own payload at most reserve.
    if (hold.reserve || used_ + n <= limit_ - reserve_) break;
    if (continuing && !reserve_taken_ && used_ + n <= limit_) {
      reserve_taken_ = true;
      hold.reserve = true;
      break;
    }
    cv_.wait(l);
  }
  used_ += n;
  hold.bytes += n;
}

void PayloadBudget::Release(Hold& hold) {
  if (hold.bytes == 0 && !hold.reserve) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    used_ -= hold.bytes;
    if (hold.reserve) reserve_taken_ = false;
  }
  hold = Hold{};
  cv_.notify_all();
}

uint64_t PayloadBudget::used() const {
  std::lock_guard<std::mutex> l(mu_);
  return used_;
}

}  // namespace qbd
