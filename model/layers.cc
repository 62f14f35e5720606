#include "model/layers.h"

#include <cmath>
#include <stdexcept>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/pooling.h>

#include "model/precision.h"
#include "model/runtime.h"

namespace lpdetr {

namespace F = torch::nn::functional;

// ---------------------------------------------------------------------------
FrozenBatchNorm2dImpl::FrozenBatchNorm2dImpl(int64_t channels, double eps_) : eps(eps_) {
  weight = register_buffer("weight", at::ones({channels}));
  bias = register_buffer("bias", at::zeros({channels}));
  running_mean = register_buffer("running_mean", at::zeros({channels}));
  running_var = register_buffer("running_var", at::ones({channels}));
}

std::pair<at::Tensor, at::Tensor> FrozenBatchNorm2dImpl::ScaleShift() const {
  at::Tensor scale = weight * (running_var + eps).rsqrt();
  at::Tensor shift = bias - running_mean * scale;
  return {scale, shift};
}

at::Tensor FrozenBatchNorm2dImpl::forward(const at::Tensor& x) {
  if (batch_statistics && is_training()) {
    // Batch statistics in fp32, also for a bf16 convolution output (autocast).
    return at::batch_norm(Fp32(x), weight, bias, running_mean, running_var, /*training=*/true,
                          momentum, eps, /*cudnn_enabled=*/true);
  }
  auto [scale, shift] = ScaleShift();
  return x * scale.view({1, -1, 1, 1}) + shift.view({1, -1, 1, 1});
}

// ---------------------------------------------------------------------------
bool UseInferenceFastPath(const torch::nn::Module& module) {
  return GetOpBackend() == OpBackend::kKernels && !module.is_training() &&
         !at::GradMode::is_enabled();
}

bool UseBf16(const torch::nn::Module& module) {
  return GetComputePrecision() == Precision::kBf16 && UseInferenceFastPath(module);
}

namespace {

// Whether `t` still is the tensor a cache entry was made from.
bool SameSource(const at::Tensor& cached, int64_t version, const void* data,
                const at::Tensor& t) {
  return cached.is_same(t) && version == t._version() && data == t.data_ptr();
}

}  // namespace

at::Tensor Bf16Weights::Get(const at::Tensor& source, at::MemoryFormat format) {
  if (!source.defined()) return source;
  if (source.scalar_type() == at::kBFloat16 && source.is_contiguous(format)) return source;
  at::NoGradGuard no_grad;
  // Inference tensors have no version counter: convert without caching.
  if (source.is_inference()) return source.to(at::kBFloat16).contiguous(format);
  std::lock_guard<std::mutex> lock(mu_);
  for (Entry& e : entries_) {
    if (!e.source.is_same(source) || e.format != format) continue;
    if (!SameSource(e.source, e.version, e.data, source)) {
      e.copy = source.detach().to(at::kBFloat16).contiguous(format);
      e.version = source._version();
      e.data = source.data_ptr();
      ++conversions_;
    }
    return e.copy;
  }
  Entry e;
  e.source = source;
  e.version = source._version();
  e.data = source.data_ptr();
  e.format = format;
  e.copy = source.detach().to(at::kBFloat16).contiguous(format);
  ++conversions_;
  entries_.push_back(e);
  return e.copy;
}

int64_t Bf16Weights::conversions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return conversions_;
}

at::Tensor LinearIn(const torch::nn::Linear& layer, const at::Tensor& x, Bf16Weights* bf16,
                    at::ScalarType out_dtype) {
  if (bf16 == nullptr) return Linear(layer, x);
  at::Tensor y = at::linear(x.to(at::kBFloat16), bf16->Get(layer->weight), bf16->Get(layer->bias));
  return y.scalar_type() == out_dtype ? y : y.to(out_dtype);
}

