#include "model/default_model.h"

#include <filesystem>
#include <stdexcept>
#include <system_error>

namespace lpdetr {

namespace fs = std::filesystem;

std::vector<std::string> DefaultModelCandidates(const std::string& executable) {
  const fs::path bin = fs::path(executable).parent_path();
  return {
      (bin / ".." / "share" / "lpdetr" / "models" / kDefaultModelName).lexically_normal().string(),
      (bin / ".." / ".." / "models" / kDefaultModelName).lexically_normal().string(),
  };
}

std::string FindDefaultModelDir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) exe = fs::current_path() / "unknown";
  const std::vector<std::string> candidates = DefaultModelCandidates(exe.string());
  std::string searched;
  for (const std::string& dir : candidates) {
    if (fs::is_regular_file(fs::path(dir) / "config.json", ec)) return dir;
    searched += "\n  " + dir;
  }
  throw std::runtime_error("no default model found (searched:" + searched +
                           "); give a model directory, or rebuild so that the build copies "
                           "models/" + std::string(kDefaultModelName) + " next to the binaries");
}

}  // namespace lpdetr
