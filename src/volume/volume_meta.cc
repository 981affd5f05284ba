// Implements layout-spec.md §1 (.volumesmeta) and §2 (.meta).
#include "qbd/volume_meta.h"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <set>

#include "qbd/config.h"

namespace qbd {
namespace {

Result<uint64_t> Number(std::string_view v, uint64_t max) {
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (v.empty() || ec != std::errc() || p != v.data() + v.size() || n > max) {
    return Status::InvalidArgument(fmt::format("'{}' is not a number up to {}", v, max));
  }
  return n;
}

Status At(std::string_view file, int line, std::string_view msg) {
  return Status::InvalidArgument(fmt::format("{}:{}: {}", file, line, msg));
}

}  // namespace

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
  return s;
}

Result<VolumeMeta> ParseVolumeMeta(std::string_view text, std::string_view file) {
  QBD_ASSIGN_OR_RETURN(auto lines, ParseKvText(text, file));
  VolumeMeta m;
  std::set<std::string> seen;
  int format_line = 0;
  uint64_t meta_size = 0;
  int meta_size_line = 0;
  for (const KvLine& l : lines) {
    if (!l.section.empty()) return At(file, l.line, "sections are not allowed in .meta");
    if (!seen.insert(l.key).second) return At(file, l.line, fmt::format("'{}' is set twice", l.key));
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
      format_line = l.line;
    } else if (l.key == "serial") {
      QBD_ASSIGN_OR_RETURN(m.serial, num(UINT64_MAX));
    } else if (l.key == "name") {
      Status s = ValidateVolumeName(l.value);
      if (!s.ok()) return At(file, l.line, s.message());
      m.name = l.value;
    } else if (l.key == "number") {
      QBD_ASSIGN_OR_RETURN(uint64_t v, num(UINT32_MAX));
      if (v == 0) return At(file, l.line, "number must be at least 1");
      m.number = static_cast<uint32_t>(v);
    } else if (l.key == "size") {
      QBD_ASSIGN_OR_RETURN(m.geometry.size, num(UINT64_MAX / 2));
    } else if (l.key == "block_size") {
      QBD_ASSIGN_OR_RETURN(uint64_t v, num(kMaxBlockSize));
      m.geometry.block_size = static_cast<uint32_t>(v);
    } else if (l.key == "block_meta_size") {
      QBD_ASSIGN_OR_RETURN(uint64_t v, num(UINT32_MAX));
      meta_size = v;
      meta_size_line = l.line;
    } else if (l.key == "chunk_size") {
      QBD_ASSIGN_OR_RETURN(m.geometry.chunk_size, num(kMaxChunkSize));
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
      m.created = l.value;
    } else {
      return At(file, l.line, fmt::format("unknown key '{}'", l.key));
    }
  }
  for (const char* key : {"format", "name", "number", "size", "replicas"}) {
    if (!seen.count(key)) return Status::InvalidArgument(fmt::format("{}: '{}' is missing", file, key));
  }
  (void)format_line;
  if (meta_size_line != 0 && meta_size != m.geometry.MetaBytes()) {
    return At(file, meta_size_line, fmt::format("block_meta_size must be {} in format {}", m.geometry.MetaBytes(),
                                                m.geometry.format));
  }
  Status s = m.geometry.Validate();
  if (!s.ok()) return Status::InvalidArgument(fmt::format("{}: {}", file, s.message()));
  if (m.write_quorum > m.replicas) {
    return Status::InvalidArgument(fmt::format("{}: write_quorum {} exceeds replicas {}", file, m.write_quorum, m.replicas));
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
  QBD_ASSIGN_OR_RETURN(auto lines, ParseKvText(text, file));
  VolumesIndex idx;
  bool have_format = false;
  std::set<uint32_t> numbers;
  for (const KvLine& l : lines) {
    if (!l.section.empty()) return At(file, l.line, "sections are not allowed in .volumesmeta");
    if (l.key == "format") {
      auto v = Number(l.value, UINT32_MAX);
      if (!v.ok() || *v != kFormatVersion) {
        return At(file, l.line, fmt::format("format '{}' is not supported (this qbd reads format {})", l.value, kFormatVersion));
      }
      have_format = true;
      continue;
    }
    if (l.key == "serial") {
      auto v = Number(l.value, UINT64_MAX);
      if (!v.ok()) return At(file, l.line, "serial: " + v.status().message());
      idx.serial = *v;
      continue;
    }
    Status s = ValidateVolumeName(l.key);
    if (!s.ok()) return At(file, l.line, s.message());
    auto v = Number(l.value, UINT32_MAX);
    if (!v.ok() || *v == 0) return At(file, l.line, fmt::format("volume '{}': number '{}' is not 1..{}", l.key, l.value, UINT32_MAX));
    if (idx.volumes.count(l.key)) return At(file, l.line, fmt::format("volume '{}' is listed twice", l.key));
    if (!numbers.insert(static_cast<uint32_t>(*v)).second) {
      return At(file, l.line, fmt::format("volume number {} is used twice", *v));
    }
    idx.volumes[l.key] = static_cast<uint32_t>(*v);
  }
  if (!have_format) return Status::InvalidArgument(fmt::format("{}: 'format' is missing", file));
  return idx;
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

}  // namespace qbd
