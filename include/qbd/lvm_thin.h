// LvmThin: the LVM stack qbd provisions on an attached volume for Proxmox's `lvmthin` storage:
// one PV (the whole device, with a UUID qbd chooses and records in the volume's .meta), a VG
// `qbd_vg_<volume>` tagged `quorumbd-volume=<volume>` and `quorumbd-managed=true`, and a thin pool
// LV `pool` in it using most of the VG (what is left is room for the pool's metadata to grow).
//
// qbd never touches a device that is not its own: a device is ours only when it is empty (its
// first MiB reads as zeros: a fresh volume) or when it holds a PV whose VG has our name and both
// tags; anything else (a filesystem, another PV or VG, a VG without the tags) is refused.
//
// The LVM tools run as child processes (argument vectors, no shell) through a CommandRunner, which
// tests replace.
//
// Thread-safety: one LvmThin per volume, used by one thread at a time.
#pragma once

#include <string>
#include <vector>

#include "qbd/status.h"

namespace qbd {

struct CommandResult {
  int exit_code = 0;   // the child's exit status (128 + N when signal N ended it)
  std::string output;  // stdout and stderr, interleaved
};

class CommandRunner {
 public:
  virtual ~CommandRunner() = default;
  // Runs argv[0] (looked up in PATH) with argv. IOError when it cannot be started.
  virtual Result<CommandResult> Run(const std::vector<std::string>& argv) = 0;
};

// Runs commands as child processes (fork and exec; stdin from /dev/null; LVM's warnings about
// inherited descriptors suppressed).
class ProcessRunner : public CommandRunner {
 public:
  Result<CommandResult> Run(const std::vector<std::string>& argv) override;
};

// A new PV UUID as LVM writes them: 32 characters of [A-Za-z0-9] in groups 6-4-4-4-4-4-6.
std::string NewPvUuid();
// OK when `uuid` has that form.
Status CheckPvUuid(const std::string& uuid);

class LvmThin {
 public:
  enum class Ownership { kEmpty, kOurs, kForeign };
  static constexpr char kPoolName[] = "pool";
  static constexpr char kManagedTag[] = "quorumbd-managed=true";

  // `runner` must outlive this.
  LvmThin(CommandRunner& runner, std::string volume);

  const std::string& vg() const { return vg_; }
  std::string volume_tag() const { return "quorumbd-volume=" + volume_; }
  // "qbd_vg_<volume>/pool", as Proxmox's storage.cfg names it (vgname, thinpool).
  std::string pool_path() const { return vg_ + "/" + kPoolName; }

  // Whose `device` is; `why` says what was found when it is foreign; `pv_uuid` gets the UUID of
  // the PV on it, if any.
  Result<Ownership> Inspect(const std::string& device, std::string* why = nullptr,
                            std::string* pv_uuid = nullptr);
  // On an empty device: pvcreate with `pv_uuid`, vgcreate with the tags, the thin pool. On a device
  // already ours: nothing (idempotent). InvalidArgument naming what was found on a foreign one.
  Status Provision(const std::string& device, const std::string& pv_uuid);
  Status Activate();    // vgchange -ay
  Status Deactivate();  // vgchange -an
  // After the device grew: pvresize, then the pool takes most of the new room (lvextend).
  Status Grow(const std::string& device);

 private:
  // Runs argv; IOError with its output when it exits non-zero.
  Result<std::string> Must(const std::vector<std::string>& argv);

  CommandRunner& runner_;
  const std::string volume_;
  const std::string vg_;
};

}  // namespace qbd
