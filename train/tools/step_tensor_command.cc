// lpdetr-train step-tensor: one training forward + backward of a model
// directory on a given padded batch, with the official loss
// (HybridSetCriterion), tensors out. Used to check the training step against
// the official implementation (SPEC 2.4).
//
//   lpdetr-train step-tensor --model DIR --input in.safetensors --output out.safetensors
//       [--numerics reference|fast] [--threads N] [--seed S]
//
// in:  images [B,3,H,W] f32 (normalized, zero padded), mask [B,H,W] bool
//      (true = padding), image_sizes [B,2] i64 (h, w), and per image i
//      target_boxes_i [n_i,4] f32 (cxcywh normalized to the image's own size)
//      and target_labels_i [n_i] i64.
// out: loss_total, loss.<key> for every weighted term, grad.<name> for every
//      trainable parameter, match_query_i / match_target_i (last decoder
//      layer's one-to-one assignment).
// The model runs in training mode with the official frozen parts: every batch
// norm is frozen (buffers), and the backbone stem and layer1 get no gradient.
// The batch runs as given (no per-size regrouping). --numerics defaults to
// reference, the numerics of the parity fixtures; main() configures the
// process for it before this runs (see StepTensorNumerics).
#include <cstdio>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>

#include "model/detector.h"
#include "model/model_dir.h"
#include "model/runtime.h"
#include "model/safetensors.h"
#include "train/criterion.h"
#include "train/tools/commands.h"
#include "train/tools/flags.h"
#include "train/train_setup.h"

