// qbd-master: serves every volume of a qbd.conf over NBD. Parses options, wires the Master,
// waits for SIGINT/SIGTERM while polling for volume changes, and maps errors to exit codes:
// 0 clean stop, 1 runtime failure, 2 usage or volume metadata without a good majority,
// 4 (kExitBadConfig) a bad qbd.conf: checked whole, on this host, before any backend is opened.
// Under systemd (Type=notify) it tells the service manager READY=1 once every listener is up and
// STOPPING=1 when a signal starts the stop; sd_notify does nothing when NOTIFY_SOCKET is unset.
#include <signal.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>

#include <boost/program_options.hpp>
#include <cctype>
#include <cerrno>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "qbd/config.h"
#include "qbd/log.h"
#include "qbd/master.h"

namespace po = boost::program_options;

namespace {

int Fail(int code, const std::string& msg) {
  std::cerr << "qbd-master: " << msg << "\n";
  return code;
}

// An error that names a line of qbd.conf ("var/qbd.conf:7: ...") is about the configuration:
// Master::Start's own checks (two parts in one failure domain) name the line they refuse.
bool NamesConfigLine(const qbd::Status& s, const std::string& file) {
  const std::string& m = s.message();
  if (m.rfind(file + ":", 0) != 0) return false;
  size_t i = file.size() + 1, digits = 0;
  while (i < m.size() && std::isdigit(static_cast<unsigned char>(m[i]))) ++i, ++digits;
  return digits > 0 && i < m.size() && m[i] == ':';
}

// One sd_notify(3) message to the service manager ("KEY=VALUE" lines). Best effort: without
// NOTIFY_SOCKET (not started by systemd) it does nothing, and a failure to send changes nothing
// about serving.
void Notify(const std::string& state) { sd_notify(/*unset_environment=*/0, state.c_str()); }

void RaiseFileLimit() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

int Run(int argc, char** argv) {
  po::options_description opts("Usage: qbd-master --config FILE [options]\nOptions");
  opts.add_options()("help,h", "show this help")
      ("config,c", po::value<std::string>()->required(), "qbd.conf to serve")
      ("create-default", "write the embedded default config to --config if it is absent, and create "
                         "the volume 'demo' (1 GiB, every part) if it does not exist")
      ("log-level", po::value<std::string>(), "debug, info, warn or error (overrides log_level)");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, opts), vm);
  if (vm.count("help")) {
    std::cout << opts << "\nExit status: 0 after a clean stop (SIGINT/SIGTERM); 1 on a runtime failure; 2 on a\n"
                         "usage error or volume metadata without a good majority; 4 on a bad qbd.conf\n"
                         "(absent, unreadable, malformed, a value out of range, or naming an address,\n"
                         "host or directory this machine does not have), found before anything is opened.\n";
    return 0;
  }
  po::notify(vm);
  const std::string path = vm["config"].as<std::string>();
  const bool create_default = vm.count("create-default") > 0;
  if (create_default && !std::filesystem::exists(path)) {
    std::error_code ec;
    auto parent = std::filesystem::path(path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    std::ofstream out(path);
    out << qbd::DefaultConfigText();
    if (!out.good()) return Fail(1, "cannot write " + path);
    QBD_LOG_INFO("wrote the default configuration to {}", path);
  }
  std::optional<qbd::LogLevel> level;
  if (vm.count("log-level")) {
    std::string lv = vm["log-level"].as<std::string>();
    if (lv == "debug") level = qbd::LogLevel::kDebug;
    else if (lv == "info") level = qbd::LogLevel::kInfo;
    else if (lv == "warn") level = qbd::LogLevel::kWarn;
    else if (lv == "error") level = qbd::LogLevel::kError;
    else return Fail(2, "--log-level must be debug, info, warn or error");
  }
  // The whole configuration, on this host, before any backend is opened or written.
  auto config = qbd::LoadConfig(path);
  if (!config.ok()) return Fail(qbd::kExitBadConfig, config.status().message());
  qbd::HostCheck hc;
  hc.local_addresses = true;
  hc.backend_dirs = !create_default;  // --create-default creates them
  qbd::Status host = qbd::CheckConfigOnHost(*config, hc);
  if (!host.ok()) return Fail(qbd::kExitBadConfig, host.message());
  qbd::SetLogLevel(level.value_or(config->log_level));
  RaiseFileLimit();

  // Signals are taken synchronously by this thread; every thread started below inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  qbd::MasterOptions mo;
  if (create_default) mo.create_volume = "demo";
  Notify("STATUS=opening the volumes of " + path);
  auto master = qbd::Master::Start(*config, mo);
  if (!master.ok()) {
    const auto& s = master.status();
    Notify("STATUS=failed to start: " + s.ToString());
    if (NamesConfigLine(s, config->file)) return Fail(qbd::kExitBadConfig, s.message());
    return Fail(s.IsInvalidArgument() || s.IsCorruption() ? 2 : 1, s.ToString());
  }
  // Master::Start returns with every listener bound and accepting: clients can connect now.
  Notify("READY=1\nSTATUS=serving " + path);
  QBD_LOG_INFO("qbd-master: serving {} (Ctrl-C or SIGTERM stops)", path);
  for (;;) {
    struct timespec ts;
    const uint32_t poll_ms = (*master)->PollIntervalMs();
    ts.tv_sec = poll_ms / 1000;
    ts.tv_nsec = static_cast<long>(poll_ms % 1000) * 1000000L;
    int sig = sigtimedwait(&sigs, nullptr, &ts);
    if (sig == SIGINT || sig == SIGTERM) {
      QBD_LOG_INFO("qbd-master: {}: finishing in-flight requests and flushing", sig == SIGINT ? "SIGINT" : "SIGTERM");
      Notify("STOPPING=1\nSTATUS=finishing in-flight requests and flushing");
      break;
    }
    if (sig < 0 && errno != EAGAIN && errno != EINTR) return Fail(1, "sigtimedwait failed");
    (*master)->Poll().IgnoreError();  // logged by Poll; serving goes on
  }
  qbd::Status s = (*master)->Stop();
  if (!s.ok()) return Fail(1, "stopped with an error: " + s.ToString());
  QBD_LOG_INFO("qbd-master: stopped cleanly");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const po::error& e) {
    return Fail(2, std::string(e.what()) + " (see --help)");
  } catch (const std::exception& e) {
    return Fail(1, e.what());
  }
}
