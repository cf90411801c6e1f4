// The C ABI (optd_client_c.h) over optd::client::Client: argument checks, conversion of the C
// structs, and the calling thread's last error. No exception leaves this file.
// This file is compiled with hidden visibility; the declarations of the ABI are the exported
// exception (the linker's version script, optd_client_c.map, then keeps everything else local).
#pragma GCC visibility push(default)
#include "client/c_api/optd_client_c.h"
#pragma GCC visibility pop

#include <cstddef>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "optd/client/client.h"

struct optd_client {
  std::unique_ptr<optd::client::Client> client;
};

struct optd_region {
  std::unique_ptr<optd::client::ColocatedRegion> region;
};

namespace {

using optd::client::Client;
using optd::client::ConstBuffer;
using optd::client::DType;
using optd::client::MutableBuffer;

// The message of the calling thread's last failure; optd_last_error() hands out its c_str().
thread_local std::string last_error;

int Report(const absl::Status& status) {
  if (status.ok()) {
    last_error.clear();
    return OPTD_OK;
  }
  last_error = std::string(status.message());
  return static_cast<int>(status.code());
}

// Runs `body` (returning absl::Status), turning an escaping exception into a status: a C caller
// cannot catch C++ exceptions, and the client's containers may throw std::bad_alloc.
template <typename Body>
int Guarded(Body body) {
  try {
    return Report(body());
  } catch (const std::bad_alloc&) {
    return Report(absl::ResourceExhaustedError("optd client: out of memory"));
  } catch (const std::exception& e) {
    return Report(absl::InternalError(absl::StrCat("optd client: ", e.what())));
  } catch (...) {
    return Report(absl::InternalError("optd client: unknown exception"));
  }
}

// True when a caller's struct of `struct_size` bytes holds the whole of a field ending at
// `field_end` (structs grow at the end).
bool Holds(uint32_t struct_size, size_t field_end) { return struct_size >= field_end; }

absl::Status CheckStructSize(const char* what, uint32_t struct_size, size_t ours) {
  if (Holds(struct_size, ours)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, ".struct_size: ", struct_size,
                                                 " is smaller than this library's ", ours,
                                                 " (set it to sizeof the struct)"));
}

absl::Status ToDType(const char* what, int64_t index, int32_t dtype, DType* out) {
  if (dtype != OPTD_DTYPE_FLOAT32 && dtype != OPTD_DTYPE_FLOAT16 &&
      dtype != OPTD_DTYPE_BFLOAT16) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "[", index, "].dtype: ", dtype, " is not an OPTD_DTYPE_*"));
  }
  *out = static_cast<DType>(dtype);
  return absl::OkStatus();
}

absl::Status CheckArray(const char* what, const void* array, int64_t n) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("n_", what, ": ", n, " < 0"));
  if (n > 0 && array == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": NULL with n_", what, " = ", n));
  }
  return absl::OkStatus();
}

// The C buffers as the client's views. Data pointers and numel are checked by the client.
template <typename Buffer>
absl::Status ToBuffers(const char* what, const optd_buffer* in, int64_t n,
                       std::vector<Buffer>* out) {
  if (absl::Status s = CheckArray(what, in, n); !s.ok()) return s;
  out->reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (in[i].tensor == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(what, "[", i, "].tensor: NULL"));
    }
    Buffer b;
    if (absl::Status s = ToDType(what, i, in[i].dtype, &b.dtype); !s.ok()) return s;
    b.tensor = in[i].tensor;
    b.data = in[i].data;
    b.numel = in[i].numel;
    out->push_back(std::move(b));
  }
  return absl::OkStatus();
}

absl::Status CheckHandle(const optd_client* client, const char* group) {
  if (client == nullptr || client->client == nullptr) {
    return absl::InvalidArgumentError("client: NULL");
  }
  if (group == nullptr) return absl::InvalidArgumentError("group: NULL");
  return absl::OkStatus();
}

void ToStepResult(const optd::client::StepResult& r, optd_step_result* out) {
  out->step = r.step;
  out->version = r.version;
  out->duplicate = r.duplicate ? 1 : 0;
  out->nonfinite_gradient_elements = r.nonfinite_gradient_elements;
  out->weight_elements_received = r.weight_elements_received;
}

absl::Status ToStepOptions(const optd_step_options* in, optd::client::StepOptions* out) {
  if (in == nullptr) return absl::OkStatus();
  // The first version of the struct ended at part_index.
  if (absl::Status s = CheckStructSize("options", in->struct_size,
                                       offsetof(optd_step_options, has_expect_last_step));
      !s.ok()) {
    return s;
  }
  out->worker = in->worker;
  if (in->has_lr) out->lr = in->lr;
  switch (in->weights) {
    case 0:
    case OPTD_WEIGHTS_UPDATED: out->weights = optd::client::WeightsReturn::kUpdated; break;
    case OPTD_WEIGHTS_ALL: out->weights = optd::client::WeightsReturn::kAll; break;
    case OPTD_WEIGHTS_NONE: out->weights = optd::client::WeightsReturn::kNone; break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("options.weights: ", in->weights, " is not an OPTD_WEIGHTS_*"));
  }
  if (in->has_base_version) out->base_version = in->base_version;
  out->streams = in->streams;
  out->part_count = in->part_count;
  out->part_index = in->part_index;
  if (Holds(in->struct_size, offsetof(optd_step_options, expect_last_step) + sizeof(int64_t)) &&
      in->has_expect_last_step) {
    out->expect_last_step = in->expect_last_step;
  }
  return absl::OkStatus();
}

