// NbdServer::Impl, private to the NBD server: sockets and threads around the pure protocol code
// of wire.cc. server.cc has the listeners, the connections' lifetime and the public methods,
// server_handshake.cc the handshake, server_transmission.cc the requests and replies.
//
// Threads:
//  - one listener thread per Listen(): poll()s its socket and the server's wake eventfd, accepts,
//    and starts the connection's main thread. It never reads from a client.
//  - per connection, a main thread runs the handshake (with a receive timeout, so a silent client
//    cannot pin it), then becomes the connection's first worker. A worker that has read a request
//    while no other worker of the connection waits to read starts another one (up to
//    threads_per_connection); a worker other than the first that waits kIdleWorkerMs for its
//    turn to read ends. When the first worker returns and the others have ended, the main thread
//    shuts the socket down and queues itself for the reaper.
//  - one reaper thread joins finished connection threads and closes their sockets, so finished
//    connections never accumulate.
//
// A worker loop: take the connection's read mutex, read one whole request (header and WRITE
// payload) into the worker's own buffer, release it, run the request through the export's
// BlockHandler, and send the reply (SendReply). Replies may thus leave out of order, which the
// protocol allows.
//
// Memory: a WRITE payload is received piece by piece, each piece's bytes taken from the server's
// PayloadBudget before they are read (64 KiB first, then as much as has arrived so far); a READ
// reply takes its length before the read. A worker's buffer is allocated without being written,
// so the pages of a payload become memory only as its bytes land. When the budget is spent the reader waits, and stops reading its socket meanwhile.
// Once a request's first byte has arrived, the rest of its header and each piece of its payload
// must arrive within client_timeout_ms, or the connection is closed.
//
// Replies are combined: one worker at a time sends, and a worker that finds another one sending
// copies a small reply (a header, a write's acknowledgement, a read of up to kCoalesceMax bytes)
// into the connection's outbox and goes back to reading; the sending worker sends the outbox with
// its own reply in one sendmsg() before it stops sending. At queue depth 32 one syscall then
// carries several replies (each sendmsg on TCP also runs the receiver's softirq work).
//
// Lock order: Impl::mu_ before nothing (never held while calling into a connection); a
// connection's read_mu and write_mu are never held together; write_mu before log_mu.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/coding.h"
#include "qbd/log.h"
#include "qbd/nbd_server.h"
#include "qbd/nbd_wire.h"
#include "nbd/budget.h"
#include "nbd/socket_io.h"

namespace qbd {
namespace nbd_server {

// The meta context id of base:allocation after NBD_OPT_SET_META_CONTEXT.
constexpr uint32_t kBaseAllocationId = 1;

// Reads one message: the handshake (main thread only) and workers (under read_mu) use it.
enum class Read { kOk, kEof, kError };

inline Read ReadMsg(int fd, InBuffer& in, std::span<std::byte> out, std::string* why, int timeout_ms = 0,
             bool from_first_byte = false) {
  why->clear();
  bool partial = false;
  int err = 0;
  switch (in.ReadExact(fd, out, &partial, &err, timeout_ms, from_first_byte)) {
    case InBuffer::Outcome::kOk:
      return Read::kOk;
    case InBuffer::Outcome::kEof:
      if (partial) *why = "connection closed in the middle of a message";
      return partial ? Read::kError : Read::kEof;
    case InBuffer::Outcome::kError:
      *why = (err == EAGAIN || err == EWOULDBLOCK || err == ETIMEDOUT) ? std::string("timed out")
                                                                        : std::string(std::strerror(err));
      return Read::kError;
  }
  return Read::kError;
}

}  // namespace nbd_server

struct NbdServer::Impl {
  struct Listener {
    int fd = -1;
    std::string address;      // BoundAddresses() form
    std::string unix_path;    // removed on Stop
    std::string only_export;  // "" serves the registry by name
    std::thread thread;
  };

  struct Conn {
    ~Conn() { CloseFd(fd); }

    uint64_t id = 0;
    int fd = -1;
    std::string peer;  // for log lines
    std::string peer_address;  // "HOST:PORT" ("unix" for a unix socket)
    std::string only_export;
    std::thread thread;  // the main thread (handshake, then worker 0)

