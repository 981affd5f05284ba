// BlockHandler: qbd-master's request path, in device byte offsets.
//
// The NBD server calls one BlockHandler per export. Handlers form a tree, assembled by BuildChain
// (qbd/chain.h; [optional] layers):
//   NbdServer -> Stats -> Qos -> [Fence] -> [Cache] -> [SsdCache] -> QuorumSet -+-> PartStore(a)
//                                                                                +-> PartStore(b) ...
// Stateless layers (stats, QoS, logging, fault injection) derive from Layer, which forwards every call,
// and override what they observe. Stateful layers (cache, quorum) derive from BlockHandler directly,
// so that adding an operation is a compile error until each of them handles it.
//
// Callers (the NBD server) check ranges against Size() before calling; handlers check again and
// return InvalidArgument for a range past the end. A Status's Errno() becomes the NBD error.
//
// Thread-safety: every BlockHandler is safe for concurrent calls from many threads; overlapping
// concurrent writes land in some order, identically on every replica.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "qbd/status.h"

namespace qbd {

// One run of a BLOCK_STATUS base:allocation answer.
struct Extent {
  uint64_t length = 0;
  bool hole = false;  // NBD_STATE_HOLE: no storage allocated
  bool zero = false;  // NBD_STATE_ZERO: reads return zeros
};

class BlockHandler {
 public:
  virtual ~BlockHandler() = default;

  // The device size in bytes. May grow while serving (qbdctl resize).
  virtual uint64_t Size() const = 0;

  // Fills all of `out` with the bytes at [off, off + out.size()). Never-written bytes read as
  // zeros. Corruption or IOError when no good copy could be read.
  virtual Status Read(uint64_t off, std::span<std::byte> out) = 0;

  // Stores `in` at `off`. When it returns OK the write is on a write quorum; with `fua` it is also
  // durable there. Unavailable when the quorum is lost.
  virtual Status Write(uint64_t off, std::span<const std::byte> in, bool fua) = 0;

  // Makes every write acknowledged before the call durable on a write quorum.
  virtual Status Flush() = 0;

  // [off, off + len) reads back as zeros afterwards; space is given back where the backend allows.
  virtual Status Trim(uint64_t off, uint64_t len, bool fua) = 0;

  // [off, off + len) reads back as zeros afterwards. With `may_trim` false (NBD_CMD_FLAG_NO_HOLE)
  // the storage stays allocated.
  virtual Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) = 0;

  // Describes [off, off + len) as a run of extents starting at `off`, covering at least one byte
  // and at most `len`. NotSupported when the handler cannot tell (the caller reports "allocated").
  virtual Result<std::vector<Extent>> BlockStatus(uint64_t off, uint64_t len) = 0;
};

// A handler that forwards every call to the next one; base of the stateless layers.
class Layer : public BlockHandler {
 public:
  explicit Layer(std::unique_ptr<BlockHandler> next) : next_(std::move(next)) {}

  uint64_t Size() const override { return next_->Size(); }
  Status Read(uint64_t off, std::span<std::byte> out) override { return next_->Read(off, out); }
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override {
    return next_->Write(off, in, fua);
  }
  Status Flush() override { return next_->Flush(); }
  Status Trim(uint64_t off, uint64_t len, bool fua) override { return next_->Trim(off, len, fua); }
  Status WriteZeroes(uint64_t off, uint64_t len, bool may_trim, bool fua) override {
    return next_->WriteZeroes(off, len, may_trim, fua);
  }
  Result<std::vector<Extent>> BlockStatus(uint64_t off, uint64_t len) override {
    return next_->BlockStatus(off, len);
  }

 protected:
  BlockHandler& next() { return *next_; }
  const BlockHandler& next() const { return *next_; }

 private:
  std::unique_ptr<BlockHandler> next_;
};

}  // namespace qbd
