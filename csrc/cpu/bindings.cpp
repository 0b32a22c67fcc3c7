// pybind11 module aminet_edge._cpu_kernels: numpy (or any buffer / __array__ object, e.g. a CPU torch
// tensor) in, numpy out. Inputs must be C-contiguous float32 or float16 (fp16 is widened to float32
// inside the kernels, no copy); the Python wrapper aminet_edge/ops/cpu.py makes them so. The GIL is
// released while the OpenMP kernels run.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <string>

#include "aminet/nearest_distance.h"
#include "aminet/score_map.h"

namespace py = pybind11;

namespace aminet {
namespace cpu {
// csrc/cpu/adaptive_mask.cpp
void adaptive_mask(const void* tokens, const void* centers, bool half, int64_t B, int64_t L, int64_t P, int64_t D,
                   float lam, bool* mask, float* min_dist, int64_t* assign);
// csrc/cpu/score_map.cpp
void score_map(const void* feat, const void* recon, bool half, int64_t B, int64_t C, int64_t h, int64_t w,
               const float* a_h, int64_t H, const float* a_w, int64_t W, const float* token_map, int64_t gh,
               int64_t gw, const float* a_hg, const float* a_wg, float token_weight, bool use_max, float* amap,
               float* score);
// csrc/cpu/nearest_distance.cpp
void nearest_distance(const float* queries, const void* bank, bool half, int64_t N, int64_t M, int64_t C,
                      float* out, int64_t* index);
int nearest_blocking(int* mr, int* nr);
}  // namespace cpu
}  // namespace aminet

namespace {

// Any buffer / __array__ object (numpy array, CPU torch tensor without grad) as a numpy array, no copy
// when it already is one or shares memory.
py::array as_array(const py::object& obj, const char* name) {
  py::array a = py::array::ensure(obj);
  if (!a) throw py::type_error(std::string(name) + " must be an array (numpy, or a CPU tensor without grad)");
  return a;
}

// True for float16, false for float32; anything else (or a non-contiguous array) is a TypeError.
bool is_half(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style))
    throw py::type_error(std::string(name) + " must be C-contiguous (np.ascontiguousarray)");
  const py::dtype dt = a.dtype();
  if (dt.kind() == 'f' && dt.itemsize() == 4) return false;
  if (dt.kind() == 'f' && dt.itemsize() == 2) return true;
  throw py::type_error(std::string(name) + " must be float32 or float16, got " + std::string(py::str(dt)));
}

py::tuple adaptive_mask(const py::object& tokens_obj, const py::object& centers_obj, float lam) {
  const py::array tokens = as_array(tokens_obj, "tokens"), centers = as_array(centers_obj, "centers");
  if (tokens.ndim() != 3 || centers.ndim() != 3)
    throw py::value_error("tokens must be (B, L, D) and centers (B, P, D)");
  const int64_t B = tokens.shape(0), L = tokens.shape(1), D = tokens.shape(2), P = centers.shape(1);
  if (centers.shape(0) != B || centers.shape(2) != D)
    throw py::value_error("centers must be (B, P, D) with the tokens' B and D");
  if (P < 1 || D < 1) throw py::value_error("need at least one centre and D >= 1");
  const bool half = is_half(tokens, "tokens");
  if (is_half(centers, "centers") != half) throw py::type_error("tokens and centers must have the same dtype");
  py::array_t<bool> mask({B, L});
  py::array_t<float> min_dist({B, L});
  py::array_t<int64_t> assign({B, L});
  const void* t = tokens.data();
  const void* c = centers.data();
  bool* m = mask.mutable_data();
  float* d = min_dist.mutable_data();
  int64_t* a = assign.mutable_data();
  {
    py::gil_scoped_release release;
    aminet::cpu::adaptive_mask(t, c, half, B, L, P, D, lam, m, d, a);
  }
  return py::make_tuple(mask, min_dist, assign);
}

