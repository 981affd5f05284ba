// Implements include/qbd/process_lock.h.
#include "qbd/process_lock.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "qbd/log.h"

namespace qbd {
namespace {

std::string Holder(int fd) {
  char buf[256] = {};
  ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  std::string holder =
      n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("another process");
  while (!holder.empty() && holder.back() == '\n') holder.pop_back();
  return holder;
}

}  // namespace

Result<std::unique_ptr<ProcessLock>> ProcessLock::Acquire(const std::string& path,
                                                          const std::string& who) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno("open " + path, errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string holder = Holder(fd);
    ::close(fd);
    if (err == EWOULDBLOCK)
      return Status::Unavailable(fmt::format("{} is held by {}", path, holder));
    return Status::FromErrno("flock " + path, err);
  }
  std::string text = fmt::format("{} (pid {})\n", who, ::getpid());
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, text.data(), text.size(), 0) < 0) {
    QBD_LOG_WARN("{}: cannot record the pid: {}", path, std::strerror(errno));
  }
  std::unique_ptr<ProcessLock> l(new ProcessLock());
  l->fd_ = fd;
  return l;
}

std::optional<std::string> ProcessLock::HeldBy(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  std::optional<std::string> holder;
  if (::fstat(fd, &st) == 0) {
    // /proc/locks names each flock by its file ("MAJ:MIN:INODE", in hex, hex, decimal). Taking a
    // shared lock to test would make a qbd-master starting at that moment fail to take its own.
    const std::string file =
        fmt::format("{:02x}:{:02x}:{}", major(st.st_dev), minor(st.st_dev), st.st_ino);
    std::ifstream locks("/proc/locks");
    std::string line;
    while (std::getline(locks, line)) {
      std::istringstream ls(line);
      std::string n, kind, advisory, mode, pid, id;
      if (!(ls >> n >> kind)) continue;
      if (kind == "->") continue;  // a process waiting for a lock holds none
      if (ls >> advisory >> mode >> pid >> id && kind == "FLOCK" && mode == "WRITE" && id == file) {
        holder = Holder(fd);
        break;
      }
    }
  }
  ::close(fd);
  return holder;
}

ProcessLock::~ProcessLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace qbd
