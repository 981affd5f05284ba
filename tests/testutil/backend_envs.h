// The backends that backend-level tests run on, one fixture each: TEST_CASE_TEMPLATE(..., E,
// MemEnv, LocalEnv) runs a test over MemBackend and over a real LocalDirBackend in a TempDir;
// RemoteMemEnv is a MemBackend that says it is remote (IsRemote), as NfsBackend does, for the
// code that acts on that (PartStore's cached slot pairs).
#pragma once

#include <doctest/doctest.h>

#include <memory>

#include "qbd/backend.h"
#include "mem_backend.h"
#include "temp_dir.h"

namespace qbd::test {

struct MemEnv {
  MemBackend mem{"mem-env"};
  StorageBackend& backend() { return mem; }
};

class RemoteMemBackend : public MemBackend {
 public:
  using MemBackend::MemBackend;
  bool IsRemote() const override { return true; }
};

struct RemoteMemEnv {
  RemoteMemBackend mem{"remote-mem-env"};
  StorageBackend& backend() { return mem; }
};

struct LocalEnv {
  TempDir dir;
  std::unique_ptr<StorageBackend> local;
  LocalEnv() {
    auto b = NewLocalDirBackend(dir.Sub("root"));
    REQUIRE(b.ok());
    local = std::move(b).value();
  }
  StorageBackend& backend() { return *local; }
};

}  // namespace qbd::test
