// The NBD server's handshake (server_impl.h): fixed newstyle, options until the client enters
// transmission.
#include "nbd/server_impl.h"

namespace qbd {

using nbd_server::kBaseAllocationId;
using nbd_server::Read;
using nbd_server::ReadMsg;

namespace {


constexpr int kHandshakeTimeoutSec = 30;

// A client-supplied string made safe for one log line: at most 64 bytes, non-printable bytes
// as \xNN.
std::string Printable(std::string_view s) {
  constexpr size_t kMax = 64;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const auto ch = static_cast<unsigned char>(s[i]);
    if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
      out += static_cast<char>(ch);
    } else {
      out += fmt::format("\\x{:02x}", ch);
    }
  }
  if (s.size() > kMax) out += "...";
  return out;
}

uint16_t TransmissionFlags(const Export& e, bool structured) {
  uint16_t f = nbd::kFlagHasFlags | nbd::kFlagSendFlush | nbd::kFlagSendFua | nbd::kFlagSendTrim |
               nbd::kFlagSendWriteZeroes | nbd::kFlagCanMultiConn | nbd::kFlagSendCache;
  if (structured) f |= nbd::kFlagSendDf;
  if (e.read_only) f |= nbd::kFlagReadOnly;
  return f;
}

}  // namespace

