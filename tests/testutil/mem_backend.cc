#include "mem_backend.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>

namespace qbd::test {

// ---------------------------------------------------------------------------------------------
// MemBackend

namespace {

std::atomic<uint64_t> g_next_mem_id{1};

// One file's bytes. Invariant: `synced` is what a crash would leave of `data`.
struct Node {
  std::mutex mu;
  std::vector<std::byte> data;    // guarded by mu
  std::vector<std::byte> synced;  // guarded by mu
};

std::string Parent(std::string_view path) { return DirName(path); }

std::string BaseName(std::string_view path) {
  size_t slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

}  // namespace

struct MemBackend::State {
  std::string describe;
  mutable std::mutex mu;  // guards the maps below (lock order: mu -> Node::mu)
  std::map<std::string, std::shared_ptr<Node>> files;    // the names as they are now
  std::map<std::string, std::shared_ptr<Node>> durable;  // the names a crash would leave
  std::set<std::string> dirs{""};                        // "" is the root
  std::atomic<bool> punch_hole_supported{true};
  std::atomic<uint64_t> file_syncs{0};
  std::atomic<uint64_t> dir_syncs{0};

  bool IsDir(const std::string& p) const { return dirs.count(p) != 0; }
};

namespace {

class MemFile final : public ChunkFile {
 public:
  MemFile(std::shared_ptr<MemBackend::State> state, std::shared_ptr<Node> node, std::string name)
      : state_(std::move(state)), node_(std::move(node)), name_(std::move(name)) {}

  Status ReadAt(uint64_t offset, std::span<std::byte> out) override {
    std::lock_guard<std::mutex> l(node_->mu);
    const uint64_t size = node_->data.size();
    if (offset > size || out.size() > size - offset) {
      return Status::Corruption(fmt::format("short read {}:{} at {} (size {})", state_->describe,
                                            name_, std::max(offset, size), size));
    }
    std::copy_n(node_->data.begin() + static_cast<ptrdiff_t>(offset), out.size(), out.begin());
    return Status::OK();
  }

  Status WriteAt(uint64_t offset, std::span<const std::byte> in) override {
    std::lock_guard<std::mutex> l(node_->mu);
    if (node_->data.size() < offset + in.size()) node_->data.resize(offset + in.size());
    std::copy(in.begin(), in.end(), node_->data.begin() + static_cast<ptrdiff_t>(offset));
    return Status::OK();
  }

  Status Sync() override {
    std::lock_guard<std::mutex> l(node_->mu);
    node_->synced = node_->data;
    state_->file_syncs.fetch_add(1);
    return Status::OK();
  }

  Status Truncate(uint64_t size) override {
    std::lock_guard<std::mutex> l(node_->mu);
    node_->data.resize(size);
    return Status::OK();
  }

  Result<uint64_t> Size() override {
    std::lock_guard<std::mutex> l(node_->mu);
    return static_cast<uint64_t>(node_->data.size());
  }

  Status PunchHole(uint64_t offset, uint64_t len) override {
    if (!state_->punch_hole_supported.load()) return Status::NotSupported("punch hole " + name_);
    std::lock_guard<std::mutex> l(node_->mu);
    // FALLOC_FL_KEEP_SIZE: the size never changes.
    const uint64_t size = node_->data.size();
    if (offset >= size) return Status::OK();
    const uint64_t end = std::min(size, offset + len);
    std::fill(node_->data.begin() + static_cast<ptrdiff_t>(offset),
              node_->data.begin() + static_cast<ptrdiff_t>(end), std::byte{0});
    return Status::OK();
  }

  bool Detached() override {
    std::lock_guard<std::mutex> l(state_->mu);
    auto it = state_->files.find(name_);
    return it == state_->files.end() || it->second != node_;
  }

