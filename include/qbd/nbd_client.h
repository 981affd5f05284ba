// The client side of the NBD handshake (fixed newstyle, NBD_OPT_GO), shared by the kernel
// attach (nbd_attach.h: the sockets it hands to the kernel) and NbdRemote (nbd_remote.h: a
// master forwarding to another during a live migration).
// Thread-safety: the functions are safe for concurrent calls; a UniqueFd belongs to one owner.
#pragma once

#include <cstdint>
#include <string>

#include "qbd/status.h"

namespace qbd {

// A file descriptor, closed when destroyed.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_ = -1;
};

// What an export's handshake told the client.
struct NbdExportInfo {
  uint64_t size = 0;
  uint16_t flags = 0;  // transmission flags (nbd_wire.h kFlag*)
};

// Connects to the NBD listener `listen` (a qbd.conf listen address; "*:PORT" and "[::]:PORT" are
// reached on loopback) and negotiates `export_name` with NBD_OPT_GO. On success the socket is in
// the transmission phase. IOError when the listener cannot be reached, NotFound when the server
// does not know the export, InvalidArgument when it answers outside the protocol. Gives up after
// `timeout_ms`.
Result<UniqueFd> NbdClientConnect(const std::string& listen, const std::string& export_name,
                                  NbdExportInfo* info, int timeout_ms = 10000);

}  // namespace qbd