std::pair<at::Tensor, at::Tensor> ConvBnFold::Get(const torch::nn::Conv2dImpl& conv,
                                                  const FrozenBatchNorm2dImpl& bn) {
  TORCH_CHECK(!conv.options.bias(), "ConvBnFold expects a conv without bias");
  const std::array<const at::Tensor*, 5> sources = {&conv.weight, &bn.weight, &bn.bias,
                                                    &bn.running_mean, &bn.running_var};
  std::lock_guard<std::mutex> lock(mu_);
  // Inference tensors have no version counter: never cache from them.
  bool cacheable = true;
  for (const at::Tensor* t : sources) cacheable = cacheable && !t->is_inference();
  bool fresh = cacheable && weight_.defined() && sources_.size() == sources.size();
  for (size_t i = 0; fresh && i < sources.size(); ++i) {
    fresh = SameSource(sources_[i], versions_[i], data_[i], *sources[i]);
  }
  if (fresh) return {weight_, bias_};
  at::NoGradGuard no_grad;
  auto [scale, shift] = bn.ScaleShift();
  at::Tensor weight = (conv.weight * scale.view({-1, 1, 1, 1}))
                          .contiguous(at::MemoryFormat::ChannelsLast);
  ++builds_;
  if (!cacheable) return {weight, shift};
  sources_.clear();
  versions_.clear();
  data_.clear();
  for (const at::Tensor* t : sources) {
    sources_.push_back(*t);
    versions_.push_back(t->_version());
    data_.push_back(t->data_ptr());
  }
  weight_ = weight;
  bias_ = shift;
  weight_bf16_ = at::Tensor();
  bias_bf16_ = at::Tensor();
  return {weight_, bias_};
}

at::Tensor ConvBnFold::Forward(const torch::nn::Conv2dImpl& conv, const FrozenBatchNorm2dImpl& bn,
                               const at::Tensor& x) {
  auto [weight, bias] = Get(conv, bn);
  if (x.scalar_type() == at::kBFloat16) {
    std::lock_guard<std::mutex> lock(mu_);
    if (weight.is_same(weight_) && weight_bf16_.defined()) {
      weight = weight_bf16_;
      bias = bias_bf16_;
    } else {
      at::NoGradGuard no_grad;
      at::Tensor w = weight.to(at::kBFloat16).contiguous(at::MemoryFormat::ChannelsLast);
      at::Tensor b = bias.to(at::kBFloat16);
      if (weight.is_same(weight_)) {  // a cached fold: keep its bf16 copy
        weight_bf16_ = w;
        bias_bf16_ = b;
      }
      weight = w;
      bias = b;
    }
  }
  const auto& o = conv.options;
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
  TORCH_CHECK(padding != nullptr, "ConvBnFold supports explicit conv padding only");
  return at::conv2d(x, weight, bias, *o.stride(), **padding, *o.dilation(), o.groups());
}

int64_t ConvBnFold::builds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return builds_;
}

// ---------------------------------------------------------------------------
namespace {

torch::nn::Conv2d Conv(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad,
                       bool bias = false) {
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, k).stride(stride).padding(pad).bias(bias));
}

}  // namespace

ResidualBlockImpl::ResidualBlockImpl(bool bottleneck, int64_t inplanes, int64_t planes,
                                     int64_t stride)
    : bottleneck_(bottleneck) {
  const int64_t expansion = bottleneck ? 4 : 1;
  if (bottleneck) {
    conv1 = register_module("conv1", Conv(inplanes, planes, 1, 1, 0));
    bn1 = register_module("bn1", FrozenBatchNorm2d(planes));
    conv2 = register_module("conv2", Conv(planes, planes, 3, stride, 1));
    bn2 = register_module("bn2", FrozenBatchNorm2d(planes));
    conv3 = register_module("conv3", Conv(planes, planes * expansion, 1, 1, 0));
    bn3 = register_module("bn3", FrozenBatchNorm2d(planes * expansion));
  } else {
    conv1 = register_module("conv1", Conv(inplanes, planes, 3, stride, 1));
    bn1 = register_module("bn1", FrozenBatchNorm2d(planes));
    conv2 = register_module("conv2", Conv(planes, planes, 3, 1, 1));
    bn2 = register_module("bn2", FrozenBatchNorm2d(planes));
  }
  if (stride != 1 || inplanes != planes * expansion) {
    downsample = register_module(
        "downsample", torch::nn::Sequential(Conv(inplanes, planes * expansion, 1, stride, 0),
                                            FrozenBatchNorm2d(planes * expansion)));
  }
}

at::Tensor ResidualBlockImpl::forward(const at::Tensor& x) {
  if (UseInferenceFastPath(*this)) {
    at::Tensor out = folds_[0].Forward(*conv1, *bn1, x).relu_();
    out = folds_[1].Forward(*conv2, *bn2, out);
    if (bottleneck_) out = folds_[2].Forward(*conv3, *bn3, out.relu_());
    if (downsample) {
      out += folds_[3].Forward(*downsample->ptr<torch::nn::Conv2dImpl>(0),
                               *downsample->ptr<FrozenBatchNorm2dImpl>(1), x);
    } else {
      out += x;
    }
    return out.relu_();
  }
  at::Tensor out = bn1(conv1(x)).relu_();
  out = bn2(conv2(out));
  if (bottleneck_) out = bn3(conv3(out.relu_()));
  out += downsample ? downsample->forward(x) : x;
  return out.relu_();
}