namespace lpdetr::train {
namespace {

constexpr const char* kUsage = R"(usage: lpdetr-train step-tensor --model DIR --input IN.safetensors --output OUT.safetensors
       [--numerics reference|fast] [--threads N] [--seed S]

One training forward + backward with the official loss (contrastive denoising,
hybrid branch). IN holds images [B,3,H,W] f32, mask [B,H,W] bool, image_sizes
[B,2] i64 and per image i target_boxes_i [n,4] f32 (normalized cxcywh) and
target_labels_i [n] i64. OUT gets loss_total, loss.<key>, grad.<parameter> for
every trainable parameter, match_query_i and match_target_i.
  --numerics  reference (default: the parity fixtures' numerics, 1 thread) or fast
  --threads   intra-op threads with --numerics fast (default: all cores)
  --seed      seed of the denoising noise (default 0)
)";

std::string Shape(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? "," : "") + std::to_string(t.size(i));
  return s + "]";
}

const at::Tensor& Get(const SafetensorsContents& in, const std::string& name) {
  if (!in.Contains(name)) throw std::runtime_error("input has no tensor '" + name + "'");
  return in.Get(name);
}

void Check(bool ok, const std::string& message) {
  if (!ok) throw std::runtime_error("input: " + message);
}

// The batch and the targets of the input file, validated.
struct StepInput {
  ImageBatch batch;
  std::vector<TrainTarget> targets;
};

StepInput ReadStepInput(const std::string& path, int64_t num_classes) {
  SafetensorsContents in = ReadSafetensors(path);
  StepInput s;
  const at::Tensor& images = Get(in, "images");
  const at::Tensor& mask = Get(in, "mask");
  const at::Tensor& sizes = Get(in, "image_sizes");
  Check(images.dim() == 4 && images.size(1) == 3 && images.is_floating_point(),
        "images must be [B,3,H,W] float, got " + Shape(images) + " " +
            std::string(c10::toString(images.scalar_type())));
  const int64_t b = images.size(0), h = images.size(2), w = images.size(3);
  Check(b >= 1, "images holds no image");
  Check(mask.dim() == 3 && mask.size(0) == b && mask.size(1) == h && mask.size(2) == w &&
            mask.scalar_type() == at::kBool,
        "mask must be [" + std::to_string(b) + "," + std::to_string(h) + "," +
            std::to_string(w) + "] bool, got " + Shape(mask) + " " +
            std::string(c10::toString(mask.scalar_type())));
  Check(sizes.dim() == 2 && sizes.size(0) == b && sizes.size(1) == 2 &&
            sizes.scalar_type() == at::kLong,
        "image_sizes must be [" + std::to_string(b) + ",2] int64, got " + Shape(sizes));
  s.batch.images = images.to(at::kFloat);
  s.batch.mask = mask;
  for (int64_t i = 0; i < b; ++i) {
    const std::string k = std::to_string(i);
    const at::Tensor& boxes = Get(in, "target_boxes_" + k);
    const at::Tensor& labels = Get(in, "target_labels_" + k);
    Check(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.scalar_type() == at::kFloat,
          "target_boxes_" + k + " must be [n,4] float32, got " + Shape(boxes) + " " +
              std::string(c10::toString(boxes.scalar_type())));
    Check(labels.dim() == 1 && labels.size(0) == boxes.size(0) &&
              labels.scalar_type() == at::kLong,
          "target_labels_" + k + " must be [" + std::to_string(boxes.size(0)) +
              "] int64 (one per box), got " + Shape(labels) + " " +
              std::string(c10::toString(labels.scalar_type())));
    if (labels.numel() > 0) {
      const int64_t lo = labels.min().item<int64_t>(), hi = labels.max().item<int64_t>();
      Check(lo >= 0 && hi < num_classes, "target_labels_" + k + " must be in 0.." +
                                             std::to_string(num_classes - 1) + ", got " +
                                             std::to_string(lo < 0 ? lo : hi));
      Check(at::isfinite(boxes).all().item<bool>(), "target_boxes_" + k + " is not finite");
      Check((boxes.narrow(1, 2, 2) > 0).all().item<bool>(),
            "target_boxes_" + k + " has a box without positive width and height");
    }
    s.targets.push_back({labels, boxes});
  }
  const std::string extra = "target_boxes_" + std::to_string(b);
  Check(!in.Contains(extra), "holds " + extra + " but images has only " + std::to_string(b) +
                                 " images");
  return s;
}

int Run(int argc, char** argv) {
  const auto flags =
      CommandFlags(argc, argv, {"model", "input", "output", "numerics", "threads", "seed"});
  const std::string numerics_flag = flags.Str("numerics", "reference");
  if (numerics_flag != "reference" && numerics_flag != "fast") {
    throw UsageError("--numerics must be reference or fast, got '" + numerics_flag +
                     "'");
  }
  const Numerics numerics = StepTensorNumerics(argc, argv);
  ApplyNumerics(numerics, static_cast<int>(flags.Int("threads", 0)));
  const std::string model_dir = flags.Required("model");
  const std::string input = flags.Required("input");
  const std::string output = flags.Required("output");
  at::manual_seed(static_cast<uint64_t>(flags.Int("seed", 0)));

  LoadedModel loaded = LoadModelDir(model_dir);
  PrepareForTraining(*loaded.model);
  StepInput in = ReadStepInput(input, loaded.config.num_classes);

  DetectorOutput out = loaded.model->forward(in.batch, &in.targets);
  CriterionOptions options;
  options.hybrid_assign = loaded.config.hybrid_assign;
  HybridSetCriterion criterion(options);
  CriterionResult loss = criterion(out, in.targets);
  loss.total.backward();

  NamedTensors result;
  result.emplace_back("loss_total", loss.total.detach());
  for (const auto& [name, value] : loss.losses) result.emplace_back("loss." + name, value.detach());
  for (const NamedParameter& p : TrainableParameters(*loaded.model)) {
    at::Tensor g = p.tensor.grad();
    result.emplace_back("grad." + p.name, g.defined() ? g : at::zeros_like(p.tensor));
  }
  for (size_t i = 0; i < loss.final_matches.size(); ++i) {
    result.emplace_back("match_query_" + std::to_string(i), loss.final_matches[i].query);
    result.emplace_back("match_target_" + std::to_string(i), loss.final_matches[i].target);
  }
  for (auto& [name, t] : result) t = t.detach().to(at::kCPU).contiguous();
  auto num = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.9g", v);
    return std::string(buf);
  };
  WriteSafetensors(output, result,
                   {{"model", loaded.config.name},
                    {"variant", RelationVariantName(loaded.config.relation_variant)},
                    {"denoising_groups", std::to_string(loss.dn_groups)},
                    {"num_boxes", num(loss.num_boxes)},
                    {"num_boxes_dn", num(loss.num_boxes_dn)},
                    {"num_boxes_hybrid", num(loss.num_boxes_hybrid)}});
  std::printf("loss_total %.9g (%zu terms), denoising groups %lld, wrote %s\n",
              loss.total.item<double>(), loss.losses.size(),
              static_cast<long long>(loss.dn_groups), output.c_str());
  return 0;
}

}  // namespace

Numerics StepTensorNumerics(int argc, char** argv) {
  return NumericsFromArgs(argc, argv, 1, Numerics::kReference);
}

int RunStepTensorCommand(int argc, char** argv) {
  return RunSubcommand("step-tensor", kUsage, argc, argv, Run);
}

}  // namespace lpdetr::train
