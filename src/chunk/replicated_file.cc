// Implements include/qbd/replicated_file.h and include/qbd/replicated_text.h (layout-spec.md §1.1).
#include "qbd/replicated_file.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "qbd/replicated_text.h"

namespace qbd {

const char* MetaCopyStateName(MetaCopyState state) {
  switch (state) {
    case MetaCopyState::kAbsent:
      return "absent";
    case MetaCopyState::kGood:
      return "good";
    case MetaCopyState::kMissing:
      return "missing";
    case MetaCopyState::kMalformed:
      return "malformed";
    case MetaCopyState::kUnreachable:
      return "out of reach";
  }
  return "?";
}

CopyCounts CountCopies(const std::vector<FileCopy>& copies) {
  CopyCounts n;
  for (const FileCopy& c : copies) {
    if (c.state == MetaCopyState::kAbsent) continue;
    ++n.holders;
    if (c.state == MetaCopyState::kGood) ++n.good;
    if (c.state == MetaCopyState::kMissing) ++n.missing;
    if (c.state == MetaCopyState::kMalformed) ++n.malformed;
    if (c.state == MetaCopyState::kUnreachable) ++n.unreachable;
  }
  return n;
}

Status CopiesVerdict(const std::vector<FileCopy>& copies, std::string_view what, size_t backends) {
  const CopyCounts n = CountCopies(copies);
  // Invariant: malformed copies on fewer than half of the backends are outvoted by the others; a
  // missing or unreachable copy is no vote against the good ones (a replaced disk, a server down).
  if (n.good > 0 && 2 * n.malformed < std::max(backends, n.holders)) return Status::OK();
  const FileCopy* first_bad = nullptr;
  const FileCopy* first_unreachable = nullptr;
  for (const FileCopy& c : copies) {
    if (c.state == MetaCopyState::kMalformed && !first_bad) first_bad = &c;
    if (c.state == MetaCopyState::kUnreachable && !first_unreachable) first_unreachable = &c;
  }
  if (first_bad) {
    const std::string counted = fmt::format(
        "{} of {} copies of {} are malformed, {} good, {} missing, {} out of reach: no good "
        "majority",
        n.malformed, n.holders, what, n.good, n.missing, n.unreachable);
    const std::string msg = fmt::format("{} ({})", first_bad->reason, counted);
    return first_bad->error.IsInvalidArgument() ? Status::InvalidArgument(msg)
                                                : Status::Corruption(msg);
  }
  if (first_unreachable) {
    return Status::Unavailable(
        fmt::format("no copy of {} can be read: {}", what, first_unreachable->reason));
  }
  return Status::NotFound(fmt::format("no copy of {} on any backend", what));
}

std::vector<FileCopy> ReadCopies(const std::vector<StorageBackend*>& holders, std::string_view path,
                                 const std::vector<Status>& down) {
  std::vector<FileCopy> out(holders.size());
  for (size_t i = 0; i < holders.size(); ++i) {
    FileCopy& c = out[i];
    c.backend = holders[i];
    if (!c.backend) continue;
    c.where = c.backend->Describe() + "/" + std::string(path);
    if (i < down.size() && !down[i].ok()) {
      c.state = MetaCopyState::kUnreachable;
      c.error = down[i];
      c.reason = Printable(down[i].message());
      continue;
    }
    auto bytes = ReadSmallFile(*c.backend, path);
    if (bytes.ok()) {
      c.bytes = std::move(bytes).value();
      if (c.bytes.empty()) {
        c.state = MetaCopyState::kMalformed;
        c.error = Status::Corruption(fmt::format("{}:1: empty file (0 bytes)", c.where));
        c.reason = c.error.message();
        c.rewrite = true;
      } else {
        c.state = MetaCopyState::kGood;  // until the caller's parser says otherwise
      }
    } else if (bytes.status().IsNotFound()) {
      c.state = MetaCopyState::kMissing;
      c.reason = "copy missing";
      c.rewrite = true;
    } else if (bytes.status().IsCorruption()) {
      // Too large for a metadata file, or cut short while it was read.
      c.state = MetaCopyState::kMalformed;
      c.error =
          Status::Corruption(fmt::format("{}: {}", c.where, Printable(bytes.status().message())));
      c.reason = c.error.message();
      c.rewrite = true;
    } else {
      c.state = MetaCopyState::kUnreachable;
      c.error = bytes.status();
      c.reason = Printable(bytes.status().message());
    }
  }
  return out;
}

size_t Utf8SequenceAt(std::string_view s, size_t i) {
  const auto u = static_cast<unsigned char>(s[i]);
  if (u < 0x80) return 1;
  size_t len = 0;
  uint32_t cp = 0;
  if (u >= 0xc2 && u <= 0xdf) {
    len = 2, cp = u & 0x1f;
  } else if (u >= 0xe0 && u <= 0xef) {
    len = 3, cp = u & 0x0f;
  } else if (u >= 0xf0 && u <= 0xf4) {
    len = 4, cp = u & 0x07;
  }
  if (len == 0 || i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (c & 0x3f);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff)) {
    return 0;
  }
  return len;
}

