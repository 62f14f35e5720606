// placeholder: being written
#include <cstdio>
#include "train/tools/commands.h"
namespace lpdetr::train {
int RunEvalCommand(int, char**) { std::fprintf(stderr, "eval: not built yet\n"); return 1; }
}  // namespace lpdetr::train
