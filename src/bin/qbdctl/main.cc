// qbdctl: volume administration (offline mode: works on the backends named in qbd.conf, through
// the same Catalog library code that the daemon and the REST API use).
// Exit status: 0 success, 1 the operation failed, 2 usage error or bad argument, 4
// (kExitBadConfig) a bad qbd.conf. Arguments, then the whole configuration on this host, are
// checked before any backend is opened: nothing changes on an error found before writing.
#include <unistd.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "qbd/admin.h"
#include "qbd/catalog.h"
#include "qbd/config.h"
#include "qbd/convert.h"
#include "qbd/inspect.h"
#include "qbd/lease.h"
#include "qbd/log.h"

namespace po = boost::program_options;

namespace {

const char kUsage[] = R"(Usage: qbdctl --config FILE COMMAND [ARGS]

Commands:
  create NAME --size SIZE [--replicas N] [--block-size B] [--chunk-size C] [--write-quorum Q]
                          create a volume (SIZE like 10G; replicas default: every part)
  list                    list volumes
  info NAME               show a volume's policy and parts
  resize NAME --size SIZE grow a volume
  delete NAME             delete a volume and its chunk files on every part
  set NAME read-only on|off
  set NAME append-only on|off
  backends                check every backend: reachable, writable, free space, volumes
  convert NAME            rewrite a volume's chunk files from format 1 to format 2 (offline:
                          qbd-master stopped; resumable, a second run does nothing)
  block NAME OFFSET [--json]
                          show every part's copy of the block at device byte OFFSET: files,
                          offsets, stored metadata, checksums, verdicts (reads only; exit 1
                          when the block has no good copy)

Sizes and offsets take binary suffixes K, M, G, T.

Exit status: 0 success; 1 the operation failed; 2 usage error or bad argument; 4 bad qbd.conf
(absent, unreadable, malformed, a value out of range, or naming a host or directory this machine
does not have; a part's directory may be missing only for create, which creates it, and
backends, which reports it). Nothing is changed on an error found before writing.
)";

struct UsageError {
  std::string msg;
};

int Usage(const std::string& msg) {
  std::cerr << "qbdctl: " << msg << "\n\n" << kUsage;
  return 2;
}

