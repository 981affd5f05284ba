// Implements include/qbd/backend_check.h.
#include "qbd/backend_check.h"

#include <fmt/format.h>
#include <unistd.h>

#include <memory>
#include <vector>

#include "qbd/backend.h"
#include "qbd/catalog.h"
#include "qbd/volume_meta.h"

namespace qbd {

using nlohmann::json;

json CheckBackends(const Config& config) {
  json list = json::array();
  bool ok = true;
  std::vector<std::unique_ptr<StorageBackend>> opened;  // kept for the failure-domain check
  std::vector<const StorageBackend*> parts(config.parts.size(), nullptr);
  for (const BackendConfig& b : config.backends) {
    json e = {{"name", b.name}, {"part", nullptr}, {"reachable", false}, {"writable", nullptr},
              {"free_bytes", nullptr}, {"location", b.location}, {"volumes", json::array()},
              {"error", nullptr}};
    int part = -1;
    for (size_t i = 0; i < config.parts.size(); ++i) {
      if (config.parts[i] == b.name) part = static_cast<int>(i);
    }
    if (part >= 0) e["part"] = std::string(1, static_cast<char>('a' + part));
    auto backend = OpenBackend(b, /*create_missing=*/false);
    if (!backend.ok()) {
      ok = false;
      e["error"] = backend.status().message();
      list.push_back(std::move(e));
      continue;
    }
    StorageBackend& be = **backend;
    if (part >= 0) parts[static_cast<size_t>(part)] = &be;
    e["reachable"] = true;
    e["location"] = be.Describe();
    const std::string probe = fmt::format(".qbd-probe.{}.{}", ::getpid(), b.name);
    Status w = WriteFileAtomic(be, probe, "probe\n");
    if (w.ok()) w = be.Remove(probe);
    e["writable"] = w.ok();
    if (!w.ok()) {
      ok = false;
      e["error"] = w.message();
    }
    if (auto free = be.FreeBytes(); free.ok()) e["free_bytes"] = *free;
    auto text = ReadSmallFile(be, kVolumesMetaPath);
    if (text.ok()) {
      auto idx = ParseVolumesIndex(*text, be.Describe() + "/" + kVolumesMetaPath);
      if (idx.ok()) {
        for (const auto& [name, nr] : idx->volumes)
          e["volumes"].push_back({{"name", name}, {"number", nr}});
      } else if (w.ok()) {
        e["error"] = idx.status().message();
      }
    } else if (!text.status().IsNotFound() && w.ok()) {
      e["error"] = text.status().message();
    }
    list.push_back(std::move(e));
    opened.push_back(std::move(*backend));
  }
  json domains = json::array();
  for (const std::string& line : SharedFailureDomains(parts)) {
    domains.push_back(
        {{"severity", config.allow_shared_failure_domain ? "warning" : "error"},
         {"message",
          fmt::format("{}: losing it loses all their copies{}", line,
                      config.allow_shared_failure_domain
                          ? " (allowed by allow_shared_failure_domain)"
                          : "; qbd-master refuses to start unless "
                            "allow_shared_failure_domain = true")}});
    if (!config.allow_shared_failure_domain) ok = false;
  }
  return json{{"ok", ok}, {"backends", std::move(list)}, {"failure_domains", std::move(domains)}};
}

std::string FormatBackendsText(const json& report) {
  auto row = [](const std::string& name, const std::string& part, const std::string& reach,
                const std::string& writable, const std::string& free, const std::string& where,
                const std::string& rest) {
    return fmt::format("{:<12} {:<5} {:<9} {:<9} {:>12}  {:<40} {}\n", name, part, reach, writable,
                       free, where, rest);
  };
  std::string out = row("BACKEND", "PART", "REACHABLE", "WRITABLE", "FREE", "LOCATION", "VOLUMES");
  for (const json& b : report.value("backends", json::array())) {
    const std::string part = b["part"].is_string() ? b["part"].get<std::string>() : "-";
    const std::string error = b["error"].is_string() ? b["error"].get<std::string>() : "";
    if (!b.value("reachable", false)) {
      out += row(b.value("name", ""), part, "no", "-", "-", b.value("location", ""), error);
      continue;
    }
    std::string volumes;
    for (const json& v : b["volumes"]) {
      volumes += fmt::format("{}{}({})", volumes.empty() ? "" : " ", v.value("name", ""),
                             v.value("number", 0u));
    }
    const bool writable = b["writable"].is_boolean() && b["writable"].get<bool>();
    out += row(b.value("name", ""), part, "yes", writable ? "yes" : "no",
               b["free_bytes"].is_number()
                   ? fmt::format("{:.1f} GiB", b["free_bytes"].get<double>() / (1ull << 30))
                   : "?",
               b.value("location", ""), error.empty() ? volumes : error);
  }
  for (const json& d : report.value("failure_domains", json::array()))
    out += fmt::format("{}: {}\n", d.value("severity", ""), d.value("message", ""));
  return out;
}

}  // namespace qbd
