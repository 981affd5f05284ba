// Tests of NbdRemote (qbd/nbd_remote.h) and ForwardHandler (qbd/forward.h) against a real
// NbdServer on a loopback port: forwarding, the switch to a local handler with the requests the
// holder dropped run there in their order of arrival, reconnection, failure and the wait bound.
#include "qbd/forward.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "qbd/nbd_remote.h"
#include "qbd/nbd_server.h"
#include "testutil/mem_disk.h"

namespace qbd {
namespace {

using test::MemDisk;

class OneExport : public ExportRegistry {
 public:
  explicit OneExport(std::shared_ptr<const Export> e) : e_(std::move(e)) {}
  std::vector<std::string> List() const override { return {e_->name}; }
  std::shared_ptr<const Export> Find(std::string_view name) const override {
    return name == e_->name ? e_ : nullptr;
  }

 private:
  std::shared_ptr<const Export> e_;
};

template <class Pred>
void WaitFor(Pred p) {
  while (!p()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

// A disk whose writes wait at a gate while it is closed, counting the writes that arrived.
class GatedDisk : public MemDisk {
 public:
  using MemDisk::MemDisk;
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override {
    std::unique_lock l(mu_);
    ++arrived_;
    cv_.notify_all();
    cv_.wait(l, [&] { return open_; });
    l.unlock();
    return MemDisk::Write(off, in, fua);
  }
  void Close() {
    std::lock_guard l(mu_);
    open_ = false;
  }
  void Open() {
    std::lock_guard l(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void WaitArrived(int n) {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return arrived_ >= n; });
  }
  // WaitArrived, giving up after `ms` (a request path that serializes would never get there).
  bool WaitArrivedFor(int n, int ms) {
    std::unique_lock l(mu_);
    return cv_.wait_for(l, std::chrono::milliseconds(ms), [&] { return arrived_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  int arrived_ = 0;
};

// A local handler that records the first byte of every write, in order.
class RecordingDisk : public MemDisk {
 public:
  using MemDisk::MemDisk;
  Status Write(uint64_t off, std::span<const std::byte> in, bool fua) override {
    {
      std::lock_guard l(mu_);
      order_.push_back(static_cast<int>(in[0]));
    }
    return MemDisk::Write(off, in, fua);
  }
  std::vector<int> order() {
    std::lock_guard l(mu_);
    return order_;
  }

 private:
  std::mutex mu_;
  std::vector<int> order_;
};

struct Holder {
  // Closes the connections serving "vol" once `n` of them chose it: a connection records its
  // export just after the handshake's reply, so one closed right after Connect may not have yet.
  void CloseAll(size_t n) {
    WaitFor([&] { return server->Peers("vol").size() >= n; });
    CHECK(server->Disconnect("vol") == n);
  }

  explicit Holder(std::shared_ptr<BlockHandler> disk) {
    auto e = std::make_shared<Export>();
    e->name = "vol";
    e->handler = std::move(disk);
    registry = std::make_unique<OneExport>(std::move(e));
    server = std::make_unique<NbdServer>(*registry, NbdServerOptions{});
    REQUIRE(server->Listen("127.0.0.1:0").ok());
    address = server->BoundAddresses()[0];
  }
  ~Holder() { server->Stop(); }
  std::unique_ptr<OneExport> registry;
  std::unique_ptr<NbdServer> server;
  std::string address;
};

// Opens the gate when the test ends, however it ends, so that the server's threads can finish.
struct OpenAtEnd {
  GatedDisk& d;
  ~OpenAtEnd() { d.Open(); }
};

std::vector<std::byte> Bytes(size_t n, uint8_t v) { return std::vector<std::byte>(n, std::byte{v}); }

std::shared_ptr<NbdRemote> Connect(const std::string& address, int n = 2) {
  auto r = NbdRemote::Connect(address, "vol", n);
  REQUIRE(r.ok());
  return std::move(r).value();
}


TEST_CASE("NbdRemote: requests reach the server, its errors come back, its peers are our local ends") {
  auto disk = std::make_shared<MemDisk>(1 << 20);
  Holder h(disk);
  auto remote = Connect(h.address, 3);
  CHECK(remote->info().size == (1u << 20));
  CHECK(remote->Live() == 3);
  auto data = Bytes(8192, 0x5a);
  CHECK(remote->Write(4096, data, true).status.ok());
  std::vector<std::byte> back(8192);
  CHECK(remote->Read(4096, back).status.ok());
  CHECK(back == data);
  CHECK(remote->Flush().status.ok());
  CHECK(remote->Trim(4096, 4096, false).status.ok());
  CHECK(remote->WriteZeroes(8192, 4096, true, false).status.ok());
  CHECK(disk->Contents(4096, 8192) == Bytes(8192, 0));
  disk->FailNext(Status::IOError("bad sector", ENOSPC));
  NbdRemote::Reply r = remote->Write(0, data, false);
  CHECK_FALSE(r.lost);
  CHECK(r.status.Errno() == ENOSPC);
  // The server sees our sockets' local ends as its peers (what a migration request names).
  std::vector<std::string> peers = h.server->Peers("vol");
  std::vector<std::string> ours = remote->LocalEndpoints();
  std::sort(peers.begin(), peers.end());
  std::sort(ours.begin(), ours.end());
  CHECK(peers == ours);
  CHECK(ours.size() == 3);
}

TEST_CASE("NbdRemote: a connection closed by the server fails its waiting requests as lost") {
  auto disk = std::make_shared<GatedDisk>(1 << 20);
  Holder h(disk);
  auto remote = Connect(h.address, 1);
  OpenAtEnd open{*disk};
  disk->Close();
  NbdRemote::Reply r;
  std::thread t([&] { r = remote->Write(0, Bytes(4096, 1), false); });
  disk->WaitArrived(1);
  CHECK(h.server->Disconnect("vol") == 1);
  t.join();
  CHECK(r.lost);
  CHECK(r.status.IsUnavailable());
  WaitFor([&] { return remote->Live() == 0; });
  CHECK(remote->Write(0, Bytes(4096, 1), false).lost);  // no connection left
}

TEST_CASE("ForwardHandler: forwards, then switches; dropped writes run locally in arrival order") {
  auto disk = std::make_shared<GatedDisk>(1 << 20);
  Holder h(disk);
  ForwardHandler f("vol", Connect(h.address), 60000);
  OpenAtEnd open{*disk};
  CHECK(f.Size() == (1u << 20));
  CHECK(f.Write(0, Bytes(4096, 7), false).ok());
  CHECK(disk->Contents(0, 4096) == Bytes(4096, 7));
  CHECK(f.BlockStatus(0, 4096).status().IsNotSupported());

  // Two writes of the same block with different data reach the holder, which stops before
  // carrying them out and closes the connections (it lets go of the volume).
  disk->Close();
  Status s1, s2;
  std::thread w1([&] { s1 = f.Write(0, Bytes(4096, 1), false); });
  disk->WaitArrived(2);  // the one written above, then w1's
  std::thread w2([&] { s2 = f.Write(0, Bytes(4096, 2), false); });
  disk->WaitArrived(3);
  h.CloseAll(2);
  WaitFor([&] { return f.Waiting() == 2; });
  CHECK_FALSE(f.switched());

  auto local = std::make_shared<RecordingDisk>(1 << 20);
  f.SwitchTo(local);
  w1.join();
  w2.join();
  CHECK(s1.ok());
  CHECK(s2.ok());
  CHECK(f.switched());
  CHECK(f.remote() == nullptr);
  // The first to arrive ran first: the later data is what stays.
  CHECK(local->order() == std::vector<int>{1, 2});
  CHECK(local->Contents(0, 4096) == Bytes(4096, 2));
  // Later requests go to the local handler directly.
  CHECK(f.Write(8192, Bytes(4096, 3), false).ok());
  std::vector<std::byte> back(4096);
  CHECK(f.Read(8192, back).ok());
  CHECK(back == Bytes(4096, 3));
  CHECK(f.BlockStatus(0, 4096).ok());
}

TEST_CASE("ForwardHandler: once switched, requests run on the local handler side by side") {
  auto disk = std::make_shared<MemDisk>(1 << 20);
  Holder h(disk);
  ForwardHandler f("vol", Connect(h.address, 1), 60000);
  auto local = std::make_shared<GatedDisk>(1 << 20);
  OpenAtEnd open{*local};
  f.SwitchTo(local);
  local->Close();
  Status s1, s2;
  std::thread w1([&] { s1 = f.Write(0, Bytes(4096, 1), false); });
  REQUIRE(local->WaitArrivedFor(1, 10000));
  std::thread w2([&] { s2 = f.Write(8192, Bytes(4096, 2), false); });
  // The second reaches the local handler while the first is still inside it.
  CHECK(local->WaitArrivedFor(2, 10000));
  local->Open();
  w1.join();
  w2.join();
  CHECK(s1.ok());
  CHECK(s2.ok());
}

// A handler forwarding to `h` over one connection, which the holder then closed.
std::unique_ptr<ForwardHandler> Stranded(Holder& h, uint64_t max_wait_ms) {
  auto f = std::make_unique<ForwardHandler>("vol", Connect(h.address, 1), max_wait_ms);
  h.CloseAll(1);
  WaitFor([&] { return f->remote()->Live() == 0; });
  return f;
}

TEST_CASE("ForwardHandler: a new connection to the holder takes the waiting requests") {
  auto disk = std::make_shared<MemDisk>(1 << 20);
  Holder h(disk);
  auto f = Stranded(h, 60000);
  Status s;
  std::thread w([&] { s = f->Write(4096, Bytes(4096, 9), false); });
  WaitFor([&] { return f->Waiting() == 1; });
  f->SetRemote(Connect(h.address, 1));
  w.join();
  CHECK(s.ok());
  CHECK(disk->Contents(4096, 4096) == Bytes(4096, 9));
  CHECK_FALSE(f->switched());
}

TEST_CASE("ForwardHandler: Fail ends the waiting requests; a wait is bounded") {
  auto disk = std::make_shared<MemDisk>(1 << 20);
  Holder h(disk);
  {
    auto f = Stranded(h, 60000);
    Status s;
    std::thread w([&] { s = f->Flush(); });
    WaitFor([&] { return f->Waiting() == 1; });
    f->Fail("volume vol: detached here");
    w.join();
    CHECK(s.IsIOError());
    CHECK(s.message().find("detached here") != std::string::npos);
    CHECK(f->Read(0, std::span<std::byte>()).IsIOError());
  }
  {
    auto f = Stranded(h, 100);
    std::vector<std::byte> out(512);
    Status s = f->Read(0, out);
    CHECK(s.IsIOError());
    CHECK(s.message().find("not taken over within 100 ms") != std::string::npos);
    CHECK(f->Waiting() == 0);
  }
}

}  // namespace
}  // namespace qbd