int Fail(const qbd::Status& s) {
  std::cerr << "qbdctl: " << s.message() << "\n";
  return s.IsInvalidArgument() || s.IsNotFound() ? 2 : 1;
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

// The lifecycle state: the running daemon's API knows it (in use, resizing, repairing...); without
// one, what the backends tell.
std::string OfflineStateLine(const qbd::VolumeMeta& m, qbd::Catalog& c) {
  if (auto a = qbd::AdminClient::Connect(c.config().admin_socket); a.ok()) {
    if (auto pong = (*a)->Call("ping"); pong.ok()) {
      std::string who = *pong;
      while (!who.empty() && who.back() == '\n') who.pop_back();
      return fmt::format("served ({}): GET http://{}/v1/volumes/{} has its live state", who,
                         c.config().api_listen, m.name);
    }
  }
  return c.OfflineState(m) + " (qbd-master is not running)";
}

void PrintInfo(const qbd::VolumeMeta& m, qbd::Catalog& c) {
  std::cout << fmt::format("name:          {}\n", m.name);
  std::cout << fmt::format("state:         {}\n", OfflineStateLine(m, c));
  std::cout << fmt::format("number:        {}\n", m.number);
  std::cout << fmt::format("size:          {} ({} bytes)\n", qbd::FormatSize(m.geometry.size), m.geometry.size);
  std::cout << fmt::format("replicas:      {}\n", m.replicas);
  std::cout << fmt::format("write quorum:  {}{}\n", m.EffectiveWriteQuorum(), m.write_quorum == 0 ? " (majority)" : "");
  std::cout << fmt::format("block size:    {}\n", m.geometry.block_size);
  std::cout << fmt::format("chunk size:    {}\n", qbd::FormatSize(m.geometry.chunk_size));
  std::cout << fmt::format("chunks:        {}\n", m.geometry.ChunkCount());
  std::cout << fmt::format("read-only:     {}\n", m.read_only ? "on" : "off");
  std::cout << fmt::format("append-only:   {}\n", m.append_only ? "on" : "off");
  if (!m.created.empty()) std::cout << fmt::format("created:       {}\n", m.created);
  for (uint32_t i = 0; i < m.replicas; ++i) {
    std::cout << fmt::format("part {}:        {}/{}/{}\n", static_cast<char>('a' + i), c.part_backend(i).Describe(),
                             m.number, static_cast<char>('a' + i));
  }
}

// `qbdctl backends`: one line per backend; exit 0 when every one is reachable and writable.
int CheckBackends(const qbd::Config& config) {
  std::cout << fmt::format("{:<12} {:<5} {:<9} {:<9} {:>12}  {:<40} {}\n", "BACKEND", "PART", "REACHABLE", "WRITABLE",
                           "FREE", "LOCATION", "VOLUMES");
  int bad = 0;
  std::vector<std::unique_ptr<qbd::StorageBackend>> opened;  // kept for the failure-domain check
  std::vector<const qbd::StorageBackend*> parts(config.parts.size(), nullptr);
  for (const qbd::BackendConfig& b : config.backends) {
    std::string part = "-";
    for (size_t i = 0; i < config.parts.size(); ++i) {
      if (config.parts[i] == b.name) part = std::string(1, static_cast<char>('a' + i));
    }
    auto backend = qbd::OpenBackend(b, /*create_missing=*/false);
    if (!backend.ok()) {
      ++bad;
      std::cout << fmt::format("{:<12} {:<5} {:<9} {:<9} {:>12}  {:<40} {}\n", b.name, part, "no", "-", "-",
                               b.location, backend.status().message());
      continue;
    }
    qbd::StorageBackend& be = **backend;
    if (part != "-") parts[static_cast<size_t>(part[0] - 'a')] = &be;
    const std::string probe = fmt::format(".qbdctl-probe.{}", ::getpid());
    qbd::Status w = qbd::WriteFileAtomic(be, probe, "probe\n");
    if (w.ok()) w = be.Remove(probe);
    auto free = be.FreeBytes();
    std::string volumes;
    auto text = qbd::ReadSmallFile(be, qbd::kVolumesMetaPath);
    if (text.ok()) {
      auto idx = qbd::ParseVolumesIndex(*text, be.Describe() + "/" + qbd::kVolumesMetaPath);
      if (idx.ok()) {
        for (const auto& [name, nr] : idx->volumes) volumes += fmt::format("{}{}({})", volumes.empty() ? "" : " ", name, nr);
      } else {
        volumes = idx.status().message();
      }
    } else if (!text.status().IsNotFound()) {
      volumes = text.status().message();
    }
    if (!w.ok()) ++bad;
    std::cout << fmt::format("{:<12} {:<5} {:<9} {:<9} {:>12}  {:<40} {}\n", b.name, part, "yes", w.ok() ? "yes" : "no",
                             free.ok() ? fmt::format("{:.1f} GiB", static_cast<double>(*free) / (1ull << 30)) : "?", be.Describe(),
                             w.ok() ? volumes : w.message());
    opened.push_back(std::move(*backend));
  }
  for (const std::string& line : qbd::SharedFailureDomains(parts)) {
    std::cout << fmt::format("{}: {}: losing it loses all their copies{}\n",
                             config.allow_shared_failure_domain ? "warning" : "error", line,
                             config.allow_shared_failure_domain
                                 ? " (allowed by allow_shared_failure_domain)"
                                 : "; qbd-master refuses to start unless allow_shared_failure_domain = true");
    if (!config.allow_shared_failure_domain) ++bad;
  }
  return bad == 0 ? 0 : 1;
}

// `qbdctl convert NAME`: offline, under the configuration's lock (qbd-master cannot start
// meanwhile).
int Convert(const std::string& config_path, const qbd::Config& config, qbd::Catalog& c,
            const std::string& name) {
  if (auto a = qbd::AdminClient::Connect(config.admin_socket); a.ok() && (*a)->Call("ping").ok()) {
    std::cerr << fmt::format(
        "qbdctl: convert {}: qbd-master is running (admin socket {}): stop it first\n", name,
        config.admin_socket);
    return 1;
  }
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

// `qbdctl block NAME OFFSET`: reads only.
int Block(qbd::Catalog& c, const std::string& name, uint64_t offset, bool json) {
  auto meta = c.Find(name);
  if (!meta.ok()) return Fail(meta.status());
  auto v = qbd::InspectBlock(*meta, c.BackendsFor(*meta), offset);
  if (!v.ok()) return Fail(v.status());
  std::cout << (json ? qbd::FormatBlockJson(*v) : qbd::FormatBlockText(*v));
  return v->Readable() ? 0 : 1;
}

int Run(int argc, char** argv) {
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
  const std::string cmd = vm["command"].as<std::string>();
  std::vector<std::string> rest = po::collect_unrecognized(parsed.options, po::include_positional);
  // `rest` starts with the command itself.
  if (!rest.empty() && rest.front() == cmd) rest.erase(rest.begin());

  po::options_description copts("Command options");
  copts.add_options()("size", po::value<std::string>())("replicas", po::value<uint32_t>())(
      "block-size", po::value<std::string>())("chunk-size", po::value<std::string>())(
      "write-quorum", po::value<uint32_t>())("json", po::bool_switch())(
      "pos", po::value<std::vector<std::string>>());
  po::positional_options_description cpos;
  cpos.add("pos", -1);
  po::variables_map cvm;
  po::store(po::command_line_parser(rest).options(copts).positional(cpos).run(), cvm);
  std::vector<std::string> args = cvm.count("pos") ? cvm["pos"].as<std::vector<std::string>>() : std::vector<std::string>{};

  auto need = [&](size_t n, const char* what) {
    if (args.size() != n) throw UsageError{fmt::format("{}: expected {}", cmd, what)};
  };
  // Every argument is checked before any backend is touched.
  static const std::map<std::string, std::pair<size_t, const char*>> kArity = {
      {"create", {1, "NAME"}}, {"list", {0, "no arguments"}}, {"info", {1, "NAME"}},
      {"resize", {1, "NAME"}}, {"delete", {1, "NAME"}},   {"set", {3, "NAME read-only|append-only on|off"}},
      {"backends", {0, "no arguments"}}, {"convert", {1, "NAME"}},
      {"block", {2, "NAME OFFSET"}}};
  auto arity = kArity.find(cmd);
  if (arity == kArity.end()) return Usage(fmt::format("unknown command '{}'", cmd));
  need(arity->second.first, arity->second.second);
  if ((cmd == "create" || cmd == "resize") && !cvm.count("size")) throw UsageError{cmd + ": --size is required"};
  if (cvm.count("size")) SizeArg(cvm, "size");
  if (cvm.count("block-size")) SizeArg(cvm, "block-size");
  if (cvm.count("chunk-size")) SizeArg(cvm, "chunk-size");
  if (cmd == "set") {
    if (args[1] != "read-only" && args[1] != "append-only") {
      throw UsageError{fmt::format("set: unknown flag '{}' (read-only, append-only)", args[1])};
    }
    if (!qbd::ParseBool(args[2]).ok()) throw UsageError{fmt::format("set: '{}' is not on or off", args[2])};
  }
  if (cvm["json"].as<bool>() && cmd != "block") throw UsageError{cmd + ": --json is for block"};
  uint64_t offset = 0;
  if (cmd == "block") {
    auto o = qbd::ParseSize(args[1]);
    if (!o.ok()) throw UsageError{fmt::format("block: OFFSET: {}", o.status().message())};
    offset = *o;
  }
  // The whole configuration, on this host, before any backend is opened.
  auto config = qbd::LoadConfig(vm["config"].as<std::string>());
  if (!config.ok()) return BadConfig(config.status());
  qbd::HostCheck hc;
  hc.backend_dirs = cmd != "create" && cmd != "backends";
  if (qbd::Status s = qbd::CheckConfigOnHost(*config, hc); !s.ok()) return BadConfig(s);
  qbd::SetLogLevel(qbd::LogLevel::kError);
  if (cmd == "backends") return CheckBackends(*config);
  auto catalog = qbd::Catalog::Open(*config, /*create_missing=*/cmd == "create");
  if (!catalog.ok()) return Fail(catalog.status());
  qbd::Catalog& c = **catalog;
  if (cmd == "convert") return Convert(vm["config"].as<std::string>(), *config, c, args[0]);
  if (cmd == "block") return Block(c, args[0], offset, cvm["json"].as<bool>());

  if (cmd == "create") {
    need(1, "NAME");
    if (!cvm.count("size")) throw UsageError{"create: --size is required"};
    qbd::CreateVolumeOptions o;
    o.name = args[0];
    o.size = SizeArg(cvm, "size");
    if (cvm.count("replicas")) {
      o.replicas = cvm["replicas"].as<uint32_t>();
      if (o.replicas == 0) throw UsageError{"--replicas must be at least 1"};
    }
    if (cvm.count("block-size")) o.block_size = static_cast<uint32_t>(SizeArg(cvm, "block-size"));
    if (cvm.count("chunk-size")) o.chunk_size = SizeArg(cvm, "chunk-size");
    if (cvm.count("write-quorum")) o.write_quorum = cvm["write-quorum"].as<uint32_t>();
    auto m = c.Create(o);
    if (!m.ok()) return Fail(m.status());
    std::cout << fmt::format("created volume {} (number {}, {}, {} replicas)\n", m->name, m->number,
                             qbd::FormatSize(m->geometry.size), m->replicas);
    return 0;
  }
  if (cmd == "list") {
    need(0, "no arguments");
    auto idx = c.LoadIndex();
    if (!idx.ok()) return Fail(idx.status());
    std::cout << fmt::format("{:<24} {:>6} {:>12} {:>8} {:>6} {:>8}  {}\n", "NAME", "NUMBER", "SIZE", "REPLICAS",
                             "BLOCK", "CHUNK", "FLAGS");
    for (const auto& [name, nr] : idx->volumes) {
      auto m = c.LoadMeta(nr);
      if (!m.ok()) {
        std::cout << fmt::format("{:<24} {:>6}  error: {}\n", name, nr, m.status().message());
        continue;
      }
      std::string flags;
      if (m->read_only) flags += "read-only ";
      if (m->append_only) flags += "append-only";
      std::cout << fmt::format("{:<24} {:>6} {:>12} {:>8} {:>6} {:>8}  {}\n", name, nr,
                               qbd::FormatSize(m->geometry.size), m->replicas, m->geometry.block_size,
                               qbd::FormatSize(m->geometry.chunk_size), flags);
    }
    return 0;
  }
  if (cmd == "info") {
    need(1, "NAME");
    auto m = c.Find(args[0]);
    if (!m.ok()) return Fail(m.status());
    PrintInfo(*m, c);
    return 0;
  }
  if (cmd == "resize") {
    need(1, "NAME");
    if (!cvm.count("size")) throw UsageError{"resize: --size is required"};
    qbd::Status s = c.Resize(args[0], SizeArg(cvm, "size"));
    if (!s.ok()) return Fail(s);
    std::cout << fmt::format("resized volume {}\n", args[0]);
    return 0;
  }
  if (cmd == "delete") {
    need(1, "NAME");
    qbd::Status s = c.Delete(args[0]);
    if (!s.ok()) return Fail(s);
    std::cout << fmt::format("deleted volume {}\n", args[0]);
    return 0;
  }
  if (cmd == "set") {
    need(3, "NAME read-only|append-only on|off");
    auto on = qbd::ParseBool(args[2]);
    if (!on.ok()) throw UsageError{fmt::format("set: '{}' is not on or off", args[2])};
    if (args[1] != "read-only" && args[1] != "append-only") {
      throw UsageError{fmt::format("set: unknown flag '{}' (read-only, append-only)", args[1])};
    }
    qbd::Status s = c.SetFlag(args[0], args[1], *on);
    if (!s.ok()) return Fail(s);
    std::cout << fmt::format("volume {}: {} {}\n", args[0], args[1], *on ? "on" : "off");
    return 0;
  }
  return Usage(fmt::format("unknown command '{}'", cmd));
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
