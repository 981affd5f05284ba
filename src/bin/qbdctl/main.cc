// qbdctl: volume administration. With qbd-master running on the configuration, every command
// goes through its REST API (qbd/api_client.h); with it stopped, qbdctl works on the backends named
// in qbd.conf through the same library code the daemon uses. Both paths build the same JSON
// documents (qbd/views.h) and print them the same way: the output has one form either way, and
// `--json` prints the documents.
// Exit status: 0 success, 1 the operation failed, 2 usage error, bad argument or unknown volume, 4
// (kExitBadConfig) a bad qbd.conf; `status` exits 0 ok, 1 degraded, 2 data lost. Arguments, then
// the whole configuration on this host, are checked before any backend is opened or any request
// sent: nothing changes on an error found before writing.
#include <unistd.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "qbd/api.h"
#include "qbd/api_client.h"
#include "qbd/backend_check.h"
#include "qbd/catalog.h"
#include "qbd/config.h"
#include "qbd/convert.h"
#include "qbd/inspect.h"
#include "qbd/lease.h"
#include "qbd/log.h"
#include "qbd/process_lock.h"
#include "qbd/qos.h"
#include "qbd/views.h"

namespace po = boost::program_options;
using nlohmann::json;

namespace {

const char kUsage[] = R"(Usage: qbdctl --config FILE [--json] COMMAND [ARGS]

Commands:
  list                    list volumes
  info NAME               a volume's policy, state, parts, resync and repair progress
  status                  one line per problem of the daemon and every volume (what, where,
                          since when, what to do); OK when there is none
  create NAME --size SIZE [--replicas N] [--block-size B] [--chunk-size C] [--write-quorum Q]
                          [--read-only]
                          create a volume (SIZE like 10G; replicas default: every part); a
                          running qbd-master serves it at once
  resize NAME --size SIZE grow a volume
  delete NAME [--force]   delete a volume and its chunk files on every part (--force: even
                          while clients are connected; qbd-master disconnects them)
  set NAME read-only on|off
  set NAME append-only on|off
  set NAME qos JSON|none  QoS limits and reservations, like '{"max_iops": 500, "max_bps": "100M"}'
                          (README.md, QoS); none removes them. A running qbd-master applies them
                          at once
  repair NAME             start an online repair of every chunk (qbd-master must run; its
                          progress shows in info)
  backends                check every backend: reachable, writable, free space, volumes
  convert NAME            rewrite a volume's chunk files from format 1 to format 2 (offline:
                          qbd-master stopped; resumable, a second run does nothing)
  block NAME OFFSET       show every part's copy of the block at device byte OFFSET: files,
                          offsets, stored metadata, checksums, verdicts (reads only; exit 1
                          when the block has no good copy)
  attach NAME [--connections N] [--lvm-thin] [--migration]
                          attach the volume as a kernel NBD device (/dev/nbdX, with the link
                          /dev/qbd/NAME) over N connections (default 1); qbd-master keeps it
                          connected across its restarts (qbd-master must run). --lvm-thin (kept
                          in the volume's .meta for every later attach): an LVM thin pool on it,
                          VG qbd_vg_NAME tagged quorumbd-volume=NAME and quorumbd-managed=true,
                          made on the first attach, activated at each attach and start,
                          deactivated at detach, grown with the volume; refused on a device
                          holding anything else. --migration (a VM moving here while it
                          still runs where another qbd-master serves the volume): the device
                          works at once, its requests forwarded to that master until it lets
                          go (the volume detached there), then served here
  detach NAME             disconnect the volume's device (its LVM volume group deactivated
                          first)
  attachments             the attached volumes, their devices and connections

With qbd-master running on this configuration, every command goes through its REST API
(api_listen, with api_token_file's token); with it stopped, qbdctl works on the backends itself.
The output is the same either way. --json prints the JSON documents of the REST API instead.

Sizes and offsets take binary suffixes K, M, G, T.

Exit status: 0 success; 1 the operation failed; 2 usage error, bad argument or unknown volume;
4 bad qbd.conf (absent, unreadable, malformed, a value out of range, or naming a host or
directory this machine does not have; a part's directory may be missing only for create, which
creates it, and backends and status, which report it). `status` exits 0 when all is well, 1 when
something is degraded, 2 when data is lost (as qbd-verify). Nothing is changed on an error found
before writing.
)";

struct UsageError {
  std::string msg;
};

