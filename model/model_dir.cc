#include "model/model_dir.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

namespace lpdetr {
namespace fs = std::filesystem;

NamedTensors StateDict(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    out.emplace_back(item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    out.emplace_back(item.key(), item.value());
  }
  return out;
}

namespace {

std::string JoinNames(const std::vector<std::string>& names, size_t limit = 50) {
  std::ostringstream os;
  for (size_t i = 0; i < names.size() && i < limit; ++i) os << (i ? ", " : "") << names[i];
  if (names.size() > limit) os << ", ... (" << names.size() - limit << " more)";
  return os.str();
}

std::vector<std::string> ReadLabels(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw ModelLoadError("cannot open " + path.string());
  std::vector<std::string> labels;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    labels.push_back(line);
  }
  while (!labels.empty() && labels.back().empty()) labels.pop_back();
  return labels;
}

// Writes `text` to path.tmp, then renames it over `path`.
void WriteFileAtomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    if (!out) throw ModelLoadError("cannot write " + tmp.string());
  }
  fs::rename(tmp, path);
}

// labels.txt can hold the names: there are some, and each is one non-empty
// line (ReadLabels drops trailing empty lines).
bool LabelsFitOneLineEach(const std::vector<std::string>& names) {
  if (names.empty()) return false;
  for (const std::string& name : names) {
    if (name.empty() || name.find_first_of("\r\n") != std::string::npos) return false;
  }
  return true;
}

}  // namespace

void LoadStateDict(torch::nn::Module& module, const NamedTensors& weights,
                   const std::string& source) {
  std::map<std::string, at::Tensor> targets;
  for (auto& [name, tensor] : StateDict(module)) targets.emplace(name, tensor);
  std::map<std::string, const at::Tensor*> given;
  for (const auto& [name, tensor] : weights) given.emplace(name, &tensor);

  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& [name, tensor] : targets) {
    auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
    } else if (it->second->sizes() != tensor.sizes()) {
      std::ostringstream os;
      os << name << " (expected " << tensor.sizes() << ", got " << it->second->sizes() << ")";
      mismatched.push_back(os.str());
    }
  }
  for (const auto& [name, tensor] : given) {
    if (!targets.count(name)) unexpected.push_back(name);
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::ostringstream os;
    os << source << " does not match the model configuration:";
    if (!missing.empty()) os << "\n  missing keys (" << missing.size() << "): " << JoinNames(missing);
    if (!unexpected.empty()) {
      os << "\n  unexpected keys (" << unexpected.size() << "): " << JoinNames(unexpected);
    }
    if (!mismatched.empty()) {
      os << "\n  shape mismatches (" << mismatched.size() << "): " << JoinNames(mismatched);
    }
    throw ModelLoadError(os.str());
  }
  at::NoGradGuard no_grad;
  for (auto& [name, tensor] : targets) {
    const at::Tensor& src = *given.at(name);
    if (src.is_floating_point() != tensor.is_floating_point()) {
      throw ModelLoadError(source + ": tensor '" + name + "' has dtype " +
                           std::string(c10::toString(src.scalar_type())) + ", expected " +
                           std::string(c10::toString(tensor.scalar_type())));
    }
    tensor.copy_(src);
  }
}

LoadedModel LoadModelDir(const std::string& dir, const c10::Device& device) {
  const fs::path root(dir);
  if (!fs::is_directory(root)) throw ModelLoadError("model directory not found: " + dir);
  const fs::path config_path = root / "config.json";
  const fs::path weights_path = root / "weights.safetensors";
  if (!fs::exists(config_path)) throw ModelLoadError("missing " + config_path.string());
  if (!fs::exists(weights_path)) throw ModelLoadError("missing " + weights_path.string());

  LoadedModel loaded;
  loaded.dir = dir;
  try {
    loaded.config = ModelConfig::FromFile(config_path.string());
  } catch (const std::invalid_argument& e) {
    throw ModelLoadError(e.what());
  }
  const fs::path labels_path = root / "labels.txt";
  if (fs::exists(labels_path)) {
    std::vector<std::string> labels = ReadLabels(labels_path);
    if (static_cast<int>(labels.size()) != loaded.config.num_classes) {
      throw ModelLoadError(labels_path.string() + " has " + std::to_string(labels.size()) +
                           " names but the model has " +
                           std::to_string(loaded.config.num_classes) + " classes");
    }
    loaded.config.classes = std::move(labels);
  }
  SafetensorsContents weights;
  try {
    weights = ReadSafetensors(weights_path.string());
  } catch (const SafetensorsError& e) {
    throw ModelLoadError(e.what());
  }
  loaded.model = LpDetr(loaded.config);
  LoadStateDict(*loaded.model, weights.tensors, weights_path.string());
  loaded.model->to(device);
  loaded.model->eval();
  return loaded;
}

void SaveModelDir(const std::string& dir, const ModelConfig& config,
                  const torch::nn::Module& module, at::ScalarType storage_dtype,
                  const std::map<std::string, std::string>& metadata) {
  const fs::path root(dir);
  fs::create_directories(root);
  NamedTensors tensors;
  for (auto& [name, tensor] : StateDict(module)) {
    at::Tensor t = tensor.detach().to(at::kCPU);
    if (t.is_floating_point()) t = t.to(storage_dtype);
    tensors.emplace_back(name, t.contiguous());
  }
  auto meta = metadata;
  meta.emplace("format", "lpdetr");
  meta.emplace("variant", RelationVariantName(config.relation_variant));
  WriteSafetensors((root / "weights.safetensors").string(), tensors, meta);
  // config.json carries everything, the category map included; labels.txt
  // repeats the class names (it overrides them on load, so a stale one from an
  // earlier model is removed).
  WriteFileAtomically(root / "config.json", config.ToJson().dump(2) + "\n");
  const fs::path labels_path = root / "labels.txt";
  if (LabelsFitOneLineEach(config.classes)) {
    std::string text;
    for (const std::string& name : config.classes) text += name + "\n";
    WriteFileAtomically(labels_path, text);
  } else {
    fs::remove(labels_path);
  }
}

}  // namespace lpdetr
