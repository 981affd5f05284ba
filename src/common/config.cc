#include "qbd/config.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cctype>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/path_checks.h"

namespace qbd {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool ValidKey(std::string_view k) {
  if (k.empty()) return false;
  for (char c : k) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') return false;
  }
  return true;
}

// The longest key or section name: a volume name (64) is a key of .volumesmeta.
constexpr size_t kMaxKey = 64;

// `v` shortened for a message: a damaged file may hold a line of any length.
std::string Clip(std::string_view v) {
  return v.size() <= 80 ? std::string(v) : fmt::format("{}... ({} characters)", v.substr(0, 64), v.size());
}

Status LineError(const std::string& file, int line, std::string_view msg) {
  return Status::InvalidArgument(fmt::format("{}:{}: {}", file, line, msg));
}

Result<LogLevel> ParseLogLevel(std::string_view v) {
  if (v == "debug") return LogLevel::kDebug;
  if (v == "info") return LogLevel::kInfo;
  if (v == "warn") return LogLevel::kWarn;
  if (v == "error") return LogLevel::kError;
  return Status::InvalidArgument(fmt::format("log level '{}' is not debug, info, warn or error", v));
}

Result<uint64_t> ParseUint(std::string_view v) {
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || p != v.data() + v.size() || v.empty()) {
    return Status::InvalidArgument(fmt::format("'{}' is not a number", v));
  }
  return n;
}

// A backend name ([backend NAME], parts): 1-64 of [A-Za-z0-9._-].
Status ValidateBackendName(std::string_view name) {
  if (name.empty() || name.size() > 64) return Status::InvalidArgument("a backend name is 1-64 characters");
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return Status::InvalidArgument(
          fmt::format("backend name '{}' may hold only letters, digits, '.', '_', '-'", name));
    }
  }
  return Status::OK();
}

}  // namespace

Result<std::string> ReadApiToken(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::InvalidArgument(fmt::format("{}: cannot be read: {}", path, std::strerror(errno)));
  std::string text(4097, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > 4096) return Status::InvalidArgument(fmt::format("{}: larger than 4 KiB", path));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (text.empty()) return Status::InvalidArgument(fmt::format("{}: empty: no token", path));
  for (char ch : text) {
    if (static_cast<unsigned char>(ch) <= ' ' || ch == 0x7f) {
      return Status::InvalidArgument(fmt::format("{}: the token holds whitespace or a control character", path));
    }
  }
  return text;
}

Status ValidateVolumeName(std::string_view name) {
  if (name.empty() || name.size() > 64) return Status::InvalidArgument("volume name must be 1-64 characters");
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) {
    return Status::InvalidArgument(fmt::format("volume name '{}' must start with a letter or digit", name));
  }
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return Status::InvalidArgument(fmt::format("volume name '{}' may hold only letters, digits, '.', '_', '-'", name));
    }
  }
  if (name == "format" || name == "serial") {
    return Status::InvalidArgument(fmt::format("volume name '{}' is reserved", name));
  }
  return Status::OK();
}


Result<std::vector<KvLine>> ParseKvText(std::string_view text, std::string_view file) {
  std::vector<KvLine> out;
  std::string section, arg;
  int lineno = 0;
  std::string f(file);
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view raw = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++lineno;
    size_t hash = raw.find('#');
    std::string_view line = Trim(hash == std::string_view::npos ? raw : raw.substr(0, hash));
    if (line.empty()) {
      if (nl == text.size()) break;
      continue;
    }
    if (line.front() == '[') {
      if (line.back() != ']') return LineError(f, lineno, "section header lacks ']'");
      std::string_view inner = Trim(line.substr(1, line.size() - 2));
      size_t sp = inner.find_first_of(" \t");
      section = std::string(inner.substr(0, sp));
      arg = sp == std::string_view::npos ? "" : std::string(Trim(inner.substr(sp)));
      if (!ValidKey(section) || section.size() > kMaxKey || arg.size() > kMaxKey) {
        return LineError(f, lineno, "malformed section header");
      }
      continue;
    }
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      return LineError(f, lineno, fmt::format("expected 'key = value', got '{}'", Clip(line)));
    }
    std::string_view key = Trim(line.substr(0, eq));
    std::string_view value = Trim(line.substr(eq + 1));
    if (!ValidKey(key) || key.size() > kMaxKey) {
      return LineError(f, lineno, fmt::format("malformed key '{}'", Clip(key)));
    }
    out.push_back(KvLine{lineno, section, arg, std::string(key), std::string(value)});
    if (nl == text.size()) break;
  }
  return out;
}

