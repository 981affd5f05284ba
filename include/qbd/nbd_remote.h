// NbdRemote: an NBD client of another qbd-master (or any NBD server), used while a live migration
// moves a volume to this node (qbd/forward.h): requests of this node's clients go to the master
// that still holds the volume until it lets go.
//
// It keeps `connections` sockets in the transmission phase (fixed newstyle, NBD_OPT_GO, simple
// replies only) and sends each request on the next live one; one reader thread per socket hands
// each reply to the thread that waits for it (replies may come out of order). A socket that
// fails or closes fails the requests waiting on it with `lost` set, so that the caller can run
// them again elsewhere: the server may or may not have carried them out.
//
// Thread-safety: every method is safe for concurrent calls.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "qbd/handler.h"
#include "qbd/nbd_client.h"
#include "qbd/status.h"

namespace qbd {

class NbdRemote {
 public:
  // Connects `connections` sockets to `address` (a qbd.conf listen address) for `export_name`.
  // The errors of NbdClientConnect (nbd_attach.h).
  static Result<std::unique_ptr<NbdRemote>> Connect(const std::string& address,
                                                    const std::string& export_name,
                                                    int connections, int timeout_ms = 10000);
  ~NbdRemote();  // Close()s
  NbdRemote(const NbdRemote&) = delete;
  NbdRemote& operator=(const NbdRemote&) = delete;

  // What one request came to. `lost`: its socket ended before the reply (status is then an
  // Unavailable); the server may have carried it out.
  struct Reply {
    Status status;
    bool lost = false;
  };
  Reply Read(uint64_t off, std::span<std::byte> out);
  Reply Write(uint64_t off, std::span<const std::byte> in, bool fua);
  Reply Flush();
  Reply Trim(uint64_t off, uint64_t len, bool fua);
  Reply WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua);

  // The export as the server announced it (size, transmission flags).
  const NbdExportInfo& info() const { return info_; }
  const std::string& address() const { return address_; }
  // Sockets still up.
  int Live() const;
  // Requests sent and not answered or lost yet.
  int InFlight() const;
  // "HOST:PORT" of each live socket's local end: what the server sees as its peers.
  std::vector<std::string> LocalEndpoints() const;
  // Shuts every socket down (waiting requests come back lost) and joins the readers.
  void Close();

 private:
  struct Pending;
  struct Sock;
  NbdRemote() = default;
  Reply Request(uint16_t type, uint16_t flags, uint64_t off, uint32_t len,
                std::span<const std::byte> payload, std::span<std::byte> out);
  void ReadLoop(Sock* s);
  // Fails every request waiting on `s` (lost) and marks it dead.
  void Lose(Sock* s, const std::string& why);

  std::string address_;
  std::string export_;
  NbdExportInfo info_;
  std::vector<std::unique_ptr<Sock>> socks_;
  std::atomic<uint64_t> next_cookie_{1};
  std::atomic<size_t> next_sock_{0};
  mutable std::mutex mu_;
  std::map<uint64_t, Pending*> pending_;  // GUARDED_BY(mu_): by cookie
};

}  // namespace qbd
