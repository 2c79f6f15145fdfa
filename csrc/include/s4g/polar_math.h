// Polar transform maths (docs/METHOD.md §9, SAFA convention), shared by the CPU and CUDA kernels.
//
// Aerial tile A×A (north up), polar output H×W; output row i, column j samples the aerial image at
//   r   = (A/2)·(H−1−i)/H            (row 0 = far field, row H−1 = the camera)
//   row = A/2 + r·cos(2πj/W)         (aerial row)
//   col = A/2 − r·sin(2πj/W)         (aerial column)
// so column 0 faces south, W/4 west, W/2 north, 3W/4 east. Pixel (row, col) of the aerial image sits
// at integer coordinates; sampling is bilinear with zero outside the image (like cv2.remap with
// BORDER_CONSTANT=0 and map_x = col, map_y = row).
#pragma once
#include <cmath>
#include "s4g/hd.h"

namespace s4g {

constexpr double kTwoPi = 6.283185307179586476925286766559;

// Source coordinate (aerial row, column) of polar output pixel (i, j).
template <class T>
S4G_HD void polar_source(int64_t i, int64_t j, int64_t A, int64_t H, int64_t W, T* row, T* col) {
  const T half = T(A) / T(2);
  const T r = half * T(H - 1 - i) / T(H);
  const T theta = T(kTwoPi) * T(j) / T(W);
  *row = half + r * cos(theta);
  *col = half - r * sin(theta);
}

// Four bilinear taps of a sample at (row, col) in a rows×cols image: flat pixel indices (row*cols+col)
// and weights; taps outside the image get weight 0 and index 0 (a safe address).
struct Taps4 {
  int64_t idx[4];
  float w[4];
};

template <class T>
S4G_HD Taps4 bilinear_taps(T row, T col, int64_t rows, int64_t cols) {
  Taps4 t;
  const T r0f = floor(row), c0f = floor(col);
  const T fr = row - r0f, fc = col - c0f;
  const int64_t r0 = (int64_t)r0f, c0 = (int64_t)c0f;
  const T wr[2] = {T(1) - fr, fr};
  const T wc[2] = {T(1) - fc, fc};
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      const int64_t rr = r0 + a, cc = c0 + b;
      const bool inside = rr >= 0 && rr < rows && cc >= 0 && cc < cols;
      t.idx[a * 2 + b] = inside ? rr * cols + cc : 0;
      t.w[a * 2 + b] = inside ? float(wr[a] * wc[b]) : 0.0f;
    }
  }
  return t;
}

// Inverse (docs/METHOD.md §9): aerial pixel (row, col) of an A×A tile → polar coordinates (i, j) in an H×W polar
// image. Returns false outside the circle r < (A/2)(H−1)/H, where the polar image holds no value.
template <class T>
S4G_HD bool polar_inverse(int64_t row, int64_t col, int64_t A, int64_t H, int64_t W, T* i, T* j) {
  const T half = T(A) / T(2);
  const T dr = T(row) - half;
  const T dc = half - T(col);
  const T r = sqrt(dr * dr + dc * dc);
  if (!(r < half * T(H - 1) / T(H))) return false;
  T theta = atan2(dc, dr);
  if (theta < T(0)) theta += T(kTwoPi);
  *i = T(H - 1) - r * T(H) / half;
  T jj = theta * T(W) / T(kTwoPi);
  if (jj >= T(W)) jj -= T(W);
  *j = jj;
  return true;
}

// Bilinear taps in the polar image at (i, j): rows clamp (weights of rows outside get 0), columns wrap.
template <class T>
S4G_HD Taps4 polar_taps(T i, T j, int64_t H, int64_t W) {
  Taps4 t;
  const T i0f = floor(i), j0f = floor(j);
  const T fi = i - i0f, fj = j - j0f;
  const int64_t i0 = (int64_t)i0f;
  int64_t j0 = (int64_t)j0f % W;
  if (j0 < 0) j0 += W;
  const int64_t j1 = (j0 + 1) % W;
  const T wi[2] = {T(1) - fi, fi};
  const T wj[2] = {T(1) - fj, fj};
  const int64_t jc[2] = {j0, j1};
  for (int a = 0; a < 2; ++a) {
    const int64_t ii = i0 + a;
    const bool inside = ii >= 0 && ii < H;
    for (int b = 0; b < 2; ++b) {
      t.idx[a * 2 + b] = inside ? ii * W + jc[b] : 0;
      t.w[a * 2 + b] = inside ? float(wi[a] * wj[b]) : 0.0f;
    }
  }
  return t;
}

}  // namespace s4g
