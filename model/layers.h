// Building blocks shared by the detector: frozen batch norm, the ResNet
// backbone, the ChannelMapper neck, the MLP head and sine embeddings.
// Submodules carry the official Relation-DETR parameter names so that a
// converted checkpoint loads by name.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <ATen/ops/linear.h>

namespace lpdetr {

// BatchNorm2d with fixed statistics and affine parameters (all buffers, as in
// the official FrozenBatchNorm2d): y = (x - mean) / sqrt(var + eps) * w + b.
//
// Training from scratch sets `batch_statistics`: in training mode the layer
// then normalises with the batch's statistics and updates running_mean /
// running_var (momentum `momentum`, as torch's BatchNorm2d), so that the
// evaluation-mode layer (and every exported model) is the frozen form of what
// was learned. The trainer makes weight and bias trainable in that case.
class FrozenBatchNorm2dImpl : public torch::nn::Module {
 public:
  explicit FrozenBatchNorm2dImpl(int64_t channels, double eps = 1e-5);
  at::Tensor forward(const at::Tensor& x);
  // Per-channel scale and shift equivalent to this layer.
  std::pair<at::Tensor, at::Tensor> ScaleShift() const;

  at::Tensor weight, bias, running_mean, running_var;
  double eps;
  bool batch_statistics = false;
  double momentum = 0.1;
};
TORCH_MODULE(FrozenBatchNorm2d);

// Whether `module` may take the inference fast paths (batch norm folded into
// the convolutions, channels-last activations, row-blocked feed-forward):
// the kernels operator backend (GetOpBackend() == kKernels, i.e. fast
// numerics), eval mode and no autograd recording. These paths change float
// rounding, so the reference numerics (kComposed) never take them.
bool UseInferenceFastPath(const torch::nn::Module& module);

// Whether `module` runs its matrix products in bf16: the inference fast path
// with the process's compute precision bf16 (model/precision.h).
bool UseBf16(const torch::nn::Module& module);

// bf16 copies of a module's fp32 weights for the bf16 inference path, made on
// first use and reused; a copy is remade when its source tensor is replaced,
// modified in place or given new storage (identity + version counter + data
// pointer, as ConvBnFold), so updated weights are never served stale. A module
// holds one for the few tensors it converts (linear search). Thread-safe.
class Bf16Weights {
 public:
  Bf16Weights() = default;
  Bf16Weights(const Bf16Weights&) = delete;
  Bf16Weights& operator=(const Bf16Weights&) = delete;

  // `source` in bf16 (contiguous in `format`); undefined for undefined.
  at::Tensor Get(const at::Tensor& source,
                 at::MemoryFormat format = at::MemoryFormat::Contiguous);
  // How many conversions were made (tests).
  int64_t conversions() const;

 private:
  struct Entry {
    at::Tensor source;
    int64_t version = 0;
    const void* data = nullptr;
    at::MemoryFormat format = at::MemoryFormat::Contiguous;
    at::Tensor copy;
  };
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
  int64_t conversions_ = 0;
};

// A bias-free Conv2d followed by a FrozenBatchNorm2d, folded into one
// convolution with bias for inference: W' = W * scale per output channel,
// b' = shift. The folded weight is kept channels-last (oneDNN's native
// layout, so channels-last activations need no reorders). It is cached and
// rebuilt whenever one of the five source tensors is replaced, modified in
// place or given new storage (tensor identity + version counter + data
// pointer), so fine-tuned conv weights are never served stale. Thread-safe.
class ConvBnFold {
 public:
  // bn(conv(x)) through the folded convolution, in x's dtype (float, or
  // bfloat16 with a bf16 copy of the fold, made once per fold). Call without
  // autograd recording (the fold is cached without gradient history).
  at::Tensor Forward(const torch::nn::Conv2dImpl& conv, const FrozenBatchNorm2dImpl& bn,
                     const at::Tensor& x);
  // The folded (weight, bias), rebuilt if stale.
  std::pair<at::Tensor, at::Tensor> Get(const torch::nn::Conv2dImpl& conv,
                                        const FrozenBatchNorm2dImpl& bn);
  // How many times the fold was computed (tests).
  int64_t builds() const;

 private:
  mutable std::mutex mu_;
  std::vector<at::Tensor> sources_;
  std::vector<int64_t> versions_;
  std::vector<const void*> data_;  // set_data (e.g. Module::to) keeps version and identity
  at::Tensor weight_, bias_;
  at::Tensor weight_bf16_, bias_bf16_;  // of weight_ / bias_, made on first bf16 use
  int64_t builds_ = 0;
};

// torchvision BasicBlock (expansion 1) / Bottleneck (expansion 4, stride on
// the 3x3 conv, "ResNet v1.5"). On the inference fast path every conv + BN
// pair runs as one folded convolution (see ConvBnFold).
class ResidualBlockImpl : public torch::nn::Module {
 public:
  ResidualBlockImpl(bool bottleneck, int64_t inplanes, int64_t planes, int64_t stride);
  at::Tensor forward(const at::Tensor& x);

