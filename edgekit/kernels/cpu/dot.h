// Float dot product with eight independent partial sums, written so the compiler vectorises it
// without -ffast-math (shared by attn.cpp and ew.cpp; internal).
#ifndef EDGEKIT_DOT_H_
#define EDGEKIT_DOT_H_

#include <stdint.h>

namespace ek {

inline float dot(const float* a, const float* b, int64_t n) {
  float p[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) p[l] += a[i + l] * b[i + l];
  float s = ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace ek

#endif  // EDGEKIT_DOT_H_