int Usage(const std::string& msg) {
  std::cerr << "qbdctl: " << msg << "\n\n" << kUsage;
  return 2;
}

bool g_json = false;

// A failed command: the message on stderr (and as {"error"} with --json). A bad argument or an
// unknown volume exits 2, the rest 1.
int Fail(const qbd::Status& s) {
  std::cerr << "qbdctl: " << s.message() << "\n";
  if (g_json) std::cout << json{{"error", s.message()}}.dump(2) << "\n";
  return (s.IsInvalidArgument() && s.Errno() == EINVAL) || s.IsNotFound() ? 2 : 1;
}

int BadConfig(const qbd::Status& s) {
  std::cerr << "qbdctl: " << s.message() << "\n";
  return qbd::kExitBadConfig;
}

uint64_t SizeArg(const po::variables_map& vm, const char* name) {
  auto v = qbd::ParseSize(vm[name].as<std::string>());
  if (!v.ok()) throw UsageError{fmt::format("--{}: {}", name, v.status().message())};
  return *v;
}

// Prints the document (--json) or its text.
int Emit(const json& doc, const std::string& text, int code = 0) {
  if (g_json) {
    std::cout << doc.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
  } else {
    std::cout << text;
  }
  return code;
}

std::string CreatedText(const json& v) {
  return fmt::format("created volume {} (number {}, {}, {} replicas)\n", v.value("name", ""),
                     v.value("number", 0u), qbd::FormatSize(v.value("size", uint64_t{0})),
                     v.contains("policy") ? v["policy"].value("replicas", 0u) : 0u);
}

// `qbdctl convert NAME`: offline, under the configuration's lock (qbd-master cannot start
// meanwhile).
int Convert(const std::string& config_path, const qbd::Config& config, qbd::Catalog& c,
            const std::string& name) {
  auto lock = qbd::ProcessLock::Acquire(config.admin_socket + ".lock", "qbdctl convert");
  if (!lock.ok()) {
    std::cerr << fmt::format("qbdctl: convert {}: {}; is qbd-master starting or stopping?\n", name,
                             lock.status().message());
    return 1;
  }
  auto meta = c.Find(name);
  if (!meta.ok()) return Fail(meta.status());
  std::vector<qbd::StorageBackend*> parts = c.BackendsFor(*meta);
  qbd::Status free = qbd::CheckNotServed(
      *meta, parts, qbd::LeaseIdentity::ForThisProcess(config_path, config.admin_socket));
  if (!free.ok()) {
    std::cerr << fmt::format("qbdctl: convert: {}\n", free.message());
    return 1;
  }
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  qbd::ConvertOptions o;
  const bool tty = ::isatty(STDERR_FILENO);
  if (tty) {
    o.progress = [&](const qbd::ConvertProgress& p) {
      const double s = seconds();
      std::fprintf(stderr, "\r\033[Kconvert %s: %llu / %llu chunks, %.1f MB/s", name.c_str(),
                   static_cast<unsigned long long>(p.chunks_done),
                   static_cast<unsigned long long>(p.chunks_total),
                   s > 0 ? p.bytes_read / 1e6 / s : 0.0);
    };
  }
  auto r = qbd::ConvertVolume(*meta, parts, o);
  if (tty) std::fprintf(stderr, "\r\033[K");
  if (!r.ok()) {
    std::cerr << fmt::format("qbdctl: convert {}: {}\n", name, r.status().message());
    std::cerr << fmt::format(
        "qbdctl: convert {}: stopped; the chunk files converted so far stay converted, and a rerun "
        "resumes once the cause is fixed\n",
        name);
    return 1;
  }
  for (const std::string& n : r->notes) std::cout << fmt::format("note: {}\n", n);
  const double s = seconds();
  if (r->already_converted) {
    std::cout << fmt::format(
        "volume {}: already in format 2, nothing to convert{}\n", name,
        r->meta_copies_written
            ? fmt::format(" ({} older .meta cop{} rewritten)", r->meta_copies_written,
                          r->meta_copies_written == 1 ? "y" : "ies")
            : "");
    return 0;
  }
  std::cout << fmt::format(
      "volume {}: converted to format 2: {} chunk(s), {} chunk file(s) rewritten{}{}, "
      "{:.1f} MiB read, {:.1f} MiB written in {:.1f} s ({:.0f} MB/s); .meta says format 2 on {} "
      "part(s)\n",
      name, r->chunks, r->files_converted,
      r->files_kept ? fmt::format(", {} already converted", r->files_kept) : "",
      r->blocks_from_other
          ? fmt::format(", {} block(s) taken from another part", r->blocks_from_other)
          : "",
      r->bytes_read / 1048576.0, r->bytes_written / 1048576.0, s,
      s > 0 ? r->bytes_read / 1e6 / s : 0.0, r->meta_copies_written);
  return 0;
}