std::string Printable(std::string_view s, size_t max) {
  std::string out;
  const std::string_view shown = s.substr(0, max);
  for (size_t i = 0; i < shown.size();) {
    const auto u = static_cast<unsigned char>(shown[i]);
    const size_t len = Utf8SequenceAt(shown, i);
    if (u == '\t') {
      out += ' ';
    } else if (len == 0 || u < 0x20 || u == 0x7f) {
      out += fmt::format("\\x{:02x}", u);
    } else {
      out.append(shown.substr(i, len));
      i += len;
      continue;
    }
    ++i;
  }
  if (s.size() > max) out += "...";
  return out;
}

// ---------------------------------------------------------------------------------------------
// ReplicatedText

ReplicatedText ReplicatedText::Load(const std::vector<StorageBackend*>& holders, std::string path,
                                    const Parser& parse, bool same_text, std::string version_name) {
  ReplicatedText t;
  t.path_ = std::move(path);
  t.version_name_ = std::move(version_name);
  t.same_text_ = same_text;
  t.copies_ = ReadCopies(holders, t.path_);
  t.versions_.assign(t.copies_.size(), 0);
  for (size_t i = 0; i < t.copies_.size(); ++i) {
    FileCopy& c = t.copies_[i];
    if (c.state != MetaCopyState::kGood) continue;
    auto v = parse(c.bytes, c.where);
    if (v.ok()) {
      t.versions_[i] = *v;
      continue;
    }
    c.state = MetaCopyState::kMalformed;
    c.error = v.status();
    c.reason = Printable(v.status().message(), 400);
    c.rewrite = true;
    const std::string prefix = c.where + ": ";
    if (c.reason.rfind(prefix, 0) == 0) {
      // A fault of the whole file (a required key missing): the line after its last one, where
      // the text a short copy lost would have been.
      const size_t lines = static_cast<size_t>(std::count(c.bytes.begin(), c.bytes.end(), '\n')) +
                           (c.bytes.ends_with('\n') ? 0 : 1);
      c.reason = fmt::format("{}:{}: {} (the file ends at line {}: cut short?)", c.where, lines + 1,
                             c.reason.substr(prefix.size()), lines);
      c.error = c.error.IsInvalidArgument() ? Status::InvalidArgument(c.reason)
                                            : Status::Corruption(c.reason);
    }
  }
  t.Judge();
  return t;
}

void ReplicatedText::Judge() {
  chosen_ = -1;
  verdict_ = CopiesVerdict(copies_, path_);
  // The newest version among the good copies, and the text most of its copies hold.
  bool any = false;
  uint64_t newest = 0;
  for (size_t i = 0; i < copies_.size(); ++i) {
    if (copies_[i].state != MetaCopyState::kGood) continue;
    newest = any ? std::max(newest, versions_[i]) : versions_[i];
    any = true;
  }
  if (!any) return;
  std::map<std::string, std::vector<size_t>> texts;  // text -> copies holding it (same_text_)
  for (size_t i = 0; i < copies_.size(); ++i) {
    if (copies_[i].state != MetaCopyState::kGood || versions_[i] != newest) continue;
    texts[same_text_ ? copies_[i].bytes : std::string()].push_back(i);
  }
  const std::vector<size_t>* best = nullptr;
  const std::vector<size_t>* tie = nullptr;
  for (const auto& [text, holders] : texts) {
    if (!best || holders.size() > best->size()) {
      best = &holders;
      tie = nullptr;
    } else if (holders.size() == best->size()) {
      tie = &holders;
    }
  }
  if (tie) {
    if (verdict_.ok()) {
      verdict_ = Status::Corruption(
          fmt::format("{} and {} hold different texts of {} {}, each as many copies as the other: "
                      "no good majority",
                      copies_[(*best)[0]].where, copies_[(*tie)[0]].where, version_name_, newest));
    }
    return;
  }
  chosen_ = static_cast<int>((*best)[0]);
  for (size_t i = 0; i < copies_.size(); ++i) {
    FileCopy& c = copies_[i];
    if (c.state != MetaCopyState::kGood) continue;
    c.rewrite = false;
    c.reason.clear();
    if (versions_[i] < newest) {
      c.rewrite = true;
      c.reason = fmt::format("older copy ({} {}, newest {})", version_name_, versions_[i], newest);
    } else if (same_text_ && c.bytes != copies_[chosen_].bytes) {
      c.rewrite = true;
      c.reason = fmt::format("differs from the other copies of {} {}", version_name_, newest);
    }
  }
}

bool ReplicatedText::AllMissing() const {
  const CopyCounts n = CountCopies(copies_);
  return n.holders > 0 && n.missing == n.holders;
}

void ReplicatedText::LimitHolders(size_t n) {
  for (size_t i = n; i < copies_.size(); ++i) {
    copies_[i] = FileCopy();
  }
  Judge();
}

bool ReplicatedText::NeedsRewrite(size_t i) const {
  const FileCopy& c = copies_[i];
  return c.rewrite && c.backend && c.state != MetaCopyState::kUnreachable &&
         c.state != MetaCopyState::kAbsent;
}

Status ReplicatedText::Rewrite(size_t i, std::string_view text) {
  FileCopy& c = copies_[i];
  if (!DirName(path_).empty()) QBD_RETURN_IF_ERROR(c.backend->MkDirs(DirName(path_)));
  QBD_RETURN_IF_ERROR(WriteFileAtomic(*c.backend, path_, text));
  c.bytes = std::string(text);
  c.state = MetaCopyState::kGood;
  c.rewrite = false;
  c.reason.clear();
  if (chosen_ >= 0) versions_[i] = versions_[chosen_];
  return Status::OK();
}

}  // namespace qbd
