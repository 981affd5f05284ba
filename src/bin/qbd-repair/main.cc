// qbd-repair: the manual rebuild. Rewrites missing, corrupt and stale chunk files and blocks from
// healthy copies, chunk by chunk. With qbd-master running, each chunk is repaired by the daemon
// (through its REST API, under its region locks); without it, here, under the configuration's
// lock so that the daemon cannot start meanwhile. A killed run resumes where it stopped.
#include <fmt/format.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "qbd/api.h"
#include "qbd/api_client.h"
#include "qbd/process_lock.h"
#include "qbd/catalog.h"
#include "qbd/config.h"
#include "qbd/lease.h"
#include "qbd/log.h"
#include "qbd/repair.h"
#include "qbd/scrub.h"
#include "qbd/volume.h"

namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;

namespace {

const char kHelp[] =
    R"(Usage: qbd-repair --config FILE [--dry-run] [--volume NAME]... [--part P]... [--rate MB/s] [VOLUME...]
       qbd-repair --config FILE --accept-loss VOLUME...

Rebuilds missing, short, corrupt and stale copies of chunk files and blocks from the newest good
copy, and the metadata copies a part must hold. A block without a good copy anywhere is reported
as data lost and its copies are left as they are: its reads keep failing and qbd-verify keeps
reporting it, until the admin accepts the loss (--accept-loss). Works on local and NFS parts; a
whole part can be rebuilt from an empty directory (a replaced disk or server).

With qbd-master running on the same configuration, every chunk is repaired by the daemon through
its REST API (api_listen in qbd.conf; POST /v1/volumes/NAME/chunks/N/repair), under the
locks of its request path, so no
acknowledged write is lost or overwritten. Without it, qbd-repair works on the files itself and
holds the configuration's lock (<admin_socket>.lock): qbd-master does not start meanwhile. It
refuses a volume whose parts hold another master's lease (<volnr>/.owner, layout-spec.md 8: a
master of another configuration or host serves it, or stopped without closing it).

Options:
  -c, --config FILE   qbd.conf (the daemon's)
  --dry-run           print the plan (chunk: target part <- source parts, reason); change nothing
  --volume NAME       only this volume (repeatable; same as naming it as an argument)
  --part P            only rewrite copies on part P (a, b, ...; repeatable); other parts are
                      still read as sources
  --rate MB/s         read at most this fast (beside production I/O); 0: no limit
  --restart           ignore the progress of an interrupted run and start over
  --quiet             no line per repaired chunk, only problems and the summary
  --accept-loss       also make every block without a good copy on any part unwritten (it reads
                      as zeros from then on), each one listed; the volumes must be named. A block
                      whose good copy may be on a part that is down is never touched.
  -h, --help          this help

A killed run resumes at the chunk where it stopped (progress in <admin_socket>.repair-<volnr>);
a run with nothing left to do says so and changes nothing.

Exit status: 0 everything repaired (or nothing to do); 1 some copies could not be repaired or
checked (a part out of reach, a write failed); 2 data lost (blocks without a good copy remain); 3
usage error; 4 access error: a bad qbd.conf (absent, unreadable, malformed, a value out of range,
or naming a host or directory this machine does not have; found before any backend is opened),
the lock, a volume's metadata.
)";

int Usage(const std::string& msg) {
  std::cerr << "qbd-repair: " << msg << "\n\n" << kHelp;
  return 3;
}

int Access(const std::string& msg) {
  std::cerr << "qbd-repair: " << msg << "\n";
  return 4;
}

int BadConfig(const std::string& msg) {
  std::cerr << "qbd-repair: " << msg << "\n";
  return qbd::kExitBadConfig;
}

struct Totals {
  uint64_t files = 0, blocks = 0, bytes_written = 0, bytes_read = 0, chunks = 0;
  uint64_t lost_chunks = 0, failed = 0, unknown = 0, accepted = 0;
  std::set<std::string> down;  // parts out of reach: not checked
  std::set<std::string> said;  // notes printed once per volume
};

std::string Blocks(const std::vector<uint64_t>& b) {
  return fmt::format("{} block{}: {}", b.size(), b.size() == 1 ? "" : "s", qbd::FormatRanges(b));
}

