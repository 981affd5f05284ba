// nbd_attach: volumes of this daemon as kernel block devices (/dev/nbdX), through the kernel's
// generic netlink NBD interface (linux/nbd-netlink.h), as nbd-client and Ceph's rbd-nbd use it.
//
// How the sockets are made: qbd-master connects to its own NBD listener (the `listen` of qbd.conf:
// TCP on loopback, or its unix socket) once per connection, does the NBD handshake as a client
// (fixed newstyle, NBD_OPT_GO for the volume's export: size and transmission flags), and hands the
// socket, now in the transmission phase, to the kernel (NBD_CMD_CONNECT). The server side is the
// ordinary NBD server: an attached device is one more NBD client, with the same request path,
// statistics and limits as any other. The daemon keeps a duplicate of each socket only to see when
// the kernel gave up on it (it shuts a socket down when a request times out).
//
// Surviving a restart: the device is connected with a request timeout and a dead-connection
// timeout. When qbd-master stops or dies, its sockets close; the kernel marks them dead, holds new
// requests for up to the dead-connection timeout, and requeues the ones in flight once they time
// out (a stopping qbd-master first shortens that timeout to 1 s: PrepareStop). The next qbd-master
// reads the state file and gives the same device fresh sockets with NBD_CMD_RECONFIGURE, naming the
// backend identifier ("qbd:<volume>:<cookie>") the device was connected with: the kernel refuses a
// reconfigure whose identifier differs, so a device reused by someone else is never taken over.
// Requests then resume; the application sees a stall, no error.
//
// The state file (state_dir/attachments.json, written atomically): per volume its device, index,
// cookie, backend identifier, number of connections and the configuration file of the qbd-master
// that owns it (two daemons of one host may share the directory; each touches only its own).
// /dev/qbd/<volume> is a symlink to the device, made by qbd (no udev rule needed).
//
// Thread-safety: NbdNetlink opens one netlink socket per call and is safe for concurrent use.
// Attacher serializes its operations with its own mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "qbd/backend.h"
#include "qbd/config.h"
#include "qbd/nbd_client.h"
#include "qbd/status.h"

namespace qbd {

struct NbdDeviceConfig {
  uint64_t size_bytes = 0;
  uint64_t block_size = 4096;
  uint64_t server_flags = 0;
  // Seconds after which a request is resent (on another connection, or on one given later by a
  // reconfigure); 0 leaves the kernel's default (requests wait forever).
  uint32_t timeout_s = 0;
  // Seconds the kernel holds requests while every connection is dead, waiting for a reconfigure.
  uint32_t dead_conn_timeout_s = 0;
  std::string backend;  // NBD_ATTR_BACKEND_IDENTIFIER
};

// The kernel's NBD netlink family.
class NbdNetlink {
 public:
  // Connects a device: `index` -1 takes any free one. Returns the index the kernel chose.
  // NotSupported when the kernel has no "nbd" netlink family (no nbd module).
  static Result<int> Connect(int index, const NbdDeviceConfig& config, std::span<const int> fds);
  // Gives the device's dead connections the sockets `fds` (those beyond the dead ones are
  // ignored by the kernel; none: only the timeout changes), and, unless 0, sets the request
  // timeout. `backend` must be the identifier it was connected with.
  // With `size_bytes` set, the device takes that size (a grown volume).
  static Status Reconfigure(int index, const std::string& backend, std::span<const int> fds,
                            uint32_t timeout_s = 0, uint64_t size_bytes = 0);
  static Status Disconnect(int index);
  // NBD_CMD_STATUS: whether device `index` exists and is connected (configured).
  static Result<bool> Connected(int index);
  // Whether the kernel has the "nbd" netlink family.
  static bool Available();
};

// The ioctl interface of old kernels (no netlink family): a device is configured with ioctls on
// /dev/nbdX and served while a thread of qbd-master sits in NBD_DO_IT. It cannot outlive
// qbd-master: when its connections close, the kernel fails the device's requests and resets it;
// the next qbd-master connects it again (the applications see I/O errors in between).
class NbdIoctlDevice {
 public:
  // The lowest /sys/block/nbdN that is free: size 0 and no pid. NotSupported when there is no
  // nbd device at all (no module), Unavailable when every one is in use.
  static Result<int> FindFree();
  // Configures /dev/nbd<index> with `fds` and starts the NBD_DO_IT thread.
  static Result<std::unique_ptr<NbdIoctlDevice>> Start(int index, const NbdDeviceConfig& config,
                                                       std::span<const int> fds);
  ~NbdIoctlDevice();  // disconnects (NBD_DISCONNECT) and waits for the thread
  // The device's new size (NBD_SET_SIZE_BLOCKS), in `block_size` blocks.
  Status Resize(uint64_t size_bytes, uint64_t block_size);
  bool running() const { return running_.load(); }

