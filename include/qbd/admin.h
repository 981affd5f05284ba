// Admin: qbd-master's local admin socket, and the lock that keeps one process at a time in charge
// of a configuration's volumes.
//
// The socket is a unix stream socket (mode 0600). A client sends one request per line, words
// separated by spaces; the server answers each with lines that end with "end", or with one line
// "error MESSAGE". qbd-repair uses it to have the running daemon repair chunks under its own
// region locks rather than race it. Requests:
//   ping                                   -> "ok qbd-master pid=N" "end"
//   stats                                  -> one line per volume, then the cache's line
//   repair VOLUME CHUNK [dry-run] [targets=MASK] [accept-loss]
//                                          -> EncodeRepairReport(...)  (CHUNK is 0-based)
//
// ProcessLock: an exclusive flock on "<admin_socket>.lock" holding the owner's pid. qbd-master
// holds it while it runs; qbd-repair holds it while it repairs without a daemon, so neither starts
// while the other writes.
//
// Thread-safety: AdminServer calls the handler from one thread per connection.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "qbd/quorum.h"
#include "qbd/status.h"

namespace qbd {

class ProcessLock {
 public:
  // Takes the lock at `path` (created if absent) without waiting. Unavailable naming the holder's
  // pid when another process holds it.
  static Result<std::unique_ptr<ProcessLock>> Acquire(const std::string& path,
                                                      const std::string& who);
  ~ProcessLock();

 private:
  ProcessLock() = default;
  int fd_ = -1;
};

class AdminServer {
 public:
  // Gets the request's words; returns the reply lines (without the final "end"), or an error.
  using Handler = std::function<Result<std::string>(const std::vector<std::string>& words)>;
  // Listens on `path` (a stale socket file there is replaced: the caller holds the ProcessLock).
  static Result<std::unique_ptr<AdminServer>> Start(const std::string& path, Handler handler);
  ~AdminServer();  // stops listening, waits for the connections' threads, removes the socket

 private:
  AdminServer() = default;
  void AcceptLoop();
  void Serve(int fd);

  std::string path_;
  Handler handler_;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread accept_thread_;
  std::mutex mu_;
  std::vector<std::thread> conns_;  // GUARDED_BY(mu_)
  std::vector<int> conn_fds_;       // GUARDED_BY(mu_)
};

// A connection to a running qbd-master's admin socket.
class AdminClient {
 public:
  // Unavailable when nothing listens at `path`.
  static Result<std::unique_ptr<AdminClient>> Connect(const std::string& path);
  ~AdminClient();
  // Sends one request line; returns the reply lines before "end". An "error" reply is an error.
  Result<std::string> Call(const std::string& request);

 private:
  AdminClient() = default;
  int fd_ = -1;
  std::string buf_;
};

// The words of one request line, split at whitespace; none for a blank line (it gets no reply).
std::vector<std::string> SplitAdminRequest(std::string_view line);

// repair VOLUME CHUNK [dry-run] [targets=MASK] [accept-loss]
struct AdminRepairRequest {
  std::string volume;
  uint64_t chunk = 0;  // 0-based
  RepairOptions options;
};
// Parses the words of a "repair" request (words[0] is "repair"). InvalidArgument when VOLUME or
// CHUNK is missing, CHUNK is not a number, or an option is unknown.
Result<AdminRepairRequest> ParseRepairRequest(const std::vector<std::string>& words);

// The reply to "repair": one chunk's report as lines.
std::string EncodeRepairReport(const ChunkRepairReport& r);
Result<ChunkRepairReport> DecodeRepairReport(const std::string& text);

}  // namespace qbd