// attach, detach, attachments: the daemon owns the devices' sockets, so they need it running.
int AttachCommand(qbd::ApiClient* api, const std::string& cmd, const std::string& vol,
                  int connections, bool lvm_thin, bool migration) {
  if (api == nullptr) {
    return Fail(qbd::Status::Unavailable(
        fmt::format("{}: qbd-master is not running (it holds the devices' connections)", cmd)));
  }
  if (cmd == "attachments") {
    auto j = api->Do("GET", "/v1/attachments");
    if (!j.ok()) return Fail(j.status());
    return Emit(*j, qbd::FormatAttachments(*j));
  }
  if (cmd == "detach") {
    auto j = api->Do("POST", "/v1/volumes/" + vol + "/detach");
    if (!j.ok()) return Fail(j.status());
    return Emit(*j, fmt::format("detached volume {}\n", vol));
  }
  json body = {{"connections", connections}};
  if (lvm_thin) body["lvm_thin"] = true;
  if (migration) body["migration"] = true;
  auto j = api->Do("POST", "/v1/volumes/" + vol + "/attach", body);
  if (!j.ok()) return Fail(j.status());
  std::string text = j->value("device", "") + "\n";
  if (j->contains("forwarded_to")) {
    text += fmt::format("forwarded to {} until it lets go of the volume\n", j->value("forwarded_to", ""));
  }
  if (j->contains("lvm") && (*j)["lvm"].is_object()) {
    // What Proxmox's storage.cfg needs (README.md, Proxmox VE).
    text += fmt::format("lvm thin pool: vgname {} thinpool {}\n", (*j)["lvm"].value("vg", ""),
                        (*j)["lvm"].value("thinpool", ""));
  }
  return Emit(*j, text);
}

// `qbdctl block NAME OFFSET`: reads only. The document is FormatBlockJson's; the daemon adds its
// text (and "readable"), which are not part of it.
int Block(qbd::ApiClient* api, qbd::Catalog* c, const std::string& name, uint64_t offset) {
  json doc;
  std::string text;
  bool readable = false;
  if (api != nullptr) {
    auto j = api->Do("GET", fmt::format("/v1/volumes/{}/blocks/{}", name, offset));
    if (!j.ok()) return Fail(j.status());
    doc = std::move(*j);
    text = doc.value("text", "");
    readable = doc.value("readable", false);
    doc.erase("text");
    doc.erase("readable");
  } else {
    auto meta = c->Find(name);
    if (!meta.ok()) return Fail(meta.status());
    auto v = qbd::InspectBlock(*meta, c->BackendsFor(*meta), offset);
    if (!v.ok()) return Fail(v.status());
    doc = json::parse(qbd::FormatBlockJson(*v), nullptr, false);
    text = qbd::FormatBlockText(*v);
    readable = v->Readable();
  }
  return Emit(doc, text, readable ? 0 : 1);
}

