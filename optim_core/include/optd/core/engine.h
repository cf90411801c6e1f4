// The optimizer engines: a factory of parameter groups that own their weights and 8-bit states
// and apply PagedAdamW8bit updates. Two backends, one contract: CPU and CUDA.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "optd/core/group_spec.h"
#include "optd/core/tensor_state.h"
#include "optd/core/tensor_view.h"

namespace optd::core {

enum class Backend : uint8_t { kCpu = 0, kCuda = 1 };
std::string_view BackendName(Backend b);  // "cpu", "cuda"

struct EngineOptions {
  Backend backend = Backend::kCpu;
  // CPU: worker threads for the update; 0 = all hardware threads.
  int num_threads = 0;
  // CUDA: device ordinal.
  int device = 0;
  // CUDA: bytes of device memory the optimizer states may occupy; 0 = the card's free memory
  // minus device_reserve_bytes at engine creation. States past the budget stay on the host and
  // are paged in ahead of their update.
  int64_t device_budget_bytes = 0;
  int64_t device_reserve_bytes = int64_t{1} << 30;
};

// One tensor's gradient for a whole-tensor step. The gradient's dtype may differ from the
// parameter's (e.g. bf16 for an fp32 parameter): it is widened to fp32 before use.
struct TensorGradient {
  int tensor = 0;         // index into GroupSpec::tensors
  ConstTensorView grad;   // numel must equal the tensor's numel
};

struct StepArgs {
  std::optional<float> lr;  // overrides options().lr for this step only (schedulers); must be > 0
};

// A range of one tensor's gradient, for streaming updates (apply chunks as they arrive).
struct RangeGradient {
  int tensor = 0;
  int64_t offset = 0;     // multiple of kBlockSize
  ConstTensorView grad;   // numel a multiple of kBlockSize, or reaching the tensor's end
};

// Counters for metrics. Bytes are exact sums over live groups; traffic counters only grow.
struct EngineStats {
  int64_t device_total_bytes = -1;   // -1 on the CPU backend
  int64_t device_free_bytes = -1;
  int64_t device_budget_bytes = -1;
  int64_t weight_bytes_device = 0;
  int64_t weight_bytes_host = 0;
  int64_t state_bytes_device = 0;
  int64_t state_bytes_host = 0;
  int64_t paged_bytes_to_device = 0;
  int64_t paged_bytes_to_host = 0;
  int64_t evictions = 0;
  double page_wait_seconds = 0;
  int64_t nonfinite_gradient_elements = 0;
};

// What one group holds, as allocated by the engine (not as its spec declares), by where it
// lives. The CPU engine's buffers come from calloc: the kernel commits their pages as they are
// first touched, so these are the bytes the engine asked for, an upper bound of its resident set.
struct MemoryStats {
  int64_t weight_bytes_device = 0;
  int64_t weight_bytes_host = 0;
  // States: resident pages and the slots that paged states pass through (device); the states'
  // host homes (CUDA: pinned memory of paged states; CPU: all states, with the clipping history).
  int64_t state_bytes_device = 0;
  int64_t state_bytes_host = 0;
  // Working buffers of the steps: gradient staging, launch descriptors, clipping history and
  // gradient-norm partials, the non-finite counter.
  int64_t buffer_bytes_device = 0;
  int64_t buffer_bytes_host = 0;
  // State bytes whose home is host memory and which a step pages in and out (0 when every state
  // is resident, and on the CPU backend, where host memory is where states are used).
  int64_t paged_out_bytes = 0;

  int64_t device_bytes() const {
    return weight_bytes_device + state_bytes_device + buffer_bytes_device;
  }
  int64_t host_bytes() const { return weight_bytes_host + state_bytes_host + buffer_bytes_host; }
};

// Thread safety: a ParamGroup is not thread-safe; the caller serializes calls on one group.
// Distinct groups of one engine may be used from different threads at the same time.
class ParamGroup {
 public:
  virtual ~ParamGroup() = default;

  virtual const GroupSpec& spec() const = 0;
  const AdamWOptions& options() const { return spec().options; }
  int num_tensors() const { return static_cast<int>(spec().tensors.size()); }

  // Replaces the hyperparameters (validated; FailedPrecondition if min_8bit_size or
  // percentile_clipping would change a tensor's state layout after its first step).
  [[nodiscard]] virtual absl::Status SetOptions(const AdamWOptions& options) = 0;

  // Copies `src` (dtype == the tensor's dtype) into elements [offset, offset + src.numel).
  [[nodiscard]] virtual absl::Status WriteParam(int tensor, int64_t offset,
                                                ConstTensorView src) = 0;
  // Copies elements [offset, offset + dst.numel) into `dst` (dtype == the tensor's dtype).
  [[nodiscard]] virtual absl::Status ReadParam(int tensor, int64_t offset,
                                               TensorView dst) const = 0;
  // The engine's own storage of the tensor's weights (host memory on the CPU backend, device
  // memory on CUDA). Valid until the group is destroyed; do not use it during a step.
  virtual TensorView ParamStorage(int tensor) = 0;

  // One optimizer step over the tensors in `grads` (each at most once); the others are
  // skipped and their step counters do not advance. All or nothing: on an error nothing changes.
  [[nodiscard]] virtual absl::Status Step(absl::Span<const TensorGradient> grads,
                                          const StepArgs& args) = 0;

