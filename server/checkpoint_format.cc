#include "server/checkpoint_format.h"

#include "absl/strings/str_cat.h"

namespace optd::server::checkpoint_internal {
namespace {

// Bounds-checked reads from a meta record; every read names the field it is for, so a malformed
// record is reported precisely.
class Cursor {
 public:
  Cursor(absl::string_view bytes, absl::string_view where) : rest_(bytes), where_(where) {}

  template <typename T>
  absl::Status Get(absl::string_view field, T* v) {
    if (rest_.size() < sizeof(T)) return Short(field, sizeof(T));
    std::memcpy(v, rest_.data(), sizeof(T));
    rest_.remove_prefix(sizeof(T));
    return absl::OkStatus();
  }
  absl::Status GetString(absl::string_view field, std::string* s) {
    uint32_t n = 0;
    absl::Status st = Get(field, &n);
    if (!st.ok()) return st;
    if (rest_.size() < n) return Short(field, n);
    s->assign(rest_.data(), n);
    rest_.remove_prefix(n);
    return absl::OkStatus();
  }
  // DataLoss when fewer than `count` items of `item_size` bytes remain: checked before reserving.
  absl::Status CheckCount(absl::string_view field, uint64_t count, size_t item_size) {
    if (count > rest_.size() / item_size) {
      return Error(absl::StrCat(field, " claims ", count, " entries but the record has only ",
                                rest_.size(), " bytes left"));
    }
    return absl::OkStatus();
  }
  size_t remaining() const { return rest_.size(); }
  absl::Status Error(absl::string_view what) const {
    return absl::DataLossError(absl::StrCat(where_, ": ", what));
  }

 private:
  absl::Status Short(absl::string_view field, size_t need) const {
    return Error(absl::StrCat("group metadata ends inside ", field, " (needs ", need,
                              " bytes, ", rest_.size(), " left)"));
  }
  absl::string_view rest_;
  absl::string_view where_;
};

}  // namespace

void PutString(std::string* out, std::string_view s) {
  Put<uint32_t>(out, static_cast<uint32_t>(s.size()));
  out->append(s);
}

void EncodeMeta(const GroupRecord& record, const core::GroupSpec& spec, std::string* out) {
  PutString(out, record.name);
  Put<int32_t>(out, record.num_workers);
  Put<int32_t>(out, record.mode);
  Put<int64_t>(out, record.sync_timeout_ms);
  Put<int64_t>(out, record.max_staleness);
  Put<int64_t>(out, record.version);
  Put<uint32_t>(out, static_cast<uint32_t>(record.worker_steps.size()));
  for (int64_t s : record.worker_steps) Put<int64_t>(out, s);
  const core::AdamWOptions& o = spec.options;
  Put<float>(out, o.lr);
  Put<float>(out, o.beta1);
  Put<float>(out, o.beta2);
  Put<float>(out, o.eps);
  Put<float>(out, o.weight_decay);
  Put<uint8_t>(out, o.amsgrad ? 1 : 0);
  Put<int32_t>(out, o.optim_bits);
  Put<int64_t>(out, o.min_8bit_size);
  Put<int32_t>(out, o.percentile_clipping);
  Put<uint8_t>(out, o.block_wise ? 1 : 0);
  Put<uint32_t>(out, static_cast<uint32_t>(spec.tensors.size()));
  for (const core::TensorSpec& t : spec.tensors) {
    PutString(out, t.name);
    Put<uint8_t>(out, static_cast<uint8_t>(t.dtype));
    Put<uint32_t>(out, static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) Put<int64_t>(out, d);
  }
}

absl::Status DecodeMeta(absl::string_view bytes, absl::string_view where, GroupRecord* record) {
  Cursor c(bytes, where);
  absl::Status st;
  // Reads in file order; stops at the first error.
  auto get = [&](absl::string_view field, auto* v) {
    if (st.ok()) st = c.Get(field, v);
  };
  if (st = c.GetString("name", &record->name); !st.ok()) return st;
  get("num_workers", &record->num_workers);
  get("mode", &record->mode);
  get("sync_timeout_ms", &record->sync_timeout_ms);
  get("max_staleness", &record->max_staleness);
  get("version", &record->version);
  uint32_t n = 0;
  get("worker_steps count", &n);
  if (!st.ok()) return st;
  if (st = c.CheckCount("worker_steps", n, sizeof(int64_t)); !st.ok()) return st;
  record->worker_steps.resize(n);
  for (uint32_t i = 0; i < n; ++i) get("worker_steps", &record->worker_steps[i]);
  core::AdamWOptions& o = record->spec.options;
  uint8_t amsgrad = 0, block_wise = 1;
  get("lr", &o.lr);
  get("beta1", &o.beta1);
  get("beta2", &o.beta2);
  get("eps", &o.eps);
  get("weight_decay", &o.weight_decay);
  get("amsgrad", &amsgrad);
  get("optim_bits", &o.optim_bits);
  get("min_8bit_size", &o.min_8bit_size);
  get("percentile_clipping", &o.percentile_clipping);
  get("block_wise", &block_wise);
  o.amsgrad = amsgrad != 0;
  o.block_wise = block_wise != 0;
  uint32_t num_tensors = 0;
  get("num_tensors", &num_tensors);
  if (!st.ok()) return st;
  // Smallest tensor_spec: empty name, dtype, rank.
  if (st = c.CheckCount("tensors", num_tensors, 4 + 1 + 4); !st.ok()) return st;
  record->spec.tensors.resize(num_tensors);
  for (uint32_t i = 0; i < num_tensors; ++i) {
    core::TensorSpec& t = record->spec.tensors[i];
    const std::string field = absl::StrCat("tensors[", i, "]");
    if (st = c.GetString(field + ".name", &t.name); !st.ok()) return st;
    uint8_t dtype = 0;
    uint32_t rank = 0;
    get(field + ".dtype", &dtype);
    get(field + ".rank", &rank);
    if (!st.ok()) return st;
    if (dtype > static_cast<uint8_t>(core::DType::kBFloat16)) {
      return c.Error(absl::StrCat(field, ".dtype is ", dtype, ", not a known dtype"));
    }
    if (rank > kMaxRank) {
      return c.Error(absl::StrCat(field, ".rank is ", rank, ", more than ", kMaxRank));
    }
    if (st = c.CheckCount(field + ".shape", rank, sizeof(int64_t)); !st.ok()) return st;
    t.dtype = static_cast<core::DType>(dtype);
    t.shape.resize(rank);
    for (uint32_t d = 0; d < rank; ++d) get(field + ".shape", &t.shape[d]);
  }
  if (!st.ok()) return st;
  if (c.remaining() != 0) {
    return c.Error(absl::StrCat("group metadata has ", c.remaining(), " unexpected trailing bytes"));
  }
  absl::Status valid = core::ValidateGroupSpec(record->spec);
  if (!valid.ok()) {
    return c.Error(absl::StrCat("group '", record->name, "' has an invalid spec: ",
                                valid.message()));
  }
  return absl::OkStatus();
}

}  // namespace optd::server::checkpoint_internal
