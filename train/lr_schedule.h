// LrSchedule: the learning-rate factor of every optimizer step.
//
// Two shapes, chosen by `kind`:
//   "step"   (the default, the official recipe) MultiStepLR: the base rate
//            times gamma^k, k the number of milestones (epoch numbers, 0-based
//            epochs counted from the start of training) reached so far;
//            stepped once per epoch, as the official recipe steps torch's
//            MultiStepLR (milestones [10], gamma 0.1 over 12 epochs);
//   "cosine" the factor falls from 1 to `final_factor` along half a cosine
//            over the steps that follow the warm-up, ending at the run's last
//            step; milestones and gamma are not used. A short run from scratch
//            spends its whole budget at a useful rate this way instead of
//            waiting for a milestone.
// Both take an optional linear warm-up that scales the rate by
// (step + 1) / warmup_steps during the first warmup_steps optimizer steps
// (none in the official recipe; it steadies training from scratch at a high
// rate). A value type: thread-compatible.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace lpdetr::train {

struct LrSchedule {
  std::string kind = "step";                 // "step" or "cosine"
  std::vector<int64_t> milestones = {10};    // step: epochs at which lr is multiplied by gamma
  double gamma = 0.1;                        // step: the factor per milestone
  double final_factor = 0.01;                // cosine: the factor at the last step
  int64_t warmup_steps = 0;                  // 0: no warm-up

  // Throws std::invalid_argument naming the bad value: an unknown kind, a
  // negative or unsorted milestone, gamma outside (0, 1], final_factor
  // outside [0, 1] or a negative warm-up.
  void Validate() const {
    if (kind != "step" && kind != "cosine") {
      throw std::invalid_argument("lr schedule must be step or cosine, got '" + kind + "'");
    }
    for (size_t i = 0; i < milestones.size(); ++i) {
      if (milestones[i] < 0 || (i > 0 && milestones[i] < milestones[i - 1])) {
        throw std::invalid_argument("lr milestones must be non-negative and ascending, got " +
                                    std::to_string(milestones[i]) + " at position " +
                                    std::to_string(i));
      }
    }
    if (!(gamma > 0 && gamma <= 1)) {
      throw std::invalid_argument("lr gamma must be in (0, 1], got " + std::to_string(gamma));
    }
    if (!(final_factor >= 0 && final_factor <= 1)) {
      throw std::invalid_argument("lr final factor must be in [0, 1], got " +
                                  std::to_string(final_factor));
    }
    if (warmup_steps < 0) {
      throw std::invalid_argument("lr warm-up steps must be >= 0, got " +
                                  std::to_string(warmup_steps));
    }
  }

  // The step schedule's factor during `epoch` (1 for "cosine").
  double Factor(int64_t epoch) const {
    if (kind == "cosine") return 1.0;
    const auto reached = std::count_if(milestones.begin(), milestones.end(),
                                       [&](int64_t m) { return m <= epoch; });
    return std::pow(gamma, static_cast<double>(reached));
  }

  // The factor for the optimizer step that follows `steps_done` steps, in
  // `epoch`, of a run of `total_steps` steps: the warm-up ramp times the
  // epoch factor ("step") or the cosine's value at that step ("cosine").
  double Factor(int64_t epoch, int64_t steps_done, int64_t total_steps) const {
    const double ramp =
        steps_done < warmup_steps
            ? static_cast<double>(steps_done + 1) / static_cast<double>(warmup_steps)
            : 1.0;
    if (kind != "cosine") return Factor(epoch) * ramp;
    const int64_t span = total_steps - 1 - warmup_steps;
    const double t =
        span <= 0 ? 0.0
                  : std::clamp(static_cast<double>(steps_done - warmup_steps) /
                                   static_cast<double>(span),
                               0.0, 1.0);
    const double cosine = final_factor + (1.0 - final_factor) * 0.5 * (1.0 + std::cos(M_PI * t));
    return cosine * ramp;
  }
};

}  // namespace lpdetr::train