// Prints one chunk's outcome; adds it to `t`.
void Report(const std::string& vol, const qbd::ChunkRepairReport& r, uint64_t blocks_in_chunk,
            bool dry, bool quiet, Totals& t) {
  t.bytes_read += r.bytes_read;
  t.bytes_written += r.bytes_written;
  for (const qbd::RepairAction& a : r.actions) {
    const std::string from = a.sources.empty() ? "-" : a.sources;
    std::string what =
        a.whole_file
            ? fmt::format("{} the chunk file ({})", dry ? "rebuild" : "rebuilt", a.reason)
            : fmt::format("{} {} ({})", dry ? "rewrite" : "rewrote", Blocks(a.blocks), a.reason);
    if (!a.error.empty()) {
      ++t.failed;
      std::cout << fmt::format("failed: volume {} chunk {}: part {} <- {}: {}: {}\n", vol, r.chunk,
                               a.target, from, what, a.error);
      continue;
    }
    a.whole_file ? ++t.files : t.blocks += a.blocks.size();
    if (!quiet || dry) {
      std::cout << fmt::format("{}: volume {} chunk {}: part {} <- {}: {}\n",
                               dry ? "plan" : "repaired", vol, r.chunk, a.target, from, what);
    }
  }
  if (!r.lost.empty()) {
    ++t.lost_chunks;
    std::cout << fmt::format(
        "data lost: volume {} chunk {}: {} without a good copy on any part; {}\n", vol, r.chunk,
        r.lost.size() == blocks_in_chunk ? "the whole chunk is" : Blocks(r.lost) + " are",
        "their copies are left as they are");
  }
  if (!r.accepted.empty()) {
    t.accepted += r.accepted.size();
    std::cout << fmt::format(
        "loss accepted: volume {} chunk {}: {} had no good copy on any part and now read as zeros\n",
        vol, r.chunk, Blocks(r.accepted));
  }
  if (!r.unknown.empty()) {
    ++t.unknown;
    std::cout << fmt::format(
        "not repaired: volume {} chunk {}: {} without a good copy in reach (a part is down)\n", vol,
        r.chunk, Blocks(r.unknown));
  }
  for (const std::string& n : r.notes) {
    // A note that holds for every chunk (a part down) is said once.
    if (n.find("is down") != std::string::npos) {
      t.down.insert(n);
      if (t.said.insert(n).second) std::cout << fmt::format("note: volume {}: {}\n", vol, n);
      continue;
    }
    std::cout << fmt::format("note: volume {} chunk {}: {}\n", vol, r.chunk, n);
  }
}

// With the daemon doing the work: a part it has marked down may be back (a replaced server whose
// directory RepairMetadata just recreated, a server restarted a moment ago); its backend retries a
// dead server after a backoff of up to 10 s. Waits up to `seconds` for the daemon to report no
// part down for `chunk` (a dry run), so that the part is repaired in this run.
// One chunk through the daemon (POST /v1/volumes/NAME/chunks/N/repair).
qbd::Result<qbd::ChunkRepairReport> RepairOnline(qbd::ApiClient& api, const std::string& vol,
                                                 uint64_t chunk, const qbd::RepairOptions& o) {
  nlohmann::json body = {{"dry_run", o.dry_run}, {"accept_loss", o.accept_loss}};
  if (o.targets != ~0u) {
    std::string parts;
    for (int p = 0; p < 26; ++p) {
      if (o.targets & (1u << p)) parts += static_cast<char>('a' + p);
    }
    body["parts"] = parts;
  }
  auto j = api.Do("POST", fmt::format("/v1/volumes/{}/chunks/{}/repair", vol, chunk), body);
  if (!j.ok()) return j.status();
  return qbd::RepairReportFromJson(*j);
}

