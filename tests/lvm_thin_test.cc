// Tests of include/qbd/lvm_thin.h: which LVM commands LvmThin runs (and refuses to run) for an
// empty, a foreign and an own device, through a scripted CommandRunner; the "device" is a file,
// read for emptiness. ProcessRunner runs a real child. The real LVM tools run in the VM tests.
#include "qbd/lvm_thin.h"

#include <doctest/doctest.h>

#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "testutil/temp_dir.h"

namespace qbd::test {
namespace {

// Answers each command from `answer` (by its first words) and records it.
class ScriptedRunner : public CommandRunner {
 public:
  Result<CommandResult> Run(const std::vector<std::string>& argv) override {
    std::string line;
    for (const std::string& a : argv) line += (line.empty() ? "" : " ") + a;
    ran.push_back(line);
    for (const auto& [prefix, result] : answers) {
      if (line.rfind(prefix, 0) == 0) return result;
    }
    return CommandResult{0, ""};
  }
  // Commands run whose line starts with `prefix`.
  size_t Count(const std::string& prefix) const {
    size_t n = 0;
    for (const std::string& l : ran) n += l.rfind(prefix, 0) == 0 ? 1 : 0;
    return n;
  }
  std::vector<std::pair<std::string, CommandResult>> answers;
  std::vector<std::string> ran;
};

const CommandResult kNoPv{5, "  Failed to find physical volume \"/dev/nbd0\".\n"};

std::string Device(TempDir& dir, bool with_data) {
  const std::string path = dir.Sub("dev");
  std::ofstream f(path, std::ios::binary);
  std::string bytes(2 << 20, '\0');
  if (with_data) bytes[70000] = 'x';
  f << bytes;
  return path;
}

const std::string kUuid = "AbCdEf-0123-4567-89ab-cdef-GHIJ-klmnop";

TEST_SUITE("lvm_thin") {
TEST_CASE("an empty device gets a PV with the given UUID, the tagged VG and a thin pool") {
  TempDir dir;
  const std::string dev = Device(dir, false);
  ScriptedRunner r;
  r.answers = {{"pvs", kNoPv}};
  LvmThin lvm(r, "vm1");
  CHECK(lvm.vg() == "qbd_vg_vm1");
  CHECK(lvm.pool_path() == "qbd_vg_vm1/pool");
  REQUIRE(lvm.Provision(dev, kUuid).ok());
  CHECK(r.Count("pvcreate --uuid " + kUuid + " --norestorefile " + dev) == 1);
  CHECK(r.Count("vgcreate --addtag quorumbd-volume=vm1 --addtag quorumbd-managed=true qbd_vg_vm1 " + dev) == 1);
  CHECK(r.Count("lvcreate --type thin-pool -l 95%FREE -n pool qbd_vg_vm1") == 1);
}

TEST_CASE("a device with data that is not a PV is refused and nothing is written") {
  TempDir dir;
  const std::string dev = Device(dir, true);
  ScriptedRunner r;
  r.answers = {{"pvs", kNoPv}};
  LvmThin lvm(r, "vm1");
  std::string why;
  auto o = lvm.Inspect(dev, &why);
  REQUIRE(o.ok());
  CHECK(*o == LvmThin::Ownership::kForeign);
  CHECK(why.find("not an LVM physical volume") != std::string::npos);
  Status s = lvm.Provision(dev, kUuid);
  CHECK(s.IsInvalidArgument());
  CHECK(s.message().find("refusing to touch it") != std::string::npos);
  CHECK(r.Count("pvcreate") + r.Count("vgcreate") + r.Count("lvcreate") == 0);
}

TEST_CASE("a PV of another VG, or of our VG name without the tags, is refused") {
  TempDir dir;
  const std::string dev = Device(dir, true);
  for (const char* pvs : {"  LVM2_PV_NAME='/dev/nbd0' LVM2_PV_UUID='x' LVM2_VG_NAME='pve' LVM2_VG_TAGS=''\n",
                          "  LVM2_PV_NAME='/dev/nbd0' LVM2_PV_UUID='x' LVM2_VG_NAME='qbd_vg_vm1' LVM2_VG_TAGS='quorumbd-volume=vm1'\n",
                          "  LVM2_PV_NAME='/dev/nbd0' LVM2_PV_UUID='x' LVM2_VG_NAME='qbd_vg_vm1' LVM2_VG_TAGS='quorumbd-managed=true,quorumbd-volume=vm2'\n",
                          "  LVM2_PV_NAME='/dev/nbd0' LVM2_PV_UUID='x' LVM2_VG_NAME='' LVM2_VG_TAGS=''\n"}) {
    CAPTURE(pvs);
    ScriptedRunner r;
    r.answers = {{"pvs", CommandResult{0, pvs}}};
    LvmThin lvm(r, "vm1");
    Status s = lvm.Provision(dev, kUuid);
    CHECK(s.IsInvalidArgument());
    CHECK(lvm.Grow(dev).IsInvalidArgument());
    CHECK(r.Count("pvcreate") + r.Count("vgcreate") + r.Count("lvcreate") + r.Count("pvresize") +
              r.Count("lvextend") ==
          0);
  }
}

TEST_CASE("our own stack is left as it is; a pool missing after an interrupted provision is made") {
  TempDir dir;
  const std::string dev = Device(dir, true);
  const CommandResult ours{0,
                           "  LVM2_PV_NAME='/dev/nbd0' LVM2_PV_UUID='" + kUuid +
                               "' LVM2_VG_NAME='qbd_vg_vm1' LVM2_VG_TAGS='quorumbd-managed=true,quorumbd-volume=vm1'\n"};
  {
    ScriptedRunner r;
    r.answers = {{"pvs", ours}, {"lvs", CommandResult{0, "  pool\n"}}};
    LvmThin lvm(r, "vm1");
    REQUIRE(lvm.Provision(dev, kUuid).ok());
    CHECK(r.Count("pvcreate") + r.Count("vgcreate") + r.Count("lvcreate") == 0);
  }
  {
    ScriptedRunner r;
    r.answers = {{"pvs", ours}, {"lvs", CommandResult{0, ""}}};
    LvmThin lvm(r, "vm1");
    REQUIRE(lvm.Provision(dev, kUuid).ok());
    CHECK(r.Count("pvcreate") + r.Count("vgcreate") == 0);
    CHECK(r.Count("lvcreate --type thin-pool") == 1);
  }
}

TEST_CASE("Grow resizes the PV and extends the pool only when the VG has new extents") {
  TempDir dir;
  const std::string dev = Device(dir, true);
  const CommandResult ours{0,
                           "  LVM2_PV_NAME='/dev/nbd0' LVM2_PV_UUID='x' LVM2_VG_NAME='qbd_vg_vm1' "
                           "LVM2_VG_TAGS='quorumbd-managed=true,quorumbd-volume=vm1'\n"};
  ScriptedRunner r;
  r.answers = {{"pvs", ours}, {"vgs", CommandResult{0, "  0\n"}}};
  LvmThin lvm(r, "vm1");
  REQUIRE(lvm.Grow(dev).ok());
  CHECK(r.Count("pvresize " + dev) == 1);
  CHECK(r.Count("lvextend") == 0);
  r.answers = {{"pvs", ours}, {"vgs", CommandResult{0, "  256\n"}}};
  REQUIRE(lvm.Grow(dev).ok());
  CHECK(r.Count("lvextend -l +95%FREE qbd_vg_vm1/pool") == 1);
}

TEST_CASE("a failing LVM command is an IOError with its output; activation is vgchange") {
  TempDir dir;
  const std::string dev = Device(dir, false);
  ScriptedRunner r;
  r.answers = {{"pvs", kNoPv}, {"vgcreate", CommandResult{5, "  A volume group called qbd_vg_vm1 already exists.\n"}}};
  LvmThin lvm(r, "vm1");
  Status s = lvm.Provision(dev, kUuid);
  CHECK(s.IsIOError());
  CHECK(s.message().find("already exists") != std::string::npos);
  CHECK(r.Count("lvcreate") == 0);
  REQUIRE(lvm.Activate().ok());
  REQUIRE(lvm.Deactivate().ok());
  CHECK(r.Count("vgchange -ay qbd_vg_vm1") == 1);
  CHECK(r.Count("vgchange -an qbd_vg_vm1") == 1);
}

TEST_CASE("PV UUIDs: new ones have LVM's form and differ; bad ones are refused before any command") {
  const std::string a = NewPvUuid(), b = NewPvUuid();
  CHECK(CheckPvUuid(a).ok());
  CHECK(a != b);
  CHECK(CheckPvUuid(kUuid).ok());
  for (const char* bad : {"", "abc", "AbCdEf-0123-4567-89ab-cdef-GHIJ-klmno!", "AbCdEf01234567-89ab-cdef-GHIJ-klmnop-xx"}) {
    CAPTURE(bad);
    CHECK(CheckPvUuid(bad).IsInvalidArgument());
  }
  ScriptedRunner r;
  LvmThin lvm(r, "vm1");
  CHECK(lvm.Provision("/nonexistent", "bad").IsInvalidArgument());
  CHECK(r.ran.empty());
}

TEST_CASE("ProcessRunner returns a child's exit status and its output; a missing program is IOError") {
  ProcessRunner p;
  auto r = p.Run({"sh", "-c", "echo out; echo err >&2; exit 3"});
  REQUIRE(r.ok());
  CHECK(r->exit_code == 3);
  CHECK(r->output.find("out") != std::string::npos);
  CHECK(r->output.find("err") != std::string::npos);
  auto env = p.Run({"sh", "-c", "echo $LVM_SUPPRESS_FD_WARNINGS"});
  REQUIRE(env.ok());
  CHECK(env->output == "1\n");
  CHECK(p.Run({"qbd-no-such-program-here"}).status().IsIOError());
}
}  // TEST_SUITE("lvm_thin")

}  // namespace
}  // namespace qbd::test
