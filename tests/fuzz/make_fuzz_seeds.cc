// Writes the seed corpora of the fuzzers: <out>/request_validation, <out>/chunk_assembly and
// <out>/checkpoint_load, one file per seed. Usage: make_fuzz_seeds <out>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "tests/fuzz/seeds.h"

namespace {

bool WriteAll(const std::string& dir, const std::vector<std::string>& seeds) {
  mkdir(dir.c_str(), 0755);
  for (size_t i = 0; i < seeds.size(); ++i) {
    std::ofstream out(dir + "/seed-" + std::to_string(i), std::ios::binary);
    out.write(seeds[i].data(), static_cast<std::streamsize>(seeds[i].size()));
    if (!out) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <out-dir>\n", argv[0]);
    return 2;
  }
  const std::string out = argv[1];
  mkdir(out.c_str(), 0755);
  auto checkpoints = optd::fuzz::CheckpointLoadSeeds(out);
  if (!checkpoints.ok()) {
    std::fprintf(stderr, "checkpoint seed: %s\n", std::string(checkpoints.status().message()).c_str());
    return 1;
  }
  const bool ok = WriteAll(out + "/request_validation", optd::fuzz::RequestValidationSeeds()) &&
                  WriteAll(out + "/chunk_assembly", optd::fuzz::ChunkAssemblySeeds()) &&
                  WriteAll(out + "/checkpoint_load", *checkpoints);
  return ok ? 0 : 1;
}