// ---------------------------------------------------------------------------
ResNetImpl::ResNetImpl(const std::string& arch, std::vector<int> return_indices, int64_t width)
    : return_indices_(std::move(return_indices)), width_(width) {
  if (width < 1) throw std::invalid_argument("backbone width must be >= 1, got " + std::to_string(width));
  std::array<int, 4> blocks;
  bool bottleneck;
  if (arch == "resnet18") {
    blocks = {2, 2, 2, 2}, bottleneck = false;
  } else if (arch == "resnet34") {
    blocks = {3, 4, 6, 3}, bottleneck = false;
  } else if (arch == "resnet50") {
    blocks = {3, 4, 6, 3}, bottleneck = true;
  } else if (arch == "resnet101") {
    blocks = {3, 4, 23, 3}, bottleneck = true;
  } else {
    throw std::invalid_argument("unknown backbone '" + arch +
                                "' (expected resnet18, resnet34, resnet50 or resnet101)");
  }
  expansion_ = bottleneck ? 4 : 1;
  conv1 = register_module("conv1", Conv(3, width, 7, 2, 3));
  bn1 = register_module("bn1", FrozenBatchNorm2d(width));
  int64_t inplanes = width;
  for (int s = 0; s < 4; ++s) {
    const int64_t planes = width << s;
    torch::nn::Sequential stage;
    for (int b = 0; b < blocks[s]; ++b) {
      const int64_t stride = (b == 0 && s > 0) ? 2 : 1;
      stage->push_back(ResidualBlock(bottleneck, inplanes, planes, stride));
      inplanes = planes * expansion_;
    }
    stages_[s] = register_module("layer" + std::to_string(s + 1), stage);
  }
}

std::vector<int64_t> ResNetImpl::OutChannels() const {
  std::vector<int64_t> channels;
  for (int idx : return_indices_) channels.push_back(width_ * expansion_ << idx);
  return channels;
}

std::vector<at::Tensor> ResNetImpl::forward(const at::Tensor& images) {
  at::Tensor x;
  if (UseInferenceFastPath(*this)) {
    // bf16: the whole trunk runs in bf16 (convolutions, ReLU, pooling and the
    // residual sums); its outputs are bf16.
    const at::Tensor input = UseBf16(*this) ? images.to(at::kBFloat16) : images;
    x = fold1_.Forward(*conv1, *bn1, input.contiguous(at::MemoryFormat::ChannelsLast)).relu_();
  } else {
    x = bn1(conv1(images)).relu_();
  }
  x = at::max_pool2d(x, {3, 3}, {2, 2}, {1, 1});
  std::vector<at::Tensor> outs;
  const int last = return_indices_.back();
  size_t next = 0;
  for (int s = 0; s <= last; ++s) {
    x = stages_[s]->forward(x);
    if (next < return_indices_.size() && return_indices_[next] == s) {
      outs.push_back(x);
      ++next;
    }
  }
  return outs;
}

// ---------------------------------------------------------------------------
ChannelMapperImpl::ChannelMapperImpl(const std::vector<int64_t>& in_channels,
                                     int64_t out_channels, int64_t num_outs)
    : num_inputs_(static_cast<int64_t>(in_channels.size())) {
  convs = register_module("convs", torch::nn::ModuleList());
  for (int64_t c : in_channels) {
    convs->push_back(torch::nn::Sequential(
        Conv(c, out_channels, 1, 1, 0),
        torch::nn::GroupNorm(torch::nn::GroupNormOptions(32, out_channels))));
  }
  int64_t in = in_channels.back();
  for (int64_t i = num_inputs_; i < num_outs; ++i) {
    convs->push_back(torch::nn::Sequential(
        Conv(in, out_channels, 3, 2, 1),
        torch::nn::GroupNorm(torch::nn::GroupNormOptions(32, out_channels))));
    in = out_channels;
  }
}

std::vector<at::Tensor> ChannelMapperImpl::forward(const std::vector<at::Tensor>& inputs) {
  TORCH_CHECK(static_cast<int64_t>(inputs.size()) == num_inputs_, "ChannelMapper expects ",
              num_inputs_, " inputs, got ", inputs.size());
  const bool bf16 = UseBf16(*this);
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i < convs->size(); ++i) {
    auto level = convs->ptr<torch::nn::SequentialImpl>(i);
    const at::Tensor& x = static_cast<int64_t>(i) < num_inputs_ ? inputs[i]
                          : static_cast<int64_t>(i) == num_inputs_ ? inputs.back()
                                                                   : outs.back();
    if (bf16) {
      outs.push_back(Bf16Level(*level, x));
    } else {
      // conv, then GroupNorm on an fp32 input (bf16 under training autocast).
      const at::Tensor y = level->ptr<torch::nn::Conv2dImpl>(0)->forward(x);
      outs.push_back(level->ptr<torch::nn::GroupNormImpl>(1)->forward(Fp32(y)));
    }
  }
  return outs;
}