    // Set by the handshake, then read-only while workers run.
    std::shared_ptr<const Export> exp;
    std::string serving;  // guarded by Impl::mu: exp's name once the handshake chose it
    bool structured = false;
    bool base_allocation = false;

    std::timed_mutex read_mu;
    InBuffer in;           // guarded by read_mu (only the handshake thread before workers start)
    bool closing = false;  // guarded by read_mu: no further request is read

    std::mutex workers_mu;
    int workers = 0;  // guarded by workers_mu: running workers (the main thread is the first)
    int idle = 0;     // guarded by workers_mu: workers waiting to read (or reading) a request

    std::mutex write_mu;
    bool send_failed = false;         // guarded by write_mu
    bool sending = false;             // guarded by write_mu: a worker is in SendReply's send loop
    std::vector<std::byte> outbox;    // guarded by write_mu: replies for the sending worker to send
    std::vector<std::byte> sendbuf;   // owned by the sending worker: the outbox being sent
    std::condition_variable send_cv;  // signalled when `sending` ends
    int big_waiters = 0;  // guarded by write_mu: workers waiting in SendReply with a large reply

    std::mutex log_mu;
    int64_t log_second = 0;   // guarded by log_mu
    int logged = 0;           // guarded by log_mu
    uint64_t suppressed = 0;  // guarded by log_mu
  };

  Impl(const ExportRegistry& r, NbdServerOptions o)
      : registry(r),
        options(o),
        budget(std::max<uint64_t>(o.memory_budget, uint64_t{2} * kMaxPayload), kMaxPayload) {}

  // ---- listeners and lifetime ----
  Status Listen(std::string_view spec, std::string only_export);
  void ListenerLoop(Listener* l);
  // Records the export the handshake chose (for Disconnect).
  void Serving(Conn* c);
  size_t Disconnect(std::string_view export_name);
  void StartConnection(int fd, const sockaddr_storage& peer, const std::string& only_export);
  void ReaperLoop();
  void Stop();

  // ---- one connection ----
  void ConnectionMain(Conn* c);
  // Returns true when the client entered transmission.
  bool Handshake(Conn* c);
  // Serves requests until the connection closes, or until it waited kIdleWorkerMs for its turn
  // to read while another worker held it.
  void Worker(Conn* c);
  // Worker(), then the connection's end if it was the last worker.
  void RunWorker(Conn* c);
  // Shuts the socket down and hands the connection to the reaper.
  void FinishConnection(Conn* c);
  // Starts one more worker when none waits to read and there is room; REQUIRES: a request was
  // just read (the caller is busy).
  void MaybeAddWorker(Conn* c);
  // Sends the reply made of `a` then `b`, or leaves it in the outbox for the worker that is
  // sending (see the top of this file).
  void SendReply(Conn* c, std::span<const std::byte> a, std::span<const std::byte> b);
  void Warn(Conn* c, std::string_view what);

  const ExportRegistry& registry;
  const NbdServerOptions options;
  PayloadBudget budget;

  std::mutex stop_mu;  // serializes Stop()
  mutable std::mutex mu;
  std::condition_variable cv;
  std::vector<std::unique_ptr<Listener>> listeners;  // guarded by mu
  std::map<uint64_t, std::unique_ptr<Conn>> conns;   // guarded by mu
  std::vector<uint64_t> finished;                    // guarded by mu: conns whose threads ended
  uint64_t next_conn_id = 1;                         // guarded by mu
  uint32_t live = 0;          // guarded by mu: connections whose main thread has not ended
  int64_t refused_second = 0;  // guarded by mu: when the last refusal was logged
  uint64_t refused = 0;        // guarded by mu: refusals since then, not logged
  bool stopping = false;                             // guarded by mu
  bool reaper_exit = false;                          // guarded by mu
  std::thread reaper;                                // started by the first Listen
  int wake_fd = -1;  // eventfd; written once by Stop, wakes every listener's poll
};

}  // namespace qbd
