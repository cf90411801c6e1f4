/* optd_client_c.h: a small C ABI over the optd C++ client (the data path), for Python's ctypes
 * and any other language with a C FFI.
 *
 * Note [Why a C ABI]
 * One shared library serves every Python version (Debian 12's 3.11, the GPU hosts' 3.12, ...):
 * ctypes loads it without a compiled extension per interpreter, and releases the GIL for the
 * whole call, so the bytes move while other Python threads (a training loop's backward) run.
 * An extension module (pybind11) would need one build per Python ABI.
 *
 * Conventions:
 * - Every function returns 0 (OPTD_OK) or a gRPC status code (3 INVALID_ARGUMENT, 14
 *   UNAVAILABLE, ...). The message of the last failure on the calling thread is
 *   optd_last_error(), valid until the next call on that thread.
 * - Buffers are caller-owned host memory (pageable or pinned), flat and contiguous, valid until
 *   the call returns. Nothing is retained after a call returns.
 * - Thread safety: a client may be used from several threads at once.
 * - Structs that may grow carry `struct_size` (set it to sizeof the struct you compiled with).
 */
#ifndef OPTD_CLIENT_C_H_
#define OPTD_CLIENT_C_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OPTD_OK 0
#define OPTD_ABI_VERSION 1

/* = optd.v1.DType */
#define OPTD_DTYPE_FLOAT32 1
#define OPTD_DTYPE_FLOAT16 2
#define OPTD_DTYPE_BFLOAT16 3

/* = optd.v1.WeightsReturn */
#define OPTD_WEIGHTS_UPDATED 1
#define OPTD_WEIGHTS_ALL 2
#define OPTD_WEIGHTS_NONE 3

typedef struct optd_client optd_client;

typedef struct {
  uint32_t struct_size;
  int64_t chunk_bytes;      /* payload bytes per chunk message; 0 = 4 MiB */
  int32_t streams;          /* concurrent streams (connections) per step; 0 = 1 */
  int64_t timeout_ms;       /* deadline of each call; 0 = none */
  int32_t max_message_bytes; /* 0 = 64 MiB */
  /* Security (docs/security.md); all 0/NULL: plaintext, no token. A PEM field holds the PEM
   * text itself or the path of a file holding it. Libraries older than these fields report a
   * smaller optd_client_options_size() and ignore them. */
  int32_t tls;                  /* nonzero: TLS; implied by any PEM field */
  const char* tls_root_ca;      /* CA bundle of the server's certificate; NULL = system roots */
  const char* tls_client_cert;  /* mutual TLS: certificate chain of this client ... */
  const char* tls_client_key;   /* ... and its private key */
  const char* tls_server_name;  /* name to check the server's certificate against; NULL = host */
  const char* token;            /* bearer token sent with every call; NULL = none */
} optd_client_options;

typedef struct {
  const char* tensor;  /* NUL-terminated tensor name */
  int32_t dtype;       /* OPTD_DTYPE_* */
  void* data;          /* const for gradients and uploads; written for weights out */
  int64_t numel;
} optd_buffer;

typedef struct {
  uint32_t struct_size;
  int32_t worker;
  int32_t has_lr;
  float lr;
  int32_t weights;          /* OPTD_WEIGHTS_*; 0 = UPDATED */
  int32_t has_base_version;
  int64_t base_version;
  int32_t streams;          /* 0 = the client's */
  /* A step the caller spreads over several concurrent calls (e.g. one per gradient bucket, each
   * started as soon as backward produced its bucket): this call is stream `part_index` of
   * `part_count` that together make the step (optd.v1.StepBegin streams/stream_index); it sends
   * only its own gradients, on one stream, and gets back the weights of what it sent. The server
   * applies the step when all parts have committed. 0 = this call is the whole step. */
  int32_t part_count;
  int32_t part_index;
  /* Apply only if this worker's last applied step on the server is expect_last_step (else
   * FAILED_PRECONDITION, nothing applied; optd.v1.StepBegin.expect_last_step). A struct_size
   * that ends before these fields (an older caller) leaves them unset. */
  int32_t has_expect_last_step;
  int64_t expect_last_step;
} optd_step_options;

typedef struct {
  int64_t step;
  int64_t version;
  int32_t duplicate;
  int64_t nonfinite_gradient_elements;
  int64_t weight_elements_received;
} optd_step_result;

/* ABI version of the loaded library (OPTD_ABI_VERSION it was built with). */
int optd_abi_version(void);
/* Message of the calling thread's last failure ("" after a success). */
const char* optd_last_error(void);

/* sizeof(optd_client_options) in this library: a caller whose struct is larger sets fields this
 * library would ignore (its tls and token fields need a library of at least that size). */
uint32_t optd_client_options_size(void);

/* Connects lazily. options may be NULL (defaults). struct_size may be that of an older
 * optd_client_options (without the security fields). */
