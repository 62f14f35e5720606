// MultiStepLR: the learning rate of every parameter group is its base rate
// times gamma^k, k the number of milestones (epoch numbers, 0-based epochs
// counted from the start of training) reached so far. Stepped once per epoch,
// as the official recipe steps torch's MultiStepLR (milestones [10], gamma
// 0.1 over 12 epochs). A value type: thread-compatible.
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
  }

  // The factor of the base learning rate during `epoch`.
  double Factor(int64_t epoch) const {
    const auto reached = std::count_if(milestones.begin(), milestones.end(),
                                       [&](int64_t m) { return m <= epoch; });
    return std::pow(gamma, static_cast<double>(reached));
  }
};

}  // namespace lpdetr::train
