// Bilinear corners of one multi-scale deformable attention sampling point,
// shared by the CPU and CUDA kernels (host and device code; no torch headers,
// so nvcc compiles it alone).
//
// Official semantics: the pixel coordinate is loc * size - 0.5
// (align_corners false); a point contributes when it lies in (-1, size) on
// both axes, and corners outside the map read zeros.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LPDETR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LPDETR_HOST_DEVICE inline
#endif

namespace lpdetr::ops {

// `A` is the accumulation type (float or double).
template <typename A>
struct Corners {
  int64_t pos[4];  // y * w + x of (y0,x0), (y0,x1), (y1,x0), (y1,x1); -1 outside the map
  A weight[4];
  A fx, fy;        // fractional parts of the pixel coordinate
};

// Fills `c` and returns true when the point at (loc_x, loc_y) in [0, 1] of an
// h x w map contributes; false when it lies wholly outside.
template <typename A>
LPDETR_HOST_DEVICE bool MakeCorners(A loc_x, A loc_y, int64_t h, int64_t w, Corners<A>* c) {
  const A x = loc_x * static_cast<A>(w) - A(0.5);
  const A y = loc_y * static_cast<A>(h) - A(0.5);
  if (!(x > A(-1) && y > A(-1) && x < static_cast<A>(w) && y < static_cast<A>(h))) return false;
#if defined(__CUDA_ARCH__)
  const A xf = floor(x), yf = floor(y);
#else
  const A xf = std::floor(x), yf = std::floor(y);
#endif
  const int64_t x0 = static_cast<int64_t>(xf), y0 = static_cast<int64_t>(yf);
  const A fx = x - xf, fy = y - yf;
  c->fx = fx;
  c->fy = fy;
  const bool x0_in = x0 >= 0, x1_in = x0 + 1 < w, y0_in = y0 >= 0, y1_in = y0 + 1 < h;
  c->pos[0] = (y0_in && x0_in) ? y0 * w + x0 : -1;
  c->pos[1] = (y0_in && x1_in) ? y0 * w + x0 + 1 : -1;
  c->pos[2] = (y1_in && x0_in) ? (y0 + 1) * w + x0 : -1;
  c->pos[3] = (y1_in && x1_in) ? (y0 + 1) * w + x0 + 1 : -1;
  c->weight[0] = (A(1) - fy) * (A(1) - fx);
  c->weight[1] = (A(1) - fy) * fx;
  c->weight[2] = fy * (A(1) - fx);
  c->weight[3] = fy * fx;
  return true;
}

}  // namespace lpdetr::ops
