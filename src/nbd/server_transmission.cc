// The NBD server's transmission phase (server_impl.h): workers read requests, run them through
// the export's handler and send the replies.
#include "nbd/server_impl.h"

namespace qbd {

using nbd_server::kBaseAllocationId;
using nbd_server::Read;
using nbd_server::ReadMsg;

namespace {

// A worker gives its buffer (socket_io.h) back when its connection has sent nothing for this
// long, or when it ends: idle connections hold no buffer.
constexpr int kQuietReleaseMs = 100;
// The first piece of a WRITE payload taken from the budget before its bytes arrive; later pieces
// are as large as what has arrived so far, so a client that stalls holds little it did not send.
constexpr uint64_t kFirstPiece = 64 * 1024;
// A worker other than a connection's first ends after waiting this long for its turn to read.
constexpr int kIdleWorkerMs = 5000;
// Replies up to this size are copied into the outbox when another worker is sending (see the top
// of the file); larger ones wait for their turn rather than be copied.
constexpr size_t kCoalesceMax = 64 * 1024;

}  // namespace

// ---------------------------------------------------------------------------------------------
// Transmission

namespace {

// What a worker does after reading under the read lock.
enum class Next {
  kRun,            // execute the request
  kStop,           // no request: DISC, EOF or a fatal protocol error
  kRejectAndStop,  // reply EINVAL to the request (payload unread), then stop
};

// The command flags each command accepts (FUA is valid on every command, proto.md).
uint16_t AllowedFlags(uint16_t type, bool structured) {
  switch (type) {
    case nbd::kCmdRead:
      return nbd::kCmdFlagFua | (structured ? nbd::kCmdFlagDf : 0);
    case nbd::kCmdWriteZeroes:
      return nbd::kCmdFlagFua | nbd::kCmdFlagNoHole;
    case nbd::kCmdBlockStatus:
      return nbd::kCmdFlagFua | nbd::kCmdFlagReqOne;
    default:
      return nbd::kCmdFlagFua;
  }
}

}  // namespace

void NbdServer::Impl::Worker(Conn* c) {
  const Export& e = *c->exp;
  BlockHandler& h = *e.handler;
  PayloadBuffer payload;  // this worker's request data (see kKeptBufferSize)
  std::vector<nbd::BlockDescriptor> descs;
  std::string why;
  PayloadBudget::Hold hold;  // the budget the current request holds
  const int timeout = options.client_timeout_ms;

  for (;;) {
    nbd::Request req;
    Next next = Next::kRun;
    std::byte* buf = nullptr;
    {
      {
        std::lock_guard lk(c->workers_mu);
        ++c->idle;
      }
      std::unique_lock<std::timed_mutex> lk(c->read_mu, std::defer_lock);
      while (!lk.try_lock_for(std::chrono::milliseconds(kIdleWorkerMs))) {
        payload.Release();
        std::lock_guard wl(c->workers_mu);
        if (c->workers > 1) {
          --c->idle;
          return;  // another worker holds the turn to read: this one is not needed
        }
      }
      auto busy = [c] {
        std::lock_guard wl(c->workers_mu);
        --c->idle;
      };
      if (c->closing) {
        busy();
        return;
      }
      if (!payload.empty() && !c->in.buffered()) {
        // A quiet connection gives its buffer back before it waits for the next request.
        pollfd p = {c->fd, POLLIN, 0};
        if (::poll(&p, 1, kQuietReleaseMs) == 0) payload.Release();
      }
      std::array<std::byte, nbd::kRequestSize> hb;
      Read r = ReadMsg(c->fd, c->in, hb, &why, timeout, /*from_first_byte=*/true);
      busy();
      if (r != Read::kOk) {
        if (r == Read::kError) Warn(c, fmt::format("reading request: {}", why));
        c->closing = true;
        return;
      }
      auto parsed = nbd::ParseRequest(hb);
      if (!parsed.ok()) {
        Warn(c, fmt::format("bad request magic {:#010x}; closing", DecodeBE32(hb.data())));
        c->closing = true;
        return;
      }
      req = *parsed;
      if (req.type == nbd::kCmdDisc) {
        c->closing = true;
        return;
      }
      if (req.type == nbd::kCmdWrite) {
        if (req.length > e.max_payload) {
          c->closing = true;
          next = Next::kRejectAndStop;
        } else {
          buf = payload.Get(req.length);
          for (uint64_t got = 0; got < req.length;) {
            const uint64_t piece = std::min<uint64_t>(req.length - got, std::max(kFirstPiece, got));
            // Waits while the budget is spent: this connection is not read meanwhile.
            budget.Take(hold, piece, /*continuing=*/got > 0);
            r = ReadMsg(c->fd, c->in, std::span(buf + got, piece), &why, timeout);
            if (r != Read::kOk) {
              budget.Release(hold);
              Warn(c, fmt::format("reading write payload: {}", why.empty() ? "connection closed" : why));
              c->closing = true;
              return;
            }
            got += piece;
          }
        }
      }
    }
    MaybeAddWorker(c);

    uint32_t err = 0;
    std::string msg;
    auto reject = [&](uint32_t code, std::string text) {
      err = code;
      msg = std::move(text);
      Warn(c, fmt::format("{} offset {} length {} flags {:#x}: {}", nbd::CommandName(req.type),
                          req.offset, req.length, req.flags, msg));
    };
    auto fail = [&](const Status& s) {
      err = nbd::ErrnoToNbd(s.Errno());
      msg = s.ToString();
      Warn(c, fmt::format("{} offset {} length {}: {}", nbd::CommandName(req.type), req.offset,
                          req.length, msg));
    };
    size_t data_len = 0;  // READ data in buf
    bool block_status_reply = false;

    const uint16_t type = req.type;
    const bool known = type == nbd::kCmdRead || type == nbd::kCmdWrite || type == nbd::kCmdFlush ||
                       type == nbd::kCmdTrim || type == nbd::kCmdCache ||
                       type == nbd::kCmdWriteZeroes || type == nbd::kCmdBlockStatus;
    const bool writes =
        type == nbd::kCmdWrite || type == nbd::kCmdTrim || type == nbd::kCmdWriteZeroes;
    const uint64_t size = h.Size();
    if (next == Next::kRejectAndStop) {
      reject(nbd::kEinval, fmt::format("payload exceeds the maximum {}; closing", e.max_payload));
    } else if (!known) {
      reject(nbd::kEinval, "unknown command");
    } else if ((req.flags & ~AllowedFlags(type, c->structured)) != 0) {
      reject(nbd::kEinval, "unsupported command flags");
    } else if (writes && e.read_only) {
      reject(nbd::kEperm, "export is read-only");
    } else if (type == nbd::kCmdRead && req.length > e.max_payload) {
      reject(nbd::kEinval, fmt::format("length exceeds the maximum payload {}", e.max_payload));
    } else if (type != nbd::kCmdFlush && (req.offset > size || req.length > size - req.offset)) {
      const bool grows = type == nbd::kCmdWrite || type == nbd::kCmdWriteZeroes;
      const bool wraps = req.offset + req.length < req.offset;
      reject(grows && !wraps ? nbd::kEnospc : nbd::kEinval,
             fmt::format("range is beyond the export size {}", size));
    } else if (type == nbd::kCmdBlockStatus && !c->base_allocation) {
      reject(nbd::kEinval, "no meta context was negotiated");
    } else if (type == nbd::kCmdBlockStatus && req.length == 0) {
      reject(nbd::kEinval, "length 0");
    } else {
      const bool fua = (req.flags & nbd::kCmdFlagFua) != 0;
      Status s;
      switch (type) {
        case nbd::kCmdRead:
          if (req.length > 0) {
            budget.Take(hold, req.length, /*continuing=*/false);  // released after the reply
            buf = payload.Get(req.length);
            s = h.Read(req.offset, std::span(buf, req.length));
            if (s.ok()) data_len = req.length;
          }
          break;
        case nbd::kCmdWrite:
          if (req.length > 0) s = h.Write(req.offset, std::span(buf, req.length), fua);
          budget.Release(hold);
          break;
        case nbd::kCmdFlush:
          s = h.Flush();
          break;
        case nbd::kCmdTrim:
          if (req.length > 0) s = h.Trim(req.offset, req.length, fua);
          break;
        case nbd::kCmdWriteZeroes:
          if (req.length > 0) {
            s = h.WriteZeroes(req.offset, req.length,
                              /*may_trim=*/(req.flags & nbd::kCmdFlagNoHole) == 0, fua);
          }
          break;
        case nbd::kCmdCache:
          break;  // nothing to prefetch into: the range was checked
        case nbd::kCmdBlockStatus: {
          descs.clear();
          auto extents = h.BlockStatus(req.offset, req.length);
          if (extents.ok()) {
            uint64_t covered = 0;
            for (const Extent& x : *extents) {
              const uint64_t len = std::min<uint64_t>(x.length, req.length - covered);
              if (len == 0) continue;
              descs.push_back({static_cast<uint32_t>(len),
                               (x.hole ? nbd::kStateHole : 0u) | (x.zero ? nbd::kStateZero : 0u)});
              covered += len;
              if (covered == req.length || (req.flags & nbd::kCmdFlagReqOne) != 0) break;
            }
          } else if (!extents.status().IsNotSupported()) {
            s = extents.status();
          }
          // The handler cannot tell (or said nothing): all of it is allocated data.
          if (s.ok() && descs.empty()) descs.push_back({req.length, 0});
          block_status_reply = s.ok();
          break;
        }
      }
      if (!s.ok()) fail(s);
    }

    // Reply under the write lock, one sendmsg each.
    std::array<std::byte, nbd::kOffsetDataHeaderSize> head;
    std::vector<std::byte> owned;  // error chunks and block status (rare or small)
    std::span<const std::byte> first, second;
    if (err != 0) {
      if (c->structured) {
        owned = nbd::EncodeErrorChunk(req.cookie, nbd::kReplyFlagDone, err, msg);
        first = owned;
      } else {
        auto r = nbd::EncodeSimpleReply(err, req.cookie);
        std::copy(r.begin(), r.end(), head.begin());
        first = std::span(head.data(), r.size());
      }
    } else if (block_status_reply) {
      owned =
          nbd::EncodeBlockStatusChunk(req.cookie, nbd::kReplyFlagDone, kBaseAllocationId, descs);
      first = owned;
    } else if (type == nbd::kCmdRead && c->structured) {
      if (data_len > 0) {
        head = nbd::EncodeOffsetDataHeader(req.cookie, nbd::kReplyFlagDone, req.offset,
                                           static_cast<uint32_t>(data_len));
        first = head;
        second = std::span(buf, data_len);
      } else {
        auto r = nbd::EncodeNoneChunk(req.cookie, nbd::kReplyFlagDone);
        std::copy(r.begin(), r.end(), head.begin());
        first = std::span(head.data(), r.size());
      }
    } else {
      auto r = nbd::EncodeSimpleReply(0, req.cookie);
      std::copy(r.begin(), r.end(), head.begin());
      first = std::span(head.data(), r.size());
      if (data_len > 0) second = std::span(buf, data_len);
    }
    SendReply(c, first, second);
    budget.Release(hold);  // a READ's data is sent (or copied into the outbox); a rejected WRITE's
    if (next == Next::kRejectAndStop) return;
    payload.Done();
  }
}

void NbdServer::Impl::SendReply(Conn* c, std::span<const std::byte> a,
                                std::span<const std::byte> b) {
  std::unique_lock lk(c->write_mu);
  if (c->sending) {
    if (a.size() + b.size() <= kCoalesceMax) {
      c->outbox.insert(c->outbox.end(), a.begin(), a.end());
      c->outbox.insert(c->outbox.end(), b.begin(), b.end());
      return;  // Invariant: the sending worker sends the outbox before `sending` ends.
    }
    // Too big to copy: wait and send it ourselves. The sending worker stops after its current
    // batch and leaves the outbox to us, so a stream of small replies cannot hold us back.
    ++c->big_waiters;
    c->send_cv.wait(lk, [c] { return !c->sending; });
    --c->big_waiters;
  }
  c->sending = true;
  bool mine = true;  // our own reply still to send
  for (;;) {
    c->sendbuf.clear();
    c->sendbuf.swap(c->outbox);
    if (!mine && (c->sendbuf.empty() || c->big_waiters > 0)) {
      c->outbox.swap(c->sendbuf);  // what is left goes out with the next sender's reply
      break;
    }
    const bool failed = c->send_failed;
    lk.unlock();
    iovec iov[3];
    int n = 0;
    if (!c->sendbuf.empty()) iov[n++] = {c->sendbuf.data(), c->sendbuf.size()};
    if (mine && !a.empty()) iov[n++] = {const_cast<std::byte*>(a.data()), a.size()};
    if (mine && !b.empty()) iov[n++] = {const_cast<std::byte*>(b.data()), b.size()};
    const bool ok = failed || SendAll(c->fd, iov, n);
    const int send_err = errno;
    lk.lock();
    if (!ok && !c->send_failed) {
      c->send_failed = true;
      Warn(c, fmt::format("sending reply: {}; closing", std::strerror(send_err)));
      ::shutdown(c->fd, SHUT_RDWR);  // the reader sees EOF and the connection winds down
    }
    mine = false;
  }
  c->sending = false;
  lk.unlock();
  c->send_cv.notify_all();
}


}  // namespace qbd