Result<uint64_t> ParseSize(std::string_view text) {
  std::string_view t = Trim(text);
  size_t i = 0;
  while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) ++i;
  if (i == 0) return Status::InvalidArgument(fmt::format("size '{}' does not start with a number", text));
  auto n = ParseUint(t.substr(0, i));
  if (!n.ok()) return n.status();
  std::string unit(Trim(t.substr(i)));
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.size() == 3 && unit.substr(1) == "IB") unit.resize(1);
  else if (unit.size() == 2 && unit[1] == 'B') unit.resize(1);
  int shift;
  if (unit.empty() || unit == "B") shift = 0;
  else if (unit == "K") shift = 10;
  else if (unit == "M") shift = 20;
  else if (unit == "G") shift = 30;
  else if (unit == "T") shift = 40;
  else if (unit == "P") shift = 50;
  else return Status::InvalidArgument(fmt::format("size '{}' has an unknown unit (use K, M, G, T)", text));
  if (*n > (UINT64_MAX >> shift)) return Status::InvalidArgument(fmt::format("size '{}' is too large", text));
  return *n << shift;
}

std::string FormatSize(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (u < 5 && bytes != 0 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++u;
  }
  return fmt::format("{} {}", bytes, kUnits[u]);
}

Result<bool> ParseBool(std::string_view text) {
  if (text == "true" || text == "on" || text == "yes" || text == "1") return true;
  if (text == "false" || text == "off" || text == "no" || text == "0") return false;
  return Status::InvalidArgument(fmt::format("'{}' is not true/false/on/off", text));
}

const BackendConfig* Config::BackendForPart(char part) const {
  size_t i = static_cast<size_t>(part - 'a');
  if (part < 'a' || i >= parts.size()) return nullptr;
  for (const auto& b : backends) {
    if (b.name == parts[i]) return &b;
  }
  return nullptr;
}

int Config::Line(const std::string& key) const {
  auto it = key_lines.find(key);
  return it == key_lines.end() ? 0 : it->second;
}

namespace {

// A number key of qbd.conf within [lo, hi]; the message names the key and its range.
Result<uint64_t> RangedUint(const KvLine& l, uint64_t lo, uint64_t hi, std::string_view extra = "") {
  auto n = ParseUint(l.value);
  if (!n.ok() || *n < lo || *n > hi) {
    return Status::InvalidArgument(fmt::format("{} must be {}..{}{}, not '{}'", l.key, lo, hi, extra, l.value));
  }
  return *n;
}

// A size key of qbd.conf within [lo, hi] bytes.
Result<uint64_t> RangedSize(const KvLine& l, uint64_t lo, uint64_t hi) {
  auto n = ParseSize(l.value);
  if (!n.ok()) return Status::InvalidArgument(fmt::format("{}: {}", l.key, n.status().message()));
  if (*n < lo || *n > hi) {
    return Status::InvalidArgument(
        fmt::format("{} must be {}..{}, not {}", l.key, FormatSize(lo), FormatSize(hi), l.value));
  }
  return *n;
}

// An absolute, normal path: `value` resolved against `base_dir` when relative.
std::string ResolvePath(const std::string& value, const std::string& base_dir) {
  std::filesystem::path p(value);
  if (p.is_relative()) p = std::filesystem::path(base_dir) / p;
  return p.lexically_normal().string();
}

// Parses a listener (`listen`); a relative unix path becomes absolute against `base_dir`.
Result<std::string> ParseListenValue(const std::string& value, const std::string& base_dir) {
  QBD_ASSIGN_OR_RETURN(ListenAddress a, ParseListenAddress(value));
  if (a.kind != ListenAddress::Kind::kUnix) return value;
  const std::string path = ResolvePath(a.path, base_dir);
  QBD_ASSIGN_OR_RETURN(ListenAddress abs, ParseListenAddress("unix:" + path));  // length again
  return "unix:" + abs.path;
}

// Two listeners that cannot both be bound: the same unix path, or the same port where the hosts
// are equal or either is every interface.
bool ListenersClash(const ListenAddress& a, const ListenAddress& b) {
  if ((a.kind == ListenAddress::Kind::kUnix) != (b.kind == ListenAddress::Kind::kUnix)) return false;
  if (a.kind == ListenAddress::Kind::kUnix) return a.path == b.path;
  if (a.port != b.port) return false;
  auto any = [](const ListenAddress& x) {
    return x.kind == ListenAddress::Kind::kAny || x.host == "0.0.0.0" || x.host == "::";
  };
  return any(a) || any(b) || a.host == b.host;
}

}  // namespace

