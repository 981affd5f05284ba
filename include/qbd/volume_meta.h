// The two metadata files of the layout (layout-spec.md §1, §2): `.volumesmeta` (volume names and
// numbers, on every backend) and `<volnr>/.meta` (one volume's policy, on every backend holding
// one of its parts). Both are `key = value` text with a format version and a serial that grows
// on every change, so that the newest copy wins when backends disagree.
//
// Thread-safety: pure functions and values.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "qbd/chunk_format.h"
#include "qbd/config.h"
#include "qbd/status.h"

namespace qbd {

inline constexpr uint32_t kFormatVersion = 1;
inline constexpr char kVolumesMetaPath[] = ".volumesmeta";
// Bounds of the values (layout-spec.md §1, §2): a serial grows by one per change, so 2^53 is
// never reached, and a larger one is damage; a volume holds at most 1 PiB (its dirty maps, one
// bit per 64 KiB, then take 2 GiB each in memory at most).
inline constexpr uint64_t kMaxSerial = uint64_t{1} << 53;
inline constexpr uint64_t kMaxVolumeSize = uint64_t{1} << 50;
inline constexpr size_t kMaxCreatedLength = 40;
inline constexpr size_t kMaxQosLength = 4000;

struct VolumeMeta {
  std::string name;
  uint32_t number = 0;
  Geometry geometry;
  uint32_t replicas = 1;      // parts a .. 'a' + replicas - 1
  uint32_t write_quorum = 0;  // 0: majority of replicas
  bool read_only = false;
  bool append_only = false;
  uint64_t serial = 1;
  std::string created;  // ISO 8601 UTC, informational
  // The volume's QoS settings as the REST API took them: compact JSON text, ASCII, '#' written as
  // \u0023 (a '#' starts a comment in .meta), as ParseQosText (qbd/qos.h) takes it; applied by the
  // volume's QoS layer; "" when none.
  std::string qos;
  // The LVM thin stack qbd provisions when the volume is attached (qbd/lvm_thin.h): `lvm_thin`
  // asks for it; `lvm_pv_uuid` is the UUID of its PV, chosen before the PV is written ("" until
  // then).
  bool lvm_thin = false;
  std::string lvm_pv_uuid;

  uint32_t EffectiveWriteQuorum() const { return write_quorum != 0 ? write_quorum : replicas / 2 + 1; }
  char LastPart() const { return static_cast<char>('a' + replicas - 1); }
};

// OK when `text` can be a `qos` value of .meta: at most kMaxQosLength printable ASCII characters
// without '#', holding settings that ParseQosText (qbd/qos.h) takes. InvalidArgument otherwise,
// with ParseQosText's message for bad settings.
Status CheckQosText(std::string_view text);

// "<volnr>/.meta"
std::string MetaPath(uint32_t volnr);
std::string EncodeVolumeMeta(const VolumeMeta& meta);
// InvalidArgument naming `file:line` for a malformed line, an unknown key, a value out of its
// bounds (layout-spec.md §2), an unsupported format, an inconsistent geometry or quorum (naming
// the line of the value at fault), a `number` other than `expected_number` (when not 0: the
// number of the directory the file is in); a missing key names the file only (ReplicatedText
// names the line after the last, where a copy cut short lost it).
Result<VolumeMeta> ParseVolumeMeta(std::string_view text, std::string_view file,
                                   uint32_t expected_number = 0);

struct VolumesIndex {
  uint64_t serial = 0;
  std::map<std::string, uint32_t> volumes;  // name -> number

  // The number of `name`, or 0.
  uint32_t Find(std::string_view name) const;
  // One more than the largest number ever listed here.
  uint32_t NextNumber() const;
};

std::string EncodeVolumesIndex(const VolumesIndex& index);
// InvalidArgument naming `file:line` for a malformed line, a bad name, a number or serial out of
// bounds, a name or number listed twice; a missing `format` names the file only.
Result<VolumesIndex> ParseVolumesIndex(std::string_view text, std::string_view file);

// ValidateVolumeName (the rule for volume names) is in config.h.

}  // namespace qbd