int optd_client_create(const char* target, const optd_client_options* options,
                       optd_client** out);
void optd_client_destroy(optd_client* client);

/* One step: gradients up, returned weights written into the `out` buffers named like them.
 * options may be NULL. With n_out == 0 and weights UPDATED, no weights are asked for. */
int optd_client_step(optd_client* client, const char* group, int64_t step,
                     const optd_buffer* gradients, int64_t n_gradients, const optd_buffer* out,
                     int64_t n_out, const optd_step_options* options, optd_step_result* result);

/* Uploads whole tensors; *elements_written may be NULL. */
int optd_client_upload_weights(optd_client* client, const char* group,
                               const optd_buffer* weights, int64_t n_weights,
                               int64_t* elements_written);

/* Current weights of the tensors named in `out`; *version may be NULL. */
int optd_client_pull_weights(optd_client* client, const char* group, const optd_buffer* out,
                             int64_t n_out, int64_t* version);

/* Group administration, so that a caller of this library alone can set up what it steps.
 * (The rest of the administration -- hyperparameter updates, checkpoints, state exchange --
 * stays with the C++ and gRPC clients.) */

/* = optd.v1.SyncMode */
#define OPTD_SYNC_MODE_SYNC 1
#define OPTD_SYNC_MODE_ASYNC 2

typedef struct {
  const char* name;      /* NUL-terminated tensor name */
  int32_t dtype;         /* OPTD_DTYPE_* of the weights */
  const int64_t* shape;  /* ndim extents; may be NULL when ndim == 0 (a scalar) */
  int32_t ndim;
} optd_tensor_spec;

/* A has_* of 0 leaves that hyperparameter at the server's default (bitsandbytes'). */
typedef struct {
  uint32_t struct_size;
  int32_t has_lr;
  float lr;
  int32_t has_beta1;
  float beta1;
  int32_t has_beta2;
  float beta2;
  int32_t has_eps;
  float eps;
  int32_t has_weight_decay;
  float weight_decay;
  int32_t has_min_8bit_size;
  int64_t min_8bit_size;
  int32_t has_percentile_clipping;
  int32_t percentile_clipping;
  int32_t num_workers;      /* 0 = 1 */
  int32_t mode;             /* OPTD_SYNC_MODE_*; 0 = SYNC */
  int64_t sync_timeout_ms;  /* 0 = the server's default */
  int64_t max_staleness;    /* 0 = unbounded */
} optd_group_options;

/* Creates `group` with n_tensors tensors. options may be NULL (defaults). */
int optd_client_create_group(optd_client* client, const char* group,
                             const optd_tensor_spec* tensors, int64_t n_tensors,
                             const optd_group_options* options);
int optd_client_delete_group(optd_client* client, const char* group);

/* Colocated data path (docs/colocated.md): a host shared-memory region both processes map; steps
 * name ranges in it instead of sending bytes, and the server writes the new weights into it. */

typedef struct optd_region optd_region;

/* Leases a shared-memory region of `bytes` bytes for the steps of `group`. *data and *size (may
 * be NULL) get the mapping in this process. Returns 9 (FAILED_PRECONDITION) with the reason in
 * optd_last_error() when this process cannot map it (the server is on another host or does not
 * share /dev/shm): the caller can fall back to optd_client_step. The region may outlive the
 * client; destroy it to unmap it and end the lease. */
int optd_region_open_shm(optd_client* client, const char* group, int64_t bytes,
                         optd_region** out, void** data, int64_t* size);
void optd_region_destroy(optd_region* region);
/* The region's id (valid while the region lives). */
const char* optd_region_id(const optd_region* region);

/* One gradient range of a colocated step (optd::client::RegionRange): elements
 * [offset, offset + count) of `tensor` in `dtype` at byte `buffer_offset` of buffer `buffer`;
 * with has_weights, the range's new weights (in the tensor's dtype) are written at byte
 * `weights_buffer_offset` of buffer `weights_buffer` after the step. */
typedef struct {
  const char* tensor;
  int64_t offset;
  int64_t count;
  int32_t dtype;  /* OPTD_DTYPE_* */
  int32_t buffer;
  int64_t buffer_offset;
  int32_t has_weights;
  int32_t weights_buffer;
  int64_t weights_buffer_offset;
} optd_region_range;

/* One step whose gradients are `ranges` of `region` (written there before the call). With
 * weights UPDATED (the default) the new weights are in the region when this returns; NONE writes
 * nothing; ALL is refused. options may be NULL; part_count must be 0. */
int optd_client_step_region(optd_client* client, const char* group, int64_t step,
                            const optd_region* region, const optd_region_range* ranges,
                            int64_t n_ranges, const optd_step_options* options,
                            optd_step_result* result);

#ifdef __cplusplus
}
#endif

#endif /* OPTD_CLIENT_C_H_ */
