#include "optd/core/options.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace optd::core {

absl::Status ValidateOptions(const AdamWOptions& o) {
  // NaN fails every comparison, so each rule is written to reject it as well.
  if (!(o.lr > 0.0f) || !std::isfinite(o.lr)) {
    return absl::InvalidArgumentError(absl::StrCat("lr must be > 0, got ", o.lr));
  }
  if (!(o.beta1 >= 0.0f && o.beta1 < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("beta1 (betas[0]) must be in [0, 1), got ", o.beta1));
  }
  if (!(o.beta2 >= 0.0f && o.beta2 < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("beta2 (betas[1]) must be in [0, 1), got ", o.beta2));
  }
  if (!(o.eps >= 0.0f) || !std::isfinite(o.eps)) {
    return absl::InvalidArgumentError(absl::StrCat("eps must be >= 0, got ", o.eps));
  }
  if (!(o.weight_decay >= 0.0f) || !std::isfinite(o.weight_decay)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight_decay must be >= 0, got ", o.weight_decay));
  }
  if (o.amsgrad) {
    return absl::InvalidArgumentError("PagedAdamW8bit does not support amsgrad=True");
  }
  if (o.optim_bits != 32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optim_bits must be 32 (accepted for compatibility; states are 8-bit), got ",
        o.optim_bits));
  }
  if (!o.block_wise) {
    return absl::InvalidArgumentError(
        "PagedAdamW8bit supports only block_wise=True (blocks of 256), got block_wise=False");
  }
  if (o.min_8bit_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_8bit_size must be >= 0, got ", o.min_8bit_size));
  }
  if (o.percentile_clipping < 1 || o.percentile_clipping > 100) {
    return absl::InvalidArgumentError(absl::StrCat(
        "percentile_clipping must be in [1, 100], got ", o.percentile_clipping));
  }
  return absl::OkStatus();
}

}  // namespace optd::core
