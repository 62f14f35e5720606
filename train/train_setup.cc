#include "train/train_setup.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <stdexcept>
#include <utility>

#include <ATen/ATen.h>
#include <torch/nn/init.h>
#include <torch/nn/utils/clip_grad.h>

#include "model/deform_attn.h"
#include "model/layers.h"

namespace lpdetr::train {
namespace {

bool ContainsAny(const std::string& name, std::initializer_list<const char*> keywords) {
  for (const char* k : keywords) {
    if (name.find(k) != std::string::npos) return true;
  }
  return false;
}

bool IsOfficiallyFrozen(const std::string& name) {
  return name == "backbone.conv1.weight" || name.rfind("backbone.layer1.", 0) == 0;
}

}  // namespace

const char* BackboneTrainingName(BackboneTraining mode) {
  return mode == BackboneTraining::kFull ? "full" : "finetune";
}

BackboneTraining ParseBackboneTraining(const std::string& name) {
  if (name == "finetune") return BackboneTraining::kFinetune;
  if (name == "full") return BackboneTraining::kFull;
  throw std::invalid_argument("backbone training must be 'finetune' or 'full', got '" + name +
                              "'");
}

void PrepareForTraining(torch::nn::Module& model, BackboneTraining mode) {
  model.train();
  if (mode == BackboneTraining::kFinetune) {
    for (auto& item : model.named_parameters(/*recurse=*/true)) {
      if (IsOfficiallyFrozen(item.key())) item.value().set_requires_grad(false);
    }
    return;
  }
  for (const auto& item : model.named_modules()) {
    if (item.key().rfind("backbone.", 0) != 0) continue;
    auto* bn = item.value()->as<FrozenBatchNorm2dImpl>();
    if (bn == nullptr) continue;
    bn->batch_statistics = true;
    bn->weight.set_requires_grad(true);
    bn->bias.set_requires_grad(true);
  }
}

std::vector<NamedParameter> TrainableParameters(const torch::nn::Module& model) {
  std::vector<NamedParameter> result;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (item.value().requires_grad()) result.push_back({item.key(), item.value()});
  }
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    if (item.value().requires_grad()) result.push_back({item.key(), item.value()});
  }
  return result;
}

const char* ParameterGroupName(ParameterGroupKind kind) {
  switch (kind) {
    case ParameterGroupKind::kOther:
      return "other";
    case ParameterGroupKind::kBackbone:
      return "backbone";
    case ParameterGroupKind::kBackboneNorm:
      return "backbone_norm";
    case ParameterGroupKind::kLinearProjection:
      return "linear_projection";
    case ParameterGroupKind::kLinearProjectionNorm:
      return "linear_projection_norm";
    case ParameterGroupKind::kOtherNorm:
      return "other_norm";
  }
  return "unknown";
}

ParameterGroupKind ClassifyParameter(const std::string& name) {
  const bool backbone = ContainsAny(name, {"backbone"});
  const bool linear = ContainsAny(name, {"reference_points", "sampling_offsets"});
  const bool norm_or_bias = ContainsAny(name, {"norm", "bias"});
  // A backbone parameter with a linear-projection keyword matches neither the
  // backbone nor the linear-projection rules and falls through to the last two.
  if (backbone && !linear) {
    return norm_or_bias ? ParameterGroupKind::kBackboneNorm : ParameterGroupKind::kBackbone;
  }
  if (!backbone && linear) {
    return norm_or_bias ? ParameterGroupKind::kLinearProjectionNorm
                        : ParameterGroupKind::kLinearProjection;
  }
  return norm_or_bias ? ParameterGroupKind::kOtherNorm : ParameterGroupKind::kOther;
}

std::vector<ParameterGroup> FinetuneBackboneAndLinearProjection(const torch::nn::Module& model,
                                                                BackboneTraining mode) {
  std::vector<ParameterGroup> groups(kNumParameterGroups);
  for (int i = 0; i < kNumParameterGroups; ++i) {
    ParameterGroup& g = groups[i];
    g.kind = static_cast<ParameterGroupKind>(i);
    const bool backbone =
        g.kind == ParameterGroupKind::kBackbone || g.kind == ParameterGroupKind::kBackboneNorm;
    g.lr_scale = (g.kind == ParameterGroupKind::kOther || g.kind == ParameterGroupKind::kOtherNorm ||
                  (backbone && mode == BackboneTraining::kFull))
                     ? 1.0
                     : 0.1;
    g.weight_decay = g.kind == ParameterGroupKind::kOther ||
                     g.kind == ParameterGroupKind::kBackbone ||
                     g.kind == ParameterGroupKind::kLinearProjection;
  }
  std::set<std::string> trainable_buffers;
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    if (item.value().requires_grad()) trainable_buffers.insert(item.key());
  }
  for (NamedParameter& p : TrainableParameters(model)) {
    const ParameterGroupKind kind = trainable_buffers.count(p.name)
                                        ? ParameterGroupKind::kBackboneNorm
                                        : ClassifyParameter(p.name);
    groups[static_cast<int>(kind)].params.push_back(std::move(p));
  }
  return groups;
}

