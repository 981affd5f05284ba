// TempDir: a fresh directory under /tmp (mkdtemp), removed with everything in it when the object
// goes out of scope. For tests that need a real file system (LocalDirBackend, config files).
//
// Thread-safety: the object is a value; the directory is the caller's to share.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace qbd::test {

class TempDir {
 public:
  // Throws std::runtime_error (a test failure) when mkdtemp fails.
  explicit TempDir(const std::string& prefix = "qbd-test") {
    std::string tmpl = "/tmp/" + prefix + ".XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      throw std::runtime_error("mkdtemp " + tmpl + ": " + std::strerror(errno));
    }
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);  // best effort: a leftover only costs /tmp space
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace qbd::test