 private:
  const std::shared_ptr<MemBackend::State> state_;
  const std::shared_ptr<Node> node_;
  const std::string name_;
};

}  // namespace

MemBackend::MemBackend(std::string name)
    : name_(std::move(name)), id_(g_next_mem_id.fetch_add(1)), state_(std::make_shared<State>()) {
  state_->describe = "mem:" + name_;
}

MemBackend::~MemBackend() = default;

std::string MemBackend::Describe() const { return state_->describe; }

std::string MemBackend::FailureDomain() const { return fmt::format("mem:{}", id_); }

Result<std::unique_ptr<ChunkFile>> MemBackend::Open(std::string_view path) {
  std::lock_guard<std::mutex> l(state_->mu);
  std::string p(path);
  auto it = state_->files.find(p);
  if (it == state_->files.end()) {
    if (state_->IsDir(p)) return Status::IOError(fmt::format("open {}: is a directory", p), EISDIR);
    return Status::NotFound(fmt::format("open {}:{}: no such file", Describe(), p));
  }
  return std::unique_ptr<ChunkFile>(new MemFile(state_, it->second, p));
}

Result<std::unique_ptr<ChunkFile>> MemBackend::Create(std::string_view path) {
  std::lock_guard<std::mutex> l(state_->mu);
  std::string p(path);
  if (state_->IsDir(p)) return Status::IOError(fmt::format("create {}: is a directory", p), EISDIR);
  if (!state_->IsDir(Parent(p))) {
    return Status::NotFound(fmt::format("create {}:{}: no such directory", Describe(), p));
  }
  auto& node = state_->files[p];
  if (node) {
    // O_TRUNC: the same file, emptied (durable only after Sync).
    std::lock_guard<std::mutex> nl(node->mu);
    node->data.clear();
  } else {
    node = std::make_shared<Node>();
  }
  return std::unique_ptr<ChunkFile>(new MemFile(state_, node, p));
}

Status MemBackend::Rename(std::string_view from, std::string_view to) {
  std::lock_guard<std::mutex> l(state_->mu);
  std::string f(from), t(to);
  auto it = state_->files.find(f);
  if (it == state_->files.end()) return Status::NotFound(fmt::format("rename {}: no such file", f));
  if (state_->IsDir(t))
    return Status::IOError(fmt::format("rename to {}: is a directory", t), EISDIR);
  if (!state_->IsDir(Parent(t))) {
    return Status::NotFound(fmt::format("rename to {}: no such directory", t));
  }
  if (f == t) return Status::OK();
  std::shared_ptr<Node> node = it->second;
  state_->files.erase(it);
  state_->files[t] = std::move(node);
  return Status::OK();
}

Status MemBackend::Remove(std::string_view path) {
  std::lock_guard<std::mutex> l(state_->mu);
  std::string p(path);
  if (state_->IsDir(p)) return Status::IOError(fmt::format("unlink {}: is a directory", p), EISDIR);
  if (state_->files.erase(p) == 0)
    return Status::NotFound(fmt::format("unlink {}: no such file", p));
  return Status::OK();
}

Status MemBackend::MkDirs(std::string_view dir) {
  std::lock_guard<std::mutex> l(state_->mu);
  std::string d(dir);
  // Every prefix must be a directory or absent.
  std::vector<std::string> chain;
  for (std::string p = d; !p.empty(); p = Parent(p)) chain.push_back(p);
  for (const auto& p : chain) {
    if (state_->files.count(p)) {
      return Status::IOError(fmt::format("mkdir {}: {} is a file", d, p), ENOTDIR);
    }
  }
  for (const auto& p : chain) state_->dirs.insert(p);
  return Status::OK();
}

Status MemBackend::RemoveDir(std::string_view dir) {
  std::lock_guard<std::mutex> l(state_->mu);
  std::string d(dir);
  if (d.empty()) return Status::IOError("rmdir of the root", EBUSY);
  if (!state_->IsDir(d)) return Status::NotFound(fmt::format("rmdir {}: no such directory", d));
  for (const auto& [p, node] : state_->files) {
    if (Parent(p) == d) return Status::IOError(fmt::format("rmdir {}: not empty", d), ENOTEMPTY);
  }
  for (const auto& p : state_->dirs) {
    if (p != d && !p.empty() && Parent(p) == d) {
      return Status::IOError(fmt::format("rmdir {}: not empty", d), ENOTEMPTY);
    }
  }
  state_->dirs.erase(d);
  // Directories are durable at once (see the header), so their entries go with them.
  for (auto it = state_->durable.begin(); it != state_->durable.end();) {
    it = Parent(it->first) == d ? state_->durable.erase(it) : std::next(it);
  }
  return Status::OK();
}

Status MemBackend::SyncDir(std::string_view dir) {
  std::lock_guard<std::mutex> l(state_->mu);
  std::string d(dir);
  if (!state_->IsDir(d)) return Status::NotFound(fmt::format("fsync dir {}: no such directory", d));
  for (auto it = state_->durable.begin(); it != state_->durable.end();) {
    it = Parent(it->first) == d && !state_->files.count(it->first) ? state_->durable.erase(it)
                                                                   : std::next(it);
  }
  for (const auto& [p, node] : state_->files) {
    if (Parent(p) == d) state_->durable[p] = node;
  }
  state_->dir_syncs.fetch_add(1);
  return Status::OK();
}

Result<FileInfo> MemBackend::Stat(std::string_view path) {
  std::lock_guard<std::mutex> l(state_->mu);
  std::string p(path);
  if (state_->IsDir(p)) return FileInfo{0, true};
  auto it = state_->files.find(p);
  if (it == state_->files.end()) return Status::NotFound(fmt::format("stat {}: no such file", p));
  std::lock_guard<std::mutex> nl(it->second->mu);
  return FileInfo{it->second->data.size(), false};
}

Result<std::vector<std::string>> MemBackend::List(std::string_view dir) {
  std::lock_guard<std::mutex> l(state_->mu);
  std::string d(dir);
  if (!state_->IsDir(d)) return Status::NotFound(fmt::format("opendir {}: no such directory", d));
  std::vector<std::string> names;
  for (const auto& [p, node] : state_->files) {
    if (Parent(p) == d) names.push_back(BaseName(p));
  }
  for (const auto& p : state_->dirs) {
    if (!p.empty() && p != d && Parent(p) == d) names.push_back(BaseName(p));
  }
  return names;
}

void MemBackend::DropUnsynced() {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->files = state_->durable;
  for (auto& [p, node] : state_->files) {
    std::lock_guard<std::mutex> nl(node->mu);
    node->data = node->synced;
  }
}

void MemBackend::SetPunchHoleSupported(bool supported) {
  state_->punch_hole_supported.store(supported);
}

Result<std::vector<std::byte>> MemBackend::Contents(std::string_view path) const {
  std::lock_guard<std::mutex> l(state_->mu);
  auto it = state_->files.find(std::string(path));
  if (it == state_->files.end()) return Status::NotFound(fmt::format("{}: no such file", path));
  std::lock_guard<std::mutex> nl(it->second->mu);
  return it->second->data;
}

std::vector<std::string> MemBackend::FilePaths() const {
  std::lock_guard<std::mutex> l(state_->mu);
  std::vector<std::string> out;
  for (const auto& [p, node] : state_->files) out.push_back(p);
  return out;
}

bool MemBackend::Exists(std::string_view path) const {
  std::lock_guard<std::mutex> l(state_->mu);
  std::string p(path);
  return state_->files.count(p) != 0 || state_->IsDir(p);
}

uint64_t MemBackend::file_syncs() const { return state_->file_syncs.load(); }
uint64_t MemBackend::dir_syncs() const { return state_->dir_syncs.load(); }

// ---------------------------------------------------------------------------------------------
// FaultyBackend

struct FaultyBackend::Faults {
  struct Flip {
    std::string path;
    uint64_t offset;
    int bit;
  };