std::unique_ptr<torch::optim::AdamW> MakeAdamW(const std::vector<ParameterGroup>& groups,
                                               const OptimizerOptions& options) {
  if (!(options.lr >= 0) || !(options.weight_decay >= 0) || !(options.eps >= 0)) {
    throw std::invalid_argument("optimizer: lr, weight decay and eps must be >= 0, got lr " +
                                std::to_string(options.lr) + ", weight decay " +
                                std::to_string(options.weight_decay) + ", eps " +
                                std::to_string(options.eps));
  }
  auto adamw = [&](double lr, double weight_decay) {
    return torch::optim::AdamWOptions(lr)
        .betas(std::make_tuple(options.beta1, options.beta2))
        .eps(options.eps)
        .weight_decay(weight_decay)
        .amsgrad(false);
  };
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  for (const ParameterGroup& g : groups) {
    std::vector<at::Tensor> tensors;
    for (const NamedParameter& p : g.params) tensors.push_back(p.tensor);
    param_groups.emplace_back(
        std::move(tensors),
        std::make_unique<torch::optim::AdamWOptions>(
            adamw(options.lr * g.lr_scale, g.weight_decay ? options.weight_decay : 0.0)));
  }
  return std::make_unique<torch::optim::AdamW>(std::move(param_groups),
                                               adamw(options.lr, options.weight_decay));
}

std::vector<at::Tensor> GroupTensors(const std::vector<ParameterGroup>& groups) {
  std::vector<at::Tensor> tensors;
  for (const ParameterGroup& g : groups) {
    for (const NamedParameter& p : g.params) tensors.push_back(p.tensor);
  }
  return tensors;
}

double ClipGradients(const std::vector<at::Tensor>& params, double max_norm) {
  if (max_norm > 0) return torch::nn::utils::clip_grad_norm_(params, max_norm);
  std::vector<at::Tensor> norms;
  for (const at::Tensor& p : params) {
    if (p.grad().defined()) norms.push_back(p.grad().detach().norm(2));
  }
  if (norms.empty()) return 0.0;
  return at::stack(norms).norm(2).item<double>();
}

void ClearGradients(const std::vector<at::Tensor>& params) {
  for (const at::Tensor& p : params) p.mutable_grad() = at::Tensor();
}

}  // namespace lpdetr::train

namespace lpdetr::train {
namespace {

bool IsClassDependent(const std::string& name) {
  for (const char* prefix : {"transformer.decoder.class_head.", "transformer.encoder_class_head.",
                             "transformer.hybrid_class_head.",
                             "denoising_generator.label_encoder."}) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::vector<std::string> ClassDependentTensorNames(const torch::nn::Module& model) {
  std::vector<std::string> names;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (IsClassDependent(item.key())) names.push_back(item.key());
  }
  return names;
}

std::vector<std::string> InitializeClassTensors(torch::nn::Module& model) {
  at::NoGradGuard no_grad;
  const double prior = 0.01;
  const double bias_value = -std::log((1 - prior) / prior);
  std::vector<std::string> names;
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    if (!IsClassDependent(name)) continue;
    at::Tensor t = item.value();
    if (name.rfind("denoising_generator.label_encoder.", 0) == 0) {
      t.normal_(0.0, 1.0);
    } else if (EndsWith(name, ".bias")) {
      t.fill_(bias_value);
    } else {
      const double bound = 1.0 / std::sqrt(static_cast<double>(t.size(1)));
      t.uniform_(-bound, bound);
    }
    names.push_back(name);
  }
  return names;
}

void InitializeForTraining(torch::nn::Module& model) {
  InitializeClassTensors(model);
  for (const auto& item : model.named_modules()) {
    if (auto* attn = item.value()->as<MultiScaleDeformableAttentionImpl>()) attn->ResetParameters();
  }
  at::NoGradGuard no_grad;
  // Encoder and decoder layers: Xavier-uniform feed-forward weights, and the
  // decoder self-attention's output projection.
  static const std::regex kXavier(
      R"(^transformer\.(?:encoder|decoder)\.layers\.\d+\.(?:linear1|linear2|self_attn\.out_proj)\.weight$)");
  static const std::regex kZeroBias(
      R"(^transformer\.decoder\.layers\.\d+\.self_attn\.(?:in_proj_bias|out_proj\.bias)$)");
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    if (std::regex_match(item.key(), kXavier)) torch::nn::init::xavier_uniform_(item.value());
    if (std::regex_match(item.key(), kZeroBias)) item.value().zero_();
  }
  // Box heads (MLPs): the decoder layers', the encoder's and the hybrid
  // branch's; the last Linear of each is its highest-numbered `layers.K`.
  static const std::regex kBoxLayer(
      R"(^(transformer\.(?:decoder\.bbox_head\.\d+|encoder_bbox_head|hybrid_bbox_head)\.layers\.)(\d+)\.)");
  std::map<std::string, int> last_layer;  // head prefix -> last layer index
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    std::smatch m;
    if (!std::regex_search(item.key(), m, kBoxLayer)) continue;
    const int k = std::stoi(m[2].str());
    auto [it, inserted] = last_layer.emplace(m[1].str(), k);
    if (!inserted) it->second = std::max(it->second, k);
  }
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    // Backbone convolutions: torchvision's ResNet init (Kaiming normal,
    // fan-out, ReLU gain); every other weight keeps its constructor's init.
    if (name.rfind("backbone.", 0) == 0 && item.value().dim() == 4) {
      const at::Tensor& w = item.value();
      const double fan_out = static_cast<double>(w.size(0) * w.size(2) * w.size(3));
      w.normal_(0.0, std::sqrt(2.0 / fan_out));
    }
    if (name == "transformer.tgt_embed.weight" || name == "transformer.hybrid_tgt_embed.weight") {
      item.value().normal_(0.0, 1.0);
    }
    std::smatch m;
    if (std::regex_search(name, m, kBoxLayer) && std::stoi(m[2].str()) == last_layer[m[1].str()]) {
      item.value().zero_();
    }
  }
}

}  // namespace lpdetr::train
