#include "server/group.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/convert.h"

namespace optd::server {

WeightSnapshot::~WeightSnapshot() {
  if (pool == nullptr) return;
  for (WireBuffer& b : data) pool->Return(std::move(b));
}

absl::Status WeightSnapshot::AwaitFilled(int slot) const {
  absl::MutexLock lock(&fill_mu_);
  auto ready = [this, slot]() ABSL_SHARED_LOCKS_REQUIRED(fill_mu_) {
    return filled_ > slot || !fill_status_.ok();
  };
  fill_mu_.Await(absl::Condition(&ready));
  return filled_ > slot ? absl::OkStatus() : fill_status_;
}

void WeightSnapshot::SetFilled(int slots, const absl::Status& status) const {
  absl::MutexLock lock(&fill_mu_);
  filled_ = slots;
  fill_status_ = status;
}

int WeightSnapshot::SlotOf(int t) const {
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i] == t) return static_cast<int>(i);
  }
  return -1;
}

bool Subscriber::Push(std::shared_ptr<const WeightSnapshot> snapshot) {
  absl::MutexLock lock(&mu_);
  if (closed_) return true;
  if (queue_.size() >= kCapacity) {
    queue_.back() = std::move(snapshot);  // Note [Subscribers never slow a step]
    ++skipped_;
    return false;
  }
  queue_.push_back(std::move(snapshot));
  return true;
}

int64_t Subscriber::skipped() const {
  absl::MutexLock lock(&mu_);
  return skipped_;
}

std::unique_ptr<GradientSet> GradientPool::Take() {
  absl::MutexLock lock(&mu_);
  std::unique_ptr<GradientSet> set;
  if (!free_.empty()) {
    set = std::move(free_.back());
    free_.pop_back();
  } else {
    set = std::make_unique<GradientSet>(num_tensors_, engine_);
  }
  return set;
}

void GradientPool::Return(std::unique_ptr<GradientSet> set) {
  absl::MutexLock lock(&mu_);
  set->Reset();
  if (static_cast<int>(free_.size()) < max_kept_) free_.push_back(std::move(set));
}

int64_t GradientPool::bytes() const {
  absl::MutexLock lock(&mu_);
  int64_t total = 0;
  for (const auto& s : free_) total += s->bytes();
  return total;
}

std::shared_ptr<const WeightSnapshot> Subscriber::Pop(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return closed_ || !queue_.empty(); };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (closed_ || queue_.empty()) return nullptr;
  auto s = std::move(queue_.front());
  queue_.pop_front();
  return s;
}

void Subscriber::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  queue_.clear();
}

Group::Group(GroupRecord record, std::unique_ptr<core::ParamGroup> params,
             std::shared_ptr<GroupMetrics> metrics, bool weights_initialized,
             core::Engine* engine)
    : name_(record.name),
      tensors_(record.spec.tensors),
      record_(std::move(record)),
      params_(std::move(params)),
      uploaded_(tensors_.size()),
      metrics_(std::move(metrics)),
      gradient_pool_(std::make_shared<GradientPool>(static_cast<int>(tensors_.size()),
                                                    std::max(1, record_.num_workers), engine)),
      // Two copies of the weights: one being sent while the next step's is made.
      snapshot_pool_(std::make_shared<BufferPool>(2 * WeightBytes(record_.spec), engine)) {
  if (weights_initialized) {
    for (size_t t = 0; t < tensors_.size(); ++t) uploaded_[t].InsertMerge(0, tensors_[t].numel());
  }
}

Group::~Group() { CloseSubscribers(); }

int Group::FindTensor(std::string_view name) const {
  for (size_t t = 0; t < tensors_.size(); ++t) {
    if (tensors_[t].name == name) return static_cast<int>(t);
  }
  return -1;
}

absl::StatusOr<std::vector<int>> Group::FindTensors(
    const google::protobuf::RepeatedPtrField<std::string>& names) const {
  std::vector<int> tensors;
  tensors.reserve(static_cast<size_t>(names.size()));
  for (const std::string& name : names) {
    const int t = FindTensor(name);
    if (t < 0) {
      return absl::NotFoundError(absl::StrCat("tensors: '", name, "' is not in group '", name_, "'"));
    }
    tensors.push_back(t);
  }
  return tensors;
}

bool Group::weights_initialized() const {
  for (size_t t = 0; t < tensors_.size(); ++t) {
    if (uploaded_[t].covered() != tensors_[t].numel()) return false;
  }
  return true;
}