  std::mutex mu;          // guards everything but the counters
  uint64_t nth_left = 0;  // 0: no FailNth armed
  uint32_t nth_ops = 0;
  std::string nth_path;
  bool match_armed = false;
  std::string match_path;
  uint32_t match_ops = 0;
  double rate = 0;
  uint32_t rate_ops = 0;
  std::mt19937_64 rng;
  std::vector<Flip> flips;
  std::atomic<bool> out_of_space{false};
  std::shared_ptr<const Hook> hook;  // guarded by mu; copied out before it runs
  std::atomic<uint64_t> ops{0};
  std::atomic<uint64_t> injected{0};

  static const char* OpName(Op op) {
    switch (op) {
      case kOpen:
        return "open";
      case kCreate:
        return "create";
      case kRename:
        return "rename";
      case kRemove:
        return "remove";
      case kMkDirs:
        return "mkdirs";
      case kRemoveDir:
        return "rmdir";
      case kSyncDir:
        return "syncdir";
      case kStat:
        return "stat";
      case kList:
        return "list";
      case kRead:
        return "pread";
      case kWrite:
        return "pwrite";
      case kSync:
        return "fsync";
      case kTruncate:
        return "ftruncate";
      case kSize:
        return "fstat";
      case kPunchHole:
        return "punch hole";
    }
    return "?";
  }

