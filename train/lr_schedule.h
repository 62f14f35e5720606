// MultiStepLR: the learning rate of every parameter group is its base rate
// times gamma^k, k the number of milestones (epoch numbers, 0-based epochs
// counted from the start of training) reached so far. Stepped once per epoch,
// as the official recipe steps torch's MultiStepLR (milestones [10], gamma
// 0.1 over 12 epochs). An optional linear warm-up scales the rate by
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

struct MultiStepLr {
  std::vector<int64_t> milestones = {10};  // epochs at which lr is multiplied by gamma
  double gamma = 0.1;
  int64_t warmup_steps = 0;  // 0: no warm-up

  // Throws std::invalid_argument on a negative or unsorted milestone or
  // gamma outside (0, 1].
  void Validate() const {
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
    if (warmup_steps < 0) {
      throw std::invalid_argument("lr warm-up steps must be >= 0, got " +
                                  std::to_string(warmup_steps));
    }
  }

  // The factor of the base learning rate during `epoch`.
  double Factor(int64_t epoch) const {
    const auto reached = std::count_if(milestones.begin(), milestones.end(),
                                       [&](int64_t m) { return m <= epoch; });
    return std::pow(gamma, static_cast<double>(reached));
  }

  // The factor for the optimizer step that follows `steps_done` steps, in
  // `epoch`: the epoch factor times the warm-up ramp.
  double Factor(int64_t epoch, int64_t steps_done) const {
    const double ramp =
        steps_done < warmup_steps
            ? static_cast<double>(steps_done + 1) / static_cast<double>(warmup_steps)
            : 1.0;
    return Factor(epoch) * ramp;
  }
};

}  // namespace lpdetr::train