int Run(int argc, char** argv) {
  // --json is taken wherever it stands.
  std::vector<char*> av;
  for (int i = 0; i < argc; ++i) {
    if (i > 0 && std::string(argv[i]) == "--json") {
      g_json = true;
    } else {
      av.push_back(argv[i]);
    }
  }
  argc = static_cast<int>(av.size());
  argv = av.data();
  po::options_description global("Options");
  global.add_options()("help,h", "help")("config,c", po::value<std::string>(), "qbd.conf")(
      "command", po::value<std::string>(), "")("args", po::value<std::vector<std::string>>(), "");
  po::positional_options_description pos;
  pos.add("command", 1).add("args", -1);
  po::parsed_options parsed =
      po::command_line_parser(argc, argv).options(global).positional(pos).allow_unregistered().run();
  po::variables_map vm;
  po::store(parsed, vm);
  if (vm.count("help") || !vm.count("command")) {
    std::cout << kUsage;
    return vm.count("help") ? 0 : 2;
  }
  if (!vm.count("config")) return Usage("--config FILE is required");
  const std::string config_path = vm["config"].as<std::string>();
  const std::string cmd = vm["command"].as<std::string>();
  std::vector<std::string> rest = po::collect_unrecognized(parsed.options, po::include_positional);
  // `rest` holds the command itself.
  if (auto it = std::find(rest.begin(), rest.end(), cmd); it != rest.end()) rest.erase(it);

  po::options_description copts("Command options");
  copts.add_options()("size", po::value<std::string>())("replicas", po::value<uint32_t>())(
      "block-size", po::value<std::string>())("chunk-size", po::value<std::string>())(
      "write-quorum", po::value<uint32_t>())("read-only", po::bool_switch())(
      "force", po::bool_switch())("pos", po::value<std::vector<std::string>>());
  copts.add_options()("connections", po::value<int>())("lvm-thin", po::bool_switch())("migration",
                                                                                     po::bool_switch());
  po::positional_options_description cpos;
  cpos.add("pos", -1);
  po::variables_map cvm;
  po::store(po::command_line_parser(rest).options(copts).positional(cpos).run(), cvm);
  std::vector<std::string> args = cvm.count("pos") ? cvm["pos"].as<std::vector<std::string>>() : std::vector<std::string>{};

  // Every argument is checked before any backend is touched or any request sent.
  static const std::map<std::string, std::pair<size_t, const char*>> kArity = {
      {"create", {1, "NAME"}}, {"list", {0, "no arguments"}}, {"info", {1, "NAME"}},
      {"resize", {1, "NAME"}}, {"delete", {1, "NAME"}},   {"set", {3, "NAME read-only|append-only on|off, or NAME qos JSON|none"}},
      {"backends", {0, "no arguments"}}, {"convert", {1, "NAME"}},
      {"block", {2, "NAME OFFSET"}}, {"status", {0, "no arguments"}}, {"repair", {1, "NAME"}},
      {"attach", {1, "NAME"}}, {"detach", {1, "NAME"}}, {"attachments", {0, "no arguments"}}};
  auto arity = kArity.find(cmd);
  if (arity == kArity.end()) return Usage(fmt::format("unknown command '{}'", cmd));
  if (args.size() != arity->second.first) throw UsageError{fmt::format("{}: expected {}", cmd, arity->second.second)};
  if ((cmd == "create" || cmd == "resize") && !cvm.count("size")) throw UsageError{cmd + ": --size is required"};
  if (cmd != "create" && cmd != "resize" && cvm.count("size")) throw UsageError{cmd + ": --size is for create and resize"};
  for (const char* o : {"replicas", "block-size", "chunk-size", "write-quorum"}) {
    if (cmd != "create" && cvm.count(o)) throw UsageError{fmt::format("{}: --{} is for create", cmd, o)};
  }
  if (cmd != "create" && cvm["read-only"].as<bool>()) throw UsageError{cmd + ": --read-only is for create"};
  if (cmd != "delete" && cvm["force"].as<bool>()) throw UsageError{cmd + ": --force is for delete"};
  if (cmd != "attach" && cvm.count("connections")) throw UsageError{cmd + ": --connections is for attach"};
  if (cmd != "attach" && cvm["lvm-thin"].as<bool>()) throw UsageError{cmd + ": --lvm-thin is for attach"};
  if (cmd != "attach" && cvm["migration"].as<bool>()) throw UsageError{cmd + ": --migration is for attach"};
  if (cvm.count("connections") && (cvm["connections"].as<int>() < 1 || cvm["connections"].as<int>() > 16)) {
    throw UsageError{"--connections must be 1..16"};
  }
  if (cvm.count("size")) SizeArg(cvm, "size");
  if (cvm.count("block-size")) SizeArg(cvm, "block-size");
  if (cvm.count("chunk-size")) SizeArg(cvm, "chunk-size");
  if (cvm.count("replicas") && cvm["replicas"].as<uint32_t>() == 0) throw UsageError{"--replicas must be at least 1"};
  if (args.size() >= 1 && cmd != "list") {
    if (qbd::Status n = qbd::ValidateVolumeName(args[0]); !n.ok()) throw UsageError{n.message()};
  }
  std::optional<bool> on;
  json qos;  // set NAME qos: the object, or null for none
  std::string qos_text;
  if (cmd == "set" && args[1] == "qos") {
    if (args[2] != "none") {
      qos = json::parse(args[2], nullptr, /*allow_exceptions=*/false);
      if (qos.is_discarded()) throw UsageError{fmt::format("set qos: '{}' is not JSON", args[2])};
    }
    auto t = qbd::QosMetaText(qos);
    if (!t.ok()) throw UsageError{"set: " + t.status().message()};
    qos_text = *t;
  } else if (cmd == "set") {
    if (args[1] != "read-only" && args[1] != "append-only") {
      throw UsageError{fmt::format("set: unknown setting '{}' (read-only, append-only, qos)", args[1])};
    }
    auto b = qbd::ParseBool(args[2]);
    if (!b.ok()) throw UsageError{fmt::format("set: '{}' is not on or off", args[2])};
    on = *b;
  }
  uint64_t offset = 0;
  if (cmd == "block") {
    auto o = qbd::ParseSize(args[1]);
    if (!o.ok()) throw UsageError{fmt::format("block: OFFSET: {}", o.status().message())};
    offset = *o;
  }
  // The whole configuration, on this host, before any backend is opened.
  auto config = qbd::LoadConfig(config_path);
  if (!config.ok()) return BadConfig(config.status());
  qbd::HostCheck hc;
  hc.backend_dirs = cmd != "create" && cmd != "backends" && cmd != "status";
  if (qbd::Status s = qbd::CheckConfigOnHost(*config, hc); !s.ok()) return BadConfig(s);
  qbd::SetLogLevel(qbd::LogLevel::kError);

  // The running daemon, if any, does the work.
  auto found = qbd::ApiClient::Find(*config);
  if (!found.ok()) return Fail(found.status());
  std::unique_ptr<qbd::ApiClient> api = std::move(found).value();
  const std::string vol = args.empty() ? std::string() : args[0];
  const std::string path = "/v1/volumes/" + vol;

  if (cmd == "backends") {
    json doc;
    if (api) {
      auto j = api->Do("GET", "/v1/backends");
      if (!j.ok()) return Fail(j.status());
      doc = std::move(*j);
    } else {
      doc = qbd::CheckBackends(*config);
    }
    return Emit(doc, qbd::FormatBackendsText(doc), doc.value("ok", false) ? 0 : 1);
  }
  if (cmd == "attach" || cmd == "detach" || cmd == "attachments") {
    return AttachCommand(api.get(), cmd, vol, cvm.count("connections") ? cvm["connections"].as<int>() : 1,
                         cvm["lvm-thin"].as<bool>(), cvm["migration"].as<bool>());
  }
  if (api) {
    if (cmd == "convert") {
      std::cerr << fmt::format("qbdctl: convert {}: qbd-master is running ({}): stop it first\n",
                               vol, api->base());
      return 1;
    }
    if (cmd == "block") return Block(api.get(), nullptr, vol, offset);
    qbd::Result<json> j = qbd::Status::OK();
    if (cmd == "list") {
      j = api->Do("GET", "/v1/volumes");
      if (j.ok()) return Emit(*j, qbd::FormatVolumeList(*j));
    } else if (cmd == "info") {
      j = api->Do("GET", path);
      if (j.ok()) return Emit(*j, qbd::FormatVolumeInfo(*j));
    } else if (cmd == "status") {
      j = api->Do("GET", "/v1/health");
      if (j.ok()) return Emit(*j, qbd::FormatHealth(*j), qbd::HealthExitCode(*j));
    } else if (cmd == "create") {
      json body = {{"name", vol}, {"size", SizeArg(cvm, "size")}};
      if (cvm.count("replicas")) body["replicas"] = cvm["replicas"].as<uint32_t>();
      if (cvm.count("block-size")) body["block_size"] = SizeArg(cvm, "block-size");
      if (cvm.count("chunk-size")) body["chunk_size"] = SizeArg(cvm, "chunk-size");
      if (cvm.count("write-quorum")) body["write_quorum"] = cvm["write-quorum"].as<uint32_t>();
      if (cvm["read-only"].as<bool>()) body["read_only"] = true;
      j = api->Do("POST", "/v1/volumes", body);
      if (j.ok()) return Emit(*j, CreatedText(*j));
    } else if (cmd == "resize") {
      j = api->Do("PATCH", path, json{{"size", SizeArg(cvm, "size")}});
      if (j.ok()) return Emit(*j, fmt::format("resized volume {}\n", vol));
    } else if (cmd == "delete") {
      j = api->Do("DELETE", path + (cvm["force"].as<bool>() ? "?force=1" : ""));
      if (j.ok()) return Emit(*j, fmt::format("deleted volume {}\n", vol));
    } else if (cmd == "set" && args[1] == "qos") {
      j = api->Do("PATCH", path, json{{"qos", qos}});
      if (j.ok()) return Emit(*j, fmt::format("volume {}: qos {}\n", vol, qos_text.empty() ? "none" : qos_text));
    } else if (cmd == "set") {
      j = api->Do("PATCH", path, json{{args[1] == "read-only" ? "read_only" : "append_only", *on}});
      if (j.ok()) return Emit(*j, fmt::format("volume {}: {} {}\n", vol, args[1], *on ? "on" : "off"));
    } else if (cmd == "repair") {
      j = api->Do("POST", path + "/repair");
      if (j.ok()) {
        return Emit(*j, fmt::format("volume {}: online repair of {} chunk(s) started; `qbdctl info {}` "
                                    "shows its progress\n",
                                    vol, (*j)["repair"].value("chunks_total", uint64_t{0}), vol));
      }
    }
    return Fail(j.status());
  }

  // Offline.
  if (cmd == "repair") {
    return Fail(qbd::Status::Unavailable(fmt::format(
        "repair {}: qbd-master is not running; qbd-repair --config {} {} repairs it offline", vol,
        config_path, vol)));
  }
  auto catalog = qbd::Catalog::Open(*config, /*create_missing=*/cmd == "create");
  if (!catalog.ok()) return Fail(catalog.status());
  qbd::Catalog& c = **catalog;
  if (cmd == "convert") return Convert(config_path, *config, c, vol);
  if (cmd == "block") return Block(nullptr, &c, vol, offset);
  if (cmd == "list") {
    json doc = qbd::OfflineVolumeList(c);
    return Emit(doc, qbd::FormatVolumeList(doc), doc.contains("error") ? 1 : 0);
  }
  if (cmd == "status") {
    json doc = qbd::OfflineHealth(c);
    return Emit(doc, qbd::FormatHealth(doc), qbd::HealthExitCode(doc));
  }
  if (cmd == "create") {
    qbd::CreateVolumeOptions o;
    o.name = vol;
    o.size = SizeArg(cvm, "size");
    if (cvm.count("replicas")) o.replicas = cvm["replicas"].as<uint32_t>();
    if (cvm.count("block-size")) o.block_size = static_cast<uint32_t>(SizeArg(cvm, "block-size"));
    if (cvm.count("chunk-size")) o.chunk_size = SizeArg(cvm, "chunk-size");
    if (cvm.count("write-quorum")) o.write_quorum = cvm["write-quorum"].as<uint32_t>();
    o.read_only = cvm["read-only"].as<bool>();
    auto m = c.Create(o);
    if (!m.ok()) return Fail(m.status());
    json doc = qbd::OfflineVolumeJson(*m, c);
    return Emit(doc, CreatedText(doc));
  }
  qbd::Status s;
  std::string text;
  if (cmd == "resize") {
    s = c.Resize(vol, SizeArg(cvm, "size"));
    text = fmt::format("resized volume {}\n", vol);
  } else if (cmd == "delete") {
    s = c.Delete(vol);
    if (!s.ok()) return Fail(s);
    return Emit(json{{"deleted", vol}}, fmt::format("deleted volume {}\n", vol));
  } else if (cmd == "set" && args[1] == "qos") {
    s = c.SetQos(vol, qos_text);
    text = fmt::format("volume {}: qos {}\n", vol, qos_text.empty() ? "none" : qos_text);
  } else if (cmd == "set") {
    s = c.SetFlag(vol, args[1], *on);
    text = fmt::format("volume {}: {} {}\n", vol, args[1], *on ? "on" : "off");
  }
  if (!s.ok()) return Fail(s);
  auto m = c.Find(vol);
  if (!m.ok()) return Fail(m.status());
  json doc = qbd::OfflineVolumeJson(*m, c);
  return Emit(doc, cmd == "info" ? qbd::FormatVolumeInfo(doc) : text);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const UsageError& e) {
    return Usage(e.msg);
  } catch (const po::error& e) {
    return Usage(e.what());
  } catch (const std::exception& e) {
    std::cerr << "qbdctl: " << e.what() << "\n";
    return 1;
  }
}