  // OK, or the injected failure of `op` on `path`.
  Status Check(Op op, std::string_view path) {
    ops.fetch_add(1);
    std::shared_ptr<const Hook> h;
    {
      std::lock_guard<std::mutex> l(mu);
      h = hook;
    }
    if (h) (*h)(op, path);
    bool fail = false;
    {
      std::lock_guard<std::mutex> l(mu);
      if (nth_left > 0 && (nth_ops & op) && path.find(nth_path) != std::string_view::npos) {
        if (--nth_left == 0) fail = true;
      }
      if (match_armed && (match_ops & op) && path.find(match_path) != std::string_view::npos) {
        fail = true;
      }
      if (rate > 0 && (rate_ops & op)) {
        // Drawn for every matching op, so that a seed replays the same sequence.
        double x = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
        if (x < rate) fail = true;
      }
    }
    if (!fail && out_of_space.load() && (op & (kWrite | kCreate | kTruncate))) {
      injected.fetch_add(1);
      return Status::IOError(fmt::format("{} {}: injected fault: No space left on device", OpName(op), path),
                             ENOSPC);
    }
    if (!fail) return Status::OK();
    injected.fetch_add(1);
    return Status::IOError(
        fmt::format("{} {}: injected fault: Input/output error", OpName(op), path), EIO);
  }

  void ApplyFlips(std::string_view path, uint64_t offset, std::span<std::byte> out) {
    std::lock_guard<std::mutex> l(mu);
    for (const Flip& f : flips) {
      if (f.path != path || f.offset < offset || f.offset - offset >= out.size()) continue;
      out[f.offset - offset] ^= std::byte(1u << f.bit);
      injected.fetch_add(1);
    }
  }
};

namespace {

class FaultyFile final : public ChunkFile {
 public:
  FaultyFile(std::unique_ptr<ChunkFile> inner, std::shared_ptr<FaultyBackend::Faults> faults,
             std::string path)
      : inner_(std::move(inner)), faults_(std::move(faults)), path_(std::move(path)) {}

  Status ReadAt(uint64_t offset, std::span<std::byte> out) override {
    QBD_RETURN_IF_ERROR(faults_->Check(FaultyBackend::kRead, path_));
    QBD_RETURN_IF_ERROR(inner_->ReadAt(offset, out));
    faults_->ApplyFlips(path_, offset, out);
    return Status::OK();
  }
  Status WriteAt(uint64_t offset, std::span<const std::byte> in) override {
    QBD_RETURN_IF_ERROR(faults_->Check(FaultyBackend::kWrite, path_));
    return inner_->WriteAt(offset, in);
  }
  Status Sync() override {
    QBD_RETURN_IF_ERROR(faults_->Check(FaultyBackend::kSync, path_));
    return inner_->Sync();
  }
  void StartSync() override { inner_->StartSync(); }
  Status Truncate(uint64_t size) override {
    QBD_RETURN_IF_ERROR(faults_->Check(FaultyBackend::kTruncate, path_));
    return inner_->Truncate(size);
  }
  Result<uint64_t> Size() override {
    QBD_RETURN_IF_ERROR(faults_->Check(FaultyBackend::kSize, path_));
    return inner_->Size();
  }
  Status PunchHole(uint64_t offset, uint64_t len) override {
    QBD_RETURN_IF_ERROR(faults_->Check(FaultyBackend::kPunchHole, path_));
    return inner_->PunchHole(offset, len);
  }
  bool Detached() override { return inner_->Detached(); }

