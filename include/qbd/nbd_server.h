// NbdServer: the NBD fixed-newstyle server of qbd-master (sockets and threads; the pure protocol
// encoding lives in nbd_wire.h).
//
// One NbdServer owns any number of listeners (TCP "host:port" or "unix:/path"). A listener either
// serves every export of its ExportRegistry by name, or is bound to one export, which it then
// serves whatever name the client asks for (the per-volume port of the design).
//
// Per connection, worker threads take turns reading one request each (under a read lock, payload
// included), run it through the export's BlockHandler and send the reply (one thread sends at a
// time and takes the small replies of the others along in the same sendmsg), so many requests are
// in flight and replies may be out of order. Workers start on demand, up to
// `threads_per_connection`, when every worker of the connection is busy with a request, and the
// extra ones end after a while without work: an idle connection has one thread.
//
// Memory: request data (WRITE payloads as their bytes arrive, READ replies) comes out of one
// PayloadBudget of `memory_budget` bytes for all connections; when it is spent the server stops
// reading from clients until requests finish. A client that leaves a request unfinished (or takes
// no reply bytes) for `client_timeout_ms` is disconnected; beyond `max_connections`, new
// connections are closed at once.
//
// Thread-safety: Listen* and Stop may be called from any thread; Stop is idempotent.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/handler.h"
#include "qbd/status.h"

namespace qbd {

// The largest READ or WRITE any export may accept (Export::max_payload is at most this).
inline constexpr uint32_t kMaxPayload = 32u << 20;

// What the server advertises for one export and the handler that serves it.
struct Export {
  std::string name;         // NBD export name (= volume name)
  std::string description;  // NBD_INFO_DESCRIPTION, may be empty
  bool read_only = false;   // NBD_FLAG_READ_ONLY; writes, trims and zeroes get EPERM
  uint32_t min_block = 1;           // NBD_INFO_BLOCK_SIZE minimum
  uint32_t preferred_block = 4096;  // NBD_INFO_BLOCK_SIZE preferred (the volume block size)
  uint32_t max_payload = kMaxPayload;  // NBD_INFO_BLOCK_SIZE maximum; longer READ/WRITE get EINVAL
  std::shared_ptr<BlockHandler> handler;  // Size() is the export size
};

// The set of exports, which may change while the server runs.
class ExportRegistry {
 public:
  virtual ~ExportRegistry() = default;
  // Names for NBD_OPT_LIST, in a stable order.
  virtual std::vector<std::string> List() const = 0;
  // The export named `name`; "" is the default export. nullptr when there is none.
  virtual std::shared_ptr<const Export> Find(std::string_view name) const = 0;
};

struct NbdServerOptions {
  int threads_per_connection = 16;
  // Longest option payload accepted during the handshake; longer closes the connection.
  uint32_t max_option_length = 64 * 1024;
  uint64_t memory_budget = uint64_t{256} << 20;  // raised to 2 x kMaxPayload when smaller
  int client_timeout_ms = 60000;
  uint32_t max_connections = 1024;
};

class NbdServer {
 public:
  // `registry` must outlive the server.
  NbdServer(const ExportRegistry& registry, NbdServerOptions options);
  ~NbdServer();  // Stop()s

  // Starts accepting on `spec` ("127.0.0.1:10809", "[::1]:10809", "unix:/run/qbd.sock").
  // With a non-empty `only_export` the listener serves that export for any requested name.
  // Port 0 picks a free port; BoundAddress() tells which. IOError when bind/listen fails.
  Status Listen(std::string_view spec, std::string only_export = "");
  // "127.0.0.1:PORT" or "unix:PATH" of the listeners, in Listen order.
  std::vector<std::string> BoundAddresses() const;
  // Connections open now (for the metrics).
  size_t Connections() const;
  // Closes every connection serving the export `export_name` (a volume deleted or fenced away):
  // its client sees the connection end, and requests in flight get no reply. Returns how many it
  // closed. A connection whose handshake is choosing that export still may finish it: the caller
  // removes the export from the registry first and repeats until none is left.
  size_t Disconnect(std::string_view export_name);
  // The peers ("HOST:PORT", "[HOST]:PORT", "unix") of the connections serving `export_name` now.
  std::vector<std::string> Peers(std::string_view export_name) const;
  // Bytes of request payloads held now, and the budget they come from (NbdServerOptions).
  uint64_t MemoryUsed() const;
  uint64_t MemoryLimit() const;

  // Stops accepting, lets every connection finish the requests it has read, sends their replies,
  // closes the connections and returns when all server threads have ended.
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qbd