  // Streaming: applies the update of step number `step` (the tensor's counter after this step,
  // i.e. GetStep(tensor) + 1) to one block-aligned range. Call it for ranges that cover the
  // tensor exactly once, then SetStep(tensor, step). FailedPrecondition when percentile
  // clipping is on (it needs the whole gradient: use Step).
  [[nodiscard]] virtual absl::Status ApplyRange(const RangeGradient& range, int64_t step,
                                                const StepArgs& args) = 0;
  virtual int64_t GetStep(int tensor) const = 0;
  [[nodiscard]] virtual absl::Status SetStep(int tensor, int64_t step) = 0;

  // The tensor's whole state, in the reference's layout.
  [[nodiscard]] virtual absl::StatusOr<TensorState> ExportState(int tensor) const = 0;
  // Replaces the tensor's state (validated with ValidateTensorState).
  [[nodiscard]] virtual absl::Status ImportState(int tensor, const TensorState& state) = 0;

  // The state of elements [offset, offset + count) (offset block-aligned; count a multiple of
  // kBlockSize or reaching the end), with their block scales; `step` and `gnorm_vec` whole.
  // Used to undo a streamed step that was cancelled half way.
  [[nodiscard]] virtual absl::StatusOr<TensorState> ExportStateRange(int tensor, int64_t offset,
                                                                     int64_t count) const = 0;
  [[nodiscard]] virtual absl::Status ImportStateRange(int tensor, int64_t offset,
                                                      const TensorState& state) = 0;

  // What the group holds now (see MemoryStats).
  virtual MemoryStats GetMemoryStats() const = 0;
  // NaN/Inf gradient elements the last successful Step or ApplyRange found (as the update
  // kernels counted them: those elements' weights were left unchanged on the 8-bit path). 0
  // before the first.
  virtual int64_t LastNonfiniteGradientElements() const = 0;
};

// Host memory registered with an engine (Engine::RegisterHostMemory) for as long as this lives.
// Thread safety: destroy once, from any thread.
class HostRegistration {
 public:
  virtual ~HostRegistration() = default;
};

// Device memory of another process opened by Engine::OpenIpcMemory, mapped into this engine's
// device context for as long as this lives: TensorViews with MemoryKind::kDevice may point into
// [data(), data() + bytes()). Thread safety: Read and Write may run on many threads at once
// (callers keep the ranges they write disjoint); destroy once, from any thread.
class DeviceMapping {
 public:
  virtual ~DeviceMapping() = default;
  DeviceMapping(const DeviceMapping&) = delete;
  DeviceMapping& operator=(const DeviceMapping&) = delete;
  char* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  // Synchronous copies between bytes [offset, offset + n) of the mapping and host memory.
  // REQUIRES: the range lies in the mapping. Internal naming the device error.
  [[nodiscard]] virtual absl::Status Read(int64_t offset, int64_t n, void* dst) const = 0;
  [[nodiscard]] virtual absl::Status Write(int64_t offset, const void* src, int64_t n) const = 0;

 protected:
  DeviceMapping(char* data, int64_t bytes) : data_(data), bytes_(bytes) {}

 private:
  char* const data_;
  const int64_t bytes_;
};

// Thread safety: thread-safe.
class Engine {
 public:
  virtual ~Engine() = default;
  virtual Backend backend() const = 0;
  // Allocates the weights (zero) and states (initial) of a new group. InvalidArgument for a bad
  // spec; ResourceExhausted when memory runs out.
  virtual absl::StatusOr<std::unique_ptr<ParamGroup>> CreateGroup(const GroupSpec& spec) = 0;
  virtual EngineStats Stats() const = 0;

  // Host memory for buffers that the caller copies to and from this engine's groups over and
  // over (a server's gradient gathering and weight snapshots): page-locked on CUDA, so that those
  // copies run at full bus speed instead of through the driver's own bounce buffers; ordinary
  // memory on the CPU backend. Contents indeterminate. nullptr when it cannot be had. Free with
  // FreeHost. Slow (it pins pages): allocate once and reuse.
  virtual void* AllocateHost(size_t bytes);
  virtual void FreeHost(void* p);

  // Registers `bytes` of host memory at `data` that someone else allocated (a shared-memory
  // region a server maps for a colocated trainer), so that this engine's copies to and from it
  // run like those of AllocateHost memory: page-locked on CUDA (cudaHostRegister, undone when
  // the registration is destroyed), nothing on the CPU backend. The registration must be
  // destroyed before the memory is unmapped. Internal with the CUDA error name when it fails.
  virtual absl::StatusOr<std::unique_ptr<HostRegistration>> RegisterHostMemory(void* data,
                                                                               int64_t bytes);

  // Opens bytes [offset, offset + bytes) of the device allocation another process of this host
  // exported with cudaIpcGetMemHandle (`handle`: the 64 bytes of its cudaIpcMemHandle_t), in this
  // engine's device context (an allocation on another GPU is reached by peer access), for
  // colocated trainers whose gradients the engine reads and whose weights it writes in place.
  // InvalidArgument for a malformed handle or a range past the allocation (checked against the
  // driver's extent of it); FailedPrecondition when the driver refuses the handle, and on the
  // CPU backend, which has no device memory.
  virtual absl::StatusOr<std::unique_ptr<DeviceMapping>> OpenIpcMemory(std::string_view handle,
                                                                       int64_t offset,
                                                                       int64_t bytes);
};

// True when this build contains the CUDA engine.
bool CudaEngineCompiled();

// The engine of options.backend. The CUDA engine is Unavailable when the build has no CUDA or
// there is no usable device (the message says which).
absl::StatusOr<std::unique_ptr<Engine>> CreateEngine(const EngineOptions& options);

}  // namespace optd::core
