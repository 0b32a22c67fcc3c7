// Frames to model input and model maps to input size, step for step as the Python runtime computes them
// (docs/c-api.md, "Preprocessing"): uint8 -> float32 / 255, grey replicated, alpha dropped, BGR swapped;
// each channel resized to S x S by Pillow's BILINEAR filter on mode "F" (antialiased when shrinking:
// double-precision weights and sums, float32 results), then (x - mean) / std in float32.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "aminet/aminet.h"

namespace aminet {

constexpr int MIN_SIDE = 8;                  // px, as aminet_edge.runtime.inputs
constexpr int MAX_SIDE = 20000;              // px
constexpr int64_t MAX_PIXELS = 100000000;    // 100 megapixels

// "" if `image` is usable, else the problem (without the frame's name).
std::string check_image(const aminet_image& image);

// `image` (checked) as the model input (3, size, size) float32, written to `out`.
void preprocess(const aminet_image& image, int size, const std::array<float, 3>& mean,
                const std::array<float, 3>& std, float* out);

// Pillow's ImagingResample (BILINEAR, mode "F") of an (in_h, in_w) float32 plane to (out_h, out_w).
std::vector<float> resize_bilinear_pil(const float* in, int in_h, int in_w, int out_h, int out_w);

// aminet_edge.runtime.detector.resize_map: bilinear, pixel centres aligned, edges clamped, float32
// taps and arithmetic (no antialiasing); (h, w) -> (out_h, out_w).
std::vector<float> resize_map(const float* in, int h, int w, int out_h, int out_w);

}  // namespace aminet
