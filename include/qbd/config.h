// Configuration: qbd.conf, the small `key = value` text format shared with .meta and
// .volumesmeta (layout-spec.md §1), and the sizes users type ("4M", "1G").
//
// Every error names the file and the line: "var/qbd.conf:7: unknown key 'lisen'". A
// configuration is checked whole before a tool opens or changes anything on a backend:
// ParseConfig checks the text (syntax, every key's range and bounds, listen addresses), then
// CheckConfigOnHost checks it against this machine (host names resolve, the directories it names
// exist); every tool exits with kExitBadConfig when either fails.
// Thread-safety: pure functions and values (CheckConfigOnHost reads the file system and resolves
// names, nothing else).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/log.h"
#include "qbd/status.h"

namespace qbd {

// The exit status of qbd-master, qbdctl, qbd-verify and qbd-repair when qbd.conf is absent,
// unreadable, malformed, out of bounds, or names what this machine does not have (README.md).
inline constexpr int kExitBadConfig = 4;

// The longest value of a qbd.conf line (a path, a URL): PATH_MAX.
inline constexpr size_t kMaxConfigValue = 4096;
// The largest qbd.conf (and the largest .meta, .volumesmeta) read.
inline constexpr size_t kMaxConfigFileSize = 1 << 20;

// One `key = value` line; `section` is the bracketed header above it ("" before any),
// split into its kind and argument: "[backend node1]" -> section "backend", arg "node1".
struct KvLine {
  int line = 0;
  std::string section;
  std::string section_arg;
  std::string key;
  std::string value;
};

// Parses `text`; '#' starts a comment, blank lines are skipped. InvalidArgument naming
// `file:line` for a line that is neither a header nor `key = value`.
Result<std::vector<KvLine>> ParseKvText(std::string_view text, std::string_view file);

// "4096", "64K", "4M", "1G", "2T" (binary multiples; optional trailing "iB"/"B").
Result<uint64_t> ParseSize(std::string_view text);
// "1 GiB", "4 MiB", "4096 B": the largest binary unit that divides `bytes`.
std::string FormatSize(uint64_t bytes);
Result<bool> ParseBool(std::string_view text);

// InvalidArgument unless `name` is 1-64 of [A-Za-z0-9._-], starts with a letter or digit, and
// is not a reserved key ("format", "serial"): a volume name (layout-spec.md §1), also as qbd.conf
// names it ([volume NAME], default_export).
Status ValidateVolumeName(std::string_view name);

// A listener address of qbd.conf (`listen`, and `listen` in [volume NAME]) as qbd-master's NBD
// server binds it: "HOST:PORT", "[IPV6]:PORT", "*:PORT" or ":PORT" (every interface), or
// "unix:PATH".
struct ListenAddress {
  enum class Kind { kUnix, kAny, kIPv4, kIPv6, kHostName };
  Kind kind = Kind::kAny;
  std::string path;  // kUnix: as written (ParseConfig makes it absolute)
  std::string host;  // TCP: without brackets; "" for kAny
  uint16_t port = 0;
};

// Checks the syntax of `spec` without resolving or binding anything. InvalidArgument (without a
// file name: the caller adds it) when the port is not 1..65535, anything follows it, an IPv4 or
// IPv6 literal is not one inet_pton takes (999.1.1.1), a host name has characters or label
// lengths no host name has, an IPv6 literal lacks its brackets, or a unix path is empty or does
// not fit sockaddr_un's sun_path.
Result<ListenAddress> ParseListenAddress(std::string_view spec);

// True when every address `spec` (a TCP listener) binds is a loopback one: 127.0.0.0/8, ::1, or a
// host name that resolves only to those. False for every interface ("*:PORT", 0.0.0.0, ::).
bool IsLoopbackListener(std::string_view spec);

// One listener of qbd.conf against this machine (for CheckConfigOnHost): a unix socket's
// directory exists; with `local_addresses`, a TCP host is an address of this machine (or
// resolves to one). InvalidArgument saying why not.
Status CheckListenerOnHost(const ListenAddress& a, bool local_addresses);

// The bearer token of the REST API held in `path` (api_token_file): its text without the trailing
// newline. InvalidArgument when the file cannot be read, is empty, larger than 4 KiB, or holds
// whitespace or control characters inside the token.
Result<std::string> ReadApiToken(const std::string& path);

struct BackendConfig {
  std::string name;
  std::string location;  // an absolute directory, or an nfs:// URL
  int line = 0;
  int nfs_timeout_ms = 5000;  // Config::nfs_timeout_ms, copied here by ParseConfig for OpenBackend
};

struct Config {
  std::string file;                       // the file it was read from, for messages
  std::string listen = "127.0.0.1:10809";  // the NBD listener serving every volume by name
  std::vector<std::string> parts;         // backend names; part 'a' + i lives on parts[i]
  std::vector<BackendConfig> backends;    // in file order
  std::map<std::string, std::string> volume_listen;  // volume name -> its own listener
  int threads_per_connection = 16;  // at most this many requests of one connection run at once
  // Bytes of NBD request payloads (WRITE data as it arrives, READ replies) held for all
  // connections together; when spent, the server stops reading from clients until some is freed.
  uint64_t nbd_memory = uint64_t{256} << 20;
  // A client that leaves a request (header or WRITE payload) unfinished for this long, or stops
  // taking its replies, is disconnected; idle clients between requests are kept.
  uint32_t client_timeout_ms = 60000;
  uint32_t max_connections = 1024;  // NBD connections at once (all listeners); more are refused
  uint32_t write_quorum = 0;   // 0: a majority of each volume's replicas
  std::string default_export;  // served for the empty export name ("" = first volume)
  LogLevel log_level = LogLevel::kInfo;
  uint32_t volume_poll_ms = 1000;  // how often .volumesmeta is re-read
  bool allow_shared_failure_domain = false;
  int nfs_timeout_ms = 5000;  // an RPC to an NFS backend fails after this long
  uint32_t resync_mb_per_s = 0;  // resync copies at most this many MB/s per volume; 0: no limit
  // The comparisons of chunks first accessed since the start read at most this many MB/s per
  // volume (layout-spec.md §4.6); 0: no limit.
  uint32_t compare_mb_per_s = 64;
  // QoS reservations (min_iops, min_bps; include/qbd/qos.h) apply when this many requests of all
  // volumes together are in flight below their QoS layers: the backends are then saturated, and
  // a freed slot goes first to a volume below its reservation. The default is one connection's
  // worth of workers (threads_per_connection), so that a single busy client never waits for it
  // but two compete. 0: reservations are never enforced.
  uint32_t qos_slots = 16;
  // qbd-master's local admin socket (qbd-repair talks to the running daemon through it); default
  // "<config dir>/<config name without .conf>.sock". Its lock file is "<admin_socket>.lock".
  std::string admin_socket;
  // The REST API's listener (include/qbd/api.h): "HOST:PORT" or "[IPV6]:PORT" (no unix sockets).
  std::string api_listen = "127.0.0.1:10810";
  // A file holding the bearer token every API request must present ("": none). Required when
  // api_listen is not a loopback address.
  std::string api_token_file;
  // Bytes of block data the memory cache holds for all volumes together (write-through, S3-FIFO
  // eviction; include/qbd/cache.h). 0: no cache.
  uint64_t cache_size = 0;
  // The SSD cache (include/qbd/ssd_cache.h): a local directory on a fast device, never inside a
  // backend; each volume gets "<cache_dir>/<volnr>/log" of cache_dir_size bytes. "": none.
  std::string cache_dir;
  uint64_t cache_dir_size = uint64_t{1} << 30;
  bool cache_write_back = false;                // cache_mode = writeback
  uint64_t cache_dirty_max = uint64_t{32} << 20;  // write-back bytes per volume not yet on the parts
  uint32_t cache_destage_delay_ms = 200;
  // The volume lease (layout-spec.md §8): another master may take a volume whose `.owner` stayed
  // unchanged for lease_ms + lease_renew_ms; the holder rewrites it every lease_renew_ms and stops
  // acknowledging requests lease_ms - lease_renew_ms after the start of its last renewal that
  // reached a majority of the parts. lease_renew_ms <= lease_ms / 3.
  uint32_t lease_ms = 10000;
  uint32_t lease_renew_ms = 2000;
  // Volumes attached as /dev/nbdX (include/qbd/nbd_attach.h): the state file attachments.json
  // lives in state_dir; the kernel resends a request unanswered for attach_timeout_s seconds and
  // holds requests up to attach_dead_timeout_s seconds while qbd-master restarts.
  std::string state_dir = "/var/lib/qbd";
  uint32_t attach_timeout_s = 10;
  uint32_t attach_dead_timeout_s = 120;
  // How devices are attached: "netlink", "ioctl" (old kernels: no restart without errors) or
  // "auto" (netlink when the kernel has it).
  std::string attach_interface = "auto";

