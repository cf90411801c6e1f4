/* A C (not C++) caller of liboptd_client_c: compiling this file checks that the header is C,
 * and running it checks one round trip through plain C structs. */
#include "tests/client/c_api_c_caller.h"

#include <string.h>

#include "optd_client_c.h"

/* Creates group `group` with one fp32 tensor of n elements, uploads `w`, runs step 1 with
 * gradient `g` (weights back into `w`), then pulls into `pulled`. Returns 0, or the line of
 * the first failing check. */
int optd_c_round_trip(const char* target, const char* group, float* w, const float* g,
                      float* pulled, int64_t n) {
  optd_client* client = NULL;
  optd_client_options options;
  memset(&options, 0, sizeof options);
  options.struct_size = sizeof options;
  options.chunk_bytes = 4096;
  if (optd_client_create(target, &options, &client) != OPTD_OK) return __LINE__;

  int64_t shape[1];
  shape[0] = n;
  optd_tensor_spec spec = {"t", OPTD_DTYPE_FLOAT32, shape, 1};
  if (optd_client_create_group(client, group, &spec, 1, NULL) != OPTD_OK) return __LINE__;

  optd_buffer weights = {"t", OPTD_DTYPE_FLOAT32, w, n};
  int64_t written = -1;
  if (optd_client_upload_weights(client, group, &weights, 1, &written) != OPTD_OK) {
    return __LINE__;
  }
  if (written != n) return __LINE__;

  optd_buffer gradient = {"t", OPTD_DTYPE_FLOAT32, (void*)g, n};
  optd_step_result result;
  memset(&result, 0, sizeof result);
  if (optd_client_step(client, group, 1, &gradient, 1, &weights, 1, NULL, &result) != OPTD_OK) {
    return __LINE__;
  }
  if (result.step != 1 || result.version != 1 || result.duplicate != 0) return __LINE__;
  if (result.weight_elements_received != n) return __LINE__;

  optd_buffer out = {"t", OPTD_DTYPE_FLOAT32, pulled, n};
  int64_t version = -1;
  if (optd_client_pull_weights(client, group, &out, 1, &version) != OPTD_OK) return __LINE__;
  if (version != 1) return __LINE__;
  if (optd_last_error()[0] != '\0') return __LINE__;
  optd_client_destroy(client);
  return 0;
}