py::object nearest_distance(const py::object& queries_obj, const py::object& bank_obj, bool return_index) {
  const py::array queries = as_array(queries_obj, "queries"), bank = as_array(bank_obj, "bank");
  if (queries.ndim() != 2 || bank.ndim() != 2)
    throw py::value_error("queries must be (N, C) and bank (M, C)");
  const int64_t N = queries.shape(0), C = queries.shape(1), M = bank.shape(0);
  if (bank.shape(1) != C) throw py::value_error("bank must be (M, C) with the queries' C");
  if (M < 1 || C < 1) throw py::value_error("need a non-empty bank and C >= 1");
  if (M > INT32_MAX) throw py::value_error("the bank may hold at most 2^31 - 1 rows");
  if (is_half(queries, "queries")) throw py::type_error("queries must be float32");
  const bool half = is_half(bank, "bank");
  py::array_t<float> out({N});
  py::array_t<int64_t> index({return_index ? N : 0});
  if (N > 0) {
    const float* q = static_cast<const float*>(queries.data());
    const void* b = bank.data();
    float* o = out.mutable_data();
    int64_t* i = return_index ? index.mutable_data() : nullptr;
    py::gil_scoped_release release;
    aminet::cpu::nearest_distance(q, b, half, N, M, C, o, i);
  }
  if (return_index) return py::make_tuple(out, index);
  return out;
}

int64_t nearest_workspace_bytes(int64_t N, int64_t M, int64_t C, int threads) {
  if (N < 1 || M < 1 || C < 1 || threads < 1) throw py::value_error("N, M, C and threads must be >= 1");
  int mr = 0, nr = 0;
  const int64_t group = aminet::cpu::nearest_blocking(&mr, &nr);
  const aminet::NearestPlan plan = aminet::nearest_plan(N, M, C, threads, mr, nr, group);
  return aminet::nearest_workspace_bytes(plan, N, threads);
}

using Matrix = py::array_t<float, py::array::c_style>;

py::tuple score_map(const py::object& feat_obj, const py::object& recon_obj, const Matrix& a_h, const Matrix& a_w,
                    const std::string& image_score, const std::optional<Matrix>& token_map,
                    const std::optional<Matrix>& a_hg, const std::optional<Matrix>& a_wg, float token_weight) {
  const py::array feat = as_array(feat_obj, "feat"), recon = as_array(recon_obj, "recon");
  if (image_score != "std" && image_score != "max")
    throw py::value_error("image_score must be 'std' or 'max', got '" + image_score + "'");
  if (feat.ndim() != 4 || recon.ndim() != 4) throw py::value_error("feat and recon must be (B, C, h, w)");
  for (int k = 0; k < 4; ++k)
    if (feat.shape(k) != recon.shape(k)) throw py::value_error("feat and recon must have the same shape");
  const int64_t B = feat.shape(0), C = feat.shape(1), h = feat.shape(2), w = feat.shape(3);
  if (B < 1 || C < 1 || h < 1 || w < 1) throw py::value_error("feat must have non-zero B, C, h, w");
  if (a_h.ndim() != 2 || a_w.ndim() != 2 || a_h.shape(1) != h || a_w.shape(1) != w)
    throw py::value_error("a_h must be (H, h) and a_w (W, w): smoothing_matrix(h, H, sigma), (w, W, sigma)");
  const int64_t H = a_h.shape(0), W = a_w.shape(0);
  if (H < 1 || W < 1) throw py::value_error("out_hw must be positive");
  const bool half = is_half(feat, "feat");
  if (is_half(recon, "recon") != half) throw py::type_error("feat and recon must have the same dtype");
  const float* tm = nullptr;
  const float* ahg = nullptr;
  const float* awg = nullptr;
  int64_t gh = 0, gw = 0;
  if (token_map) {
    if (token_map->ndim() != 3 || token_map->shape(0) != B || token_map->shape(1) < 1 || token_map->shape(2) < 1)
      throw py::value_error("token_map must be (B, gh, gw) float32 with feat's B and gh, gw >= 1");
    gh = token_map->shape(1);
    gw = token_map->shape(2);
    if (!a_hg || !a_wg || a_hg->ndim() != 2 || a_wg->ndim() != 2 || a_hg->shape(0) != H || a_hg->shape(1) != gh ||
        a_wg->shape(0) != W || a_wg->shape(1) != gw)
      throw py::value_error("a_hg must be (H, gh) and a_wg (W, gw): smoothing_matrix(gh, H, sigma), (gw, W, sigma)");
    if (!std::isfinite(token_weight) || token_weight < 0.0f)
      throw py::value_error("token_weight must be finite and >= 0");
    tm = token_map->data();
    ahg = a_hg->data();
    awg = a_wg->data();
  }
  py::array_t<float> amap({B, H, W});
  py::array_t<float> score({B});
  const void* f = feat.data();
  const void* r = recon.data();
  const float* ah = a_h.data();
  const float* aw = a_w.data();
  float* m = amap.mutable_data();
  float* s = score.mutable_data();
  const bool use_max = image_score == "max";
  {
    py::gil_scoped_release release;
    aminet::cpu::score_map(f, r, half, B, C, h, w, ah, H, aw, W, tm, gh, gw, ahg, awg, token_weight, use_max, m, s);
  }
  return py::make_tuple(amap, score);
}