  // The line of each global key the file sets ("listen" -> 2); a key left at its default is
  // absent. For messages about a value that only the host can judge (CheckConfigOnHost).
  std::map<std::string, int> key_lines;
  std::map<std::string, int> volume_listen_lines;  // volume name -> the line of its `listen`

  // The backend that holds part `part` ('a'...). nullptr past the configured parts.
  const BackendConfig* BackendForPart(char part) const;
  // key_lines' entry for `key`, 0 when the file does not set it.
  int Line(const std::string& key) const;
};

// Parses qbd.conf text and checks every value's range and bounds, and the relations between them
// (lease_renew_ms <= lease_ms / 3, cache_dirty_max <= cache_dir_size, cache_dir off the
// backends, no two listeners on one address); relative paths (backends, cache_dir,
// admin_socket, unix listeners) are resolved against `base_dir`. InvalidArgument naming
// `file:line`; a missing `parts` names the file only.
Result<Config> ParseConfig(std::string_view text, const std::string& file, const std::string& base_dir);
// Reads and parses `path`. NotFound if it is absent, IOError if it cannot be read (or is not a
// regular file), InvalidArgument if it is larger than kMaxConfigFileSize or does not parse.
Result<Config> LoadConfig(const std::string& path);

// What of the host CheckConfigOnHost checks beyond what every tool needs.
struct HostCheck {
  // qbd-master, which binds them: every TCP listener's address is one of this machine's (or
  // 127.0.0.0/8, or every interface). Other tools may run on another host than the daemon.
  bool local_addresses = false;
  // The local directory of every part exists (off for the tools that create them: qbdctl
  // create, qbd-master --create-default; and for qbdctl backends, which reports them).
  bool backend_dirs = true;
};

// Checks `config` against this machine without binding, creating or writing anything: listener
// host names resolve; a unix listener's directory exists and its path is free or a socket; the
// admin socket's directory exists; cache_dir exists as a directory, or its parent does (it is
// created, one level); with `check.backend_dirs` every local part directory exists. OK, or
// InvalidArgument naming config.file and the line of the value.
Status CheckConfigOnHost(const Config& config, const HostCheck& check = {});
// The embedded default of `make run`: three local parts beside the config file, NBD on
// 127.0.0.1:10809.
std::string DefaultConfigText();

}  // namespace qbd
