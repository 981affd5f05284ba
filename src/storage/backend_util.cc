// Helpers over any StorageBackend: small metadata files, written atomically.
#include <unistd.h>

#include <atomic>
#include <string>

#include "qbd/backend.h"

namespace qbd {

std::string DirName(std::string_view path) {
  size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return "";
  return std::string(path.substr(0, slash));
}

Result<std::string> ReadSmallFile(StorageBackend& backend, std::string_view path) {
  QBD_ASSIGN_OR_RETURN(auto file, backend.Open(path));
  QBD_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  if (size > (16u << 20)) return Status::Corruption(std::string(path) + ": too large for a metadata file");
  std::string data(size, '\0');
  QBD_RETURN_IF_ERROR(file->ReadAt(0, std::as_writable_bytes(std::span<char>(data))));
  return data;
}

Status WriteFileAtomic(StorageBackend& backend, std::string_view path, std::string_view contents) {
  static std::atomic<uint64_t> counter{0};
  std::string dir = DirName(path);
  // The pid keeps two processes (qbd-master, qbd-repair) off each other's temp files.
  std::string tmp = std::string(path) + ".tmp." + std::to_string(::getpid()) + std::to_string(1000000 + counter.fetch_add(1));
  {
    QBD_ASSIGN_OR_RETURN(auto file, backend.Create(tmp));
    QBD_RETURN_IF_ERROR(file->WriteAt(0, std::as_bytes(std::span<const char>(contents))));
    QBD_RETURN_IF_ERROR(file->Sync());
  }
  Status s = backend.Rename(tmp, path);
  if (!s.ok()) {
    backend.Remove(tmp).IgnoreError();  // best effort: the rename error is what matters
    return s;
  }
  return backend.SyncDir(dir);
}

Result<std::vector<DirEntry>> StorageBackend::ListInfo(std::string_view dir) {
  QBD_ASSIGN_OR_RETURN(std::vector<std::string> names, List(dir));
  std::vector<DirEntry> out;
  out.reserve(names.size());
  const std::string prefix = dir.empty() ? "" : std::string(dir) + "/";
  for (std::string& n : names) {
    auto info = Stat(prefix + n);
    if (info.status().IsNotFound()) continue;  // removed meanwhile
    QBD_RETURN_IF_ERROR(info.status());
    out.push_back(DirEntry{std::move(n), *info});
  }
  return out;
}

}  // namespace qbd
