// LocalDirBackend: a StorageBackend rooted at a local directory. The only file that calls
// open/pread/pwrite/fsync on chunk files (the NFS backend reaches its files through libnfs).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <string>

#include <fmt/format.h>

#include "qbd/backend.h"

namespace qbd {
namespace {

class LocalFile final : public ChunkFile {
 public:
  LocalFile(int fd, std::string name) : fd_(fd), name_(std::move(name)) {
    struct stat st;
    if (::fstat(fd_, &st) == 0) {
      dev_ = st.st_dev;
      ino_ = st.st_ino;
    }
  }
  ~LocalFile() override { ::close(fd_); }

  Status ReadAt(uint64_t offset, std::span<std::byte> out) override {
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("pread " + name_, errno);
      }
      if (n == 0) {
        return Status::Corruption("short read " + name_ + " at " + std::to_string(offset + done));
      }
      done += static_cast<size_t>(n);
    }
    return Status::OK();
  }

  Status WriteAt(uint64_t offset, std::span<const std::byte> in) override {
    size_t done = 0;
    while (done < in.size()) {
      ssize_t n = ::pwrite(fd_, in.data() + done, in.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("pwrite " + name_, errno);
      }
      done += static_cast<size_t>(n);
    }
    return Status::OK();
  }

  Status ReadAtV(uint64_t offset, std::span<const std::span<std::byte>> out) override {
    return Vectored(offset, out.data(), out.size(), /*write=*/false);
  }

  Status WriteAtV(uint64_t offset, std::span<const std::span<const std::byte>> in) override {
    return Vectored(offset, in.data(), in.size(), /*write=*/true);
  }

  Status Sync() override {
    if (::fdatasync(fd_) != 0) return Status::FromErrno("fdatasync " + name_, errno);
    return Status::OK();
  }

  void StartSync() override { ::sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE); }

  void WillNeed(uint64_t offset, uint64_t len) override {
    ::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(len), POSIX_FADV_WILLNEED);
  }

  Status Truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return Status::FromErrno("ftruncate " + name_, errno);
    }
    return Status::OK();
  }

  Result<uint64_t> Size() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Status::FromErrno("fstat " + name_, errno);
    return static_cast<uint64_t>(st.st_size);
  }

  Status PunchHole(uint64_t offset, uint64_t len) override {
    if (len == 0) return Status::OK();
    if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                    static_cast<off_t>(len)) != 0) {
      if (errno == EOPNOTSUPP) return Status::NotSupported("punch hole " + name_);
      return Status::FromErrno("punch hole " + name_, errno);
    }
    return Status::OK();
  }

  // The page cache sizes a new folio after the write that creates it (up to 2 MiB on Linux 6.x
  // ext4), and ext4 walks every block of a folio on each buffered write into it: after a file
  // was filled with 1 MiB writes, a 4 KiB write cost 3x more than after 64 KiB ones (fio on this
  // file system), for qbd three times per request with three parts. Writes are therefore cut at
  // aligned windows of this many file bytes, which bounds the folios they create; 256 KiB took
  // 20-30% off the CPU of random 4 KiB writes and cost little on 1 MiB ones (4 syscalls more).
  static constexpr size_t kWriteWindow = 256 << 10;

  // preadv/pwritev of `count` buffers in batches of at most kMaxIov, resuming after short
  // transfers. A read that meets the end of the file is Corruption, as in ReadAt.
  template <typename Span>
  Status Vectored(uint64_t offset, const Span* bufs, size_t count, bool write) {
    constexpr size_t kMaxIov = 1024;  // IOV_MAX on Linux
    iovec iov[kMaxIov];
    size_t next = 0;  // the first buffer not yet in `iov`
    size_t skip = 0;  // bytes of bufs[next] already transferred (after a short transfer)
    uint64_t pos = offset;
    while (next < count) {
      int n = 0;
      size_t want = 0;
      // A write stops at the next kWriteWindow boundary of the file (see there).
      const size_t room = write ? kWriteWindow - pos % kWriteWindow : SIZE_MAX;
      for (size_t i = next; i < count && n < static_cast<int>(kMaxIov) && want < room; ++i) {
        const size_t from = i == next ? skip : 0;
        iov[n].iov_base = const_cast<std::byte*>(bufs[i].data()) + from;
        iov[n].iov_len = std::min(bufs[i].size() - from, room - want);
        want += iov[n].iov_len;
        ++n;
      }
      ssize_t got = write ? ::pwritev(fd_, iov, n, static_cast<off_t>(pos))
                          : ::preadv(fd_, iov, n, static_cast<off_t>(pos));
      if (got < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno((write ? "pwritev " : "preadv ") + name_, errno);
      }
      if (got == 0 && want > 0) {
        if (write) return Status::IOError("pwritev " + name_ + ": no progress", EIO);
        return Status::Corruption("short read " + name_ + " at " + std::to_string(pos));
      }
      pos += static_cast<uint64_t>(got);
      // Advance past what was transferred.
      auto left = static_cast<size_t>(got);
      while (next < count && left >= bufs[next].size() - skip) {
        left -= bufs[next].size() - skip;
        skip = 0;
        ++next;
      }
      skip += left;
    }
    return Status::OK();
  }

  bool Detached() override {
    // The name must still lead to the inode this handle has open: catches rm, rename-over and
    // rename-aside-then-replace alike, in one stat.
    struct stat st;
    return ::stat(name_.c_str(), &st) != 0 || st.st_ino != ino_ || st.st_dev != dev_;
  }

 private:
  const int fd_;
  const std::string name_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

