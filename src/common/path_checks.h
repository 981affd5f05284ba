// Checks of paths that qbd.conf names, shared by the configuration's checks (config.cc) and the
// listen addresses' (listen_address.cc). Internal to src/common.
#pragma once

#include <fmt/format.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "qbd/status.h"

namespace qbd {

// The directory that holds `path` (absolute): "/a/b" -> "/a".
inline std::filesystem::path Parent(const std::string& path) {
  std::filesystem::path p(path);
  return p.has_parent_path() ? p.parent_path() : std::filesystem::path("/");
}

// OK when `dir` is an existing directory; else why not ("does not exist", "is not a directory").
inline Status CheckDir(const std::filesystem::path& dir) {
  std::error_code ec;
  auto st = std::filesystem::status(dir, ec);
  if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory) {
    return Status::InvalidArgument(fmt::format("{}: {}", dir.string(), ec.message()));
  }
  if (!std::filesystem::exists(st)) return Status::InvalidArgument(fmt::format("{} does not exist", dir.string()));
  if (!std::filesystem::is_directory(st)) {
    return Status::InvalidArgument(fmt::format("{} is not a directory", dir.string()));
  }
  return Status::OK();
}

}  // namespace qbd
