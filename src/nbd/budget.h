// PayloadBudget: the bytes of NBD request data (WRITE payloads, READ replies) that qbd-master
// holds for all connections together, so that memory follows what clients send and what the
// server is working on, never what a request header merely announces.
//
// A WRITE payload is taken piece by piece as it arrives (Take with `continuing` for every piece
// after the first), a READ reply whole before it is read. When the budget is spent, Take waits:
// the server stops reading from that client (back-pressure) and no request fails for it.
//
// Progress: pieces of payloads already begun could otherwise spend the whole budget among
// themselves and wait for each other forever. `reserve` bytes (at least the largest request) are
// kept for them: one payload at a time, a waiting one, may finish with them, and never waits.
//
// Thread-safety: safe for concurrent calls.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace qbd {

class PayloadBudget {
 public:
  // REQUIRES: reserve < limit.
  PayloadBudget(uint64_t limit, uint64_t reserve);

  // A request's hold on the budget; give it back with Release when the request is done.
  struct Hold {
    uint64_t bytes = 0;
    bool reserve = false;  // may take from the reserve (the oldest payload begun)
  };

  // Adds `n` bytes to `hold`, waiting until they fit. `continuing`: a piece of a payload whose
  // first piece `hold` already has. Every wait ends: the holds it waits for belong to requests
  // that finish, or to payloads that finish or whose connection closes (a timeout).
  void Take(Hold& hold, uint64_t n, bool continuing);
  void Release(Hold& hold);

  uint64_t used() const;
  uint64_t limit() const { return limit_; }

 private:
  const uint64_t limit_;
  const uint64_t reserve_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t used_ = 0;          // GUARDED_BY(mu_)
  bool reserve_taken_ = false;  // GUARDED_BY(mu_): a hold has `reserve`
};

}  // namespace qbd