 private:
  const std::unique_ptr<ChunkFile> inner_;
  const std::shared_ptr<FaultyBackend::Faults> faults_;
  const std::string path_;
};

}  // namespace

FaultyBackend::FaultyBackend(StorageBackend& base)
    : base_(base), mem_(nullptr), faults_(std::make_shared<Faults>()) {}

FaultyBackend::FaultyBackend(MemBackend& base)
    : base_(base), mem_(&base), faults_(std::make_shared<Faults>()) {}

void FaultyBackend::FailNth(uint64_t n, uint32_t ops, std::string_view path_contains) {
  std::lock_guard<std::mutex> l(faults_->mu);
  faults_->nth_left = n;
  faults_->nth_ops = ops;
  faults_->nth_path = std::string(path_contains);
}

void FaultyBackend::FailMatching(std::string_view path_contains, uint32_t ops) {
  std::lock_guard<std::mutex> l(faults_->mu);
  faults_->match_armed = true;
  faults_->match_path = std::string(path_contains);
  faults_->match_ops = ops;
}

void FaultyBackend::FailAtRate(double rate, uint64_t seed, uint32_t ops) {
  std::lock_guard<std::mutex> l(faults_->mu);
  faults_->rate = rate;
  faults_->rate_ops = ops;
  faults_->rng.seed(seed);
}

void FaultyBackend::SetOutOfSpace(bool full) { faults_->out_of_space.store(full); }

Result<uint64_t> FaultyBackend::FreeBytes() {
  if (faults_->out_of_space.load()) return uint64_t{0};
  return base_.FreeBytes();
}

void FaultyBackend::FlipBitOnRead(std::string_view path, uint64_t offset, int bit) {
  std::lock_guard<std::mutex> l(faults_->mu);
  faults_->flips.push_back(Faults::Flip{std::string(path), offset, bit & 7});
}

void FaultyBackend::SetHook(Hook hook) {
  std::lock_guard<std::mutex> l(faults_->mu);
  faults_->hook = hook ? std::make_shared<const Hook>(std::move(hook)) : nullptr;
}

void FaultyBackend::ClearFaults() {
  std::lock_guard<std::mutex> l(faults_->mu);
  faults_->nth_left = 0;
  faults_->match_armed = false;
  faults_->rate = 0;
  faults_->flips.clear();
}

Status FaultyBackend::DropUnsynced() {
  if (mem_ == nullptr) return Status::NotSupported("DropUnsynced: not a MemBackend");
  mem_->DropUnsynced();
  return Status::OK();
}

uint64_t FaultyBackend::ops() const { return faults_->ops.load(); }
uint64_t FaultyBackend::injected() const { return faults_->injected.load(); }

std::string FaultyBackend::Describe() const { return "faulty:" + base_.Describe(); }

Result<std::unique_ptr<ChunkFile>> FaultyBackend::Open(std::string_view path) {
  QBD_RETURN_IF_ERROR(faults_->Check(kOpen, path));
  QBD_ASSIGN_OR_RETURN(auto f, base_.Open(path));
  return std::unique_ptr<ChunkFile>(new FaultyFile(std::move(f), faults_, std::string(path)));
}

Result<std::unique_ptr<ChunkFile>> FaultyBackend::Create(std::string_view path) {
  QBD_RETURN_IF_ERROR(faults_->Check(kCreate, path));
  QBD_ASSIGN_OR_RETURN(auto f, base_.Create(path));
  return std::unique_ptr<ChunkFile>(new FaultyFile(std::move(f), faults_, std::string(path)));
}

Status FaultyBackend::Rename(std::string_view from, std::string_view to) {
  // Matches on either name.
  std::string both = fmt::format("{} -> {}", from, to);
  QBD_RETURN_IF_ERROR(faults_->Check(kRename, both));
  return base_.Rename(from, to);
}

Status FaultyBackend::Remove(std::string_view path) {
  QBD_RETURN_IF_ERROR(faults_->Check(kRemove, path));
  return base_.Remove(path);
}

Status FaultyBackend::MkDirs(std::string_view dir) {
  QBD_RETURN_IF_ERROR(faults_->Check(kMkDirs, dir));
  return base_.MkDirs(dir);
}

Status FaultyBackend::RemoveDir(std::string_view dir) {
  QBD_RETURN_IF_ERROR(faults_->Check(kRemoveDir, dir));
  return base_.RemoveDir(dir);
}

Status FaultyBackend::SyncDir(std::string_view dir) {
  QBD_RETURN_IF_ERROR(faults_->Check(kSyncDir, dir));
  return base_.SyncDir(dir);
}

Result<FileInfo> FaultyBackend::Stat(std::string_view path) {
  QBD_RETURN_IF_ERROR(faults_->Check(kStat, path));
  return base_.Stat(path);
}

Result<std::vector<std::string>> FaultyBackend::List(std::string_view dir) {
  QBD_RETURN_IF_ERROR(faults_->Check(kList, dir));
  return base_.List(dir);
}

// ---------------------------------------------------------------------------------------------
// Helpers

Result<std::vector<std::byte>> ReadWholeFile(StorageBackend& backend, std::string_view path) {
  QBD_ASSIGN_OR_RETURN(auto file, backend.Open(path));
  QBD_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  std::vector<std::byte> out(size);
  QBD_RETURN_IF_ERROR(file->ReadAt(0, out));
  return out;
}

Status FlipByte(StorageBackend& backend, std::string_view path, uint64_t offset, std::byte mask) {
  QBD_ASSIGN_OR_RETURN(auto file, backend.Open(path));
  std::byte b{};
  QBD_RETURN_IF_ERROR(file->ReadAt(offset, std::span(&b, 1)));
  b ^= mask;
  QBD_RETURN_IF_ERROR(file->WriteAt(offset, std::span<const std::byte>(&b, 1)));
  return file->Sync();
}

Status WriteWholeFile(StorageBackend& backend, std::string_view path,
                      std::span<const std::byte> contents) {
  QBD_ASSIGN_OR_RETURN(auto file, backend.Create(path));
  QBD_RETURN_IF_ERROR(file->WriteAt(0, contents));
  return file->Sync();
}

}  // namespace qbd::test
