// See preprocess.h. The build compiles this file with -ffp-contract=off: a fused multiply-add would
// round differently from Pillow and numpy, and parity is checked to float32 rounding.
#include "preprocess.h"

#include <cmath>
#include <cstdint>

namespace aminet {
namespace {

// Pillow's precompute_coeffs for the bilinear filter (support 1) on [0, in_size) -> out_size:
// per output pixel the first input index, the tap count, and `ksize` normalised weights.
struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<double> weights;
};

double bilinear(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

Taps pil_taps(int in_size, int out_size) {
  Taps t;
  double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 1.0 * filterscale;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.weights.assign(static_cast<size_t>(out_size) * t.ksize, 0.0);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = 0.0 + (xx + 0.5) * scale;
    double ww = 0.0, ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = &t.weights[static_cast<size_t>(xx) * t.ksize];
    for (int x = 0; x < xmax; ++x) {
      double w = bilinear((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    t.first[xx] = xmin;
    t.count[xx] = xmax;
  }
  return t;
}

}  // namespace

namespace {
// One pass of Pillow's ImagingResample{Horizontal,Vertical}_32bpc: output rows `rows` x `out_w` (or
// `out_h` x `cols`), double sums of float32 pixels times double weights, stored as float32.
std::vector<float> pass_horizontal(const float* in, int in_w, int rows, int row0, const Taps& t, int out_w) {
  std::vector<float> out(static_cast<size_t>(rows) * out_w);
  for (int y = 0; y < rows; ++y) {
    const float* line = in + static_cast<size_t>(y + row0) * in_w;
    for (int xx = 0; xx < out_w; ++xx) {
      const double* k = &t.weights[static_cast<size_t>(xx) * t.ksize];
      double ss = 0.0;
      for (int x = 0; x < t.count[xx]; ++x) ss += line[x + t.first[xx]] * k[x];
      out[static_cast<size_t>(y) * out_w + xx] = static_cast<float>(ss);
    }
  }
  return out;
}

std::vector<float> pass_vertical(const float* in, int cols, const Taps& t, int row0, int out_h) {
  std::vector<float> out(static_cast<size_t>(out_h) * cols);
  for (int yy = 0; yy < out_h; ++yy) {
    const double* k = &t.weights[static_cast<size_t>(yy) * t.ksize];
    int ymin = t.first[yy] - row0;
    for (int xx = 0; xx < cols; ++xx) {
      double ss = 0.0;
      for (int y = 0; y < t.count[yy]; ++y) ss += in[static_cast<size_t>(y + ymin) * cols + xx] * k[y];
      out[static_cast<size_t>(yy) * cols + xx] = static_cast<float>(ss);
    }
  }
  return out;
}
}  // namespace

std::vector<float> resize_bilinear_pil(const float* in, int in_h, int in_w, int out_h, int out_w) {
  const bool horizontal = in_w != out_w, vertical = in_h != out_h;
  if (!horizontal && !vertical) return std::vector<float>(in, in + static_cast<size_t>(in_h) * in_w);
  // Pillow 13's pass order: vertical first when the height shrinks by more than twice the width's
  // shrink (it changes rounding by up to 1 ulp; older Pillow always ran the horizontal pass first)
  const bool horizontal_first = !((in_h - out_h) > 0 && (in_h - out_h) > (in_w - out_w) * 2);
  Taps vert = pil_taps(in_h, out_h);
  if (!horizontal) return pass_vertical(in, in_w, vert, 0, out_h);
  Taps hor = pil_taps(in_w, out_w);
  if (horizontal_first) {
    // only the rows the vertical pass reads
    int row0 = vert.first[0], rows = vert.first[out_h - 1] + vert.count[out_h - 1] - row0;
    std::vector<float> tmp = pass_horizontal(in, in_w, rows, row0, hor, out_w);
    return vertical ? pass_vertical(tmp.data(), out_w, vert, row0, out_h) : tmp;
  }
  std::vector<float> tmp = pass_vertical(in, in_w, vert, 0, out_h);
  return pass_horizontal(tmp.data(), in_w, out_h, 0, hor, out_w);
}

std::string check_image(const aminet_image& image) {
  if (image.data == nullptr) return "data is NULL";
  if (image.channels != 1 && image.channels != 3 && image.channels != 4)
    return "channels is " + std::to_string(image.channels) + ": expected 1 (grey), 3 (colour) or 4 (colour + alpha)";
  if (image.order != AMINET_RGB && image.order != AMINET_BGR)
    return "order is " + std::to_string(image.order) + ": expected AMINET_RGB (0) or AMINET_BGR (1)";
  std::string wxh = std::to_string(image.width) + "x" + std::to_string(image.height);
  if (image.width <= 0 || image.height <= 0) return "image is " + wxh + " px (WxH): width and height must be > 0";
  if (std::min(image.width, image.height) < MIN_SIDE)
    return "image is " + wxh + " px (WxH); each side must be >= " + std::to_string(MIN_SIDE) + " px";
  if (std::max(image.width, image.height) > MAX_SIDE)
    return "image is " + wxh + " px (WxH); each side must be <= " + std::to_string(MAX_SIDE) + " px (tile or downscale it)";
  if (static_cast<int64_t>(image.width) * image.height > MAX_PIXELS)
    return "image has " + std::to_string(static_cast<int64_t>(image.width) * image.height) +
           " pixels; the limit is 100 megapixels (tile or downscale it)";
  int64_t row = static_cast<int64_t>(image.width) * image.channels;
  if (image.stride < row)
    return "stride is " + std::to_string(image.stride) + " bytes, less than width x channels = " + std::to_string(row) +
           " (" + std::to_string(image.width) + " x " + std::to_string(image.channels) + ")";
  return "";
}

void preprocess(const aminet_image& image, int size, const std::array<float, 3>& mean,
                const std::array<float, 3>& std, float* out) {
  const size_t n = static_cast<size_t>(image.width) * image.height;
  std::vector<float> plane(n);
  for (int c = 0; c < 3; ++c) {
    // RGB channel c comes from byte `src` of each pixel: grey replicated, alpha dropped, BGR swapped
    int src = image.channels == 1 ? 0 : image.order == AMINET_BGR ? 2 - c : c;
    for (int y = 0; y < image.height; ++y) {
      const uint8_t* row = image.data + static_cast<int64_t>(y) * image.stride;
      float* dst = &plane[static_cast<size_t>(y) * image.width];
      for (int x = 0; x < image.width; ++x) dst[x] = static_cast<float>(row[x * image.channels + src]) / 255.0f;
    }
    std::vector<float> resized = resize_bilinear_pil(plane.data(), image.height, image.width, size, size);
    float* o = out + static_cast<size_t>(c) * size * size;
    for (size_t i = 0; i < resized.size(); ++i) o[i] = (resized[i] - mean[c]) / std[c];
  }
}

namespace {
struct LinearTaps {
  std::vector<int> i0, i1;
  std::vector<float> w0, w1;
};

// detector._linear_taps: positions in float64, weights rounded to float32.
LinearTaps linear_taps(int n_in, int n_out) {
  LinearTaps t;
  double ratio = static_cast<double>(n_in) / n_out;
  for (int i = 0; i < n_out; ++i) {
    double x = (i + 0.5) * ratio - 0.5;
    x = std::min(std::max(x, 0.0), static_cast<double>(n_in - 1));
    int lo = static_cast<int>(std::floor(x));
    float w1 = static_cast<float>(x - lo);
    t.i0.push_back(lo);
    t.i1.push_back(std::min(lo + 1, n_in - 1));
    t.w1.push_back(w1);
    t.w0.push_back(1.0f - w1);
  }
  return t;
}
}  // namespace

std::vector<float> resize_map(const float* in, int h, int w, int out_h, int out_w) {
  if (h == out_h && w == out_w) return std::vector<float>(in, in + static_cast<size_t>(h) * w);
  LinearTaps r = linear_taps(h, out_h), c = linear_taps(w, out_w);
  std::vector<float> rows(static_cast<size_t>(out_h) * w), out(static_cast<size_t>(out_h) * out_w);
  for (int y = 0; y < out_h; ++y) {
    const float* a = in + static_cast<size_t>(r.i0[y]) * w;
    const float* b = in + static_cast<size_t>(r.i1[y]) * w;
    for (int x = 0; x < w; ++x) rows[static_cast<size_t>(y) * w + x] = a[x] * r.w0[y] + b[x] * r.w1[y];
  }
  for (int y = 0; y < out_h; ++y) {
    const float* row = &rows[static_cast<size_t>(y) * w];
    for (int x = 0; x < out_w; ++x) out[static_cast<size_t>(y) * out_w + x] = row[c.i0[x]] * c.w0[x] + row[c.i1[x]] * c.w1[x];
  }
  return out;
}

}  // namespace aminet
