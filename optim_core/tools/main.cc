// optd-conformance: replays golden reference cases through an optd engine.
//
//   optd-conformance --backend cpu|cuda [--mode teacher|free|both] [--tight] [--threads N]
//                    [--device N] CASE_DIR...
//
// A CASE_DIR is a folder of .npy files whose parent holds manifest.json, or a folder holding
// manifest.json (all its cases). Prints one line per case and mode, then
// "conformance: N passed, M failed"; exits 1 when any failed, 2 on bad usage.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "optd/core/engine.h"
#include "tools/conformance.h"

namespace {

void Usage() {
  std::fprintf(stderr,
               "usage: optd-conformance --backend cpu|cuda [--mode teacher|free|both] [--tight]\n"
               "                        [--threads N] [--device N] CASE_DIR...\n");
}

}  // namespace

int main(int argc, char** argv) {
  using optd::core::Backend;
  optd::core::EngineOptions engine_options;
  bool have_backend = false;
  bool teacher = true;
  bool free_running = true;
  bool tight = false;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](std::string* out) {
      const size_t eq = arg.find('=');
      if (eq != std::string::npos) {
        *out = arg.substr(eq + 1);
        return true;
      }
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    auto is = [&](const char* flag) {
      return arg == flag || arg.rfind(std::string(flag) + "=", 0) == 0;
    };
    std::string v;
    if (is("--backend")) {
      if (!value(&v)) return Usage(), 2;
      if (v == "cpu") {
        engine_options.backend = Backend::kCpu;
      } else if (v == "cuda") {
        engine_options.backend = Backend::kCuda;
      } else {
        std::fprintf(stderr, "--backend must be cpu or cuda, got \"%s\"\n", v.c_str());
        return 2;
      }
      have_backend = true;
    } else if (is("--mode")) {
      if (!value(&v)) return Usage(), 2;
      teacher = v == "teacher" || v == "both";
      free_running = v == "free" || v == "both";
      if (!teacher && !free_running) {
        std::fprintf(stderr, "--mode must be teacher, free or both, got \"%s\"\n", v.c_str());
        return 2;
      }
    } else if (arg == "--tight") {
      tight = true;
    } else if (is("--threads") || is("--device")) {
      const bool threads = is("--threads");
      int n = 0;
      if (!value(&v) || !absl::SimpleAtoi(v, &n) || n < 0) {
        std::fprintf(stderr, "%s needs a number >= 0\n", threads ? "--threads" : "--device");
        return 2;
      }
      (threads ? engine_options.num_threads : engine_options.device) = n;
    } else if (arg == "-h" || arg == "--help") {
      Usage();
      return 0;
    } else if (arg.rfind("--", 0) == 0) {
      std::fprintf(stderr, "unknown flag %s\n", arg.c_str());
      Usage();
      return 2;
    } else {
      paths.push_back(arg);
    }
  }
  if (!have_backend || paths.empty()) {
    Usage();
    return 2;
  }

  absl::StatusOr<std::unique_ptr<optd::core::Engine>> engine =
      optd::core::CreateEngine(engine_options);
  if (!engine.ok()) {
    std::fprintf(stderr, "cannot create the %s engine: %s\n",
                 std::string(optd::core::BackendName(engine_options.backend)).c_str(),
                 engine.status().ToString().c_str());
    return 1;
  }
  const optd::tools::Tolerances tol =
      tight ? optd::tools::TightTolerances() : optd::tools::DefaultTolerances();
  int passed = 0;
  int failed = 0;
  for (const std::string& path : paths) {
    absl::StatusOr<std::vector<optd::tools::GoldenCase>> cases = optd::tools::LoadCases(path);
    if (!cases.ok()) {
      std::printf("%s ERROR %s\n", path.c_str(), cases.status().ToString().c_str());
      ++failed;
      continue;
    }
    for (const optd::tools::GoldenCase& c : *cases) {
      for (optd::tools::Mode mode : {optd::tools::Mode::kTeacher, optd::tools::Mode::kFree}) {
        if (mode == optd::tools::Mode::kTeacher ? !teacher : !free_running) continue;
        absl::StatusOr<optd::tools::CaseResult> r = optd::tools::RunCase(**engine, c, mode, tol);
        if (!r.ok()) {
          std::printf("%-32s %s ERROR %s FAIL\n", c.name.c_str(),
                      mode == optd::tools::Mode::kTeacher ? "teacher" : "free   ",
                      r.status().ToString().c_str());
          ++failed;
          continue;
        }
        std::printf("%s\n", r->line.c_str());
        ++(r->pass ? passed : failed);
      }
      std::fflush(stdout);
    }
  }
  std::printf("conformance: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
