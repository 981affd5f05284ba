// Implements include/qbd/views.h. The Format* functions read their JSON defensively (value() with
// defaults): it may come from a daemon of another version.
#include "qbd/views.h"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "qbd/chunk_format.h"
#include "qbd/volume_files.h"

namespace qbd {

using nlohmann::json;

namespace {

std::string Str(const json& j, const char* key, const std::string& otherwise = "") {
  return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>()
                                                                : otherwise;
}

uint64_t Num(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number_unsigned() ? j[key].get<uint64_t>()
                                                                         : 0;
}

bool Flag(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_boolean() && j[key].get<bool>();
}

const json& Field(const json& j, const char* key) {
  static const json kNull;
  return j.is_object() && j.contains(key) ? j[key] : kNull;
}

}  // namespace

int HealthSeverity(const std::string& status) {
  return status == "data_lost" ? 2 : status == "degraded" ? 1 : 0;
}

const char* HealthStatusName(int severity) {
  return severity >= 2 ? "data_lost" : severity == 1 ? "degraded" : "ok";
}

void Problems::Add(json problem) {
  severity = std::max(severity, HealthSeverity(Str(problem, "status")));
  list.push_back(std::move(problem));
}

json VolumeSummaryJson(const VolumeMeta& m, const std::string& state, bool served) {
  return json{{"name", m.name},
              {"number", m.number},
              {"size", m.geometry.size},
              {"replicas", m.replicas},
              {"block_size", m.geometry.block_size},
              {"chunk_size", m.geometry.chunk_size},
              {"read_only", m.read_only},
              {"append_only", m.append_only},
              {"state", state},
              {"served", served}};
}

json VolumeBaseJson(const VolumeMeta& m, Catalog& catalog) {
  json j;
  j["name"] = m.name;
  j["number"] = m.number;
  j["size"] = m.geometry.size;
  j["block_size"] = m.geometry.block_size;
  j["chunk_size"] = m.geometry.chunk_size;
  j["chunks"] = m.geometry.ChunkCount();
  j["created"] = m.created;
  j["policy"] = {{"layout", "replicate"},
                 {"replicas", m.replicas},
                 {"write_quorum", m.EffectiveWriteQuorum()},
                 {"write_quorum_majority", m.write_quorum == 0},
                 {"read_only", m.read_only},
                 {"append_only", m.append_only}};
  j["qos"] =
      m.qos.empty() ? json(nullptr) : json::parse(m.qos, nullptr, /*allow_exceptions=*/false);
  if (j["qos"].is_discarded()) j["qos"] = m.qos;  // a hand edit: shown as the text it is
  json parts = json::array();
  for (uint32_t i = 0; i < m.replicas; ++i) {
    parts.push_back({{"part", std::string(1, static_cast<char>('a' + i))},
                     {"backend", catalog.part_backend(i).Describe()}});
  }
  j["parts"] = std::move(parts);
  return j;
}

json OfflineVolumeJson(const VolumeMeta& m, Catalog& catalog) {
  json j = VolumeBaseJson(m, catalog);
  bool degraded = false;
  for (uint32_t i = 0; i < m.replicas; ++i) {
    const char part = static_cast<char>('a' + i);
    StorageBackend& b = catalog.part_backend(i);
    auto st = b.Stat(PartDir(m.number, part));
    json& p = j["parts"][i];
    if (st.ok() && st->is_dir) {
      p["state"] = "not served";
    } else {
      degraded = true;
      p["state"] = fmt::format("missing: {}/{} {}", b.Describe(), PartDir(m.number, part),
                               st.ok() ? "is not a directory" : st.status().message());
    }
    p["dirty_bytes"] = nullptr;
  }
  j["state"] = degraded ? "degraded" : "ready";
  j["served"] = false;
  j["connections"] = 0;
  j["lease"] = nullptr;
  j["resync"] = nullptr;
  j["repair"] = nullptr;
  return j;
}

json OfflineVolumeList(Catalog& catalog) {
  json list = json::array();
  auto idx = catalog.LoadIndex();
  if (!idx.ok()) return json{{"volumes", list}, {"error", idx.status().message()}};
  for (const auto& [name, nr] : idx->volumes) {
    auto m = catalog.LoadMeta(nr);
    if (!m.ok()) {
      list.push_back({{"name", name}, {"number", nr}, {"error", m.status().message()}});
      continue;
    }
    const std::string state = catalog.OfflineState(*m) == "ready" ? "ready" : "degraded";
    list.push_back(VolumeSummaryJson(*m, state, false));
  }
  return json{{"volumes", std::move(list)}};
}

json Problem(const std::string& status, const std::string& what, const std::string& part,
             const std::string& backend, const std::string& since, const std::string& action) {
  json p = {{"status", status}, {"what", what}, {"since", since}, {"action", action}};
  p["part"] = part.empty() ? json(nullptr) : json(part);
  p["backend"] = backend.empty() ? json(nullptr) : json(backend);
  return p;
}

json OfflineHealth(Catalog& catalog) {
  const std::string conf = catalog.config().file;
  json daemon = json::array();
  daemon.push_back(Problem(
      "degraded", "qbd-master is not running: no volume is served", "", "", "",
      fmt::format("systemctl start qbd-master (or qbd-master --config {})", conf)));
  int overall = 1;
  json vols = json::array();
  auto idx = catalog.LoadIndex();
  if (!idx.ok()) {
    daemon.push_back(Problem("degraded", idx.status().message(), "", "", "",
                             fmt::format("qbd-verify --config {}; then qbd-repair --config {}",
                                         conf, conf)));
  }
  for (const auto& [name, nr] : idx.ok() ? idx->volumes : std::map<std::string, uint32_t>{}) {
    Problems problems;
    auto add = [&](json p) { problems.Add(std::move(p)); };
    const std::string repair = fmt::format("qbd-repair --config {} {}", conf, name);
    auto m = catalog.LoadMeta(nr);
    if (!m.ok()) {
      add(Problem("degraded", m.status().message(), "", "", "",
                  fmt::format("qbd-verify --config {} {}; {} rewrites the bad copies", conf, name,
                              repair)));
    } else {
      uint32_t present = 0;
      for (uint32_t i = 0; i < m->replicas; ++i) {
        const char part = static_cast<char>('a' + i);
        StorageBackend& b = catalog.part_backend(i);
        auto st = b.Stat(PartDir(nr, part));
        if (st.ok() && st->is_dir) {
          ++present;
          continue;
        }
        add(Problem("degraded",
                    fmt::format("part {}'s directory {}/{} is gone: {}", part, b.Describe(),
                                PartDir(nr, part),
                                st.ok() ? "not a directory" : st.status().message()),
                    std::string(1, part), b.Describe(), "",
                    fmt::format("restore it (is the disk mounted?); if it is lost for good, {} "
                                "rebuilds it",
                                repair)));
      }
      if (present == 0) {
        add(Problem("data_lost", "no part of the volume is in reach: its data cannot be read",
                    "", "", "", "bring back the parts named above"));
      } else if (present < m->EffectiveWriteQuorum()) {
        add(Problem("degraded",
                    fmt::format("{} of {} parts in reach, write quorum {}: writes would fail",
                                present, m->replicas, m->EffectiveWriteQuorum()),
                    "", "", "", "bring back the parts named above"));
      }
    }
    overall = std::max(overall, problems.severity);
    vols.push_back({{"name", name},
                    {"status", HealthStatusName(problems.severity)},
                    {"problems", std::move(problems.list)},
                    {"served", false}});
  }
  return json{{"status", HealthStatusName(overall)},
              {"pid", nullptr},
              {"problems", std::move(daemon)},
              {"volumes", std::move(vols)}};
}

int HealthExitCode(const json& health) { return HealthSeverity(Str(health, "status", "degraded")); }

std::string FormatVolumeList(const json& list) {
  std::string out = fmt::format("{:<24} {:>6} {:>12} {:>8} {:>6} {:>8} {:<10} {}\n", "NAME",
                                "NUMBER", "SIZE", "REPLICAS", "BLOCK", "CHUNK", "STATE", "FLAGS");
  for (const json& v : Field(list, "volumes").is_array() ? Field(list, "volumes") : json::array()) {
    if (v.contains("error")) {
      out += fmt::format("{:<24} {:>6}  error: {}\n", Str(v, "name"), Num(v, "number"),
                         Str(v, "error"));
      continue;
    }
    std::string flags;
    if (Flag(v, "read_only")) flags += "read-only ";
    if (Flag(v, "append_only")) flags += "append-only";
    while (!flags.empty() && flags.back() == ' ') flags.pop_back();
    out += fmt::format("{:<24} {:>6} {:>12} {:>8} {:>6} {:>8} {:<10} {}\n", Str(v, "name"),
                       Num(v, "number"), FormatSize(Num(v, "size")), Num(v, "replicas"),
                       Num(v, "block_size"), FormatSize(Num(v, "chunk_size")), Str(v, "state"),
                       flags);
  }
  if (list.contains("error")) out += fmt::format("error: {}\n", Str(list, "error"));
  return out;
}

std::string FormatVolumeInfo(const json& v) {
  const json& pol = Field(v, "policy");
  std::string out;
  auto line = [&](const char* label, const std::string& value) {
    out += fmt::format("{:<15}{}\n", std::string(label) + ":", value);
  };
  line("name", Str(v, "name"));
  line("state", Str(v, "state"));
  line("number", std::to_string(Num(v, "number")));
  line("size", fmt::format("{} ({} bytes)", FormatSize(Num(v, "size")), Num(v, "size")));
  line("replicas", std::to_string(Num(pol, "replicas")));
  line("write quorum", fmt::format("{}{}", Num(pol, "write_quorum"),
                                   Flag(pol, "write_quorum_majority") ? " (majority)" : ""));
  line("block size", std::to_string(Num(v, "block_size")));
  line("chunk size", FormatSize(Num(v, "chunk_size")));
  line("chunks", std::to_string(Num(v, "chunks")));
  line("read-only", Flag(pol, "read_only") ? "on" : "off");
  line("append-only", Flag(pol, "append_only") ? "on" : "off");
  const json& qos = Field(v, "qos");
  line("qos", qos.is_null() ? "none" : qos.is_string() ? qos.get<std::string>() : qos.dump());
  if (!Str(v, "created").empty()) line("created", Str(v, "created"));
  line("served", Flag(v, "served") ? fmt::format("yes, {} connection(s)", Num(v, "connections"))
                                   : "no");
  const json& lease = Field(v, "lease");
  if (lease.is_object()) {
    line("lease", fmt::format("{}{}", Str(lease, "holder"), Flag(lease, "ours") ? "" : " (not us)"));
  }
  for (const json& p : Field(v, "parts").is_array() ? Field(v, "parts") : json::array()) {
    std::string state = Str(p, "state");
    if (Field(p, "dirty_bytes").is_number()) {
      state += fmt::format(", {} dirty bytes", Num(p, "dirty_bytes"));
    }
    out += fmt::format("{:<15}{}/{}/{}{}\n", fmt::format("part {}:", Str(p, "part")),
                       Str(p, "backend"), Num(v, "number"), Str(p, "part"),
                       state.empty() ? "" : "  " + state);
  }
  const json& resync = Field(v, "resync");
  if (resync.is_object()) {
    line("resync", fmt::format("{} bytes to copy, {} copied, {} chunk(s) to compare",
                               Num(resync, "dirty_bytes"), Num(resync, "resynced_bytes"),
                               Num(resync, "chunks_to_compare")));
  }
  const json& repair = Field(v, "repair");
  if (repair.is_object()) {
    line("repair",
         fmt::format("{} since {}: {} of {} chunk(s), {} repair(s), {} lost block(s), {} failed "
                     "chunk(s){}",
                     Flag(repair, "running") ? "running" : "ended", Str(repair, "started"),
                     Num(repair, "chunks_done"), Num(repair, "chunks_total"),
                     Num(repair, "repaired"), Num(repair, "lost_blocks"),
                     Num(repair, "failed_chunks"),
                     Str(repair, "error").empty() ? "" : "; " + Str(repair, "error")));
  }
  return out;
}

std::string FormatHealth(const json& h) {
  std::string out;
  size_t count = 0;
  auto problem_line = [&](const std::string& scope, const json& p) {
    ++count;
    std::string where;
    if (!Str(p, "part").empty()) {
      where = fmt::format(" [part {}{}]", Str(p, "part"),
                          Str(p, "backend").empty() ? "" : ", " + Str(p, "backend"));
    } else if (!Str(p, "backend").empty()) {
      where = fmt::format(" [{}]", Str(p, "backend"));
    }
    std::string status = Str(p, "status", "degraded");
    std::transform(status.begin(), status.end(), status.begin(), ::toupper);
    out += fmt::format("{} {}: {}{}{}; do: {}\n", status, scope, Str(p, "what"), where,
                       Str(p, "since").empty() ? "" : " (since " + Str(p, "since") + ")",
                       Str(p, "action"));
  };
  for (const json& p : Field(h, "problems").is_array() ? Field(h, "problems") : json::array())
    problem_line("qbd-master", p);
  size_t volumes = 0;
  for (const json& v : Field(h, "volumes").is_array() ? Field(h, "volumes") : json::array()) {
    ++volumes;
    for (const json& p : Field(v, "problems").is_array() ? Field(v, "problems") : json::array())
      problem_line("volume " + Str(v, "name"), p);
  }
  const std::string daemon = Field(h, "pid").is_number()
                                 ? fmt::format("qbd-master pid {}", Field(h, "pid").get<int64_t>())
                                 : std::string("qbd-master not running");
  if (count == 0) {
    out += fmt::format("OK: {} volume(s), no problem ({})\n", volumes, daemon);
  } else {
    out += fmt::format("{}: {} problem(s) in {} volume(s) ({})\n",
                       Str(h, "status", "degraded") == "data_lost" ? "DATA_LOST" : "DEGRADED",
                       count, volumes, daemon);
  }
  return out;
}

std::string FormatAttachments(const json& doc) {
  std::string out = fmt::format("{:<24} {:<12} {:>11}  {:<11} {}\n", "VOLUME", "DEVICE",
                                "CONNECTIONS", "STATE", "LINK");
  if (!doc.contains("attachments") || !doc["attachments"].is_array()) return out;
  for (const json& a : doc["attachments"]) {
    const int live = a.value("live", 0), want = a.value("connections", 0);
    std::string state = !a.value("connected", false) ? "gone"
                        : live < want                ? "reconnecting"
                        : a.contains("forwarded_to") ? "forwarded"
                                                     : "connected";
    out += fmt::format("{:<24} {:<12} {:>11}  {:<11} {}{}\n", a.value("volume", ""),
                       a.value("device", ""), fmt::format("{}/{}", live, want), state,
                       a.value("link", ""),
                       a.contains("forwarded_to") ? " (to " + a.value("forwarded_to", "") + ")" : "");
  }
  return out;
}

}  // namespace qbd
