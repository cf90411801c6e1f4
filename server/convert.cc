#include "server/convert.h"

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"

namespace optd::server {

absl::StatusOr<core::DType> FromProtoDType(v1::DType dtype, std::string_view field) {
  switch (dtype) {
    case v1::FLOAT32:
      return core::DType::kFloat32;
    case v1::FLOAT16:
      return core::DType::kFloat16;
    case v1::BFLOAT16:
      return core::DType::kBFloat16;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          absl::string_view(field.data(), field.size()), " must be FLOAT32, FLOAT16 or BFLOAT16, got ", v1::DType_Name(dtype),
          dtype == v1::DTYPE_UNSPECIFIED ? "" : absl::StrCat(" (", static_cast<int>(dtype), ")")));
  }
}

v1::DType ToProtoDType(core::DType dtype) {
  switch (dtype) {
    case core::DType::kFloat32:
      return v1::FLOAT32;
    case core::DType::kFloat16:
      return v1::FLOAT16;
    case core::DType::kBFloat16:
      return v1::BFLOAT16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

core::AdamWOptions MergeHyperparameters(const v1::Hyperparameters& hp, core::AdamWOptions base) {
  if (hp.has_lr()) base.lr = hp.lr();
  if (hp.has_beta1()) base.beta1 = hp.beta1();
  if (hp.has_beta2()) base.beta2 = hp.beta2();
  if (hp.has_eps()) base.eps = hp.eps();
  if (hp.has_weight_decay()) base.weight_decay = hp.weight_decay();
  if (hp.has_amsgrad()) base.amsgrad = hp.amsgrad();
  if (hp.has_optim_bits()) base.optim_bits = hp.optim_bits();
  if (hp.has_min_8bit_size()) base.min_8bit_size = hp.min_8bit_size();
  if (hp.has_percentile_clipping()) base.percentile_clipping = hp.percentile_clipping();
  if (hp.has_block_wise()) base.block_wise = hp.block_wise();
  return base;
}

void ToProtoHyperparameters(const core::AdamWOptions& o, v1::Hyperparameters* hp) {
  hp->set_lr(o.lr);
  hp->set_beta1(o.beta1);
  hp->set_beta2(o.beta2);
  hp->set_eps(o.eps);
  hp->set_weight_decay(o.weight_decay);
  hp->set_amsgrad(o.amsgrad);
  hp->set_optim_bits(o.optim_bits);
  hp->set_min_8bit_size(o.min_8bit_size);
  hp->set_percentile_clipping(o.percentile_clipping);
  hp->set_block_wise(o.block_wise);
}

absl::StatusOr<GroupRecord> RecordFromCreateRequest(const v1::CreateGroupRequest& request,
                                                    const Limits& limits) {
  // The name and the counts first: nothing below may copy a 15 MiB name into a metric label or
  // size a vector by an unchecked count.
  if (absl::Status s = CheckName(request.group(), "group", limits); !s.ok()) return s;
  if (request.tensors().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensors must not be empty (group '", request.group(), "')"));
  }
  if (request.tensors_size() > limits.max_tensors_per_group) {
    return absl::InvalidArgumentError(absl::StrCat(
        "group '", request.group(), "' has ", request.tensors_size(),
        " tensors, more than the limit of ", limits.max_tensors_per_group,
        " (--max_tensors_per_group)"));
  }
  const int64_t num_workers = request.num_workers() == 0 ? 1 : request.num_workers();
  if (absl::Status s = CheckNumWorkers(num_workers, limits); !s.ok()) return s;

  GroupRecord record;
  record.name = request.group();
  for (int i = 0; i < request.tensors_size(); ++i) {
    const v1::TensorInfo& info = request.tensors(i);
    core::TensorSpec spec;
    spec.name = info.name();
    auto dtype = FromProtoDType(info.dtype(), absl::StrCat("tensors[", i, "].dtype"));
    if (!dtype.ok()) return dtype.status();
    spec.dtype = *dtype;
    spec.shape.assign(info.shape().begin(), info.shape().end());
    record.spec.tensors.push_back(std::move(spec));
  }
  record.spec.options = MergeHyperparameters(request.hyperparameters(), core::AdamWOptions());
  record.num_workers = static_cast<int32_t>(num_workers);
  switch (request.mode()) {
    case v1::SYNC_MODE_UNSPECIFIED:
    case v1::SYNC:
      record.mode = v1::SYNC;
      break;
    case v1::ASYNC:
      record.mode = v1::ASYNC;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("mode must be SYNC or ASYNC, got ", static_cast<int>(request.mode())));
  }
  if (request.sync_timeout_ms() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sync_timeout_ms must be >= 0, got ", request.sync_timeout_ms()));
  }
  record.sync_timeout_ms = request.sync_timeout_ms() == 0 ? 60000 : request.sync_timeout_ms();
  record.max_staleness = request.max_staleness();
  record.version = 0;
  record.worker_steps.assign(static_cast<size_t>(record.num_workers), 0);
  if (absl::Status s = ValidateRecord(record, limits); !s.ok()) return s;
  return record;
}

absl::Status ValidateRecord(const GroupRecord& record, const Limits& limits) {
  if (absl::Status s = CheckGroupSpec(record.name, record.spec, limits); !s.ok()) return s;
  if (absl::Status s = CheckNumWorkers(record.num_workers, limits); !s.ok()) return s;
  if (record.mode != v1::SYNC && record.mode != v1::ASYNC) {
    return absl::InvalidArgumentError(
        absl::StrCat("mode must be SYNC (1) or ASYNC (2), got ", record.mode));
  }
  if (record.sync_timeout_ms <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sync_timeout_ms must be > 0, got ", record.sync_timeout_ms));
  }
  if (record.max_staleness < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_staleness must be >= 0, got ", record.max_staleness));
  }
  if (record.version < 0) {
    return absl::InvalidArgumentError(absl::StrCat("version must be >= 0, got ", record.version));
  }
  if (record.worker_steps.size() != static_cast<size_t>(record.num_workers)) {
    return absl::InvalidArgumentError(absl::StrCat("worker_steps has ", record.worker_steps.size(),
                                                   " entries, expected one per worker (",
                                                   record.num_workers, ")"));
  }
  for (size_t w = 0; w < record.worker_steps.size(); ++w) {
    if (record.worker_steps[w] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("worker_steps[", w, "] must be >= 0, got ",
                                                     record.worker_steps[w]));
    }
  }
  return absl::OkStatus();
}

int64_t WeightBytes(const core::GroupSpec& spec) {
  const std::optional<GroupBytes> bytes = CountGroupBytes(spec);
  return bytes.has_value() ? bytes->weights : INT64_MAX;
}

}  // namespace optd::server