at::Tensor ChannelMapperImpl::Bf16Level(torch::nn::SequentialImpl& level, const at::Tensor& x) {
  const auto& conv = *level.ptr<torch::nn::Conv2dImpl>(0);
  const auto& o = conv.options;
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
  TORCH_CHECK(padding != nullptr, "ChannelMapper supports explicit conv padding only");
  const at::Tensor y = at::conv2d(
      x.to(at::kBFloat16).contiguous(at::MemoryFormat::ChannelsLast),
      bf16_.Get(conv.weight, at::MemoryFormat::ChannelsLast), bf16_.Get(conv.bias), *o.stride(),
      **padding, *o.dilation(), o.groups());
  return level.ptr<torch::nn::GroupNormImpl>(1)->forward(y.to(at::kFloat));
}

// ---------------------------------------------------------------------------
MLPImpl::MLPImpl(int64_t input_dim, int64_t hidden_dim, int64_t output_dim,
                 int64_t num_layers) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < num_layers; ++i) {
    const int64_t in = i == 0 ? input_dim : hidden_dim;
    const int64_t out = i == num_layers - 1 ? output_dim : hidden_dim;
    torch::nn::Linear linear(in, out);
    layers->push_back(linear);
    linears_.push_back(linear);
  }
}

at::Tensor MLPImpl::forward(at::Tensor x) {
  for (size_t i = 0; i < linears_.size(); ++i) {
    x = Linear(linears_[i], x);
    if (i + 1 < linears_.size()) x = x.relu_();
  }
  return x;
}

// ---------------------------------------------------------------------------
namespace {

// temperature^(2k / num_pos_feats), k = 0 .. num_pos_feats/2 - 1.
at::Tensor DimT(int64_t num_pos_feats, double temperature, const at::TensorOptions& opts) {
  at::Tensor k = at::arange(num_pos_feats / 2, opts.dtype(at::kFloat));
  return at::pow(temperature, k * 2.0 / static_cast<double>(num_pos_feats)).to(opts.dtype());
}

// x [...] / dim_t -> [..., 2*len(dim_t)] with (sin, cos) interleaved.
at::Tensor SinCosInterleaved(const at::Tensor& x) {
  return at::stack({x.sin(), x.cos()}, -1).flatten(-2);
}

}  // namespace

at::Tensor SinePositionEmbedding(const at::Tensor& mask, int64_t num_pos_feats,
                                 double temperature, double offset, double scale,
                                 double eps) {
  at::Tensor not_mask = mask.logical_not().to(at::kInt);
  at::Tensor y_embed = not_mask.cumsum(1, at::kInt);
  at::Tensor x_embed = not_mask.cumsum(2, at::kInt);
  at::Tensor y = (y_embed + offset) / (y_embed.narrow(1, y_embed.size(1) - 1, 1) + eps) * scale;
  at::Tensor x = (x_embed + offset) / (x_embed.narrow(2, x_embed.size(2) - 1, 1) + eps) * scale;
  at::Tensor dim_t = DimT(num_pos_feats, temperature, mask.options().dtype(at::kFloat));
  at::Tensor pos_x = SinCosInterleaved(x.unsqueeze(-1) / dim_t);
  at::Tensor pos_y = SinCosInterleaved(y.unsqueeze(-1) / dim_t);
  return at::cat({pos_y, pos_x}, 3).permute({0, 3, 1, 2});
}

at::Tensor SineEmbed(const at::Tensor& pos, int64_t num_pos_feats, double temperature,
                     double scale, bool exchange_xy) {
  at::Tensor dim_t = DimT(num_pos_feats, temperature, pos.options());
  at::Tensor res = SinCosInterleaved(pos.unsqueeze(-1) * scale / dim_t);  // [..., n, F]
  if (exchange_xy && res.size(-2) >= 2) {
    std::vector<at::Tensor> parts = res.unbind(-2);
    std::swap(parts[0], parts[1]);
    res = at::stack(parts, -2);
  }
  return res.flatten(-2);
}

at::Tensor InverseSigmoid(const at::Tensor& x, double eps) {
  at::Tensor c = x.clamp(0, 1);
  return at::log(c.clamp_min(eps) / (1 - c).clamp_min(eps));
}

}  // namespace lpdetr
