// Implements include/qbd/lvm_thin.h.
#include "qbd/lvm_thin.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <cstring>
#include <map>
#include <random>
#include <sstream>

namespace qbd {
namespace {

// The first MiB of `device` reads as zeros (a volume never written).
Result<bool> LooksEmpty(const std::string& device) {
  int fd = ::open(device.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno("open " + device, errno);
  std::vector<char> buf(1 << 20);
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::pread(fd, buf.data() + got, buf.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status s = Status::FromErrno("read " + device, errno);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  return std::all_of(buf.begin(), buf.begin() + static_cast<long>(got),
                     [](char c) { return c == 0; });
}

// The fields of one `--nameprefixes` report line: LVM2_KEY='value' ...
std::map<std::string, std::string> Fields(const std::string& line) {
  std::map<std::string, std::string> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && line[i] == ' ') ++i;
    size_t eq = line.find('=', i);
    if (eq == std::string::npos) break;
    const std::string key = line.substr(i, eq - i);
    std::string value;
    i = eq + 1;
    if (i < line.size() && line[i] == '\'') {
      size_t end = line.find('\'', i + 1);
      if (end == std::string::npos) end = line.size();
      value = line.substr(i + 1, end - i - 1);
      i = end + 1;
    } else {
      size_t end = line.find(' ', i);
      if (end == std::string::npos) end = line.size();
      value = line.substr(i, end - i);
      i = end;
    }
    out[key] = value;
  }
  return out;
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, sep);) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  size_t b = s.find_first_not_of(' ');
  return b == std::string::npos ? std::string() : s.substr(b);
}

}  // namespace