Result<Config> ParseConfig(std::string_view text, const std::string& file, const std::string& base_dir) {
  QBD_ASSIGN_OR_RETURN(std::vector<KvLine> lines, ParseKvText(text, file));
  Config c;
  c.file = file;
  std::set<std::string> mounts;  // backends with a `mount` line
  for (const KvLine& l : lines) {
    auto err = [&](std::string_view msg) { return LineError(file, l.line, msg); };
    auto bad = [&](const Status& s) { return LineError(file, l.line, s.message()); };
    auto bad_value = [&](const Status& s) { return LineError(file, l.line, fmt::format("{}: {}", l.key, s.message())); };
    if (l.value.size() > kMaxConfigValue) {
      return err(fmt::format("{}: the value is {} characters; at most {}", l.key, l.value.size(), kMaxConfigValue));
    }
    if (l.section.empty()) {
      if (!c.key_lines.emplace(l.key, l.line).second) {
        return err(fmt::format("'{}' is set twice (first on line {})", l.key, c.Line(l.key)));
      }
      if (l.key == "listen") {
        auto v = ParseListenValue(l.value, base_dir);
        if (!v.ok()) return bad_value(v.status());
        c.listen = *v;
      } else if (l.key == "parts") {
        std::istringstream in(l.value);
        std::string name;
        while (in >> name) {
          if (c.parts.size() == 26) return err("parts: at most 26 parts (a..z)");
          Status s = ValidateBackendName(name);
          if (!s.ok()) return bad_value(s);
          c.parts.push_back(name);
        }
        if (c.parts.empty()) return err("parts: lists no backend");
      } else if (l.key == "threads_per_connection") {
        auto n = RangedUint(l, 1, 256);
        if (!n.ok()) return bad(n.status());
        c.threads_per_connection = static_cast<int>(*n);
      } else if (l.key == "nbd_memory") {
        // At least two of the largest requests (32M), so that one can always be read whole.
        auto n = RangedSize(l, uint64_t{64} << 20, uint64_t{1} << 40);
        if (!n.ok()) return bad(n.status());
        c.nbd_memory = *n;
      } else if (l.key == "client_timeout_ms") {
        auto n = RangedUint(l, 1000, 3600000);
        if (!n.ok()) return bad(n.status());
        c.client_timeout_ms = static_cast<uint32_t>(*n);
      } else if (l.key == "max_connections") {
        auto n = RangedUint(l, 1, 65536);
        if (!n.ok()) return bad(n.status());
        c.max_connections = static_cast<uint32_t>(*n);
      } else if (l.key == "write_quorum") {
        if (l.value == "majority") {
          c.write_quorum = 0;
        } else {
          auto n = RangedUint(l, 1, 26, " or 'majority'");
          if (!n.ok()) return bad(n.status());
          c.write_quorum = static_cast<uint32_t>(*n);
        }
      } else if (l.key == "default_export") {
        if (!l.value.empty()) {
          Status s = ValidateVolumeName(l.value);
          if (!s.ok()) return bad_value(s);
        }
        c.default_export = l.value;
      } else if (l.key == "log_level") {
        auto lv = ParseLogLevel(l.value);
        if (!lv.ok()) return bad_value(lv.status());
        c.log_level = *lv;
      } else if (l.key == "volume_poll_ms") {
        auto n = RangedUint(l, 50, 3600000);
        if (!n.ok()) return bad(n.status());
        c.volume_poll_ms = static_cast<uint32_t>(*n);
      } else if (l.key == "resync_mb_per_s" || l.key == "compare_mb_per_s") {
        auto n = RangedUint(l, 0, 100000, " (0: no limit)");
        if (!n.ok()) return bad(n.status());
        (l.key == "resync_mb_per_s" ? c.resync_mb_per_s : c.compare_mb_per_s) = static_cast<uint32_t>(*n);
      } else if (l.key == "qos_slots") {
        auto n = RangedUint(l, 0, 65536, " (0: reservations never enforced)");
        if (!n.ok()) return bad(n.status());
        c.qos_slots = static_cast<uint32_t>(*n);
      } else if (l.key == "nfs_timeout_ms") {
        auto n = RangedUint(l, 100, 600000);
        if (!n.ok()) return bad(n.status());
        c.nfs_timeout_ms = static_cast<int>(*n);
      } else if (l.key == "cache_size") {
        auto n = RangedSize(l, 0, uint64_t{1} << 40);
        if (!n.ok()) return bad(n.status());
        c.cache_size = *n;
      } else if (l.key == "cache_dir") {
        if (l.value.empty()) return err("cache_dir: empty path");
        c.cache_dir = ResolvePath(l.value, base_dir);
      } else if (l.key == "cache_dir_size") {
        auto n = RangedSize(l, uint64_t{1} << 20, uint64_t{16} << 40);
        if (!n.ok()) return bad(n.status());
        c.cache_dir_size = *n;
      } else if (l.key == "cache_mode") {
        if (l.value != "writethrough" && l.value != "writeback") {
          return err(fmt::format("cache_mode must be writethrough or writeback, not '{}'", l.value));
        }
        c.cache_write_back = l.value == "writeback";
      } else if (l.key == "cache_dirty_max") {
        auto n = RangedSize(l, uint64_t{1} << 20, uint64_t{16} << 40);
        if (!n.ok()) return bad(n.status());
        c.cache_dirty_max = *n;
      } else if (l.key == "cache_destage_delay_ms") {
        auto n = RangedUint(l, 0, 3600000);
        if (!n.ok()) return bad(n.status());
        c.cache_destage_delay_ms = static_cast<uint32_t>(*n);
      } else if (l.key == "lease_ms") {
        auto n = RangedUint(l, 300, 600000);
        if (!n.ok()) return bad(n.status());
        c.lease_ms = static_cast<uint32_t>(*n);
      } else if (l.key == "lease_renew_ms") {
        auto n = RangedUint(l, 100, 200000);
        if (!n.ok()) return bad(n.status());
        c.lease_renew_ms = static_cast<uint32_t>(*n);
      } else if (l.key == "api_listen") {
        auto a = ParseListenAddress(l.value);
        if (!a.ok()) return bad_value(a.status());
        if (a->kind == ListenAddress::Kind::kUnix) return err("api_listen: HOST:PORT, not a unix socket");
        c.api_listen = l.value;
      } else if (l.key == "api_token_file") {
        if (l.value.empty()) return err("api_token_file: empty path");
        c.api_token_file = ResolvePath(l.value, base_dir);
      } else if (l.key == "admin_socket") {
        if (l.value.empty()) return err("admin_socket: empty path");
        c.admin_socket = ResolvePath(l.value, base_dir);
      } else if (l.key == "state_dir") {
        if (l.value.empty()) return err("state_dir: empty path");
        c.state_dir = ResolvePath(l.value, base_dir);
      } else if (l.key == "attach_timeout_s") {
        auto n = RangedUint(l, 1, 3600);
        if (!n.ok()) return bad(n.status());
        c.attach_timeout_s = static_cast<uint32_t>(*n);
      } else if (l.key == "attach_interface") {
        if (l.value != "auto" && l.value != "netlink" && l.value != "ioctl") {
          return err(fmt::format("attach_interface must be auto, netlink or ioctl, not '{}'", l.value));
        }
        c.attach_interface = l.value;
      } else if (l.key == "attach_dead_timeout_s") {
        auto n = RangedUint(l, 1, 86400);
        if (!n.ok()) return bad(n.status());
        c.attach_dead_timeout_s = static_cast<uint32_t>(*n);
      } else if (l.key == "allow_shared_failure_domain") {
        auto b = ParseBool(l.value);
        if (!b.ok()) return bad_value(b.status());
        c.allow_shared_failure_domain = *b;
      } else {
        return err(fmt::format("unknown key '{}'", l.key));
      }
    } else if (l.section == "backend") {
      if (l.section_arg.empty()) return err("[backend] needs a name: [backend NAME]");
      Status name_ok = ValidateBackendName(l.section_arg);
      if (!name_ok.ok()) return bad(name_ok);
      if (l.key != "path" && l.key != "url" && l.key != "mount") {
        return err(fmt::format("unknown key '{}' in [backend {}] (path, url or mount)", l.key, l.section_arg));
      }
      if (l.key == "mount") {  // read by scripts/mount-backends.sh only
        if (!mounts.insert(l.section_arg).second) {
          return err(fmt::format("'mount' is set twice in [backend {}]", l.section_arg));
        }
        continue;
      }
      for (const auto& b : c.backends) {
        if (b.name == l.section_arg) return err(fmt::format("backend '{}' has two locations", b.name));
      }
      std::string loc = l.value;
      if (loc.empty()) return err("empty backend location");
      if (l.key == "url") {
        if (loc.rfind("nfs://", 0) != 0) return err("url must start with nfs://");
        const std::string_view rest = std::string_view(loc).substr(6);
        const size_t slash = rest.find('/');
        if (slash == 0 || rest.empty()) return err(fmt::format("url '{}' names no server: nfs://HOST/EXPORT", loc));
        if (slash == std::string_view::npos) return err(fmt::format("url '{}' names no export: nfs://HOST/EXPORT", loc));
      } else {
        loc = ResolvePath(loc, base_dir);
      }
      c.backends.push_back(BackendConfig{l.section_arg, loc, l.line});
    } else if (l.section == "volume") {
      if (l.section_arg.empty()) return err("[volume] needs a name: [volume NAME]");
      Status name_ok = ValidateVolumeName(l.section_arg);
      if (!name_ok.ok()) return bad(name_ok);
      if (l.key != "listen") return err(fmt::format("unknown key '{}' in [volume {}] (listen)", l.key, l.section_arg));
      if (c.volume_listen.count(l.section_arg)) {
        return err(fmt::format("[volume {}] sets listen twice (first on line {})", l.section_arg,
                               c.volume_listen_lines[l.section_arg]));
      }
      auto v = ParseListenValue(l.value, base_dir);
      if (!v.ok()) return bad_value(v.status());
      c.volume_listen[l.section_arg] = *v;
      c.volume_listen_lines[l.section_arg] = l.line;
    } else {
      return err(fmt::format("unknown section [{}]", l.section));
    }
  }
  if (c.parts.empty()) {
    return Status::InvalidArgument(fmt::format("{}: 'parts = BACKEND...' is missing", file));
  }
  for (auto& b : c.backends) b.nfs_timeout_ms = c.nfs_timeout_ms;
  if (uint64_t{c.lease_renew_ms} * 3 > c.lease_ms) {
    // The holder needs time for more than one renewal before its lease_ms - lease_renew_ms run
    // out (layout-spec.md 8). The later of the two lines is named.
    return LineError(file, std::max(c.Line("lease_ms"), c.Line("lease_renew_ms")),
                     fmt::format("lease_renew_ms ({}) must be at most lease_ms / 3 ({})", c.lease_renew_ms,
                                 c.lease_ms / 3));
  }
  if (c.cache_dirty_max > c.cache_dir_size && !c.cache_dir.empty()) {
    // The bytes not yet on the parts are in the log: they cannot be more than it holds.
    return LineError(file, std::max(c.Line("cache_dirty_max"), c.Line("cache_dir_size")),
                     fmt::format("cache_dirty_max ({}) must be at most cache_dir_size ({})",
                                 FormatSize(c.cache_dirty_max), FormatSize(c.cache_dir_size)));
  }
  if (!c.cache_dir.empty()) {
    // The cache directory sits in front of the parts, never on them (layout-spec.md 7).
    const std::filesystem::path cd(c.cache_dir);
    auto inside = [](const std::filesystem::path& a, const std::filesystem::path& b) {
      auto [ai, bi] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
      return bi == b.end();  // every element of b is a prefix of a
    };
    for (const auto& b : c.backends) {
      if (b.location.rfind("nfs://", 0) == 0) continue;
      const std::filesystem::path bp(b.location);
      if (inside(cd, bp) || inside(bp, cd)) {
        return LineError(file, c.Line("cache_dir"),
                         fmt::format("cache_dir {} overlaps backend '{}' ({})", c.cache_dir, b.name, b.location));
      }
    }
  }
  if (c.admin_socket.empty()) {
    std::filesystem::path f(file);
    c.admin_socket = (std::filesystem::path(base_dir) / (f.stem().string() + ".sock")).lexically_normal().string();
  }
  // The socket's path must fit sun_path; ".lock" and ".repair-N" files sit beside it.
  if (c.admin_socket.size() > 100) {
    const std::string msg = fmt::format("admin_socket {} is longer than 100 characters", c.admin_socket);
    if (c.Line("admin_socket") == 0) {
      return Status::InvalidArgument(fmt::format("{}: {} (the default, beside this file): set admin_socket", file, msg));
    }
    return LineError(file, c.Line("admin_socket"), msg);
  }
  std::set<std::string> used;
  for (const auto& name : c.parts) {
    bool found = false;
    for (const auto& b : c.backends) found = found || b.name == name;
    if (!found) return LineError(file, c.Line("parts"), fmt::format("parts: no [backend {}] section", name));
    if (!used.insert(name).second) {
      return LineError(file, c.Line("parts"), fmt::format("parts: backend '{}' holds two parts", name));
    }
  }
  // No two listeners on one address: the second bind would fail after the volumes are open.
  std::vector<std::pair<ListenAddress, int>> listeners;
  auto add_listener = [&](const std::string& spec, int line) -> Status {
    QBD_ASSIGN_OR_RETURN(ListenAddress a, ParseListenAddress(spec));  // parsed above: cannot fail
    for (const auto& [other, other_line] : listeners) {
      if (ListenersClash(a, other)) {
        const int first = std::min(line, other_line);
        return LineError(file, std::max(line, other_line),
                         fmt::format("listen {} takes the address of {}", spec,
                                     first > 0 ? fmt::format("line {}", first)
                                               : fmt::format("the default listen ({})", c.listen)));
      }
    }
    listeners.emplace_back(std::move(a), line);
    return Status::OK();
  };
  QBD_RETURN_IF_ERROR(add_listener(c.listen, c.Line("listen")));
  QBD_RETURN_IF_ERROR(add_listener(c.api_listen, c.Line("api_listen")));
  for (const auto& [name, spec] : c.volume_listen) {
    QBD_RETURN_IF_ERROR(add_listener(spec, c.volume_listen_lines[name]));
  }
  return c;
}

