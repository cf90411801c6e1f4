// Encoding of the pieces of a checkpoint file (see Note [File format, version 1] in
// checkpoint_file.h): constants, little-endian scalars, and a group's metadata record.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "optd/core/group_spec.h"
#include "server/checkpoint_file.h"

namespace optd::server::checkpoint_internal {

// The file stores little-endian values; writing them as raw host bytes needs a little-endian host.
static_assert(std::endian::native == std::endian::little, "checkpoints assume a little-endian host");

inline constexpr char kMagic[8] = {'O', 'P', 'T', 'D', 'C', 'K', 'P', 'T'};
inline constexpr char kFooterMagic[8] = {'O', 'P', 'T', 'D', 'E', 'N', 'D', '1'};
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr int64_t kHeaderSize = 16;   // magic, version, flags
inline constexpr int64_t kFooterSize = 28;   // magic, num_groups, file_size, crc
inline constexpr uint32_t kGroupTag = 0x31505247;   // "GRP1" in file byte order
inline constexpr uint32_t kTensorTag = 0x31534E54;  // "TNS1"
// Tensors of more dimensions than this are refused when reading (a corrupted rank would
// otherwise be taken at its word).
inline constexpr uint32_t kMaxRank = 64;

template <typename T>
void Put(std::string* out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out->append(b, sizeof(T));
}
void PutString(std::string* out, std::string_view s);

// Appends the meta record of `record` with the tensors and options of `spec`.
void EncodeMeta(const GroupRecord& record, const core::GroupSpec& spec, std::string* out);

// Parses a meta record into `record` (record->spec included). DataLoss naming the field when the
// bytes are malformed or the spec is invalid (`where` prefixes the message).
[[nodiscard]] absl::Status DecodeMeta(absl::string_view bytes, absl::string_view where,
                                      GroupRecord* record);

}  // namespace optd::server::checkpoint_internal
