/* A program in C that uses the installed C ABI: connects and lists nothing but its own group.
 * Usage: consumer_c TARGET   exit 0 when a group could be created and deleted. */
#include <stdio.h>

#include "optd_client_c.h"

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  optd_client* client = NULL;
  if (optd_client_create(argv[1], NULL, &client) != 0) {
    fprintf(stderr, "consumer_c: create: %s\n", optd_last_error());
    return 1;
  }
  int64_t shape[1] = {300};
  optd_tensor_spec spec = {"w", OPTD_DTYPE_FLOAT32, shape, 1};
  int rc = optd_client_create_group(client, "consumer-c", &spec, 1, NULL);
  if (rc == 0) rc = optd_client_delete_group(client, "consumer-c");
  if (rc != 0) fprintf(stderr, "consumer_c: %s\n", optd_last_error());
  else printf("consumer_c: ABI %d, group created and deleted\n", optd_abi_version());
  optd_client_destroy(client);
  return rc == 0 ? 0 : 1;
}
