// Test helper process: leases a shared-memory region of a group through the C++ client, writes
// "ready" to a file, then waits to be killed (colocated_test.cc's KilledClientReleasesRegion).
// usage: optd_colocate_holder TARGET GROUP BYTES READY_FILE
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "optd/client/client.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s TARGET GROUP BYTES READY_FILE\n", argv[0]);
    return 2;
  }
  auto client = optd::client::Client::Create(argv[1]);
  if (!client.ok()) return 1;
  auto region = (*client)->OpenSharedMemoryRegion(argv[2], std::atoll(argv[3]));
  if (!region.ok()) {
    std::fprintf(stderr, "%s\n", region.status().ToString().c_str());
    return 1;
  }
  static_cast<char*>((*region)->data())[0] = 1;  // the mapping is real
  {
    std::ofstream ready(std::string(argv[4]) + ".tmp");
    ready << (*region)->id() << "\n";
  }
  std::rename((std::string(argv[4]) + ".tmp").c_str(), argv[4]);
  while (true) pause();
}
