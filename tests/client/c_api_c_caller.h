/* The C caller of c_api_c_caller.c, declared for the C++ test. */
#ifndef OPTD_TESTS_CLIENT_C_API_C_CALLER_H_
#define OPTD_TESTS_CLIENT_C_API_C_CALLER_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int optd_c_round_trip(const char* target, const char* group, float* w, const float* g,
                      float* pulled, int64_t n);

#ifdef __cplusplus
}
#endif

#endif /* OPTD_TESTS_CLIENT_C_API_C_CALLER_H_ */
