// placeholder: being written
#include <cstdio>
#include "train/tools/commands.h"
namespace lpdetr::train {
int RunStepTensorCommand(int, char**) { std::fprintf(stderr, "step-tensor: not built yet\n"); return 1; }
}  // namespace lpdetr::train