Result<CommandResult> ProcessRunner::Run(const std::vector<std::string>& argv) {
  if (argv.empty()) return Status::InvalidArgument("no command");
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return Status::FromErrno("pipe", errno);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  // LVM warns about every descriptor it inherits; the daemon's are close-on-exec anyway.
  std::vector<std::string> env_store;
  for (char** e = environ; *e != nullptr; ++e) env_store.emplace_back(*e);
  env_store.emplace_back("LVM_SUPPRESS_FD_WARNINGS=1");
  std::vector<char*> env;
  for (std::string& e : env_store) env.push_back(e.data());
  env.push_back(nullptr);
  pid_t pid = 0;
  const int rc = ::posix_spawnp(&pid, argv[0].c_str(), &fa, nullptr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&fa);
  ::close(pipefd[1]);
  if (rc != 0) {
    ::close(pipefd[0]);
    return Status::IOError(fmt::format("{}: cannot run it: {}", argv[0], std::strerror(rc)));
  }
  CommandResult r;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(pipefd[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (r.output.size() < (1u << 20)) r.output.append(buf, static_cast<size_t>(n));
  }
  ::close(pipefd[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string NewPvUuid() {
  static const char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::random_device rd;
  std::uniform_int_distribution<int> pick(0, static_cast<int>(sizeof(kChars)) - 2);
  std::string out;
  for (int group : {6, 4, 4, 4, 4, 4, 6}) {
    if (!out.empty()) out += '-';
    for (int i = 0; i < group; ++i) out += kChars[pick(rd)];
  }
  return out;
}

Status CheckPvUuid(const std::string& uuid) {
  const std::vector<std::string> groups = Split(uuid, '-');
  const int want[] = {6, 4, 4, 4, 4, 4, 6};
  bool ok = groups.size() == 7 && uuid.size() == 38;
  for (size_t i = 0; ok && i < groups.size(); ++i) {
    ok = static_cast<int>(groups[i].size()) == want[i] &&
         std::all_of(groups[i].begin(), groups[i].end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)); });
  }
  if (!ok) {
    return Status::InvalidArgument(
        fmt::format("'{}' is not a PV UUID (32 letters and digits as 6-4-4-4-4-4-6)", uuid));
  }
  return Status::OK();
}

LvmThin::LvmThin(CommandRunner& runner, std::string volume)
    : runner_(runner), volume_(std::move(volume)), vg_("qbd_vg_" + volume_) {}

Result<std::string> LvmThin::Must(const std::vector<std::string>& argv) {
  QBD_ASSIGN_OR_RETURN(CommandResult r, runner_.Run(argv));
  if (r.exit_code != 0) {
    std::string cmd;
    for (const std::string& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
    return Status::IOError(fmt::format("{} exited with status {}: {}", cmd, r.exit_code, Trim(r.output)));
  }
  return r.output;
}

Result<LvmThin::Ownership> LvmThin::Inspect(const std::string& device, std::string* why,
                                            std::string* pv_uuid) {
  std::string scratch;
  std::string& reason = why != nullptr ? *why : scratch;
  QBD_ASSIGN_OR_RETURN(CommandResult r,
                       runner_.Run({"pvs", "--noheadings", "--nameprefixes", "-o",
                                    "pv_name,pv_uuid,vg_name,vg_tags", device}));
  if (r.exit_code != 0) {
    // Not a PV: ours to provision only when nothing was ever written there.
    if (r.output.find("Failed to find physical volume") == std::string::npos &&
        r.output.find("not found") == std::string::npos) {
      return Status::IOError(fmt::format("pvs {}: exit status {}: {}", device, r.exit_code, Trim(r.output)));
    }
    QBD_ASSIGN_OR_RETURN(bool empty, LooksEmpty(device));
    if (empty) return Ownership::kEmpty;
    reason = fmt::format("{} holds data that is not an LVM physical volume (its first MiB is not empty)", device);
    return Ownership::kForeign;
  }
  std::map<std::string, std::string> f;
  for (const std::string& line : Split(r.output, '\n')) {
    if (Trim(line).empty()) continue;
    f = Fields(Trim(line));
    break;
  }
  const std::string vg = f["LVM2_VG_NAME"];
  if (pv_uuid != nullptr) *pv_uuid = f["LVM2_PV_UUID"];
  const std::vector<std::string> tags = Split(f["LVM2_VG_TAGS"], ',');
  auto has = [&](const std::string& t) { return std::find(tags.begin(), tags.end(), t) != tags.end(); };
  if (vg == vg_ && has(volume_tag()) && has(kManagedTag)) return Ownership::kOurs;
  reason = vg.empty() ? fmt::format("{} is an LVM physical volume (UUID {}) in no volume group: not qbd's", device,
                                    f["LVM2_PV_UUID"])
                      : fmt::format("{} is an LVM physical volume of volume group {} (tags '{}'), not {} with tags {} "
                                    "and {}: not qbd's",
                                    device, vg, f["LVM2_VG_TAGS"], vg_, volume_tag(), kManagedTag);
  return Ownership::kForeign;
}

Status LvmThin::Provision(const std::string& device, const std::string& pv_uuid) {
  QBD_RETURN_IF_ERROR(CheckPvUuid(pv_uuid));
  std::string why;
  QBD_ASSIGN_OR_RETURN(Ownership o, Inspect(device, &why));
  if (o == Ownership::kForeign) {
    return Status::InvalidArgument(fmt::format("volume {}: refusing to touch it: {}", volume_, why));
  }
  if (o == Ownership::kEmpty) {
    QBD_RETURN_IF_ERROR(Must({"pvcreate", "--uuid", pv_uuid, "--norestorefile", device}).status());
    QBD_RETURN_IF_ERROR(
        Must({"vgcreate", "--addtag", volume_tag(), "--addtag", kManagedTag, vg_, device}).status());
  }
  // The pool, unless a provision that stopped after vgcreate left it out.
  QBD_ASSIGN_OR_RETURN(std::string lvs, Must({"lvs", "--noheadings", "-o", "lv_name", vg_}));
  for (const std::string& line : Split(lvs, '\n')) {
    if (Trim(line) == kPoolName) return Status::OK();
  }
  return Must({"lvcreate", "--type", "thin-pool", "-l", "95%FREE", "-n", kPoolName, vg_}).status();
}

Status LvmThin::Activate() { return Must({"vgchange", "-ay", vg_}).status(); }

Status LvmThin::Deactivate() { return Must({"vgchange", "-an", vg_}).status(); }

Status LvmThin::Grow(const std::string& device) {
  std::string why;
  QBD_ASSIGN_OR_RETURN(Ownership o, Inspect(device, &why));
  if (o != Ownership::kOurs) {
    return Status::InvalidArgument(fmt::format("volume {}: not growing the LVM stack: {}", volume_,
                                               o == Ownership::kEmpty ? device + " holds no PV" : why));
  }
  QBD_RETURN_IF_ERROR(Must({"pvresize", device}).status());
  QBD_ASSIGN_OR_RETURN(std::string free,
                       Must({"vgs", "--noheadings", "-o", "vg_free_count", vg_}));
  if (std::strtoull(Trim(free).c_str(), nullptr, 10) == 0) return Status::OK();  // no new extent
  return Must({"lvextend", "-l", "+95%FREE", pool_path()}).status();
}

}  // namespace qbd
