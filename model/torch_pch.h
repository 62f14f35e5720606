// Precompiled header of the model library and everything that links it:
// the LibTorch C++ frontend headers that nearly every translation unit needs.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn.h>
#include <torch/types.h>
#include <torch/utils.h>
