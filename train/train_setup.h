// Training-time setup of a detector: the official frozen parts, the
// trainable parameters, the optimizer's parameter groups and the AdamW
// optimizer with gradient clipping. Shared by `lpdetr-train step-tensor`,
// `lpdetr-train bench` and the training loop.
//
// Backbone training (BackboneTraining):
//   finetune (the official recipe, for a pretrained backbone): the stem
//     (conv1) and layer1 get no gradient (requires_grad false); every batch
//     norm is frozen (its affine tensors and statistics are buffers of the
//     model, not parameters); backbone groups train at lr x 0.1.
//   full (training from scratch, where no pretrained backbone exists): every
//     layer trains; the backbone's batch norms normalise with batch
//     statistics and keep running ones (FrozenBatchNorm2d::batch_statistics),
//     their weight and bias are trainable (backbone_norm group, no weight
//     decay); backbone groups train at the full lr. The evaluation-mode model
//     is the usual frozen form, so exported models load everywhere.
//
// Parameter groups follow the official `finetune_backbone_and_linear_projection`:
// with substring keywords on the parameter name ("backbone"; linear
// projections "reference_points" / "sampling_offsets"; norms and biases
// "norm" / "bias"), six groups in this order:
//   other                   lr,        weight decay
//   backbone                lr x 0.1,  weight decay      (full: lr)
//   backbone_norm           lr x 0.1,  no weight decay   (full: lr)
//   linear_projection       lr x 0.1,  weight decay
//   linear_projection_norm  lr x 0.1,  no weight decay
//   other_norm              lr,        no weight decay
// Parameters that do not require a gradient are in no group. Groups may be
// empty (the model's backbone has no bias and its norms are buffers, so
// backbone_norm is empty); they are kept so that group indices are fixed.
//
// Threading: the functions are not thread-safe with respect to the model
// they are given (they change its mode and its parameters' flags); distinct
// models may be set up concurrently.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

namespace lpdetr::train {

enum class BackboneTraining { kFinetune, kFull };

// "finetune" / "full".
const char* BackboneTrainingName(BackboneTraining mode);
// Throws std::invalid_argument naming `name` when it is neither.
BackboneTraining ParseBackboneTraining(const std::string& name);

// Puts `model` in training mode and sets up its backbone for `mode` (see
// above).
void PrepareForTraining(torch::nn::Module& model,
                        BackboneTraining mode = BackboneTraining::kFinetune);

struct NamedParameter {
  std::string name;
  at::Tensor tensor;
};

// The tensors of `model` that require a gradient, with their full names:
// parameters in registration order, then buffers made trainable by
// BackboneTraining::kFull (batch-norm weights and biases).
std::vector<NamedParameter> TrainableParameters(const torch::nn::Module& model);

enum class ParameterGroupKind {
  kOther = 0,
  kBackbone,
  kBackboneNorm,
  kLinearProjection,
  kLinearProjectionNorm,
  kOtherNorm,
};
constexpr int kNumParameterGroups = 6;

const char* ParameterGroupName(ParameterGroupKind kind);

// The group a parameter named `name` belongs to under the keyword rules.
ParameterGroupKind ClassifyParameter(const std::string& name);

struct ParameterGroup {
  ParameterGroupKind kind = ParameterGroupKind::kOther;
  double lr_scale = 1.0;     // the group's lr = base lr x lr_scale
  bool weight_decay = true;  // false: weight decay 0
  std::vector<NamedParameter> params;
};

// The six groups of `model`'s trainable parameters, in the order above
// (index = ParameterGroupKind).
// Trainable batch-norm tensors (buffers) go to backbone_norm.
std::vector<ParameterGroup> FinetuneBackboneAndLinearProjection(
    const torch::nn::Module& model, BackboneTraining mode = BackboneTraining::kFinetune);

// Optimizer constants; the defaults are the official configuration.
struct OptimizerOptions {
  double lr = 1e-4;
  double weight_decay = 1e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double max_grad_norm = 0.1;  // gradient clipping; <= 0 disables it
};

// AdamW over `groups`, one optimizer group per entry (same order, empty ones
// included), each with lr = options.lr x lr_scale and the weight decay or 0.
std::unique_ptr<torch::optim::AdamW> MakeAdamW(const std::vector<ParameterGroup>& groups,
                                               const OptimizerOptions& options);

// Every tensor of `groups`, in group order.
std::vector<at::Tensor> GroupTensors(const std::vector<ParameterGroup>& groups);

// Scales the gradients of `params` so that their total L2 norm is at most
// `max_norm` (torch clip_grad_norm_; parameters without a gradient are
// skipped) and returns the norm before clipping. max_norm <= 0: only the norm.
double ClipGradients(const std::vector<at::Tensor>& params, double max_norm);

// Drops the gradients of `params` (set to none, as torch's
// zero_grad(set_to_none=True)), so the next backward allocates them afresh.
void ClearGradients(const std::vector<at::Tensor>& params);

}  // namespace lpdetr::train

namespace lpdetr::train {

// Full names of the tensors whose shape depends on the class count: every
// classification head (each decoder layer's, the encoder's, the hybrid
// branch's) and the denoising label encoder, in registration order.
std::vector<std::string> ClassDependentTensorNames(const torch::nn::Module& model);

// Gives those tensors their official initial values: each head's weight
// uniform in +-1/sqrt(fan_in) (torch's Linear default) and its bias
// -log((1 - 0.01) / 0.01) (prior probability 0.01), the label encoder's
// embedding standard normal. Draws from LibTorch's default generator.
// Returns the names re-initialised.
std::vector<std::string> InitializeClassTensors(torch::nn::Module& model);

// The official initial values of the parts a fresh model (trained from a
// configuration, not a checkpoint) needs beyond LibTorch's defaults: the class
// tensors above, the query embeddings standard normal, the last layer of
// the encoder and hybrid box heads zero, every deformable attention's
// official init (MultiScaleDeformableAttentionImpl::ResetParameters: the
// directional sampling pattern, uniform attention), Xavier-uniform
// feed-forward weights in the encoder and decoder layers and the decoder
// self-attention's projections, and the backbone convolutions torchvision's
// ResNet init (Kaiming normal, fan-out, ReLU gain).
void InitializeForTraining(torch::nn::Module& model);

}  // namespace lpdetr::train
