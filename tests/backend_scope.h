// Test helper: switches the process-wide operator backend (model/runtime.h)
// for one scope and restores the previous one when the scope ends.
#pragma once

#include "model/runtime.h"

namespace lpdetr {

class BackendScope {
 public:
  explicit BackendScope(OpBackend b) : previous_(GetOpBackend()) { SetOpBackend(b); }
  ~BackendScope() { SetOpBackend(previous_); }
  BackendScope(const BackendScope&) = delete;
  BackendScope& operator=(const BackendScope&) = delete;

 private:
  OpBackend previous_;
};

}  // namespace lpdetr
