#include "qbd/config.h"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

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

}  // namespace

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
      if (!ValidKey(section)) return LineError(f, lineno, "malformed section header");
      continue;
    }
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      return LineError(f, lineno, fmt::format("expected 'key = value', got '{}'", line));
    }
    std::string_view key = Trim(line.substr(0, eq));
    std::string_view value = Trim(line.substr(eq + 1));
    if (!ValidKey(key)) return LineError(f, lineno, fmt::format("malformed key '{}'", key));
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

Result<Config> ParseConfig(std::string_view text, const std::string& file, const std::string& base_dir) {
  QBD_ASSIGN_OR_RETURN(std::vector<KvLine> lines, ParseKvText(text, file));
  Config c;
  c.file = file;
  int parts_line = 0;
  int cache_dir_line = 0;
  int lease_line = 0;
  std::set<std::string> seen_global;
  for (const KvLine& l : lines) {
    auto err = [&](std::string_view msg) { return LineError(file, l.line, msg); };
    auto bad_value = [&](const Status& s) { return LineError(file, l.line, fmt::format("{}: {}", l.key, s.message())); };
    if (l.section.empty()) {
      if (!seen_global.insert(l.key).second) return err(fmt::format("'{}' is set twice", l.key));
      if (l.key == "listen") {
        c.listen = l.value;
      } else if (l.key == "parts") {
        std::istringstream in(l.value);
        std::string name;
        while (in >> name) c.parts.push_back(name);
        if (c.parts.empty()) return err("parts: lists no backend");
        if (c.parts.size() > 26) return err("parts: at most 26 parts (a..z)");
        parts_line = l.line;
      } else if (l.key == "threads_per_connection") {
        auto n = ParseUint(l.value);
        if (!n.ok() || *n < 1 || *n > 256) return err("threads_per_connection must be 1..256");
        c.threads_per_connection = static_cast<int>(*n);
      } else if (l.key == "nbd_memory") {
        auto n = ParseSize(l.value);
        if (!n.ok()) return bad_value(n.status());
        // At least two of the largest requests (32M), so that one can always be read whole.
        if (*n < (uint64_t{64} << 20) || *n > (uint64_t{1} << 40)) return err("nbd_memory must be 64M..1T");
        c.nbd_memory = *n;
      } else if (l.key == "client_timeout_ms") {
        auto n = ParseUint(l.value);
        if (!n.ok() || *n < 1000 || *n > 3600000) return err("client_timeout_ms must be 1000..3600000");
        c.client_timeout_ms = static_cast<uint32_t>(*n);
      } else if (l.key == "max_connections") {
        auto n = ParseUint(l.value);
        if (!n.ok() || *n < 1 || *n > 65536) return err("max_connections must be 1..65536");
        c.max_connections = static_cast<uint32_t>(*n);
      } else if (l.key == "write_quorum") {
        if (l.value == "majority") {
          c.write_quorum = 0;
        } else {
          auto n = ParseUint(l.value);
          if (!n.ok() || *n < 1 || *n > 26) return err("write_quorum must be 'majority' or 1..26");
          c.write_quorum = static_cast<uint32_t>(*n);
        }
      } else if (l.key == "default_export") {
        c.default_export = l.value;
      } else if (l.key == "log_level") {
        auto lv = ParseLogLevel(l.value);
        if (!lv.ok()) return bad_value(lv.status());
        c.log_level = *lv;
      } else if (l.key == "volume_poll_ms") {
        auto n = ParseUint(l.value);
        if (!n.ok() || *n < 50 || *n > 3600000) return err("volume_poll_ms must be 50..3600000");
        c.volume_poll_ms = static_cast<uint32_t>(*n);
      } else if (l.key == "resync_mb_per_s") {
        auto n = ParseUint(l.value);
        if (!n.ok() || *n > 100000) return err("resync_mb_per_s must be 0 (no limit) to 100000");
        c.resync_mb_per_s = static_cast<uint32_t>(*n);
      } else if (l.key == "compare_mb_per_s") {
        auto n = ParseUint(l.value);
        if (!n.ok() || *n > 100000) return err("compare_mb_per_s must be 0 (no limit) to 100000");
        c.compare_mb_per_s = static_cast<uint32_t>(*n);
      } else if (l.key == "nfs_timeout_ms") {
        auto n = ParseUint(l.value);
        if (!n.ok() || *n < 100 || *n > 600000) return err("nfs_timeout_ms must be 100..600000");
        c.nfs_timeout_ms = static_cast<int>(*n);
      } else if (l.key == "cache_size") {
        auto n = ParseSize(l.value);
        if (!n.ok()) return bad_value(n.status());
        c.cache_size = *n;
      } else if (l.key == "cache_dir") {
        std::filesystem::path p(l.value);
        if (l.value.empty()) return err("cache_dir: empty path");
        if (p.is_relative()) p = std::filesystem::path(base_dir) / p;
        c.cache_dir = p.lexically_normal().string();
        cache_dir_line = l.line;
      } else if (l.key == "cache_dir_size") {
        auto n = ParseSize(l.value);
        if (!n.ok()) return bad_value(n.status());
        if (*n < (uint64_t{1} << 20)) return err("cache_dir_size must be at least 1M");
        c.cache_dir_size = *n;
      } else if (l.key == "cache_mode") {
        if (l.value != "writethrough" && l.value != "writeback") return err("cache_mode must be writethrough or writeback");
        c.cache_write_back = l.value == "writeback";
      } else if (l.key == "cache_dirty_max") {
        auto n = ParseSize(l.value);
        if (!n.ok()) return bad_value(n.status());
        if (*n < (uint64_t{1} << 20)) return err("cache_dirty_max must be at least 1M");
        c.cache_dirty_max = *n;
      } else if (l.key == "cache_destage_delay_ms") {
        auto n = ParseUint(l.value);
        if (!n.ok() || *n > 3600000) return err("cache_destage_delay_ms must be 0..3600000");
        c.cache_destage_delay_ms = static_cast<uint32_t>(*n);
      } else if (l.key == "lease_ms") {
        auto n = ParseUint(l.value);
        if (!n.ok() || *n < 300 || *n > 600000) return err("lease_ms must be 300..600000");
        c.lease_ms = static_cast<uint32_t>(*n);
        lease_line = std::max(lease_line, l.line);
      } else if (l.key == "lease_renew_ms") {
        auto n = ParseUint(l.value);
        if (!n.ok() || *n < 100 || *n > 200000) return err("lease_renew_ms must be 100..200000");
        c.lease_renew_ms = static_cast<uint32_t>(*n);
        lease_line = std::max(lease_line, l.line);
      } else if (l.key == "admin_socket") {
        std::filesystem::path p(l.value);
        if (p.is_relative()) p = std::filesystem::path(base_dir) / p;
        c.admin_socket = p.lexically_normal().string();
        if (c.admin_socket.size() > 100) return err("admin_socket: the path is longer than 100 characters");
      } else if (l.key == "allow_shared_failure_domain") {
        auto b = ParseBool(l.value);
        if (!b.ok()) return bad_value(b.status());
        c.allow_shared_failure_domain = *b;
      } else {
        return err(fmt::format("unknown key '{}'", l.key));
      }
    } else if (l.section == "backend") {
      if (l.section_arg.empty()) return err("[backend] needs a name: [backend NAME]");
      if (l.key == "mount") {
        continue;  // read by scripts/mount-backends.sh only
      }
      if (l.key != "path" && l.key != "url") {
        return err(fmt::format("unknown key '{}' in [backend {}] (path or url)", l.key, l.section_arg));
      }
      for (const auto& b : c.backends) {
        if (b.name == l.section_arg) return err(fmt::format("backend '{}' has two locations", b.name));
      }
      std::string loc = l.value;
      if (loc.empty()) return err("empty backend location");
      if (l.key == "url" && loc.rfind("nfs://", 0) != 0) return err("url must start with nfs://");
      if (l.key == "path") {
        std::filesystem::path p(loc);
        if (p.is_relative()) p = std::filesystem::path(base_dir) / p;
        loc = p.lexically_normal().string();
      }
      c.backends.push_back(BackendConfig{l.section_arg, loc, l.line});
    } else if (l.section == "volume") {
      if (l.section_arg.empty()) return err("[volume] needs a name: [volume NAME]");
      if (l.key != "listen") return err(fmt::format("unknown key '{}' in [volume {}] (listen)", l.key, l.section_arg));
      c.volume_listen[l.section_arg] = l.value;
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
    // out (layout-spec.md 8).
    return LineError(file, lease_line, fmt::format("lease_renew_ms ({}) must be at most lease_ms / 3 ({})",
                                                   c.lease_renew_ms, c.lease_ms / 3));
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
        return LineError(file, cache_dir_line, fmt::format("cache_dir {} overlaps backend '{}' ({})", c.cache_dir, b.name, b.location));
      }
    }
  }
  if (c.admin_socket.empty()) {
    std::filesystem::path f(file);
    c.admin_socket = (std::filesystem::path(base_dir) / (f.stem().string() + ".sock")).lexically_normal().string();
  }
  std::set<std::string> used;
  for (const auto& name : c.parts) {
    bool found = false;
    for (const auto& b : c.backends) found = found || b.name == name;
    if (!found) return LineError(file, parts_line, fmt::format("parts: no [backend {}] section", name));
    if (!used.insert(name).second) {
      return LineError(file, parts_line, fmt::format("parts: backend '{}' holds two parts", name));
    }
  }
  return c;
}

Result<Config> LoadConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    if (!std::filesystem::exists(path)) return Status::NotFound(path + ": no such file");
    return Status::IOError(path + ": cannot be read");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string base = std::filesystem::absolute(path).parent_path().string();
  return ParseConfig(ss.str(), path, base);
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