// With the daemon doing the work: a part it has marked down may be back (a replaced server whose
// directory RepairMetadata just recreated, a server restarted a moment ago); its backend retries a
// dead server after a backoff of up to 10 s. Waits up to `seconds` for the daemon to report no
// part down for `chunk` (a dry run), so that the part is repaired in this run.
void WaitForDownParts(qbd::ApiClient& api, const std::string& vol, uint64_t chunk, int seconds) {
  const auto deadline = Clock::now() + std::chrono::seconds(seconds);
  bool said = false;
  qbd::RepairOptions dry;
  dry.dry_run = true;
  for (;;) {
    auto r = RepairOnline(api, vol, chunk, dry);
    if (!r.ok()) return;
    std::string down;
    for (const std::string& n : r->notes) {
      if (n.find("is down") != std::string::npos) down = n;
    }
    if (down.empty() || Clock::now() >= deadline) {
      if (said && down.empty()) std::cout << fmt::format("volume {}: qbd-master reaches every part\n", vol);
      return;
    }
    if (!said) {
      std::cout << fmt::format("volume {}: {}; waiting up to {} s for qbd-master to reach it again\n", vol, down,
                               seconds);
      said = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

std::string ProgressPath(const qbd::Config& c, uint32_t volnr) {
  return fmt::format("{}.repair-{}", c.admin_socket, volnr);
}

int Run(int argc, char** argv) {
  po::options_description opts;
  opts.add_options()("help,h", "")("config,c", po::value<std::string>(), "")("dry-run", "")(
      "accept-loss", "")("restart", "")("quiet", "")("rate", po::value<double>(), "")(
      "volume", po::value<std::vector<std::string>>(), "")(
      "part", po::value<std::vector<std::string>>(), "")("names",
                                                         po::value<std::vector<std::string>>(), "");
  po::positional_options_description pos;
  pos.add("names", -1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(opts).positional(pos).run(), vm);
  } catch (const po::error& e) {
    return Usage(e.what());
  }
  if (vm.count("help")) {
    std::cout << kHelp;
    return 0;
  }
  if (!vm.count("config")) return Usage("--config FILE is required");
  const bool dry = vm.count("dry-run") > 0, quiet = vm.count("quiet") > 0,
             restart = vm.count("restart") > 0;
  std::vector<std::string> names;
  for (const char* k : {"volume", "names"}) {
    if (vm.count(k)) {
      for (const auto& n : vm[k].as<std::vector<std::string>>()) names.push_back(n);
    }
  }
  double rate = 0;  // bytes per second
  if (vm.count("rate")) {
    rate = vm["rate"].as<double>() * 1e6;
    if (rate < 0) return Usage("--rate must be 0 or more MB/s");
  }
  qbd::RepairOptions ro;
  ro.dry_run = dry;
  ro.accept_loss = vm.count("accept-loss") > 0;
  if (vm.count("part")) {
    ro.targets = 0;
    for (const std::string& p : vm["part"].as<std::vector<std::string>>()) {
      if (p.size() != 1 || p[0] < 'a' || p[0] > 'z')
        return Usage(fmt::format("--part {}: a part letter a..z", p));
      ro.targets |= 1u << (p[0] - 'a');
    }
  }
  if (ro.accept_loss && names.empty()) {
    return Usage("--accept-loss needs the volumes named: it changes what they read");
  }
  // The whole configuration, on this host, before any backend is opened.
  auto config = qbd::LoadConfig(vm["config"].as<std::string>());
  if (!config.ok()) return BadConfig(config.status().message());
  if (qbd::Status s = qbd::CheckConfigOnHost(*config); !s.ok()) return BadConfig(s.message());
  qbd::SetLogLevel(qbd::LogLevel::kError);
  auto catalog = qbd::Catalog::Open(*config);
  if (!catalog.ok()) return Access(catalog.status().message());
  qbd::Catalog& cat = **catalog;

  // The daemon, if it runs, does the work; else we hold the lock that keeps it from starting.
  std::unique_ptr<qbd::ApiClient> admin;
  std::unique_ptr<qbd::ProcessLock> lock;
  auto api = qbd::ApiClient::Find(*config);
  if (!api.ok()) return Access(api.status().message());
  if (*api) {
    admin = std::move(api).value();
    std::cout << fmt::format("qbd-master is running: it repairs each chunk (REST API {})\n",
                             admin->base());
  } else {
    auto l = qbd::ProcessLock::Acquire(config->admin_socket + ".lock", "qbd-repair");
    if (!l.ok() && !l.status().IsUnavailable()) {
      return Access(fmt::format("the lock of admin_socket {}: {}", config->admin_socket, l.status().message()));
    }
    if (!l.ok()) {
      return Access(fmt::format("{}; is qbd-master starting or stopping?", l.status().message()));
    }
    lock = std::move(l).value();
  }
  auto index = cat.LoadIndex();
  if (!index.ok()) return Access(index.status().message());
  if (names.empty()) {
    for (const auto& [n, nr] : index->volumes) names.push_back(n);
  }
  for (const std::string& n : names) {
    if (index->Find(n) == 0) return Usage(fmt::format("no volume named '{}'", n));
  }
  const bool tty = ::isatty(STDERR_FILENO) && !quiet;
  const qbd::LeaseIdentity self =
      qbd::LeaseIdentity::ForThisProcess(vm["config"].as<std::string>(), config->admin_socket);
  int exit_code = 0;
  auto run_local = qbd::NewLocalDirBackend(
      std::filesystem::path(config->admin_socket).parent_path().string(), false);
  for (const std::string& name : names) {
    const auto start = Clock::now();
    auto meta = cat.LoadMeta(index->Find(name));
    if (!meta.ok()) {
      std::cerr << fmt::format("qbd-repair: volume {}: {}\n", name, meta.status().message());
      exit_code = std::max(exit_code, 4);
      continue;
    }
    const qbd::Geometry& g = meta->geometry;
    std::vector<qbd::StorageBackend*> backends = cat.BackendsFor(*meta);
    if (!admin) {
      // Another master's lease on the parts (layout-spec.md 8): it serves the volume, or stopped
      // without closing it. Offline repair would write under it: refused (a plan is still shown).
      auto holder = qbd::ForeignLease(meta->number, backends, self);
      if (holder && !dry) {
        std::cerr << fmt::format(
            "qbd-repair: volume {}: not repaired: {} holds its lease ({}/.owner on the parts); repair it "
            "through that master's configuration, or stop it (a clean stop removes .owner; after a crash "
            "remove {}/.owner on every part once that master is surely gone)\n",
            name, holder->Describe(), meta->number, meta->number);
        exit_code = std::max(exit_code, 4);
        continue;
      }
      if (holder) {
        std::cout << fmt::format("note: volume {}: {} holds its lease: a real run would refuse\n", name,
                                 holder->Describe());
      }
    }
    const qbd::MetadataRepair md = qbd::RepairMetadata(cat, *meta, dry);
    for (const std::string& line : md.lines) {
      std::cout << fmt::format("{}: volume {}: {}\n", dry ? "plan" : "metadata", name, line);
    }
    if (md.failed > 0) exit_code = std::max(exit_code, 1);
    std::vector<uint64_t> chunks = qbd::ChunksToVisit(*meta, backends);
    // Resume an interrupted run (same volume) unless told to start over.
    const std::string progress =
        std::filesystem::path(ProgressPath(*config, meta->number)).filename().string();
    uint64_t resume = 0;
    if (!dry && run_local.ok() && !restart) {
      auto text = qbd::ReadSmallFile(**run_local, progress);
      if (text.ok()) {
        auto lines = qbd::ParseKvText(*text, progress);
        if (lines.ok()) {
          for (const qbd::KvLine& l : *lines) {
            if (l.key == "next_chunk") resume = std::strtoull(l.value.c_str(), nullptr, 10);
          }
        }
        if (resume > 0) {
          std::cout << fmt::format(
              "volume {}: resuming at chunk {} where an interrupted run stopped (--restart starts "
              "over)\n",
              name, resume + 1);
        }
      }
    }
    std::unique_ptr<qbd::Volume> vol;
    if (!admin) {
      qbd::VolumeOpenOptions vo;
      vo.start_resync_thread = false;
      // Repair copies records as they are (no new generation): the epoch stays, and the metadata
      // copies were restored above, so opening writes nothing and a run with nothing to do
      // changes no file.
      vo.no_writes = true;
      auto v = qbd::Volume::Open(*meta, backends, vo);
      if (!v.ok() && dry && md.written > 0) {
        // The damage the plan above repairs keeps the volume from opening: its chunks are
        // planned once that is done.
        std::cout << fmt::format(
            "plan: volume {}: chunks are checked once the metadata above is repaired ({})\n", name,
            v.status().message());
        continue;
      }
      if (!v.ok()) {
        std::cerr << fmt::format("qbd-repair: volume {}: {}\n", name, v.status().message());
        exit_code = std::max(exit_code, 4);
        continue;
      }
      vol = std::move(v).value();
    }
    if (admin && !chunks.empty()) WaitForDownParts(*admin, name, chunks.front(), 15);
    Totals t;
    auto last_save = Clock::now(), last_tty = Clock::now();
    bool failed_call = false;
    for (size_t i = 0; i < chunks.size(); ++i) {
      const uint64_t c = chunks[i];
      if (c < resume) continue;
      qbd::Result<qbd::ChunkRepairReport> r = qbd::Status::OK();
      if (admin) {
        r = RepairOnline(*admin, name, c, ro);
      } else {
        r = vol->quorum().RepairChunk(c, ro);
      }
      if (!r.ok()) {
        std::cerr << fmt::format("qbd-repair: volume {} chunk {}: {}\n", name, c + 1,
                                 r.status().ToString());
        failed_call = true;
        break;
      }
      ++t.chunks;
      if (rate > 0) {
        // Throttle: the bytes read so far may not run ahead of the rate.
        std::this_thread::sleep_until(start + std::chrono::microseconds(static_cast<uint64_t>(
                                                  (t.bytes_read + r->bytes_read) / rate * 1e6)));
      }
      const uint64_t blocks_in_chunk = std::min<uint64_t>(
          g.BlocksPerChunk(), (g.size - c * g.chunk_size + g.block_size - 1) / g.block_size);
      if (tty) std::fprintf(stderr, "\r\033[K");
      Report(name, *r, blocks_in_chunk, dry, quiet, t);
      const auto now = Clock::now();
      if (!dry && run_local.ok() && now - last_save > std::chrono::seconds(1)) {
        qbd::WriteFileAtomic(
            **run_local, progress,
            fmt::format("# qbd-repair progress of volume {} (number {})\nnext_chunk = {}\n", name,
                        meta->number, c + 1))
            .IgnoreError();  // progress is a convenience: a rerun without it starts over
        last_save = now;
      }
      if (tty && now - last_tty > std::chrono::milliseconds(200)) {
        std::fprintf(stderr, "repair %s: chunk %zu of %zu, %.1f MiB written", name.c_str(), i + 1,
                     chunks.size(), t.bytes_written / 1048576.0);
        last_tty = now;
      }
    }
    if (tty) std::fprintf(stderr, "\r\033[K");
    if (vol) {
      qbd::Status s = vol->Close();
      if (!s.ok()) {
        std::cerr << fmt::format("qbd-repair: volume {}: final flush: {}\n", name, s.ToString());
        failed_call = true;
      }
    }
    if (failed_call) {
      exit_code = std::max(exit_code, 1);
      std::cout << fmt::format("volume {}: stopped; a rerun resumes\n", name);
      continue;
    }
    if (!dry && run_local.ok())
      (*run_local)->Remove(progress).IgnoreError();  // absent when it never saved
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    if (!t.down.empty()) {
      // Each says why: down (out of reach), or out of space ("no space left on device").
      for (const std::string& d : t.down) std::cout << fmt::format("volume {}: {}\n", name, d);
      std::cout << fmt::format(
          "volume {}: {} part(s) were not checked; run qbd-repair again once they are back (or have room)\n",
          name, t.down.size());
    }
    if (t.accepted) {
      std::cout << fmt::format("volume {}: loss accepted for {} block(s): they read as zeros\n", name,
                               t.accepted);
    }
    if (t.files + t.blocks + t.failed + t.unknown == 0 && t.down.empty() && md.written + md.failed == 0) {
      std::cout << fmt::format(
          "volume {}: nothing to repair ({} chunks checked on {} parts, {:.1f} MiB read in {:.1f} "
          "s){}\n",
          name, t.chunks, meta->replicas, t.bytes_read / 1048576.0, secs,
          t.lost_chunks
              ? fmt::format("; {} chunk(s) with data lost, left as they are", t.lost_chunks)
              : "");
    } else {
      std::cout << fmt::format(
          "volume {}: {} {} chunk file(s) and {} block(s){}; {:.1f} MiB written, {:.1f} MiB read "
          "in "
          "{:.1f} s "
          "({:.0f} MB/s written){}{}{}\n",
          name, dry ? "would rebuild" : "rebuilt", t.files, t.blocks,
          md.written + md.failed > 0
              ? fmt::format(", {} metadata cop{} {}{}", md.written, md.written == 1 ? "y" : "ies",
                            dry ? "to write" : "written",
                            md.failed ? fmt::format(" ({} not repaired)", md.failed) : "")
              : "",
          t.bytes_written / 1048576.0, t.bytes_read / 1048576.0, secs,
          secs > 0 ? t.bytes_written / 1e6 / secs : 0.0,
          t.failed ? fmt::format("; {} failed", t.failed) : "",
          t.unknown ? fmt::format("; {} chunk(s) not repairable while a part is down", t.unknown)
                    : "",
          t.lost_chunks ? fmt::format("; {} chunk(s) with data lost", t.lost_chunks) : "");
    }
    if (t.failed || t.unknown || !t.down.empty()) exit_code = std::max(exit_code, 1);
    if (t.lost_chunks) exit_code = std::max(exit_code, 2);
  }
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "qbd-repair: " << e.what() << "\n";
    return 4;
  }
}