class LocalDirBackend final : public StorageBackend {
 public:
  LocalDirBackend(std::string root, dev_t dev) : root_(std::move(root)), dev_(dev) {}

  std::string Describe() const override { return "local:" + root_; }
  // The file system holding the directory, as `stat -c %D` and /proc/self/mountinfo name it.
  std::string FailureDomain() const override {
    return fmt::format("the file system on device {}:{}", major(dev_), minor(dev_));
  }

  Result<std::unique_ptr<ChunkFile>> Open(std::string_view path) override {
    std::string full = Full(path);
    int fd = ::open(full.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno("open " + full, errno);
    return std::unique_ptr<ChunkFile>(new LocalFile(fd, full));
  }

  Result<std::unique_ptr<ChunkFile>> Create(std::string_view path) override {
    std::string full = Full(path);
    int fd = ::open(full.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return Status::FromErrno("create " + full, errno);
    return std::unique_ptr<ChunkFile>(new LocalFile(fd, full));
  }

  Status Rename(std::string_view from, std::string_view to) override {
    std::string f = Full(from), t = Full(to);
    if (::rename(f.c_str(), t.c_str()) != 0) return Status::FromErrno("rename " + f + " " + t, errno);
    return Status::OK();
  }

  Status Remove(std::string_view path) override {
    std::string full = Full(path);
    if (::unlink(full.c_str()) != 0) return Status::FromErrno("unlink " + full, errno);
    return Status::OK();
  }

  Status MkDirs(std::string_view dir) override {
    // Only below the backend's own directory: when it was moved away, removed or unmounted, a
    // bare one in its place would take writes meant for the missing disk.
    struct stat st;
    if (::stat(root_.c_str(), &st) != 0) {
      return Status::FromErrno(root_ + " is gone (moved, removed or its disk unmounted)", errno);
    }
    if (st.st_dev != dev_) {
      return Status::IOError(fmt::format("{} is now on another file system than when it was opened (its disk "
                                         "unmounted?)", root_), EIO);
    }
    std::error_code ec;
    std::filesystem::create_directories(Full(dir), ec);
    if (ec) return Status::IOError("mkdir " + Full(dir) + ": " + ec.message(), ec.value());
    return Status::OK();
  }

  Status RemoveDir(std::string_view dir) override {
    std::string full = Full(dir);
    if (::rmdir(full.c_str()) != 0) return Status::FromErrno("rmdir " + full, errno);
    return Status::OK();
  }

  Status SyncDir(std::string_view dir) override {
    std::string full = Full(dir);
    int fd = ::open(full.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno("open dir " + full, errno);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return Status::FromErrno("fsync dir " + full, err);
    return Status::OK();
  }

  Result<uint64_t> FreeBytes() override {
    struct statvfs sv;
    if (::statvfs(root_.c_str(), &sv) != 0) return Status::FromErrno("statvfs " + root_, errno);
    return static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
  }

  Result<FileInfo> Stat(std::string_view path) override {
    std::string full = Full(path);
    struct stat st;
    if (::stat(full.c_str(), &st) != 0) return Status::FromErrno("stat " + full, errno);
    return FileInfo{static_cast<uint64_t>(st.st_size), S_ISDIR(st.st_mode)};
  }

  Result<std::vector<std::string>> List(std::string_view dir) override {
    std::string full = Full(dir);
    DIR* d = ::opendir(full.c_str());
    if (d == nullptr) return Status::FromErrno("opendir " + full, errno);
    std::vector<std::string> names;
    while (struct dirent* e = ::readdir(d)) {
      std::string_view n = e->d_name;
      if (n == "." || n == "..") continue;
      names.emplace_back(n);
    }
    ::closedir(d);
    return names;
  }

  Result<std::vector<DirEntry>> ListInfo(std::string_view dir) override {
    std::string full = Full(dir);
    DIR* d = ::opendir(full.c_str());
    if (d == nullptr) return Status::FromErrno("opendir " + full, errno);
    std::vector<DirEntry> out;
    Status err;
    while (struct dirent* e = ::readdir(d)) {
      std::string_view n = e->d_name;
      if (n == "." || n == "..") continue;
      struct stat st;
      if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;  // removed meanwhile
        err = Status::FromErrno("stat " + full + "/" + std::string(n), errno);
        break;
      }
      out.push_back(DirEntry{std::string(n), FileInfo{static_cast<uint64_t>(st.st_size), S_ISDIR(st.st_mode)}});
    }
    ::closedir(d);
    if (!err.ok()) return err;
    return out;
  }

 private:
  std::string Full(std::string_view path) const {
    std::string s = root_;
    if (!path.empty()) {
      s += '/';
      s += path;
    }
    return s;
  }

  const std::string root_;
  const dev_t dev_;
};

}  // namespace

Result<std::unique_ptr<StorageBackend>> NewLocalDirBackend(const std::string& root, bool create_if_missing) {
  struct stat st;
  if (::stat(root.c_str(), &st) != 0 && errno == ENOENT) {
    if (!create_if_missing) {
      return Status::NotFound(root + " does not exist (is its disk mounted?)");
    }
    std::error_code ec;
    std::filesystem::create_directories(root, ec);
    if (ec) return Status::IOError("mkdir " + root + ": " + ec.message(), ec.value());
  }
  if (::stat(root.c_str(), &st) != 0) return Status::FromErrno("stat " + root, errno);
  if (!S_ISDIR(st.st_mode)) return Status::InvalidArgument(root + " is not a directory");
  std::string r = root;
  while (r.size() > 1 && r.back() == '/') r.pop_back();
  return std::unique_ptr<StorageBackend>(new LocalDirBackend(r, st.st_dev));
}

}  // namespace qbd
