// Reads "H W OUT_H OUT_W\n" then H*W float32 from stdin, writes the OUT_H*OUT_W float32 of libaminet's
// Pillow-exact resize (csrc/runtime/preprocess.cpp) to stdout; tests/test_c_api.py compares it with
// Pillow's own bit for bit.
#include <cstdio>
#include <vector>

#include "preprocess.h"

int main() {
  int h = 0, w = 0, oh = 0, ow = 0;
  if (std::scanf("%d %d %d %d", &h, &w, &oh, &ow) != 4 || std::getchar() != '\n') return 2;
  std::vector<float> in(static_cast<size_t>(h) * w);
  if (std::fread(in.data(), sizeof(float), in.size(), stdin) != in.size()) return 2;
  std::vector<float> out = aminet::resize_bilinear_pil(in.data(), h, w, oh, ow);
  return std::fwrite(out.data(), sizeof(float), out.size(), stdout) == out.size() ? 0 : 1;
}