void Group::FillInfo(v1::GroupInfo* info) const {
  info->Clear();
  info->set_group(name_);
  for (const core::TensorSpec& t : tensors_) {
    v1::TensorInfo* ti = info->add_tensors();
    ti->set_name(t.name);
    ti->set_dtype(ToProtoDType(t.dtype));
    for (int64_t d : t.shape) ti->add_shape(d);
  }
  ToProtoHyperparameters(params_->options(), info->mutable_hyperparameters());
  info->set_num_workers(record_.num_workers);
  info->set_mode(static_cast<v1::SyncMode>(record_.mode));
  info->set_sync_timeout_ms(record_.sync_timeout_ms);
  info->set_max_staleness(record_.max_staleness);
  info->set_version(record_.version);
  const core::MemoryStats memory = params_->GetMemoryStats();
  info->set_weight_bytes(memory.weight_bytes_device + memory.weight_bytes_host);
  info->set_state_bytes(memory.state_bytes_device + memory.state_bytes_host);
  info->set_weights_initialized(weights_initialized());
  for (int64_t step : record_.worker_steps) info->add_worker_steps(step);
}

std::shared_ptr<WeightSnapshot> Group::BeginSnapshot(const std::vector<int>& tensors) const {
  auto snap = std::make_shared<WeightSnapshot>();
  snap->version = record_.version;
  snap->pool = snapshot_pool_;
  if (tensors.empty()) {
    for (int t = 0; t < num_tensors(); ++t) snap->tensors.push_back(t);
  } else {
    snap->tensors = tensors;
    std::sort(snap->tensors.begin(), snap->tensors.end());
    snap->tensors.erase(std::unique(snap->tensors.begin(), snap->tensors.end()),
                        snap->tensors.end());
  }
  for (int t : snap->tensors) {
    const core::TensorSpec& spec = tensor(t);
    // Not zero-filled: ReadParam overwrites all of it (Note [Uninitialized staging]).
    snap->data.push_back(
        snapshot_pool_->Take(static_cast<size_t>(spec.numel()) * core::DTypeSize(spec.dtype)));
  }
  return snap;
}

absl::Status Group::FillSnapshot(const WeightSnapshot& snap) const {
  for (size_t i = 0; i < snap.tensors.size(); ++i) {
    const core::TensorSpec& spec = tensor(snap.tensors[i]);
    // The bytes belong to this fill until SetFilled publishes them.
    auto* dst = const_cast<uint8_t*>(snap.data[i].data());
    core::TensorView view{dst, spec.dtype, spec.numel(), core::MemoryKind::kHost};
    if (absl::Status s = params_->ReadParam(snap.tensors[i], 0, view); !s.ok()) {
      snap.SetFilled(static_cast<int>(i), s);
      return s;
    }
    snap.SetFilled(static_cast<int>(i) + 1, absl::OkStatus());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const WeightSnapshot>> Group::Snapshot(
    const std::vector<int>& tensors) const {
  std::shared_ptr<WeightSnapshot> snap = BeginSnapshot(tensors);
  if (absl::Status s = FillSnapshot(*snap); !s.ok()) return s;
  return std::shared_ptr<const WeightSnapshot>(std::move(snap));
}

void Group::Publish() {
  if (subscribers_.empty()) return;
  auto snap = Snapshot({});
  if (!snap.ok()) {
    // The weights could not be read back: subscribers would miss this version silently, so
    // end their streams instead; they resubscribe with send_current.
    for (auto& s : subscribers_) s->Close();
    subscribers_.clear();
    return;
  }
  Publish(*std::move(snap));
}

void Group::Publish(std::shared_ptr<const WeightSnapshot> snapshot) {
  for (auto& s : subscribers_) s->Push(snapshot);
}

void Group::UpdateByteMetrics() { metrics_->SetMemory(params_->GetMemoryStats()); }

absl::Status Group::AddSubscriber(std::shared_ptr<Subscriber> s, bool send_current) {
  absl::MutexLock lock(&mu_);
  if (send_current) {
    auto snap = Snapshot({});
    if (!snap.ok()) return snap.status();
    s->Push(*std::move(snap));
  }
  subscribers_.push_back(std::move(s));
  return absl::OkStatus();
}

void Group::RemoveSubscriber(const Subscriber* s) {
  absl::MutexLock lock(&mu_);
  subscribers_.erase(std::remove_if(subscribers_.begin(), subscribers_.end(),
                                    [s](const auto& p) { return p.get() == s; }),
                     subscribers_.end());
}

void Group::CloseSubscribers() {
  absl::MutexLock lock(&mu_);
  for (auto& s : subscribers_) s->Close();
  subscribers_.clear();
}

}  // namespace optd::server
