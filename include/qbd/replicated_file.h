// Replicated metadata files: the one way qbd reads a metadata file that has a copy on several
// backends (layout-spec.md §1.1). Every copy is read and classified — good, missing, malformed
// (with the reason, naming the file and line) or out of reach — and the verdict says whether the
// good copies are enough to go on:
//
//   a file is usable when at least one copy is good and the malformed copies sit on fewer than
//   half of the backends concerned ("a bad minority": the holders, or for a dirty map the
//   volume's parts); otherwise it is refused, naming the first malformed copy's file and line.
//
// Missing and out-of-reach copies do not count against the file (a replaced disk, a server
// down): they are rewritten from the good copies, or once the backend is back. The two kinds of
// file build on this: ReplicatedText (replicated_text.h: `.volumesmeta`, `.meta`, `.epoch`) and
// ReplicatedBitmap (replicated_bitmap.h: dirty maps and the chunk map).
//
// Thread-safety: values and pure functions.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "qbd/backend.h"
#include "qbd/status.h"

namespace qbd {

enum class MetaCopyState {
  kAbsent,       // this backend does not hold a copy of the file (not a holder)
  kGood,         // read and parsed
  kMissing,      // the holder has no copy
  kMalformed,    // read, but damaged (garbage, short, empty, another format)
  kUnreachable,  // the holder could not be read (I/O error, server down)
};

// "good", "missing", "malformed", "out of reach", "absent"
const char* MetaCopyStateName(MetaCopyState state);

// One backend's copy of one metadata file.
struct FileCopy {
  StorageBackend* backend = nullptr;  // borrowed; nullptr when kAbsent
  std::string where;                  // "<backend>/<path>"
  MetaCopyState state = MetaCopyState::kAbsent;
  // kMalformed: what is wrong, starting with "<where>:<line>: " for text files and "<where>: "
  // for binary ones; kUnreachable: the read error; kGood with `rewrite`: why it is rewritten
  // (older, different, lacking bits). Printable: bytes from the damaged file are escaped.
  std::string reason;
  Status error;  // kMalformed, kUnreachable: the status behind `reason`
  bool rewrite =
      false;          // the copy must be rewritten from the good ones (missing, malformed, stale)
  std::string bytes;  // the copy as read (kGood, kMalformed)
};

// Counts of the copies of one file by state.
struct CopyCounts {
  size_t holders = 0, good = 0, missing = 0, malformed = 0, unreachable = 0;
};
CopyCounts CountCopies(const std::vector<FileCopy>& copies);

// The verdict on one file's copies (the rule above). `what` names the file in the message
// ("1/.meta"). `backends`: the backends the malformed copies must be a minority of (0: the
// holders; a dirty map, kept on every part but its own, counts all of the volume's parts). OK when
// usable; else the first malformed copy's status (its code, message naming the file and line)
// with what was counted, or NotFound / Unavailable when there is no copy to judge at all (none
// found, none in reach).
Status CopiesVerdict(const std::vector<FileCopy>& copies, std::string_view what,
                     size_t backends = 0);

// Reads `path` on each non-null backend of `holders` (an entry per backend; nullptr: not a
// holder): kGood copies are left for the caller's parser to confirm, an empty file is kMalformed.
// A holder whose entry in `down` is not OK is kUnreachable with that error, without a read.
std::vector<FileCopy> ReadCopies(const std::vector<StorageBackend*>& holders, std::string_view path,
                                 const std::vector<Status>& down = {});

// The length of the well-formed UTF-8 sequence starting at s[i] (1 for ASCII), 0 when s[i] does not
// start one (no overlong forms, surrogates or code points above U+10FFFF).
size_t Utf8SequenceAt(std::string_view s, size_t i);

// `bytes` as printable UTF-8: valid UTF-8 and tabs pass, other control characters and invalid
// bytes become "\xNN", and at most `max` bytes of the input are shown ("..." after).
std::string Printable(std::string_view bytes, size_t max = 200);

}  // namespace qbd