Result<Config> LoadConfig(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(st)) return Status::NotFound(path + ": no such file");
  if (!std::filesystem::is_regular_file(st)) return Status::IOError(path + ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IOError(fmt::format("{}: cannot be read: {}", path, std::strerror(errno)));
  std::string text(kMaxConfigFileSize + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) return Status::IOError(path + ": cannot be read");
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxConfigFileSize) {
    return Status::InvalidArgument(fmt::format("{}: larger than {}: not a qbd.conf", path, FormatSize(kMaxConfigFileSize)));
  }
  std::string base = std::filesystem::absolute(path).parent_path().string();
  return ParseConfig(text, path, base);
}

Status CheckConfigOnHost(const Config& c, const HostCheck& check) {
  auto at = [&](int line, const Status& s) {
    return line > 0 ? LineError(c.file, line, s.message())
                    : Status::InvalidArgument(fmt::format("{}: {}", c.file, s.message()));
  };
  auto listener = [&](const std::string& spec, int line, std::string_view what) -> Status {
    auto a = ParseListenAddress(spec);
    Status s = a.ok() ? CheckListenerOnHost(*a, check.local_addresses) : a.status();
    return s.ok() ? s : at(line, Status::InvalidArgument(fmt::format("{} {}: {}", what, spec, s.message())));
  };
  QBD_RETURN_IF_ERROR(listener(c.listen, c.Line("listen"), "listen"));
  for (const auto& [name, spec] : c.volume_listen) {
    auto it = c.volume_listen_lines.find(name);
    QBD_RETURN_IF_ERROR(listener(spec, it == c.volume_listen_lines.end() ? 0 : it->second,
                                 fmt::format("[volume {}] listen", name)));
  }
  QBD_RETURN_IF_ERROR(listener(c.api_listen, c.Line("api_listen"), "api_listen"));
  // Anyone who reaches a non-loopback API could delete volumes: a token is required there.
  if (c.api_token_file.empty() && !IsLoopbackListener(c.api_listen)) {
    return at(c.Line("api_listen"),
              Status::InvalidArgument(fmt::format(
                  "api_listen {} is not a loopback address: set api_token_file (a file holding "
                  "the bearer token clients must send)",
                  c.api_listen)));
  }
  if (!c.api_token_file.empty()) {
    auto token = ReadApiToken(c.api_token_file);
    if (!token.ok()) {
      return at(c.Line("api_token_file"),
                Status::InvalidArgument(fmt::format("api_token_file {}", token.status().message())));
    }
  }
  Status s = CheckDir(Parent(c.admin_socket));
  if (!s.ok()) {
    return at(c.Line("admin_socket"),
              Status::InvalidArgument(fmt::format("admin_socket {}: its directory: {}", c.admin_socket, s.message())));
  }
  if (!c.cache_dir.empty()) {
    std::error_code ec;
    if (std::filesystem::exists(c.cache_dir, ec)) {
      s = CheckDir(c.cache_dir);
    } else {
      s = CheckDir(Parent(c.cache_dir));
      if (!s.ok()) s = Status::InvalidArgument(fmt::format("neither it nor its parent directory exists ({})", s.message()));
    }
    if (!s.ok()) return at(c.Line("cache_dir"), Status::InvalidArgument(fmt::format("cache_dir {}: {}", c.cache_dir, s.message())));
  }
  if (c.Line("state_dir") != 0) {
    std::error_code ec;
    if (std::filesystem::exists(c.state_dir, ec)) {
      s = CheckDir(c.state_dir);
    } else {
      s = CheckDir(Parent(c.state_dir));
      if (!s.ok()) s = Status::InvalidArgument(fmt::format("neither it nor its parent directory exists ({})", s.message()));
    }
    if (!s.ok()) return at(c.Line("state_dir"), Status::InvalidArgument(fmt::format("state_dir {}: {}", c.state_dir, s.message())));
  }
  if (check.backend_dirs) {
    for (size_t i = 0; i < c.parts.size(); ++i) {
      const BackendConfig* b = c.BackendForPart(static_cast<char>('a' + i));
      if (b == nullptr || b->location.rfind("nfs://", 0) == 0) continue;
      s = CheckDir(b->location);
      if (!s.ok()) {
        // A missing directory is usually a disk that is not mounted: never filled in its place.
        return at(b->line, Status::InvalidArgument(fmt::format(
                               "backend '{}' (part {}): {} (is its disk mounted? `qbdctl create` creates it)",
                               b->name, static_cast<char>('a' + i), s.message())));
      }
    }
  }
  return Status::OK();
}

std::string DefaultConfigText() {
  return R"(# qbd.conf written by `qbd-master --create-default` (the embedded default of `make run`).
# Every option is documented in qbd.conf.example.
listen = 127.0.0.1:10809
default_export = demo
parts = node-a node-b node-c
# The demo keeps its three parts on one disk: a real setup puts each on its own disk or server.
allow_shared_failure_domain = true

[backend node-a]
path = node-a
[backend node-b]
path = node-b
[backend node-c]
path = node-c
)";
}

}  // namespace qbd
