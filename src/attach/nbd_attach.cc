// nbd_attach (include/qbd/nbd_attach.h): the NBD client handshake, the kernel's netlink NBD
// family through libnl-genl-3, and the attachments' state file.
#include "qbd/nbd_attach.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/nbd-netlink.h>
#include <linux/nbd.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/netlink.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "common/coding.h"
#include "qbd/backend.h"
#include "qbd/log.h"
#include "qbd/nbd_wire.h"

namespace qbd {

using json = nlohmann::json;

namespace {

constexpr char kStateFile[] = "attachments.json";
constexpr int kMaxConnections = 16;
// The request timeout of attached devices while qbd-master stops (PrepareStop).
constexpr uint32_t kStopTimeoutS = 1;

// ---- netlink ------------------------------------------------------------------------------------

struct NlSockDeleter {
  void operator()(nl_sock* s) const { nl_socket_free(s); }
};
struct NlMsgDeleter {
  void operator()(nl_msg* m) const { nlmsg_free(m); }
};
using NlSock = std::unique_ptr<nl_sock, NlSockDeleter>;
using NlMsg = std::unique_ptr<nl_msg, NlMsgDeleter>;

struct Genl {
  NlSock sock;
  int family = -1;
};

Result<Genl> OpenGenl() {
  Genl g;
  g.sock.reset(nl_socket_alloc());
  if (!g.sock) return Status::IOError("netlink: out of memory");
  int rc = genl_connect(g.sock.get());
  if (rc < 0) return Status::IOError(fmt::format("netlink: connect: {}", nl_geterror(rc)));
  g.family = genl_ctrl_resolve(g.sock.get(), NBD_GENL_FAMILY_NAME);
  if (g.family < 0) {
    return Status::NotSupported(
        "the kernel has no \"nbd\" netlink family (is the nbd module loaded? modprobe nbd)");
  }
  return g;
}

Result<NlMsg> NewMsg(const Genl& g, uint8_t cmd) {
  NlMsg m(nlmsg_alloc());
  if (!m) return Status::IOError("netlink: out of memory");
  if (genlmsg_put(m.get(), NL_AUTO_PORT, NL_AUTO_SEQ, g.family, 0, 0, cmd, 0) == nullptr) {
    return Status::IOError("netlink: genlmsg_put failed");
  }
  return m;
}

Status PutSockets(nl_msg* m, std::span<const int> fds) {
  nlattr* socks = nla_nest_start(m, NBD_ATTR_SOCKETS);
  if (socks == nullptr) return Status::IOError("netlink: message too large");
  for (int fd : fds) {
    nlattr* item = nla_nest_start(m, NBD_SOCK_ITEM);
    if (item == nullptr || nla_put_u32(m, NBD_SOCK_FD, static_cast<uint32_t>(fd)) < 0) {
      return Status::IOError("netlink: message too large");
    }
    nla_nest_end(m, item);
  }
  nla_nest_end(m, socks);
  return Status::OK();
}

// Sends `m` and waits for the kernel's acknowledgement; `on_reply` (may be null) sees each reply.
Status SendSync(Genl& g, NlMsg m, const char* what, nl_recvmsg_msg_cb_t on_reply, void* arg) {
  if (on_reply != nullptr)
    nl_socket_modify_cb(g.sock.get(), NL_CB_VALID, NL_CB_CUSTOM, on_reply, arg);
  int rc = nl_send_sync(g.sock.get(), m.release());  // frees the message
  if (rc < 0) return Status::IOError(fmt::format("netlink NBD {}: {}", what, nl_geterror(rc)));
  return Status::OK();
}

int IndexReply(nl_msg* msg, void* arg) {
  nlattr* attrs[NBD_ATTR_MAX + 1] = {};
  if (genlmsg_parse(nlmsg_hdr(msg), 0, attrs, NBD_ATTR_MAX, nullptr) == 0 &&
      attrs[NBD_ATTR_INDEX] != nullptr) {
    *static_cast<int*>(arg) = static_cast<int>(nla_get_u32(attrs[NBD_ATTR_INDEX]));
  }
  return NL_OK;
}

struct StatusArg {
  int index = -1;
  int found = 0;  // 0 absent, 1 disconnected, 2 connected
};

int StatusReply(nl_msg* msg, void* arg) {
  auto* st = static_cast<StatusArg*>(arg);
  nlattr* attrs[NBD_ATTR_MAX + 1] = {};
  if (genlmsg_parse(nlmsg_hdr(msg), 0, attrs, NBD_ATTR_MAX, nullptr) != 0 ||
      attrs[NBD_ATTR_DEVICE_LIST] == nullptr) {
    return NL_OK;
  }
  nlattr* item;
  int rem;
  nla_for_each_nested(item, attrs[NBD_ATTR_DEVICE_LIST], rem) {
    nlattr* dev[NBD_DEVICE_ATTR_MAX + 1] = {};
    if (nla_parse_nested(dev, NBD_DEVICE_ATTR_MAX, item, nullptr) != 0) continue;
    if (dev[NBD_DEVICE_INDEX] == nullptr || dev[NBD_DEVICE_CONNECTED] == nullptr) continue;
    if (static_cast<int>(nla_get_u32(dev[NBD_DEVICE_INDEX])) != st->index) continue;
    st->found = nla_get_u8(dev[NBD_DEVICE_CONNECTED]) ? 2 : 1;
  }
  return NL_OK;
}

std::string NewCookie() {
  std::random_device rd;
  return fmt::format("{:08x}{:08x}", rd(), rd());
}

}  // namespace

Result<int> NbdNetlink::Connect(int index, const NbdDeviceConfig& c, std::span<const int> fds) {
  QBD_ASSIGN_OR_RETURN(Genl g, OpenGenl());
  QBD_ASSIGN_OR_RETURN(NlMsg m, NewMsg(g, NBD_CMD_CONNECT));
  if ((index >= 0 && nla_put_u32(m.get(), NBD_ATTR_INDEX, static_cast<uint32_t>(index)) < 0) ||
      nla_put_u64(m.get(), NBD_ATTR_SIZE_BYTES, c.size_bytes) < 0 ||
      nla_put_u64(m.get(), NBD_ATTR_BLOCK_SIZE_BYTES, c.block_size) < 0 ||
      nla_put_u64(m.get(), NBD_ATTR_SERVER_FLAGS, c.server_flags) < 0 ||
      (c.timeout_s > 0 && nla_put_u64(m.get(), NBD_ATTR_TIMEOUT, c.timeout_s) < 0) ||
      (c.dead_conn_timeout_s > 0 &&
       nla_put_u64(m.get(), NBD_ATTR_DEAD_CONN_TIMEOUT, c.dead_conn_timeout_s) < 0) ||
      (!c.backend.empty() &&
       nla_put_string(m.get(), NBD_ATTR_BACKEND_IDENTIFIER, c.backend.c_str()) < 0)) {
    return Status::IOError("netlink NBD connect: message too large");
  }
  QBD_RETURN_IF_ERROR(PutSockets(m.get(), fds));
  int chosen = -1;
  QBD_RETURN_IF_ERROR(SendSync(g, std::move(m), "connect", IndexReply, &chosen));
  if (chosen < 0) {
    if (index < 0)
      return Status::IOError("netlink NBD connect: the kernel did not say which device");
    chosen = index;
  }
  return chosen;
}

Status NbdNetlink::Reconfigure(int index, const std::string& backend, std::span<const int> fds,
                               uint32_t timeout_s, uint64_t size_bytes) {
  QBD_ASSIGN_OR_RETURN(Genl g, OpenGenl());
  QBD_ASSIGN_OR_RETURN(NlMsg m, NewMsg(g, NBD_CMD_RECONFIGURE));
  if (nla_put_u32(m.get(), NBD_ATTR_INDEX, static_cast<uint32_t>(index)) < 0 ||
      nla_put_string(m.get(), NBD_ATTR_BACKEND_IDENTIFIER, backend.c_str()) < 0 ||
      (timeout_s > 0 && nla_put_u64(m.get(), NBD_ATTR_TIMEOUT, timeout_s) < 0) ||
      (size_bytes > 0 && nla_put_u64(m.get(), NBD_ATTR_SIZE_BYTES, size_bytes) < 0)) {
    return Status::IOError("netlink NBD reconfigure: message too large");
  }
  if (!fds.empty()) QBD_RETURN_IF_ERROR(PutSockets(m.get(), fds));
  return SendSync(g, std::move(m), "reconfigure", nullptr, nullptr);
}

Status NbdNetlink::Disconnect(int index) {
  QBD_ASSIGN_OR_RETURN(Genl g, OpenGenl());
  QBD_ASSIGN_OR_RETURN(NlMsg m, NewMsg(g, NBD_CMD_DISCONNECT));
  if (nla_put_u32(m.get(), NBD_ATTR_INDEX, static_cast<uint32_t>(index)) < 0) {
    return Status::IOError("netlink NBD disconnect: message too large");
  }
  return SendSync(g, std::move(m), "disconnect", nullptr, nullptr);
}

Result<bool> NbdNetlink::Connected(int index) {
  QBD_ASSIGN_OR_RETURN(Genl g, OpenGenl());
  QBD_ASSIGN_OR_RETURN(NlMsg m, NewMsg(g, NBD_CMD_STATUS));
  if (nla_put_u32(m.get(), NBD_ATTR_INDEX, static_cast<uint32_t>(index)) < 0) {
    return Status::IOError("netlink NBD status: message too large");
  }
  StatusArg st;
  st.index = index;
  QBD_RETURN_IF_ERROR(SendSync(g, std::move(m), "status", StatusReply, &st));
  return st.found == 2;
}

bool NbdNetlink::Available() { return OpenGenl().ok(); }

namespace {

// A line of a sysfs file, "" when it cannot be read.
std::string SysfsLine(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

}  // namespace

Result<int> NbdIoctlDevice::FindFree() {
  std::error_code ec;
  int best = -1, devices = 0;
  for (const auto& e : std::filesystem::directory_iterator("/sys/block", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("nbd", 0) != 0) continue;
    int index = -1;
    auto [end, err] = std::from_chars(name.data() + 3, name.data() + name.size(), index);
    if (err != std::errc() || end != name.data() + name.size()) continue;
    ++devices;
    if (SysfsLine(e.path().string() + "/size") != "0") continue;
    if (std::filesystem::exists(e.path() / "pid", ec)) continue;  // a client holds it
    if (best < 0 || index < best) best = index;
  }
  if (devices == 0) {
    return Status::NotSupported(
        "no /dev/nbdN: the kernel's nbd module is not loaded (modprobe nbd)");
  }
  if (best < 0) return Status::Unavailable(fmt::format("all {} /dev/nbdN are in use", devices));
  return best;
}

Result<std::unique_ptr<NbdIoctlDevice>> NbdIoctlDevice::Start(int index, const NbdDeviceConfig& c,
                                                              std::span<const int> fds) {
  std::unique_ptr<NbdIoctlDevice> d(new NbdIoctlDevice());
  const std::string path = "/dev/nbd" + std::to_string(index);
  d->dev_ = UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (d->dev_.get() < 0) return Status::FromErrno("open " + path, errno);
  const int fd = d->dev_.get();
  auto io = [&](unsigned long req, unsigned long arg, const char* what) -> Status {
    if (::ioctl(fd, req, arg) < 0)
      return Status::FromErrno(fmt::format("{} {}", what, path), errno);
    return Status::OK();
  };
  io(NBD_CLEAR_SOCK, 0, "NBD_CLEAR_SOCK").IgnoreError();  // a leftover of a crash, if any
  QBD_RETURN_IF_ERROR(io(NBD_SET_BLKSIZE, c.block_size, "NBD_SET_BLKSIZE"));
  QBD_RETURN_IF_ERROR(io(NBD_SET_SIZE_BLOCKS, c.size_bytes / c.block_size, "NBD_SET_SIZE_BLOCKS"));
  QBD_RETURN_IF_ERROR(io(NBD_SET_FLAGS, c.server_flags, "NBD_SET_FLAGS"));
  if (c.timeout_s > 0) QBD_RETURN_IF_ERROR(io(NBD_SET_TIMEOUT, c.timeout_s, "NBD_SET_TIMEOUT"));
  for (int s : fds) {
    QBD_RETURN_IF_ERROR(io(NBD_SET_SOCK, static_cast<unsigned long>(s), "NBD_SET_SOCK"));
  }
  d->running_ = true;
  NbdIoctlDevice* self = d.get();
  d->thread_ = std::thread([self, fd, path] {
    // Serves the device until it is disconnected or its connections are gone.
    if (::ioctl(fd, NBD_DO_IT) < 0 && errno != EPIPE) {
      QBD_LOG_WARN("{}: NBD_DO_IT: {}", path, std::strerror(errno));
    }
    ::ioctl(fd, NBD_CLEAR_QUE);
    ::ioctl(fd, NBD_CLEAR_SOCK);
    self->running_ = false;
  });
  // NBD_DO_IT starts the device (its size shows) in that thread: wait for it.
  const std::string size_file = "/sys/block/nbd" + std::to_string(index) + "/size";
  for (int i = 0; i < 500 && d->running_.load(); ++i) {
    const std::string size = SysfsLine(size_file);
    if (!size.empty() && size != "0") return d;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return Status::IOError(fmt::format("{}: the device did not start", path));
}

Status NbdIoctlDevice::Resize(uint64_t size_bytes, uint64_t block_size) {
  if (::ioctl(dev_.get(), NBD_SET_SIZE_BLOCKS, size_bytes / block_size) < 0)
    return Status::FromErrno("NBD_SET_SIZE_BLOCKS", errno);
  return Status::OK();
}

NbdIoctlDevice::~NbdIoctlDevice() {
  if (running_.load()) ::ioctl(dev_.get(), NBD_DISCONNECT);
  if (thread_.joinable()) thread_.join();
}

// ---- Attacher -----------------------------------------------------------------------------------

Result<std::unique_ptr<Attacher>> Attacher::Open(const AttachOptions& options) {
  std::unique_ptr<Attacher> a(new Attacher(options));
  auto dir = NewLocalDirBackend(options.state_dir, true);
  if (!dir.ok()) {
    return Status::IOError(
        fmt::format("state_dir {}: {}", options.state_dir, dir.status().message()));
  }
  a->dir_ = std::move(*dir);
  auto text = ReadSmallFile(*a->dir_, kStateFile);
  if (!text.ok()) {
    if (text.status().IsNotFound()) return a;
    return text.status();
  }
  const std::string file = options.state_dir + "/" + kStateFile;
  json j = json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("attachments") ||
      !j["attachments"].is_array()) {
    return Status::Corruption(file + ": not a qbd attachments file");
  }
  for (const json& e : j["attachments"]) {
    // Another qbd-master's (another configuration on this host): kept in the file, not ours.
    if (e.is_object() && e.value("config", options.owner) != options.owner) continue;
    if (!e.is_object() || !e.contains("volume") || !e["volume"].is_string() ||
        !e.contains("index") || !e["index"].is_number_integer() || !e.contains("backend") ||
        !e["backend"].is_string()) {
      return Status::Corruption(file + ": an entry lacks volume, index or backend");
    }
    Attachment at;
    at.volume = e["volume"];
    at.index = e["index"];
    at.backend = e["backend"];
    at.cookie = e.value("cookie", "");
    at.connections = e.value("connections", 1);
    at.ioctl = e.value("interface", "netlink") == "ioctl";
    at.migration = e.value("migration", false);
    if (at.index < 0 || at.connections < 1 || at.connections > kMaxConnections) {
      return Status::Corruption(file + ": bad index or connections for " + at.volume);
    }
    a->attached_[at.volume] = at;
  }
  return a;
}

Status Attacher::Save() {
  json list = json::array();
  for (const auto& [name, a] : attached_) {
    list.push_back({{"volume", a.volume},
                    {"device", a.Device()},
                    {"index", a.index},
                    {"cookie", a.cookie},
                    {"backend", a.backend},
                    {"connections", a.connections},
                    {"interface", a.ioctl ? "ioctl" : "netlink"},
                    {"migration", a.migration},
                    {"config", options_.owner}});
  }
  // The other configurations' entries, as the file has them now.
  if (auto text = ReadSmallFile(*dir_, kStateFile); text.ok()) {
    json old = json::parse(*text, nullptr, false);
    if (old.is_object() && old.contains("attachments") && old["attachments"].is_array()) {
      for (const json& e : old["attachments"]) {
        if (e.is_object() && e.value("config", options_.owner) != options_.owner) list.push_back(e);
      }
    }
  }
  json j = {{"attachments", std::move(list)}};
  return WriteFileAtomic(*dir_, kStateFile, j.dump(2) + "\n");
}

void Attacher::MakeLink(const Attachment& a) {
  std::error_code ec;
  const std::filesystem::path dir(options_.dev_dir);
  std::filesystem::create_directories(dir, ec);
  std::filesystem::remove(dir / a.volume, ec);
  std::filesystem::create_symlink(a.Device(), dir / a.volume, ec);
  if (ec)
    QBD_LOG_WARN("attach {}: symlink {}: {}", a.volume, (dir / a.volume).string(), ec.message());
}

void Attacher::RemoveLink(const Attachment& a) {
  // Only a link to our device: another daemon of this host may have attached the volume since
  // (the target of a migration between two daemons of one host) and linked it to its own.
  std::error_code ec;
  const std::filesystem::path link = std::filesystem::path(options_.dev_dir) / a.volume;
  if (std::filesystem::read_symlink(link, ec) == a.Device()) std::filesystem::remove(link, ec);
}

Result<std::vector<UniqueFd>> Attacher::Sockets(const std::string& volume, int n,
                                                NbdExportInfo* info) {
  std::vector<UniqueFd> fds;
  for (int i = 0; i < n; i++) {
    QBD_ASSIGN_OR_RETURN(UniqueFd fd, NbdClientConnect(options_.nbd_listen, volume, info));
    fds.push_back(std::move(fd));
  }
  return fds;
}

bool Attacher::IsAttached(const std::string& volume) {
  std::lock_guard l(mu_);
  return attached_.count(volume) > 0;
}

NbdDeviceConfig Attacher::DeviceConfig(const Attachment& a, const NbdExportInfo& info) const {
  NbdDeviceConfig c;
  c.size_bytes = info.size;
  c.block_size = info.size % 4096 == 0 ? 4096 : 512;
  c.server_flags = info.flags;
  c.timeout_s = options_.timeout_s;
  c.dead_conn_timeout_s = options_.dead_conn_timeout_s;
  c.backend = a.backend;
  return c;
}

Status Attacher::SetMigration(const std::string& volume, bool migration) {
  std::lock_guard l(mu_);
  auto it = attached_.find(volume);
  if (it == attached_.end() || it->second.migration == migration) return Status::OK();
  it->second.migration = migration;
  return Save();
}

Result<Attachment> Attacher::Attach(const std::string& volume, int connections, bool migration) {
  std::lock_guard l(mu_);
  if (connections < 1 || connections > kMaxConnections) {
    return Status::InvalidArgument(
        fmt::format("connections: {} is not 1..{}", connections, kMaxConnections));
  }
  auto it = attached_.find(volume);
  if (it != attached_.end()) {
    return Status::InvalidArgument(
        fmt::format("volume {} is already attached as {}", volume, it->second.Device()), EEXIST);
  }
  NbdExportInfo info;
  QBD_ASSIGN_OR_RETURN(std::vector<UniqueFd> fds, Sockets(volume, connections, &info));
  Attachment a;
  a.volume = volume;
  a.cookie = NewCookie();
  a.backend = "qbd:" + volume + ":" + a.cookie;
  a.connections = connections;
  a.migration = migration;
  std::vector<int> raw;
  for (const UniqueFd& f : fds) raw.push_back(f.get());
  a.ioctl =
      options_.interface == "ioctl" || (options_.interface == "auto" && !NbdNetlink::Available());
  if (a.ioctl) {
    QBD_ASSIGN_OR_RETURN(a.index, NbdIoctlDevice::FindFree());
    QBD_ASSIGN_OR_RETURN(ioctl_[volume],
                         NbdIoctlDevice::Start(a.index, DeviceConfig(a, info), raw));
  } else {
    QBD_ASSIGN_OR_RETURN(a.index, NbdNetlink::Connect(-1, DeviceConfig(a, info), raw));
  }
  attached_[volume] = a;
  Status s = Save();
  if (!s.ok()) {
    attached_.erase(volume);
    if (a.ioctl) {
      ioctl_.erase(volume);
    } else {
      NbdNetlink::Disconnect(a.index).IgnoreError();  // the state file error is the one to report
    }
    return s;
  }
  watched_[volume] = std::move(fds);
  MakeLink(a);
  QBD_LOG_INFO("volume {} attached as {} ({} connection{}, {})", volume, a.Device(), connections,
               connections == 1 ? "" : "s", a.backend);
  return a;
}

Status Attacher::Detach(const std::string& volume) {
  std::lock_guard l(mu_);
  auto it = attached_.find(volume);
  if (it == attached_.end()) return Status::NotFound("volume " + volume + " is not attached");
  const Attachment a = it->second;
  // An exclusive open fails while the device is mounted, or held by device-mapper (LVM).
  if (auto connected = ConnectedLocked(a); connected.ok() && *connected) {
    int fd = ::open(a.Device().c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
    if (fd < 0 && errno == EBUSY) {
      return Status::InvalidArgument(
          fmt::format(
              "volume {}: {} is in use (mounted, or held by device-mapper): release it first",
              volume, a.Device()),
          EBUSY);
    }
    if (fd >= 0) ::close(fd);
  }
  if (a.ioctl) {
    ioctl_.erase(volume);  // NBD_DISCONNECT, and the NBD_DO_IT thread ends
  } else {
    Status s = NbdNetlink::Disconnect(a.index);
    if (!s.ok()) return s;
  }
  attached_.erase(it);
  watched_.erase(volume);
  RemoveLink(a);
  QBD_LOG_INFO("volume {} detached from {}", volume, a.Device());
  return Save();
}

Status Attacher::ReconnectLocked(const std::string& volume) {
  auto it = attached_.find(volume);
  if (it == attached_.end()) return Status::NotFound("volume " + volume + " is not attached");
  const Attachment& a = it->second;
  std::vector<UniqueFd>& live = watched_[volume];
  if (a.ioctl) {
    // No reconfigure through ioctls: a device whose NBD_DO_IT ended is set up again.
    if (auto d = ioctl_.find(volume); d != ioctl_.end() && d->second->running()) {
      return Status::OK();
    }
    ioctl_.erase(volume);
    live.clear();
    NbdExportInfo info;
    QBD_ASSIGN_OR_RETURN(std::vector<UniqueFd> fds, Sockets(volume, a.connections, &info));
    std::vector<int> raw;
    for (const UniqueFd& f : fds) raw.push_back(f.get());
    QBD_ASSIGN_OR_RETURN(ioctl_[volume],
                         NbdIoctlDevice::Start(a.index, DeviceConfig(a, info), raw));
    for (UniqueFd& f : fds) live.push_back(std::move(f));
    MakeLink(a);
    QBD_LOG_INFO("volume {}: {} connected again through the ioctl interface", volume, a.Device());
    return Status::OK();
  }
  // Drop the sockets the kernel (or the server) shut down; replace them.
  std::vector<UniqueFd> keep;
  bool dropped = false;
  for (UniqueFd& f : live) {
    pollfd p{f.get(), POLLRDHUP, 0};
    if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) {
      dropped = true;
      continue;
    }
    keep.push_back(std::move(f));
  }
  live = std::move(keep);
  const int missing = a.connections - static_cast<int>(live.size());
  if (missing <= 0) return Status::OK();
  // A connection the server closed: the kernel's receiver marks it dead as it reads the end of
  // the stream. A reconfigure that finds no dead connection ignores the new socket, so give it
  // that moment.
  if (dropped) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  NbdExportInfo info;
  QBD_ASSIGN_OR_RETURN(std::vector<UniqueFd> fds, Sockets(volume, missing, &info));
  std::vector<int> raw;
  for (const UniqueFd& f : fds) raw.push_back(f.get());
  // At start, the device may be gone (the host rebooted, or someone disconnected it): it is
  // connected again at the same index, with the same backend identifier.
  auto connected = live.empty() ? NbdNetlink::Connected(a.index) : Result<bool>(true);
  if (connected.ok() && !*connected) {
    QBD_ASSIGN_OR_RETURN(int index, NbdNetlink::Connect(a.index, DeviceConfig(a, info), raw));
    for (UniqueFd& f : fds) live.push_back(std::move(f));
    MakeLink(a);
    QBD_LOG_INFO("volume {}: {} was not connected: connected again ({} connection{})", volume,
                 "/dev/nbd" + std::to_string(index), missing, missing == 1 ? "" : "s");
    return Status::OK();
  }
  // The request timeout too: the previous qbd-master shortened it as it stopped (PrepareStop).
  QBD_RETURN_IF_ERROR(NbdNetlink::Reconfigure(a.index, a.backend, raw, options_.timeout_s));
  for (UniqueFd& f : fds) live.push_back(std::move(f));
  MakeLink(a);
  QBD_LOG_INFO("volume {}: {} gets {} new connection{}", volume, a.Device(), missing,
               missing == 1 ? "" : "s");
  return Status::OK();
}

Status Attacher::Reconnect(const std::string& volume) {
  std::lock_guard l(mu_);
  return ReconnectLocked(volume);
}

Status Attacher::Resize(const std::string& volume, uint64_t size_bytes) {
  std::lock_guard l(mu_);
  auto it = attached_.find(volume);
  if (it == attached_.end()) return Status::OK();
  const Attachment& a = it->second;
  Status s;
  if (auto io = ioctl_.find(volume); io != ioctl_.end()) {
    s = io->second->Resize(size_bytes, size_bytes % 4096 == 0 ? 4096 : 512);
  } else {
    s = NbdNetlink::Reconfigure(a.index, a.backend, {}, 0, size_bytes);
  }
  if (!s.ok()) return s.WithContext(fmt::format("volume {}: {} to {} bytes", volume, a.Device(), size_bytes));
  QBD_LOG_INFO("volume {}: {} grows to {} bytes", volume, a.Device(), size_bytes);
  return Status::OK();
}

std::optional<Attachment> Attacher::Find(const std::string& volume) {
  std::lock_guard l(mu_);
  auto it = attached_.find(volume);
  if (it == attached_.end()) return std::nullopt;
  return it->second;
}

Status Attacher::ReconnectAll() {
  std::lock_guard l(mu_);
  Status first;
  for (const auto& [name, a] : attached_) {
    Status s = ReconnectLocked(name);
    if (!s.ok() && first.ok())
      first = Status::IOError(fmt::format("re-attach {} to {}: {}", name, a.Device(), s.message()));
  }
  return first;
}

void Attacher::PrepareStop() {
  std::lock_guard l(mu_);
  for (const auto& [name, a] : attached_) {
    if (a.ioctl) continue;
    Status s = NbdNetlink::Reconfigure(a.index, a.backend, {}, kStopTimeoutS);
    if (!s.ok())
      QBD_LOG_WARN("volume {}: {}: shorten the request timeout: {}", name, a.Device(),
                   s.ToString());
  }
}

Result<bool> Attacher::ConnectedLocked(const Attachment& a) {
  if (!a.ioctl) return NbdNetlink::Connected(a.index);
  auto d = ioctl_.find(a.volume);
  return d != ioctl_.end() && d->second->running();
}

json Attacher::EntryLocked(const Attachment& a) {
  auto connected = ConnectedLocked(a);
  int live = 0;
  if (auto w = watched_.find(a.volume); w != watched_.end()) {
    for (const UniqueFd& f : w->second) {
      pollfd p{f.get(), POLLRDHUP, 0};
      if (::poll(&p, 1, 0) == 0) ++live;  // no hang-up: the kernel still uses it
    }
  }
  return {{"volume", a.volume},
          {"device", a.Device()},
          {"index", a.index},
          {"connections", a.connections},
          {"live", live},
          {"connected", connected.ok() && *connected},
          {"backend", a.backend},
          {"link", options_.dev_dir + "/" + a.volume},
          {"interface", a.ioctl ? "ioctl" : "netlink"},
          {"migration", a.migration}};
}

json Attacher::List() {
  std::lock_guard l(mu_);
  json list = json::array();
  for (const auto& [name, a] : attached_) list.push_back(EntryLocked(a));
  return {{"attachments", std::move(list)}};
}

json Attacher::Entry(const std::string& volume) {
  std::lock_guard l(mu_);
  auto it = attached_.find(volume);
  return it == attached_.end() ? json() : EntryLocked(it->second);
}

}  // namespace qbd
