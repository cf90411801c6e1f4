#include "server/chunk_checks.h"

#include "absl/strings/str_cat.h"
#include "server/convert.h"
#include "server/group.h"

namespace optd::server {
namespace {

// Tensor lookup, dtype and whole-element checks common to both kinds of chunk.
absl::StatusOr<CheckedChunk> CheckCommon(const Group& group, const ChunkRef& chunk,
                                         const char* what) {
  CheckedChunk c;
  c.tensor = group.FindTensor(chunk.tensor);
  if (c.tensor < 0) {
    return absl::NotFoundError(absl::StrCat(what, ".tensor '", chunk.tensor,
                                            "' is not in group '", group.name(), "'"));
  }
  const core::TensorSpec& spec = group.tensor(c.tensor);
  auto dtype = FromProtoDType(chunk.dtype, absl::StrCat(what, ".dtype"));
  if (!dtype.ok()) return dtype.status();
  c.dtype = *dtype;
  const int64_t esize = static_cast<int64_t>(core::DTypeSize(c.dtype));
  const int64_t nbytes = static_cast<int64_t>(chunk.data.size());
  if (nbytes % esize != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ".data of tensor '", spec.name, "' has ",
                                                   nbytes, " bytes, not a multiple of ", esize,
                                                   " (", DTypeStr(c.dtype), ")"));
  }
  c.n = nbytes / esize;
  c.offset = chunk.offset;
  if (c.offset < 0 || c.offset > spec.numel() - c.n) {
    return absl::InvalidArgumentError(absl::StrCat(what, ".offset ", c.offset, " + ", c.n,
                                                   " elements is outside tensor '", spec.name,
                                                   "' of ", spec.numel(), " elements"));
  }
  return c;
}

}  // namespace

absl::StatusOr<CheckedChunk> CheckGradientChunk(const Group& group, const ChunkRef& chunk) {
  auto c = CheckCommon(group, chunk, "gradient");
  if (!c.ok()) return c.status();
  const core::TensorSpec& spec = group.tensor(c->tensor);
  if (core::DTypeSize(c->dtype) > core::DTypeSize(spec.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradient.dtype ", DTypeStr(c->dtype), " is wider than tensor '", spec.name, "' (",
        DTypeStr(spec.dtype), "); send its dtype or a narrower one"));
  }
  if (c->n == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradient.data of tensor '", spec.name, "' is empty"));
  }
  if (c->offset % core::kBlockSize != 0) {
    return absl::InvalidArgumentError(absl::StrCat("gradient.offset ", c->offset, " of tensor '",
                                                   spec.name, "' is not a multiple of ",
                                                   core::kBlockSize));
  }
  if (c->n % core::kBlockSize != 0 && c->offset + c->n != spec.numel()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradient of tensor '", spec.name, "' at offset ", c->offset, " has ", c->n,
        " elements: not a multiple of ", core::kBlockSize, " and not reaching its end (",
        spec.numel(), ")"));
  }
  return c;
}

absl::StatusOr<CheckedChunk> CheckUploadChunk(const Group& group, const ChunkRef& chunk) {
  auto c = CheckCommon(group, chunk, "chunk");
  if (!c.ok()) return c.status();
  const core::TensorSpec& spec = group.tensor(c->tensor);
  if (c->dtype != spec.dtype) {
    return absl::InvalidArgumentError(absl::StrCat("chunk.dtype ", DTypeStr(c->dtype),
                                                   " does not match tensor '", spec.name, "' (",
                                                   DTypeStr(spec.dtype), ")"));
  }
  return c;
}

}  // namespace optd::server