absl::Status ToGroupOptions(const optd_group_options* in, optd::client::GroupOptions* out) {
  if (in == nullptr) return absl::OkStatus();
  if (absl::Status s = CheckStructSize("options", in->struct_size, sizeof(optd_group_options));
      !s.ok()) {
    return s;
  }
  optd::client::Hyperparameters& h = out->hyperparameters;
  if (in->has_lr) h.lr = in->lr;
  if (in->has_beta1) h.beta1 = in->beta1;
  if (in->has_beta2) h.beta2 = in->beta2;
  if (in->has_eps) h.eps = in->eps;
  if (in->has_weight_decay) h.weight_decay = in->weight_decay;
  if (in->has_min_8bit_size) h.min_8bit_size = in->min_8bit_size;
  if (in->has_percentile_clipping) h.percentile_clipping = in->percentile_clipping;
  if (in->num_workers != 0) out->num_workers = in->num_workers;
  switch (in->mode) {
    case 0:
    case OPTD_SYNC_MODE_SYNC: out->mode = optd::client::SyncMode::kSync; break;
    case OPTD_SYNC_MODE_ASYNC: out->mode = optd::client::SyncMode::kAsync; break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("options.mode: ", in->mode, " is not an OPTD_SYNC_MODE_*"));
  }
  out->sync_timeout_ms = in->sync_timeout_ms;
  out->max_staleness = in->max_staleness;
  return absl::OkStatus();
}

}  // namespace

extern "C" {

int optd_abi_version(void) { return OPTD_ABI_VERSION; }

const char* optd_last_error(void) { return last_error.c_str(); }

uint32_t optd_client_options_size(void) { return sizeof(optd_client_options); }

int optd_client_create(const char* target, const optd_client_options* options,
                       optd_client** out) {
  return Guarded([&]() -> absl::Status {
    if (out == nullptr) return absl::InvalidArgumentError("out: NULL");
    *out = nullptr;
    if (target == nullptr) return absl::InvalidArgumentError("target: NULL");
    optd::client::ClientOptions o;
    if (options != nullptr) {
      // The first version of the struct ended at max_message_bytes.
      if (absl::Status s = CheckStructSize("options", options->struct_size,
                                           offsetof(optd_client_options, tls));
          !s.ok()) {
        return s;
      }
      if (options->chunk_bytes != 0) o.chunk_bytes = options->chunk_bytes;
      if (options->streams != 0) o.streams = options->streams;
      o.timeout_ms = options->timeout_ms;
      if (options->max_message_bytes != 0) o.max_message_bytes = options->max_message_bytes;
      if (Holds(options->struct_size, offsetof(optd_client_options, token) + sizeof(char*))) {
        auto str = [](const char* s) { return s != nullptr ? std::string(s) : std::string(); };
        o.tls.enabled = options->tls != 0;
        o.tls.root_ca = str(options->tls_root_ca);
        o.tls.client_cert = str(options->tls_client_cert);
        o.tls.client_key = str(options->tls_client_key);
        o.tls.server_name = str(options->tls_server_name);
        o.token = str(options->token);
      }
    }
    auto client = Client::Create(target, o);
    if (!client.ok()) return client.status();
    *out = new optd_client{std::move(*client)};
    return absl::OkStatus();
  });
}

void optd_client_destroy(optd_client* client) { delete client; }

int optd_client_step(optd_client* client, const char* group, int64_t step,
                     const optd_buffer* gradients, int64_t n_gradients, const optd_buffer* out,
                     int64_t n_out, const optd_step_options* options, optd_step_result* result) {
  return Guarded([&]() -> absl::Status {
    if (absl::Status s = CheckHandle(client, group); !s.ok()) return s;
    std::vector<ConstBuffer> grads;
    std::vector<MutableBuffer> outs;
    optd::client::StepOptions opts;
    if (absl::Status s = ToBuffers("gradients", gradients, n_gradients, &grads); !s.ok()) {
      return s;
    }
    if (absl::Status s = ToBuffers("out", out, n_out, &outs); !s.ok()) return s;
    if (absl::Status s = ToStepOptions(options, &opts); !s.ok()) return s;
    auto r = client->client->Step(group, step, grads, outs, opts);
    if (!r.ok()) return r.status();
    if (result != nullptr) ToStepResult(*r, result);
    return absl::OkStatus();
  });
}

int optd_client_upload_weights(optd_client* client, const char* group,
                               const optd_buffer* weights, int64_t n_weights,
                               int64_t* elements_written) {
  return Guarded([&]() -> absl::Status {
    if (absl::Status s = CheckHandle(client, group); !s.ok()) return s;
    std::vector<ConstBuffer> bufs;
    if (absl::Status s = ToBuffers("weights", weights, n_weights, &bufs); !s.ok()) return s;
    auto r = client->client->UploadWeights(group, bufs);
    if (!r.ok()) return r.status();
    if (elements_written != nullptr) *elements_written = *r;
    return absl::OkStatus();
  });
}

int optd_client_pull_weights(optd_client* client, const char* group, const optd_buffer* out,
                             int64_t n_out, int64_t* version) {
  return Guarded([&]() -> absl::Status {
    if (absl::Status s = CheckHandle(client, group); !s.ok()) return s;
    std::vector<MutableBuffer> bufs;
    if (absl::Status s = ToBuffers("out", out, n_out, &bufs); !s.ok()) return s;
    auto r = client->client->PullWeights(group, bufs);
    if (!r.ok()) return r.status();
    if (version != nullptr) *version = *r;
    return absl::OkStatus();
  });
}

int optd_client_create_group(optd_client* client, const char* group,
                             const optd_tensor_spec* tensors, int64_t n_tensors,
                             const optd_group_options* options) {
  return Guarded([&]() -> absl::Status {
    if (absl::Status s = CheckHandle(client, group); !s.ok()) return s;
    if (absl::Status s = CheckArray("tensors", tensors, n_tensors); !s.ok()) return s;
    std::vector<optd::client::TensorSpec> specs(static_cast<size_t>(n_tensors));
    for (int64_t i = 0; i < n_tensors; ++i) {
      const optd_tensor_spec& t = tensors[i];
      if (t.name == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("tensors[", i, "].name: NULL"));
      }
      if (t.ndim < 0 || (t.ndim > 0 && t.shape == nullptr)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensors[", i, "].shape: NULL or ndim ", t.ndim, " < 0"));
      }
      specs[i].name = t.name;
      if (absl::Status s = ToDType("tensors", i, t.dtype, &specs[i].dtype); !s.ok()) return s;
      specs[i].shape.assign(t.shape, t.shape + t.ndim);
    }
    optd::client::GroupOptions opts;
    if (absl::Status s = ToGroupOptions(options, &opts); !s.ok()) return s;
    return client->client->CreateGroup(group, specs, opts).status();
  });
}

