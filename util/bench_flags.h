// Command-line flags of the benchmarks: `--json` plus named integer options (each >= 1).
//
//   const BenchFlags f = parse_bench_flags(argc, argv, "autograd_bench",
//                                          {{"batch", 4}, {"seq", 256}, {"iters", 3}});
//   const int64_t B = f.value("batch");
//   if (f.json) std::printf("{...}\n");
// A bad flag prints the usage (every flag with its default) and exits with status 2.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace ramstream {

struct BenchFlags {
  bool json = false;
  std::map<std::string, int64_t> values;
  int64_t value(const std::string& name) const { return values.at(name); }
};

inline BenchFlags parse_bench_flags(int argc, char** argv, const char* program,
                                    std::map<std::string, int64_t> defaults) {
  auto usage = [&](const std::string& problem) {
    std::fprintf(stderr, "%s: %s\nusage: %s [--json]", program, problem.c_str(), program);
    for (const auto& [name, def] : defaults) {
      std::fprintf(stderr, " [--%s N (default %lld)]", name.c_str(), static_cast<long long>(def));
    }
    std::fprintf(stderr, "\n");
    std::exit(2);
  };
  BenchFlags f;
  f.values = std::move(defaults);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json") {
      f.json = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0 || f.values.count(arg.substr(2)) == 0) {
      usage("unknown argument '" + arg + "'");
    }
    if (i + 1 >= argc) usage(arg + " needs a value");
    char* end = nullptr;
    const long long v = std::strtoll(argv[++i], &end, 10);
    if (*end != '\0' || v < 1) usage(arg + " needs an integer >= 1, got '" + argv[i] + "'");
    f.values[arg.substr(2)] = v;
  }
  return f;
}

}  // namespace ramstream