bool NbdServer::Impl::Handshake(Conn* c) {
  const int fd = c->fd;
  SetTimeout(fd, SO_RCVTIMEO, std::min(kHandshakeTimeoutSec * 1000, options.client_timeout_ms));
  // A client that takes no reply bytes for this long is dropped (so Stop() cannot hang on it).
  SetTimeout(fd, SO_SNDTIMEO, options.client_timeout_ms);
  if (!SendAll(fd, nbd::EncodeServerGreeting(nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes))) {
    return false;
  }
  std::string why;
  std::array<std::byte, nbd::kClientFlagsSize> flag_bytes;
  Read r = ReadMsg(fd, c->in, flag_bytes, &why);
  if (r != Read::kOk) {
    if (r == Read::kError) Warn(c, fmt::format("handshake: {}", why));
    return false;
  }
  const uint32_t client_flags = nbd::ParseClientFlags(flag_bytes).value();
  if ((client_flags & ~(nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes)) != 0) {
    Warn(c, fmt::format("handshake: unknown client flags {:#x}; closing", client_flags));
    return false;
  }
  const bool no_zeroes = (client_flags & nbd::kClientFlagNoZeroes) != 0;

  auto find = [&](std::string_view name) {
    return registry.Find(c->only_export.empty() ? name : std::string_view(c->only_export));
  };
  auto reply = [&](uint32_t option, uint32_t type, std::span<const std::byte> data = {}) {
    return SendAll(fd, nbd::EncodeOptionReply(option, type, data));
  };
  auto error = [&](uint32_t option, uint32_t type, std::string_view msg) {
    return SendAll(fd, nbd::EncodeOptionError(option, type, msg));
  };

  std::vector<std::byte> data;
  // The export the last SET_META_CONTEXT was for; entering transmission on another one drops the
  // selected contexts (proto.md). Compared by name: a registry may hand out fresh Export objects.
  std::string meta_export;
  for (;;) {
    std::array<std::byte, nbd::kOptionHeaderSize> hb;
    r = ReadMsg(fd, c->in, hb, &why);
    if (r != Read::kOk) {
      if (r == Read::kError) Warn(c, fmt::format("handshake: {}", why));
      return false;
    }
    auto h = nbd::ParseOptionHeader(hb);
    if (!h.ok()) {
      Warn(c, "handshake: bad option magic; closing");
      return false;
    }
    const uint32_t opt = h->option;
    if (h->length > options.max_option_length) {
      Warn(c, fmt::format("handshake: {} of {} bytes exceeds the limit {}; closing",
                          nbd::OptionName(opt), h->length, options.max_option_length));
      return false;
    }
    data.resize(h->length);
    if (ReadMsg(fd, c->in, data, &why) != Read::kOk) {
      Warn(c, fmt::format("handshake: reading {} data: {}", nbd::OptionName(opt),
                          why.empty() ? "connection closed" : why));
      return false;
    }

    switch (opt) {
      case nbd::kOptExportName: {
        std::string name(reinterpret_cast<const char*>(data.data()), data.size());
        auto e = find(name);
        if (e == nullptr || e->handler == nullptr) {
          Warn(c,
               fmt::format("NBD_OPT_EXPORT_NAME: unknown export '{}'; closing", Printable(name)));
          return false;
        }
        if (meta_export != e->name) c->base_allocation = false;
        if (!SendAll(fd,
                     nbd::EncodeExportNameReply(e->handler->Size(),
                                                TransmissionFlags(*e, c->structured), no_zeroes))) {
          return false;
        }
        c->exp = std::move(e);
        Serving(c);
        return true;
      }

      case nbd::kOptAbort:
        (void)reply(opt, nbd::kRepAck);  // the client may already be gone
        return false;

      case nbd::kOptList: {
        if (!data.empty()) {
          if (!error(opt, nbd::kRepErrInvalid, "NBD_OPT_LIST takes no data")) return false;
          break;
        }
        std::vector<std::string> names;
        if (c->only_export.empty()) {
          names = registry.List();
        } else {
          names.push_back(c->only_export);
        }
        bool ok = true;
        for (const std::string& n : names) {
          auto e = registry.Find(n);
          ok = ok && reply(opt, nbd::kRepServer,
                           nbd::EncodeRepServer(n, e != nullptr ? e->description : ""));
        }
        if (!ok || !reply(opt, nbd::kRepAck)) return false;
        break;
      }

      case nbd::kOptInfo:
      case nbd::kOptGo: {
        auto req = nbd::ParseInfoRequest(data);
        if (!req.ok()) {
          if (!error(opt, nbd::kRepErrInvalid, req.status().message())) return false;
          break;
        }
        auto e = find(req->name);
        if (e == nullptr || e->handler == nullptr) {
          const std::string shown = Printable(req->name);
          Warn(c, fmt::format("{}: unknown export '{}'", nbd::OptionName(opt), shown));
          if (!error(opt, nbd::kRepErrUnknown, fmt::format("unknown export '{}'", shown))) {
            return false;
          }
          break;
        }
        bool ok =
            reply(opt, nbd::kRepInfo,
                  nbd::EncodeInfoExport(e->handler->Size(), TransmissionFlags(*e, c->structured)));
        auto asked = [&](uint16_t type) {
          return std::find(req->requests.begin(), req->requests.end(), type) != req->requests.end();
        };
        if (ok && asked(nbd::kInfoName)) {
          ok = reply(opt, nbd::kRepInfo, nbd::EncodeInfoName(e->name));
        }
        if (ok && asked(nbd::kInfoDescription) && !e->description.empty()) {
          ok = reply(opt, nbd::kRepInfo, nbd::EncodeInfoDescription(e->description));
        }
        // Sent even when not asked for: every client we serve honours it.
        if (ok) {
          ok = reply(opt, nbd::kRepInfo,
                     nbd::EncodeInfoBlockSize(e->min_block, e->preferred_block, e->max_payload));
        }
        if (!ok || !reply(opt, nbd::kRepAck)) return false;
        if (opt == nbd::kOptGo) {
          if (meta_export != e->name) c->base_allocation = false;
          c->exp = std::move(e);
          Serving(c);
          return true;
        }
        break;
      }

      case nbd::kOptStructuredReply:
        if (!data.empty()) {
          if (!error(opt, nbd::kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")) {
            return false;
          }
          break;
        }
        c->structured = true;
        if (!reply(opt, nbd::kRepAck)) return false;
        break;

      case nbd::kOptListMetaContext:
      case nbd::kOptSetMetaContext: {
        const bool set = opt == nbd::kOptSetMetaContext;
        if (!c->structured) {
          if (!error(opt, nbd::kRepErrInvalid, "structured replies are not negotiated")) {
            return false;
          }
          break;
        }
        auto req = nbd::ParseMetaContextRequest(data);
        if (!req.ok()) {
          if (!error(opt, nbd::kRepErrInvalid, req.status().message())) return false;
          break;
        }
        auto e = find(req->export_name);
        if (e == nullptr) {
          if (!error(opt, nbd::kRepErrUnknown,
                     fmt::format("unknown export '{}'", Printable(req->export_name)))) {
            return false;
          }
          break;
        }
        bool match = false;
        for (const std::string& q : req->queries) {
          match = match || q == nbd::kBaseAllocation || (!set && q == "base:");
        }
        if (!set && req->queries.empty()) match = true;  // LIST with no query lists all
        bool ok = true;
        if (match) {
          ok =
              reply(opt, nbd::kRepMetaContext,
                    nbd::EncodeMetaContextReply(set ? kBaseAllocationId : 0, nbd::kBaseAllocation));
        }
        if (set) {
          c->base_allocation = match;
          meta_export = e->name;
        }
        if (!ok || !reply(opt, nbd::kRepAck)) return false;
        break;
      }

      default:  // STARTTLS, EXTENDED_HEADERS and anything unknown
        QBD_LOG_DEBUG("nbd: {}: unsupported option {} ({})", c->peer, opt, nbd::OptionName(opt));
        if (!error(opt, nbd::kRepErrUnsup,
                   fmt::format("option {} is not supported", nbd::OptionName(opt)))) {
          return false;
        }
        break;
    }
  }
}


}  // namespace qbd