 private:
  NbdIoctlDevice() = default;
  UniqueFd dev_;
  std::thread thread_;
  std::atomic<bool> running_{false};
};

struct AttachOptions {
  std::string state_dir;             // where attachments.json lives
  std::string nbd_listen;            // the daemon's NBD listener
  std::string dev_dir = "/dev/qbd";  // the symlinks' directory
  // "netlink", "ioctl", or "auto": netlink when the kernel has it, else ioctl.
  std::string interface = "auto";
  // Whose attachments: the configuration file of this qbd-master. Entries of another owner in
  // the state file (another qbd-master of this host) are left alone and kept.
  std::string owner;
  uint32_t timeout_s = 10;
  uint32_t dead_conn_timeout_s = 120;
};

// One attached volume (a state file entry).
struct Attachment {
  std::string volume;
  int index = -1;
  std::string cookie;
  std::string backend;
  int connections = 1;
  bool ioctl = false;  // attached through the ioctl interface (NbdIoctlDevice)
  // Attached for a live migration while another master still served the volume (forward.h);
  // cleared once this daemon serves it.
  bool migration = false;
  std::string Device() const { return "/dev/nbd" + std::to_string(index); }
};

// qbd-master's attachments: the state file, the netlink calls, the symlinks.
class Attacher {
 public:
  // Reads the state file (none: no attachments). Corruption naming the file when it is malformed.
  static Result<std::unique_ptr<Attacher>> Open(const AttachOptions& options);

  // Connects `volume` (served by this daemon) with `connections` sockets to a free device and
  // records it (with `migration`, Attachment::migration). InvalidArgument with EEXIST when the
  // volume is already attached.
  Result<Attachment> Attach(const std::string& volume, int connections, bool migration = false);
  // Sets the attachment's `migration` mark and saves the state file. OK when not attached.
  Status SetMigration(const std::string& volume, bool migration);
  // Disconnects the device and forgets it. NotFound when the volume is not attached;
  // InvalidArgument with EBUSY while the device is in use (mounted, or held by device-mapper).
  Status Detach(const std::string& volume);
  // Gives the attached device of `volume` fresh sockets (NBD_CMD_RECONFIGURE): at start, and
  // whenever the kernel gave up on one of its connections. OK when there is nothing to do. At
  // start, a device that is not connected any more (a reboot) is connected again at its index.
  Status Reconnect(const std::string& volume);
  // Reconnect for every attachment whose sockets died or that was never reconnected since the
  // start; the first error is returned, the rest still tried. Called at start and from Poll.
  Status ReconnectAll();
  // Tells the kernel the volume's device is now `size_bytes` long (after the volume grew; the
  // ioctl interface takes it with NBD_SET_SIZE). OK when the volume is not attached.
  Status Resize(const std::string& volume, uint64_t size_bytes);
  // The attachment of `volume`, or nullopt.
  std::optional<Attachment> Find(const std::string& volume);
  // Called as qbd-master stops, before its NBD server closes the connections: shortens every
  // device's request timeout to 1 s, so that the requests the kernel sends meanwhile (which the
  // stopping server leaves unanswered) are resent on the next qbd-master's connections at once
  // rather than after timeout_s. The next qbd-master sets timeout_s again as it reconnects.
  void PrepareStop();
  // {"attachments": [{"volume", "device", "index", "connections", "live", "connected",
  // "backend", "link", "interface", "migration"}]}: live counts the connections the kernel still uses; connected is the
  // kernel's NBD_CMD_STATUS of the device.
  nlohmann::json List();
  // One entry of List(), or null when `volume` is not attached.
  nlohmann::json Entry(const std::string& volume);
  bool IsAttached(const std::string& volume);

 private:
  explicit Attacher(const AttachOptions& options) : options_(options) {}
  Status Save();  // REQUIRES: mu_ held
  void MakeLink(const Attachment& a);
  void RemoveLink(const Attachment& a);
  // Connects n sockets to the export. REQUIRES: mu_ held.
  Result<std::vector<UniqueFd>> Sockets(const std::string& volume, int n, NbdExportInfo* info);
  Status ReconnectLocked(const std::string& volume);
  NbdDeviceConfig DeviceConfig(const Attachment& a, const NbdExportInfo& info) const;
  nlohmann::json EntryLocked(const Attachment& a);
  Result<bool> ConnectedLocked(const Attachment& a);

  const AttachOptions options_;
  std::unique_ptr<StorageBackend> dir_;  // state_dir
  std::mutex mu_;
  std::map<std::string, Attachment> attached_;            // GUARDED_BY(mu_)
  std::map<std::string, std::vector<UniqueFd>> watched_;  // GUARDED_BY(mu_): dups of live sockets
  std::map<std::string, std::unique_ptr<NbdIoctlDevice>> ioctl_;  // GUARDED_BY(mu_)
};

}  // namespace qbd
