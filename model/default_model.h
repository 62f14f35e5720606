// Where the embedded default model lives: the model directory that
// lpdetr-server and `lpdetr-model detect` serve when none is given.
//
// The repository ships it as models/lp-detr-shapes/ (trained on the
// synthetic shapes dataset by scripts/train_default_model.sh). The build
// copies it to <build>/share/lpdetr/models/lp-detr-shapes and `cmake
// --install` to <prefix>/share/lpdetr/models/lp-detr-shapes, so the same
// path relative to the binary (bin/../share/...) works in a build tree and an
// installation. A binary run from the source tree's build/bin also finds the
// repository copy (bin/../../models/...).
#pragma once

#include <string>
#include <vector>

namespace lpdetr {

inline constexpr char kDefaultModelName[] = "lp-detr-shapes";

// The directories searched, in order, for a binary at `executable`.
std::vector<std::string> DefaultModelCandidates(const std::string& executable);

// The first candidate holding a config.json for the running binary
// (/proc/self/exe); throws std::runtime_error listing every place searched
// when none does.
std::string FindDefaultModelDir();

}  // namespace lpdetr
