// Where tests find the source tree, the build's binaries, the parity
// fixtures and the converted fixture models: the environment variable when
// set, else the value CMake compiled in.
#pragma once

#include <cstdlib>
#include <string>

namespace lpdetr::testing_paths {

inline std::string Get(const char* env, const char* fallback) {
  const char* v = std::getenv(env);
  return (v && *v) ? v : fallback;
}

inline std::string SourceDir() { return Get("LPDETR_SOURCE_DIR", LPDETR_DEFAULT_SOURCE_DIR); }
inline std::string BinDir() { return Get("LPDETR_BIN_DIR", LPDETR_DEFAULT_BIN_DIR); }
inline std::string FixturesDir() {
  return Get("LPDETR_FIXTURES_DIR", LPDETR_DEFAULT_FIXTURES_DIR);
}
inline std::string TestModelsDir() {
  return Get("LPDETR_TEST_MODELS", LPDETR_DEFAULT_TEST_MODELS);
}

}  // namespace lpdetr::testing_paths
