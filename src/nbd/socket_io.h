// Socket input and output of the NBD server (server.cc): blocking sends of whole replies, a
// buffered reader that can hold a client to a deadline within a message, and a worker's buffer
// for request data.
// Thread-safety: InBuffer and PayloadBuffer belong to one thread at a time (the caller's locks).
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

namespace qbd {

inline constexpr size_t kReadBufferSize = 64 * 1024;
// A worker keeps its request buffer across requests up to this size; a larger one is freed after
// its request.
inline constexpr size_t kKeptBufferSize = 4 << 20;

inline void CloseFd(int fd) {
  if (fd >= 0) ::close(fd);
}

inline void SetTimeout(int fd, int option, int ms) {
  timeval tv{};
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  // Best effort: without the timeout the connection still works.
  (void)::setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv));
}

// Sends every byte of `iov`; false (errno set) on failure. Modifies `iov`.
inline bool SendAll(int fd, iovec* iov, int iovcnt) {
  while (iovcnt > 0) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(iovcnt);
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    auto left = static_cast<size_t>(n);
    while (iovcnt > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --iovcnt;
    }
    if (iovcnt > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return true;
}

inline bool SendAll(int fd, std::span<const std::byte> a, std::span<const std::byte> b = {}) {
  iovec iov[2] = {{const_cast<std::byte*>(a.data()), a.size()},
                  {const_cast<std::byte*>(b.data()), b.size()}};
  return SendAll(fd, iov, b.empty() ? 1 : 2);
}

inline int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Buffered reads from a socket. Small messages (request headers) come out of one recv() of up to
// kReadBufferSize bytes, so pipelined requests cost one syscall for many headers; large payloads
// are received directly into the caller's buffer.
class InBuffer {
 public:
  InBuffer() : buf_(kReadBufferSize) {}

  enum class Outcome { kOk, kEof, kError };
  // Fills `out`. kEof when the peer closed before the first byte of `out` arrived at a message
  // boundary or in the middle of it (`*partial` tells which); kError with errno saved in *err
  // (ETIMEDOUT when `timeout_ms` passed). `timeout_ms` > 0: all of `out` must arrive within it,
  // counted from the call, or with `from_first_byte` from the arrival of its first byte (a
  // client may stay idle before a request, not within one).
  bool buffered() const { return end_ > begin_; }

  Outcome ReadExact(int fd, std::span<std::byte> out, bool* partial, int* err, int timeout_ms = 0,
                    bool from_first_byte = false) {
    size_t done = std::min(out.size(), end_ - begin_);
    if (done > 0) std::memcpy(out.data(), buf_.data() + begin_, done);
    begin_ += done;
    *partial = done > 0;
    int64_t deadline = timeout_ms > 0 && (!from_first_byte || done > 0) ? NowMs() + timeout_ms : 0;
    while (done < out.size()) {
      const size_t want = out.size() - done;
      const bool direct = want >= buf_.size() / 2;
      // Without a deadline, block in recv; with one, take what is there and poll for the rest.
      const int flags = deadline > 0 ? MSG_DONTWAIT : (direct ? MSG_WAITALL : 0);
      ssize_t n = direct ? ::recv(fd, out.data() + done, want, flags) : ::recv(fd, buf_.data(), buf_.size(), flags);
      if (n < 0) {
        if (errno == EINTR) continue;
        if ((errno == EAGAIN || errno == EWOULDBLOCK) && deadline > 0) {
          const int64_t left = deadline - NowMs();
          pollfd p = {fd, POLLIN, 0};
          if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) == 0) {
            *err = ETIMEDOUT;
            return Outcome::kError;
          }
          continue;  // readable, closed, or EINTR: recv tells
        }
        *err = errno;
        return Outcome::kError;
      }
      if (n == 0) return Outcome::kEof;
      if (!*partial && timeout_ms > 0 && deadline == 0) deadline = NowMs() + timeout_ms;
      *partial = true;
      if (direct) {
        done += static_cast<size_t>(n);
      } else {
        begin_ = 0;
        end_ = static_cast<size_t>(n);
        const size_t take = std::min(want, end_);
        std::memcpy(out.data() + done, buf_.data(), take);
        begin_ = take;
        done += take;
      }
    }
    return Outcome::kOk;
  }

 private:
  std::vector<std::byte> buf_;
  size_t begin_ = 0, end_ = 0;  // Invariant: buf_[begin_, end_) is received but unconsumed
};

// A worker's buffer for request data, kept across requests up to kKeptBufferSize (a buffer that
// stays with its thread is measurably faster to fill and send from than one passed between
// threads), allocated without being written, so that the pages of a large WRITE payload become
// memory only as its bytes arrive. Larger buffers are freed after their request (Done), and the
// kept one when the connection is quiet (Release).
class PayloadBuffer {
 public:
  std::byte* Get(size_t n) {
    if (cap_ < n) {
      p_.reset(new std::byte[n]);  // default-initialized: not touched
      cap_ = n;
    }
    return p_.get();
  }
  void Done() {
    if (cap_ > kKeptBufferSize) Release();
  }
  void Release() {
    p_.reset();
    cap_ = 0;
  }
  bool empty() const { return cap_ == 0; }

 private:
  std::unique_ptr<std::byte[]> p_;
  size_t cap_ = 0;
};

}  // namespace qbd
