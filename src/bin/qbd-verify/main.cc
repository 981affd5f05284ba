// qbd-verify: the cron job that tells the truth about redundancy. Walks every part of every volume
// of a qbd.conf (or the volumes named) through the daemon's own backends and reports missing,
// damaged, stale and lost copies. Read-only; safe beside a running qbd-master.
#include <fmt/format.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "qbd/catalog.h"
#include "qbd/config.h"
#include "qbd/log.h"
#include "qbd/verify.h"

namespace po = boost::program_options;

namespace {

const char kHelp[] = R"(Usage: qbd-verify --config FILE [--deep] [--json] [--rate MB/s] [VOLUME...]

Checks every part of every volume (or of the VOLUMEs named).
  quick pass (default): metadata copies on every backend, existence and size of every chunk
      file on every part, dirty maps; finds missing files, chunks lost on every part and
      volumes below their redundancy from metadata alone
  --deep: also reads every block of every copy, checks its checksum and compares the copies:
      corrupt blocks, stale copies, blocks whose newest copy is gone

Options:
  -c, --config FILE   qbd.conf (the daemon's)
  --deep              read and check every block
  --json              print the report as JSON (see README) instead of text
  --rate MB/s         deep reads at most this fast (beside production I/O); 0: no limit
  --threads N         chunks read side by side in the deep pass (default 4)
  --quiet             print nothing when every volume is ok; else only the volumes that
                      are not, and the summary (for cron, which mails what it prints)
  -h, --help          this help

Exit status: 0 clean; 1 degraded but recoverable (missing, damaged or stale copies, parts out of
reach, writes awaiting resync: qbd-repair fixes them); 2 data lost (some block or chunk has no
good copy left); 3 usage error; 4 access error: a bad qbd.conf (absent, unreadable,
malformed, a value out of range, or naming a host or directory this machine does not have; found
before any backend is opened), a volume that could not be checked. With several volumes the
highest applies.
)";

int Usage(const std::string& msg) {
  std::cerr << "qbd-verify: " << msg << "\n\n" << kHelp;
  return 3;
}

// With --json, stdout holds one JSON document whatever happens: a failure is a report without
// volumes, its exit status and the error.
bool g_json = false;

int Fail(int code, const std::string& msg) {
  std::cerr << "qbd-verify: " << msg << "\n";
  if (g_json) {
    std::cout << fmt::format(
        R"({{"mode":null,"exit":{},"error":{},"seconds":0,"bytes_read":0,"findings":[],)"
        R"("volumes":[]}})"
        "\n",
        code, qbd::JsonString(msg));
  }
  return code;
}

int Run(int argc, char** argv) {
  po::options_description opts;
  opts.add_options()("help,h", "")("config,c", po::value<std::string>(), "")("deep", "")(
      "json", "")("quiet", "")("rate", po::value<double>(), "")("threads", po::value<int>(), "")(
      "volume", po::value<std::vector<std::string>>(), "");
  po::positional_options_description pos;
  pos.add("volume", -1);
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
  qbd::VerifyOptions o;
  o.deep = vm.count("deep") > 0;
  if (vm.count("volume")) o.volumes = vm["volume"].as<std::vector<std::string>>();
  if (vm.count("rate")) {
    const double mb = vm["rate"].as<double>();
    if (mb < 0) return Usage("--rate must be 0 or more MB/s");
    o.rate_bytes_per_sec = static_cast<uint64_t>(mb * 1e6);
  }
  if (vm.count("threads")) {
    o.threads = vm["threads"].as<int>();
    if (o.threads < 1 || o.threads > 256) return Usage("--threads must be 1..256");
  }
  const bool json = vm.count("json") > 0;
  g_json = json;
  const bool quiet = vm.count("quiet") > 0;
  // The whole configuration, on this host, before any backend is opened.
  auto config = qbd::LoadConfig(vm["config"].as<std::string>());
  if (!config.ok()) return Fail(qbd::kExitBadConfig, config.status().message());
  if (qbd::Status s = qbd::CheckConfigOnHost(*config); !s.ok()) return Fail(qbd::kExitBadConfig, s.message());
  qbd::SetLogLevel(qbd::LogLevel::kError);
  auto catalog = qbd::Catalog::Open(*config);
  if (!catalog.ok()) return Fail(4, catalog.status().message());
  if (o.deep && !json && ::isatty(STDERR_FILENO)) {
    o.progress = [](uint64_t done, uint64_t total) {
      std::fprintf(stderr, "\rverify: %.1f of %.1f MiB read (%.0f%%)   ", done / 1048576.0,
                   total / 1048576.0,
                   total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0);
    };
  }
  auto report = qbd::Verify(**catalog, o);
  if (o.progress) std::fprintf(stderr, "\n");
  if (!report.ok()) return Fail(report.status().IsNotFound() ? 3 : 4, report.status().message());
  if (json) {
    std::cout << qbd::FormatReportJson(*report);
  } else {
    std::cout << qbd::FormatReportText(*report, quiet);
  }
  return report->ExitCode();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    return Fail(4, e.what());
  }
}
