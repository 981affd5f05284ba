// Implements layout-spec.md §1 (.volumesmeta) and §2 (.meta).
#include "qbd/volume_meta.h"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <map>
#include <set>

#include "qbd/config.h"
#include "qbd/lvm_thin.h"
#include "qbd/qos.h"

namespace qbd {
namespace {

Status At(std::string_view file, int line, std::string_view msg) {
  return Status::InvalidArgument(fmt::format("{}:{}: {}", file, line, msg));
}

// `v` shortened for a message: a damaged file may hold a value of any length.
std::string Clip(std::string_view v) {
  return v.size() <= 40 ? std::string(v) : fmt::format("{}... ({} characters)", v.substr(0, 32), v.size());
}

Result<uint64_t> Number(std::string_view v, uint64_t max) {
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (v.empty() || ec != std::errc() || p != v.data() + v.size() || n > max) {
    return Status::InvalidArgument(fmt::format("'{}' is not a number up to {}", Clip(v), max));
  }
  return n;
}

bool Digits(std::string_view s, size_t pos, size_t n) {
  if (pos + n > s.size()) return false;
  for (size_t i = pos; i < pos + n; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

// `created` (layout-spec.md §2): ISO 8601 UTC, "YYYY-MM-DDTHH:MM:SSZ", optionally with a
// fraction of a second ("...SS.123Z").
Status CheckCreated(std::string_view v) {
  auto bad = [&] {
    return Status::InvalidArgument(
        fmt::format("created: '{}' is not an ISO 8601 UTC time (YYYY-MM-DDTHH:MM:SSZ)", Clip(v)));
  };
  if (v.size() < 20 || v.size() > kMaxCreatedLength) return bad();
  if (!Digits(v, 0, 4) || v[4] != '-' || !Digits(v, 5, 2) || v[7] != '-' || !Digits(v, 8, 2) || v[10] != 'T' ||
      !Digits(v, 11, 2) || v[13] != ':' || !Digits(v, 14, 2) || v[16] != ':' || !Digits(v, 17, 2)) {
    return bad();
  }
  auto two = [&](size_t pos) { return (v[pos] - '0') * 10 + (v[pos + 1] - '0'); };
  if (two(5) < 1 || two(5) > 12 || two(8) < 1 || two(8) > 31 || two(11) > 23 || two(14) > 59 || two(17) > 60) {
    return bad();
  }
  std::string_view rest = v.substr(19);
  if (rest.front() == '.') {
    size_t n = 1;
    while (n < rest.size() && std::isdigit(static_cast<unsigned char>(rest[n]))) ++n;
    if (n == 1 || n > 10) return bad();
    rest.remove_prefix(n);
  }
  return rest == "Z" ? Status::OK() : bad();
}

}  // namespace

Status CheckQosText(std::string_view v) {
  if (v.size() > kMaxQosLength) {
    return Status::InvalidArgument(fmt::format("qos: {} characters; at most {}", v.size(), kMaxQosLength));
  }
  for (char c : v) {
    if (c < ' ' || c > '~' || c == '#') {
      return Status::InvalidArgument("qos: only printable ASCII other than '#' (compact JSON, '#' as \\u0023)");
    }
  }
  return ParseQosText(v).status();
}

std::string MetaPath(uint32_t volnr) { return fmt::format("{}/.meta", volnr); }

std::string EncodeVolumeMeta(const VolumeMeta& m) {
  std::string s = "# qbd volume metadata (layout-spec.md section 2)\n";
  s += fmt::format("format = {}\n", m.geometry.format);
  s += fmt::format("serial = {}\n", m.serial);
  s += fmt::format("name = {}\n", m.name);
  s += fmt::format("number = {}\n", m.number);
  s += fmt::format("size = {}\n", m.geometry.size);
  s += fmt::format("block_size = {}\n", m.geometry.block_size);
  s += fmt::format("block_meta_size = {}\n", m.geometry.MetaBytes());
  s += fmt::format("chunk_size = {}\n", m.geometry.chunk_size);
  s += "layout = replicate\n";
  s += fmt::format("replicas = {}\n", m.replicas);
  if (m.write_quorum == 0) {
    s += "write_quorum = majority\n";
  } else {
    s += fmt::format("write_quorum = {}\n", m.write_quorum);
  }
  s += fmt::format("read_only = {}\n", m.read_only ? "true" : "false");
  s += fmt::format("append_only = {}\n", m.append_only ? "true" : "false");
  if (!m.created.empty()) s += fmt::format("created = {}\n", m.created);
  if (!m.qos.empty()) s += fmt::format("qos = {}\n", m.qos);
  if (m.lvm_thin) s += "lvm_thin = true\n";
  if (!m.lvm_pv_uuid.empty()) s += fmt::format("lvm_pv_uuid = {}\n", m.lvm_pv_uuid);
  return s;
}

Result<VolumeMeta> ParseVolumeMeta(std::string_view text, std::string_view file, uint32_t expected_number) {
  if (text.size() > kMaxConfigFileSize) {
    return Status::InvalidArgument(fmt::format("{}: larger than {} bytes", file, kMaxConfigFileSize));
  }
  QBD_ASSIGN_OR_RETURN(auto lines, ParseKvText(text, file));
  VolumeMeta m;
  std::map<std::string, int> line_of;  // key -> its line, for the checks across keys
  uint64_t meta_size = 0;
  for (const KvLine& l : lines) {
    if (!l.section.empty()) return At(file, l.line, "sections are not allowed in .meta");
    if (!line_of.emplace(l.key, l.line).second) return At(file, l.line, fmt::format("'{}' is set twice", l.key));
    auto num = [&](uint64_t max) -> Result<uint64_t> {
      auto n = Number(l.value, max);
      if (!n.ok()) return At(file, l.line, fmt::format("{}: {}", l.key, n.status().message()));
      return n;
    };
    auto flag = [&]() -> Result<bool> {
      auto b = ParseBool(l.value);
      if (!b.ok()) return At(file, l.line, fmt::format("{}: {}", l.key, b.status().message()));
      return b;
    };
    if (l.key == "format") {
      QBD_ASSIGN_OR_RETURN(uint64_t v, num(UINT32_MAX));
      if (v != kFormat1 && v != kFormat2) {
        return At(file, l.line, fmt::format("format {} is not supported (this qbd reads formats 1 and 2)", v));
      }
      m.geometry.format = static_cast<uint32_t>(v);
    } else if (l.key == "serial") {
      QBD_ASSIGN_OR_RETURN(m.serial, num(kMaxSerial));
    } else if (l.key == "name") {
      Status s = ValidateVolumeName(l.value);
      if (!s.ok()) return At(file, l.line, s.message());
      m.name = l.value;
    } else if (l.key == "number") {
      QBD_ASSIGN_OR_RETURN(uint64_t v, num(UINT32_MAX));
      if (v == 0) return At(file, l.line, "number must be at least 1");
      if (expected_number != 0 && v != expected_number) {
        return At(file, l.line, fmt::format("number {} where {} was expected (the directory's name)", v,
                                            expected_number));
      }
      m.number = static_cast<uint32_t>(v);
    } else if (l.key == "size") {
      QBD_ASSIGN_OR_RETURN(m.geometry.size, num(kMaxVolumeSize));
      if (m.geometry.size == 0) return At(file, l.line, "size must not be 0");
    } else if (l.key == "block_size") {
      QBD_ASSIGN_OR_RETURN(uint64_t v, num(kMaxBlockSize));
      if (v < kMinBlockSize || (v & (v - 1)) != 0) {
        return At(file, l.line, fmt::format("block_size {} is not a power of two from {} to {}", v, kMinBlockSize,
                                            kMaxBlockSize));
      }
      m.geometry.block_size = static_cast<uint32_t>(v);
    } else if (l.key == "block_meta_size") {
      QBD_ASSIGN_OR_RETURN(meta_size, num(UINT32_MAX));
    } else if (l.key == "chunk_size") {
      QBD_ASSIGN_OR_RETURN(m.geometry.chunk_size, num(kMaxChunkSize));
      const uint64_t v = m.geometry.chunk_size;
      if (v == 0 || (v & (v - 1)) != 0) {
        return At(file, l.line, fmt::format("chunk_size {} is not a power of two up to {}", v, kMaxChunkSize));
      }
    } else if (l.key == "layout") {
      if (l.value != "replicate") return At(file, l.line, fmt::format("layout '{}' is not supported (replicate)", l.value));
    } else if (l.key == "replicas") {
      QBD_ASSIGN_OR_RETURN(uint64_t v, num(26));
      if (v == 0) return At(file, l.line, "replicas must be 1..26");
      m.replicas = static_cast<uint32_t>(v);
    } else if (l.key == "write_quorum") {
      if (l.value == "majority") {
        m.write_quorum = 0;
      } else {
        QBD_ASSIGN_OR_RETURN(uint64_t v, num(26));
        if (v == 0) return At(file, l.line, "write_quorum must be 'majority' or 1..26");
        m.write_quorum = static_cast<uint32_t>(v);
      }
    } else if (l.key == "read_only") {
      QBD_ASSIGN_OR_RETURN(m.read_only, flag());
    } else if (l.key == "append_only") {
      QBD_ASSIGN_OR_RETURN(m.append_only, flag());
    } else if (l.key == "created") {
      Status s = CheckCreated(l.value);
      if (!s.ok()) return At(file, l.line, s.message());
      m.created = l.value;
    } else if (l.key == "qos") {
      Status s = CheckQosText(l.value);
      if (!s.ok()) return At(file, l.line, s.message());
      m.qos = l.value;
    } else if (l.key == "lvm_thin") {
      QBD_ASSIGN_OR_RETURN(m.lvm_thin, flag());
    } else if (l.key == "lvm_pv_uuid") {
      Status s = CheckPvUuid(l.value);
      if (!s.ok()) return At(file, l.line, "lvm_pv_uuid: " + s.message());
      m.lvm_pv_uuid = l.value;
    } else {
      return At(file, l.line, fmt::format("unknown key '{}'", l.key));
    }
  }
  for (const char* key : {"format", "name", "number", "size", "replicas"}) {
    // No line: ReplicatedText names the one after the last, where a copy cut short lost it.
    if (!line_of.count(key)) return Status::InvalidArgument(fmt::format("{}: '{}' is missing", file, key));
  }
  // A value that contradicts another is named at its own line (the later key of a pair).
  auto line = [&](const char* key, const char* fallback) {
    auto it = line_of.find(key);
    return it != line_of.end() ? it->second : line_of.at(fallback);
  };
  if (line_of.count("block_meta_size") && meta_size != m.geometry.MetaBytes()) {
    return At(file, line("block_meta_size", "format"),
              fmt::format("block_meta_size must be {} in format {}", m.geometry.MetaBytes(), m.geometry.format));
  }
  if (m.geometry.chunk_size < m.geometry.block_size) {
    return At(file, std::max(line("chunk_size", "format"), line("block_size", "format")),
              fmt::format("chunk_size {} is smaller than block_size {}", m.geometry.chunk_size,
                          m.geometry.block_size));
  }
  if (m.geometry.size % m.geometry.block_size != 0) {
    return At(file, std::max(line_of.at("size"), line("block_size", "size")),
              fmt::format("volume size {} is not a multiple of the block size {}", m.geometry.size,
                          m.geometry.block_size));
  }
  Status s = m.geometry.Validate();  // every rule above; kept in step with chunk_format.cc
  if (!s.ok()) return At(file, line_of.at("size"), s.message());
  if (m.write_quorum > m.replicas) {
    return At(file, std::max(line("write_quorum", "replicas"), line_of.at("replicas")),
              fmt::format("write_quorum {} exceeds replicas {}", m.write_quorum, m.replicas));
  }
  return m;
}

uint32_t VolumesIndex::Find(std::string_view name) const {
  auto it = volumes.find(std::string(name));
  return it == volumes.end() ? 0 : it->second;
}

uint32_t VolumesIndex::NextNumber() const {
  uint32_t n = 0;
  for (const auto& [name, nr] : volumes) n = std::max(n, nr);
  return n + 1;
}

std::string EncodeVolumesIndex(const VolumesIndex& index) {
  std::string s = "# qbd volumes: name = number (layout-spec.md section 1)\n";
  s += fmt::format("format = {}\n", kFormatVersion);
  s += fmt::format("serial = {}\n", index.serial);
  for (const auto& [name, nr] : index.volumes) s += fmt::format("{} = {}\n", name, nr);
  return s;
}

Result<VolumesIndex> ParseVolumesIndex(std::string_view text, std::string_view file) {
  if (text.size() > kMaxConfigFileSize) {
    return Status::InvalidArgument(fmt::format("{}: larger than {} bytes", file, kMaxConfigFileSize));
  }
  QBD_ASSIGN_OR_RETURN(auto lines, ParseKvText(text, file));
  VolumesIndex idx;
  bool have_format = false, have_serial = false;
  std::map<uint32_t, int> numbers;  // number -> its line
  std::map<std::string, int> names;  // name -> its line
  for (const KvLine& l : lines) {
    if (!l.section.empty()) return At(file, l.line, "sections are not allowed in .volumesmeta");
    if (l.key == "format") {
      auto v = Number(l.value, UINT32_MAX);
      if (have_format) return At(file, l.line, "'format' is set twice");
      if (!v.ok() || *v != kFormatVersion) {
        return At(file, l.line, fmt::format("format '{}' is not supported (this qbd reads format {})",
                                            Clip(l.value), kFormatVersion));
      }
      have_format = true;
      continue;
    }
    if (l.key == "serial") {
      if (have_serial) return At(file, l.line, "'serial' is set twice");
      auto v = Number(l.value, kMaxSerial);
      if (!v.ok()) return At(file, l.line, "serial: " + v.status().message());
      idx.serial = *v;
      have_serial = true;
      continue;
    }
    Status s = ValidateVolumeName(l.key);
    if (!s.ok()) return At(file, l.line, s.message());
    auto v = Number(l.value, UINT32_MAX);
    if (!v.ok() || *v == 0) {
      return At(file, l.line, fmt::format("volume '{}': number '{}' is not 1..{}", l.key, Clip(l.value), UINT32_MAX));
    }
    if (names.count(l.key)) {
      return At(file, l.line, fmt::format("volume '{}' is listed twice (first on line {})", l.key, names[l.key]));
    }
    if (numbers.count(static_cast<uint32_t>(*v))) {
      return At(file, l.line, fmt::format("volume number {} is used twice (first on line {})", *v,
                                          numbers[static_cast<uint32_t>(*v)]));
    }
    numbers[static_cast<uint32_t>(*v)] = l.line;
    names[l.key] = l.line;
    idx.volumes[l.key] = static_cast<uint32_t>(*v);
  }
  if (!have_format) return Status::InvalidArgument(fmt::format("{}: 'format' is missing", file));
  return idx;
}

}  // namespace qbd
