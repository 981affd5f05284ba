// How a Call completes (nfs_client.h): the libnfs callbacks that fill in its result from the
// server's reply, READ data copied straight into the caller's buffers, and which errors mean
// that the connection is gone. The design is described at the top of nfs_backend.cc.
#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "storage/nfs_client.h"

namespace qbd {
namespace nfs_client {
namespace {

// Copies `n` bytes that belong at file offset `at` into `t`'s spans.
void Scatter(const ReadTarget& t, uint64_t at, const char* data, uint64_t n) {
  uint64_t pos = at - t.offset;
  size_t i = 0;
  while (i < t.spans.size() && pos >= t.spans[i].size()) pos -= t.spans[i++].size();
  for (; n > 0 && i < t.spans.size(); ++i, pos = 0) {
    const uint64_t k = std::min<uint64_t>(n, t.spans[i].size() - pos);
    std::memcpy(t.spans[i].data() + pos, data, k);
    data += k;
    n -= k;
  }
}

// Client::Finished, or a private call's signal (RunPrivate, nfs_client.cc).
void Finish(Call* c) {
  if (c->client != nullptr) {
    c->client->Finished(c);
  } else {
    c->done.Signal();  // RunPrivate
  }
}

}  // namespace

bool ConnectionBroken(int err) {
  switch (err) {
    case EINTR:
    case EFAULT:
    case ENOMEM:
    case ETIMEDOUT:
    case ECONNRESET:
    case ECONNREFUSED:
    case ECONNABORTED:
    case EPIPE:
    case ENOTCONN:
    case EHOSTUNREACH:
    case EHOSTDOWN:
    case ENETUNREACH:
    case ENETDOWN:
      return true;
    default:
      return false;
  }
}

void OnReply(int status, nfs_context* nfs, void* data, void* private_data) {
  auto* c = static_cast<Call*>(private_data);
  c->status = status;
  if (status < 0) {
    const char* text = nfs_get_error(nfs);  // `data` is not always the message
    if (text != nullptr) c->error = text;
  } else {
    switch (c->kind) {
      case Call::Kind::kFh:
        *static_cast<nfsfh**>(c->out) = static_cast<nfsfh*>(data);
        break;
      case Call::Kind::kStat:
        *static_cast<struct nfs_stat_64*>(c->out) = *static_cast<struct nfs_stat_64*>(data);
        break;
      case Call::Kind::kDir: {
        // READDIRPLUS brought every entry's attributes along: no call per file. Read here, under
        // the context's lock, because nfs_readdir and nfs_closedir take the context.
        auto* d = static_cast<struct nfsdir*>(data);
        auto* out = static_cast<std::vector<DirEntry>*>(c->out);
        while (struct nfsdirent* e = nfs_readdir(nfs, d)) {
          std::string_view n = e->name;
          if (n == "." || n == "..") continue;
          out->push_back(
              DirEntry{std::string(n), FileInfo{static_cast<uint64_t>(e->size), S_ISDIR(e->mode)}});
        }
        nfs_closedir(nfs, d);
        break;
      }
      case Call::Kind::kNone:
      case Call::Kind::kRead3:  // raw RPCs: OnRpcReply
      case Call::Kind::kWrite3:
      case Call::Kind::kCommit3:
        break;
    }
  }
  Finish(c);
}

void OnRpcReply(rpc_context* rpc, int status, void* data, void* private_data) {
  auto* c = static_cast<Call*>(private_data);
  switch (status) {
    case RPC_STATUS_SUCCESS:
      break;
    case RPC_STATUS_ERROR: {
      c->status = -EFAULT;
      const char* text = data != nullptr ? static_cast<const char*>(data) : rpc_get_error(rpc);
      if (text != nullptr) c->error = text;
      return Finish(c);
    }
    case RPC_STATUS_TIMEOUT:
      c->status = -EINTR;
      c->error = "Command timed out";
      return Finish(c);
    default:
      c->status = -EINTR;
      c->error = "Command was cancelled";
      return Finish(c);
  }
  int nfs_status = NFS3_OK;
  switch (c->kind) {
    case Call::Kind::kRead3: {
      const auto* res = static_cast<const READ3res*>(data);
      nfs_status = res->status;
      if (nfs_status != NFS3_OK) break;
      const READ3resok& ok = res->READ3res_u.resok;
      const auto* t = static_cast<const ReadTarget*>(c->out);
      const uint64_t got = std::min<uint64_t>(ok.count, ok.data.data_len);
      if (got > c->count) {
        c->status = -EIO;
        c->error = fmt::format("the server sent {} bytes for a READ of {}", got, c->count);
        return Finish(c);
      }
      Scatter(*t, c->at, ok.data.data_val, got);  // the one copy of the data
      c->status = static_cast<int>(got);
      c->eof = ok.eof != 0;
      break;
    }
    case Call::Kind::kWrite3: {
      const auto* res = static_cast<const WRITE3res*>(data);
      nfs_status = res->status;
      if (nfs_status != NFS3_OK) break;
      const WRITE3resok& ok = res->WRITE3res_u.resok;
      auto* verdict = static_cast<WriteVerdict*>(c->out);
      c->status = static_cast<int>(ok.count);
      verdict->stable = ok.committed != UNSTABLE;
      std::memcpy(verdict->verf.data(), ok.verf, verdict->verf.size());
      break;
    }
    case Call::Kind::kCommit3: {
      const auto* res = static_cast<const COMMIT3res*>(data);
      nfs_status = res->status;
      if (nfs_status != NFS3_OK) break;
      c->status = 0;
      std::memcpy(static_cast<WriteVerdict*>(c->out)->verf.data(), res->COMMIT3res_u.resok.verf,
                  NFS3_WRITEVERFSIZE);
      break;
    }
    default:
      break;
  }
  if (nfs_status != NFS3_OK) {
    c->status = nfsstat3_to_errno(nfs_status);
    if (c->status >= 0) c->status = -EIO;
    const char* text = nfsstat3_to_str(nfs_status);
    if (text != nullptr) c->error = text;
  }
  Finish(c);
}

}  // namespace nfs_client
}  // namespace qbd