int optd_client_delete_group(optd_client* client, const char* group) {
  return Guarded([&]() -> absl::Status {
    if (absl::Status s = CheckHandle(client, group); !s.ok()) return s;
    return client->client->DeleteGroup(group);
  });
}

int optd_region_open_shm(optd_client* client, const char* group, int64_t bytes,
                         optd_region** out, void** data, int64_t* size) {
  return Guarded([&]() -> absl::Status {
    if (absl::Status s = CheckHandle(client, group); !s.ok()) return s;
    if (out == nullptr) return absl::InvalidArgumentError("out: NULL");
    *out = nullptr;
    auto region = client->client->OpenSharedMemoryRegion(group, bytes);
    if (!region.ok()) return region.status();
    if (data != nullptr) *data = (*region)->data();
    if (size != nullptr) *size = (*region)->bytes();
    *out = new optd_region{*std::move(region)};
    return absl::OkStatus();
  });
}

void optd_region_destroy(optd_region* region) {
  Guarded([&]() -> absl::Status {
    delete region;
    return absl::OkStatus();
  });
}

const char* optd_region_id(const optd_region* region) {
  return region != nullptr && region->region != nullptr ? region->region->id().c_str() : "";
}

int optd_client_step_region(optd_client* client, const char* group, int64_t step,
                            const optd_region* region, const optd_region_range* ranges,
                            int64_t n_ranges, const optd_step_options* options,
                            optd_step_result* result) {
  return Guarded([&]() -> absl::Status {
    if (absl::Status s = CheckHandle(client, group); !s.ok()) return s;
    if (region == nullptr || region->region == nullptr) {
      return absl::InvalidArgumentError("region: NULL");
    }
    if (absl::Status s = CheckArray("ranges", ranges, n_ranges); !s.ok()) return s;
    std::vector<optd::client::RegionRange> rs;
    rs.reserve(static_cast<size_t>(n_ranges));
    for (int64_t i = 0; i < n_ranges; ++i) {
      const optd_region_range& in = ranges[i];
      if (in.tensor == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("ranges[", i, "].tensor: NULL"));
      }
      optd::client::RegionRange r;
      if (absl::Status s = ToDType("ranges", i, in.dtype, &r.dtype); !s.ok()) return s;
      r.tensor = in.tensor;
      r.offset = in.offset;
      r.count = in.count;
      r.buffer = in.buffer;
      r.buffer_offset = in.buffer_offset;
      if (in.has_weights) {
        r.weights_buffer = in.weights_buffer;
        r.weights_buffer_offset = in.weights_buffer_offset;
      }
      rs.push_back(std::move(r));
    }
    optd::client::StepOptions o;
    if (absl::Status s = ToStepOptions(options, &o); !s.ok()) return s;
    auto r = client->client->StepInRegion(group, step, *region->region, rs, o);
    if (!r.ok()) return r.status();
    if (result != nullptr) ToStepResult(*r, result);
    return absl::OkStatus();
  });
}

}  // extern "C"
