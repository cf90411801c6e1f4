#include "server/chunk_checks.h"

#include "absl/strings/str_cat.h"
#include "server/convert.h"
#include "server/group.h"

namespace optd::server {
namespace {

// Tensor lookup and dtype of a chunk named `what`.
absl::StatusOr<CheckedChunk> CheckTensorAndDType(const Group& group, const std::string& tensor,
                                                 v1::DType dtype, const char* what) {
  CheckedChunk c;
  c.tensor = group.FindTensor(tensor);
  if (c.tensor < 0) {
    return absl::NotFoundError(absl::StrCat(what, ".tensor '", tensor, "' is not in group '",
                                            group.name(), "'"));
  }
  auto d = FromProtoDType(dtype, absl::StrCat(what, ".dtype"));
  if (!d.ok()) return d.status();
  c.dtype = *d;
  return c;
}

// Elements [offset, offset + n) inside the tensor.
absl::Status CheckInside(const Group& group, const CheckedChunk& c, const char* what) {
  const core::TensorSpec& spec = group.tensor(c.tensor);
  if (c.offset < 0 || c.offset > spec.numel() - c.n) {
    return absl::InvalidArgumentError(absl::StrCat(what, ".offset ", c.offset, " + ", c.n,
                                                   " elements is outside tensor '", spec.name,
                                                   "' of ", spec.numel(), " elements"));
  }
  return absl::OkStatus();
}

// Tensor lookup, dtype and whole-element checks common to both kinds of chunk.
absl::StatusOr<CheckedChunk> CheckCommon(const Group& group, const ChunkRef& chunk,
                                         const char* what) {
  auto c = CheckTensorAndDType(group, chunk.tensor, chunk.dtype, what);
  if (!c.ok()) return c.status();
  const core::TensorSpec& spec = group.tensor(c->tensor);
  const int64_t esize = static_cast<int64_t>(core::DTypeSize(c->dtype));
  const int64_t nbytes = static_cast<int64_t>(chunk.data.size());
  if (nbytes % esize != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ".data of tensor '", spec.name, "' has ",
                                                   nbytes, " bytes, not a multiple of ", esize,
                                                   " (", DTypeStr(c->dtype), ")"));
  }
  c->n = nbytes / esize;
  c->offset = chunk.offset;
  if (absl::Status s = CheckInside(group, *c, what); !s.ok()) return s;
  return c;
}

// The rules of a gradient range: dtype no wider than the tensor's, non-empty, block-aligned.
absl::Status CheckGradientRules(const Group& group, const CheckedChunk& c, const char* what,
                                const char* count_field) {
  const core::TensorSpec& spec = group.tensor(c.tensor);
  if (core::DTypeSize(c.dtype) > core::DTypeSize(spec.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ".dtype ", DTypeStr(c.dtype), " is wider than tensor '", spec.name, "' (",
        DTypeStr(spec.dtype), "); send its dtype or a narrower one"));
  }
  if (c.n == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ".", count_field, " of tensor '", spec.name, "' is empty"));
  }
  if (c.offset % core::kBlockSize != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ".offset ", c.offset, " of tensor '",
                                                   spec.name, "' is not a multiple of ",
                                                   core::kBlockSize));
  }
  if (c.n % core::kBlockSize != 0 && c.offset + c.n != spec.numel()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " of tensor '", spec.name, "' at offset ", c.offset, " has ", c.n,
        " elements: not a multiple of ", core::kBlockSize, " and not reaching its end (",
        spec.numel(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CheckedChunk> CheckGradientChunk(const Group& group, const ChunkRef& chunk) {
  auto c = CheckCommon(group, chunk, "gradient");
  if (!c.ok()) return c.status();
  if (absl::Status s = CheckGradientRules(group, *c, "gradient", "data"); !s.ok()) return s;
  return c;
}

absl::StatusOr<CheckedChunk> CheckRegionGradientRange(const Group& group,
                                                      const std::string& tensor, int64_t offset,
                                                      int64_t count, v1::DType dtype) {
  constexpr char kWhat[] = "region_gradient";
  auto c = CheckTensorAndDType(group, tensor, dtype, kWhat);
  if (!c.ok()) return c.status();
  if (count < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("region_gradient.count must be >= 0, got ", count));
  }
  c->offset = offset;
  c->n = count;
  if (absl::Status s = CheckInside(group, *c, kWhat); !s.ok()) return s;
  if (absl::Status s = CheckGradientRules(group, *c, kWhat, "count"); !s.ok()) return s;
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