py::array_t<float> smoothing_matrix(int64_t in_size, int64_t out_size, double sigma) {
  if (in_size < 1 || out_size < 1) throw py::value_error("sizes must be >= 1");
  py::array_t<float> a({out_size, in_size});
  aminet::smoothing_matrix(in_size, out_size, sigma, a.mutable_data());  // fails only for sizes < 1
  return a;
}

}  // namespace

PYBIND11_MODULE(_cpu_kernels, m) {
  m.doc() = "AMI-Net fused ops on the CPU (OpenMP); see aminet_edge/ops/cpu.py for the documented API";
  m.def("adaptive_mask", &adaptive_mask, py::arg("tokens"), py::arg("centers"), py::arg("lam"),
        "tokens (B, L, D), centers (B, P, D) float32/float16 -> mask (B, L) bool, min_dist (B, L) float32, "
        "assign (B, L) int64");
  m.def("score_map", &score_map, py::arg("feat"), py::arg("recon"), py::arg("a_h"), py::arg("a_w"),
        py::arg("image_score") = "std", py::arg("token_map") = py::none(), py::arg("a_hg") = py::none(),
        py::arg("a_wg") = py::none(), py::arg("token_weight") = 0.0f,
        "feat, recon (B, C, h, w) float32/float16; a_h (H, h), a_w (W, w) float32 smoothing matrices; "
        "optional token_map (B, gh, gw) float32 with a_hg (H, gh), a_wg (W, gw), added as token_weight * "
        "a_hg @ token_map @ a_wg^T -> amap (B, H, W) float32, score (B,) float32");
  m.def("nearest_distance", &nearest_distance, py::arg("queries"), py::arg("bank"), py::arg("return_index") = false,
        "queries (N, C) float32, bank (M, C) float32/float16 -> (N,) float32 distance to the nearest bank row "
        "(and with return_index its (N,) int64 row)");
  m.def("nearest_workspace_bytes", &nearest_workspace_bytes, py::arg("n"), py::arg("m"), py::arg("c"),
        py::arg("threads"), "bytes nearest_distance allocates for N queries against M x C with that many threads");
  m.def("smoothing_matrix", &smoothing_matrix, py::arg("in_size"), py::arg("out_size"), py::arg("sigma"),
        "(out_size, in_size) float32 A with A @ m = blur(upsample(m)), as reference.smoothing_matrix");
  m.def("num_threads", []() { return omp_get_max_threads(); }, "OpenMP threads the kernels use");
}
