// ReplicatedText: every copy of one `key = value` metadata file (`.volumesmeta`, `<volnr>/.meta`,
// `<volnr>/.epoch`; layout-spec.md §1.1), read, parsed and judged in one place for qbd-master,
// qbdctl, qbd-verify and qbd-repair.
//
// The caller's parser turns a copy's text into its version (the `serial`, or the epoch) or an
// error naming the file and line; such a copy is malformed. Among the good copies the newest
// version wins; with `same_text`, the copies holding that version must also agree on the text,
// and the text most of them hold wins (two texts held by equally many copies: refused, naming
// both). Good copies that are older, or hold another text, are stale and to be rewritten, as are
// missing and malformed ones. The file is refused as replicated_file.h says (no good copy, or
// malformed copies on half of the holders or more).
//
// Thread-safety: a value; Rewrite writes through the borrowed backends.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/replicated_file.h"

namespace qbd {

class ReplicatedText {
 public:
  // The version a copy holds, or an error naming `where` and the line (InvalidArgument or
  // Corruption). Called once per copy that could be read.
  using Parser = std::function<Result<uint64_t>(std::string_view text, const std::string& where)>;

  // Reads and judges `path` on every non-null entry of `holders` (entry i: backend i).
  // `version_name` names the version in reasons ("older copy (serial 3, newest 4)").
  static ReplicatedText Load(const std::vector<StorageBackend*>& holders, std::string path,
                             const Parser& parse, bool same_text = true,
                             std::string version_name = "serial");

  const std::string& path() const { return path_; }
  const std::vector<FileCopy>& copies() const { return copies_; }
  // OK when the good copies can be used (see the header comment), else why not.
  const Status& verdict() const { return verdict_; }
  // The winning copy's index; -1 when there is none (no good copy, or a tie).
  int chosen() const { return chosen_; }
  // REQUIRES: chosen() >= 0.
  uint64_t version() const { return versions_[chosen_]; }
  const std::string& text() const { return copies_[chosen_].bytes; }
  // Every copy of the file is missing (a file not written yet).
  bool AllMissing() const;

  // Keeps the first `n` copies as holders and judges again (a volume's `.meta` lives only on the
  // backends of its parts, known once a copy was parsed).
  void LimitHolders(size_t n);

  // Copy i is to be rewritten (`rewrite` set) and can be: not out of reach.
  bool NeedsRewrite(size_t i) const;
  // Replaces copy i with `text` (atomically, layout-spec.md §1.1).
  Status Rewrite(size_t i, std::string_view text);

 private:
  void Judge();

  std::string path_;
  std::string version_name_ = "serial";
  bool same_text_ = true;
  std::vector<FileCopy> copies_;
  std::vector<uint64_t> versions_;  // per copy, kGood only
  int chosen_ = -1;
  Status verdict_;
};

}  // namespace qbd