 private:
  bool bottleneck_;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  FrozenBatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Sequential downsample{nullptr};
  // Folds of (conv1, bn1), (conv2, bn2), (conv3, bn3), downsample.
  std::array<ConvBnFold, 4> folds_;
};
TORCH_MODULE(ResidualBlock);

// ResNet-18/34/50/101 trunk without the classifier. Forward returns the
// outputs of the stages listed in `return_indices` (0 = layer1 .. 3 = layer4).
// `width` is the stem's channel count (torchvision's 64); stage s has
// width << s planes, so a smaller width scales every layer down.
// On the inference fast path the activations (and so the outputs) are
// channels-last and batch norm is folded into the convolutions.
class ResNetImpl : public torch::nn::Module {
 public:
  ResNetImpl(const std::string& arch, std::vector<int> return_indices, int64_t width = 64);
  std::vector<at::Tensor> forward(const at::Tensor& images);
  std::vector<int64_t> OutChannels() const;

 private:
  std::vector<int> return_indices_;
  int64_t expansion_ = 1;
  int64_t width_ = 64;
  torch::nn::Conv2d conv1{nullptr};
  FrozenBatchNorm2d bn1{nullptr};
  ConvBnFold fold1_;
  std::array<torch::nn::Sequential, 4> stages_;
};
TORCH_MODULE(ResNet);

// Neck: a 1x1 conv + GroupNorm(32) per backbone level, plus extra levels made
// by 3x3 stride-2 conv + GroupNorm, the first on the last backbone output.
class ChannelMapperImpl : public torch::nn::Module {
 public:
  ChannelMapperImpl(const std::vector<int64_t>& in_channels, int64_t out_channels,
                    int64_t num_outs);
  // On the bf16 path (UseBf16) the convolutions run in bf16 and the group
  // norms in fp32; the outputs are fp32 either way.
  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& inputs);

 private:
  // One level's conv (bf16) + GroupNorm (fp32).
  at::Tensor Bf16Level(torch::nn::SequentialImpl& level, const at::Tensor& x);

  int64_t num_inputs_;
  torch::nn::ModuleList convs{nullptr};
  Bf16Weights bf16_;
};
TORCH_MODULE(ChannelMapper);

// Multi-layer perceptron with ReLU between layers (official `MLP`).
class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(int64_t input_dim, int64_t hidden_dim, int64_t output_dim, int64_t num_layers);
  at::Tensor forward(at::Tensor x);

 private:
  torch::nn::ModuleList layers{nullptr};
  std::vector<torch::nn::Linear> linears_;
};
TORCH_MODULE(MLP);

// DETR sine position embedding of a padding mask [B,H,W] (true = padding):
// normalized cumulative positions with `offset`, returns [B, 2*num_pos_feats, H, W]
// (y features first, then x; sin/cos interleaved per frequency).
at::Tensor SinePositionEmbedding(const at::Tensor& mask, int64_t num_pos_feats,
                                 double temperature = 10000.0, double offset = -0.5,
                                 double scale = 6.283185307179586, double eps = 1e-6);

// Sine embedding of every scalar of `pos` [..., n]: each value x gives
// num_pos_feats values sin/cos(x * scale / t^(2k/num_pos_feats)) interleaved.
// With exchange_xy the first two coordinates swap places (official
// get_sine_pos_embed). Returns [..., n * num_pos_feats].
at::Tensor SineEmbed(const at::Tensor& pos, int64_t num_pos_feats, double temperature,
                     double scale, bool exchange_xy);

// Python's F.linear (a fused addmm for contiguous inputs). The C++ frontend's
// Linear::forward computes matmul + bias instead, which rounds differently.
inline at::Tensor Linear(const torch::nn::Linear& layer, const at::Tensor& x) {
  return at::linear(x, layer->weight, layer->bias);
}

// `layer` applied to x: with `bf16` given, in bfloat16 with its cached bf16
// weights (x converted if float; float accumulation inside oneDNN) and the
// result in `out_dtype`; without, Linear(layer, x). Modules pass
// UseBf16(*this) ? &their_cache : nullptr.
at::Tensor LinearIn(const torch::nn::Linear& layer, const at::Tensor& x, Bf16Weights* bf16,
                    at::ScalarType out_dtype = at::kFloat);

// log(x / (1 - x)) with x clamped to [eps, 1 - eps] (official eps 1e-3).
at::Tensor InverseSigmoid(const at::Tensor& x, double eps = 1e-3);

}  // namespace lpdetr
