// Configuration: qbd.conf, the small `key = value` text format shared with .meta and
// .volumesmeta (layout-spec.md §1), and the sizes users type ("4M", "1G").
//
// Every parse error names the file and the line: "var/qbd.conf:7: unknown key 'lisen'".
// Thread-safety: pure functions and values.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/log.h"
#include "qbd/status.h"

namespace qbd {

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
  // qbd-master's local admin socket (qbd-repair talks to the running daemon through it); default
  // "<config dir>/<config name without .conf>.sock". Its lock file is "<admin_socket>.lock".
  std::string admin_socket;
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

  // The backend that holds part `part` ('a'...). nullptr past the configured parts.
  const BackendConfig* BackendForPart(char part) const;
};

// Parses qbd.conf text; relative backend paths are resolved against `base_dir`.
Result<Config> ParseConfig(std::string_view text, const std::string& file, const std::string& base_dir);
// Reads and parses `path`. NotFound if it is absent.
Result<Config> LoadConfig(const std::string& path);
// The embedded default of `make run`: three local parts beside the config file, NBD on
// 127.0.0.1:10809.
std::string DefaultConfigText();

}  // namespace qbd
