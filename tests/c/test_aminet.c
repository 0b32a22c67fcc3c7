/* The C ABI against the Python Detector's test vectors (docs/c-api.md, "Test vectors"), plus what only a
 * C caller can get wrong: NULL pointers, bad sizes and strides, unknown options, a newer header, and 8
 * threads sharing one detector (bit-identical to serial use).
 *
 * Usage: AMINET_TEST_VECTORS=<dir>/vectors.txt aminet_c_test   (tests/test_c_api.py writes them and runs
 * this under ctest). Prints one line per failed check and exits 1 if any failed.
 *
 * Tolerances (docs/c-api.md): scores and normalised scores within 1e-5 relative; maps within 1e-5 of
 * the map's maximum plus 1e-5 relative; decisions identical unless the normalised score is within 1e-5
 * of 1; token masks identical; pixel masks identical except where the map lies within the map
 * tolerance of the pixel threshold.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aminet/aminet.h"

static int failures = 0, checks = 0;

#define CHECK(cond, ...)                                   \
  do {                                                     \
    ++checks;                                              \
    if (!(cond)) {                                         \
      ++failures;                                          \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                        \
      fprintf(stderr, "\n");                               \
    }                                                      \
  } while (0)

/* status `got` is `want` and the thread's message contains `fragment` */
static void expect_error(aminet_status got, aminet_status want, const char* fragment, const char* what) {
  CHECK(got == want, "%s: status %s, want %s (message: %s)", what, aminet_status_name(got), aminet_status_name(want),
        aminet_last_error());
  if (got != AMINET_OK) {
    CHECK(strstr(aminet_last_error(), fragment) != NULL, "%s: message '%s' lacks '%s'", what, aminet_last_error(),
          fragment);
  }
}

static aminet_status status_of(const char* name) {
  for (int s = AMINET_OK; s <= AMINET_ERR_INTERNAL; ++s)
    if (strcmp(aminet_status_name((aminet_status)s), name) == 0) return (aminet_status)s;
  fprintf(stderr, "unknown status name %s in the vectors\n", name);
  exit(2);
}

static void* read_file(const char* path, size_t* size) {
  FILE* f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    exit(2);
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  void* data = malloc(n > 0 ? (size_t)n : 1);
  if (fread(data, 1, (size_t)n, f) != (size_t)n) exit(2);
  fclose(f);
  *size = (size_t)n;
  return data;
}

static int close_rel(double a, double b, double rel) { return fabs(a - b) <= rel * fabs(b); }

/* ---- the vectors ---------------------------------------------------------------------------------- */
#define MAX_FRAMES 64
typedef struct {
  char name[64];
  void* data;
  aminet_image image;
} frame;

static frame frames[MAX_FRAMES];
static int n_frames = 0;

static const frame* find_frame(const char* name) {
  for (int i = 0; i < n_frames; ++i)
    if (strcmp(frames[i].name, name) == 0) return &frames[i];
  fprintf(stderr, "unknown frame %s in the vectors\n", name);
  exit(2);
}

/* the text after the `skip`-th space of `line` (the message fragment at the end of a record) */
static const char* rest(const char* line, int skip) {
  for (int i = 0; i < skip && line; ++i) {
    line = strchr(line, ' ');
    if (line) ++line;
  }
  return line ? line : "";
}

static void check_ok(const aminet_result* r, const char* call, const char* line) {
  int index, anomaly, w, h;
  double score, normalized, image_thr, pixel_thr;
  char map_file[1024], token_file[1024];
  if (sscanf(line, "ok %d %lf %lf %d %lf %lf %d %d %1023s %1023s", &index, &score, &normalized, &anomaly, &image_thr,
             &pixel_thr, &w, &h, map_file, token_file) != 10) {
    fprintf(stderr, "bad vector line: %s\n", line);
    exit(2);
  }
  CHECK(r->status == AMINET_OK, "%s[%d]: status %s (%s), want OK", call, index, aminet_status_name(r->status), r->message);
  if (r->status != AMINET_OK) return;
  CHECK(close_rel(r->score, score, 1e-5), "%s[%d]: score %.9g, Python %.9g", call, index, r->score, score);
  CHECK(close_rel(r->normalized_score, normalized, 1e-5), "%s[%d]: normalized %.9g, Python %.9g", call, index,
        r->normalized_score, normalized);
  if (fabs(normalized - 1.0) > 1e-5)
    CHECK(r->is_anomaly == anomaly, "%s[%d]: is_anomaly %d, Python %d", call, index, r->is_anomaly, anomaly);
  CHECK(close_rel(r->image_threshold, image_thr, 1e-12) && close_rel(r->pixel_threshold, pixel_thr, 1e-12),
        "%s[%d]: thresholds %.17g %.17g, Python %.17g %.17g", call, index, r->image_threshold, r->pixel_threshold,
        image_thr, pixel_thr);
  CHECK(r->map_width == w && r->map_height == h, "%s[%d]: map %dx%d, Python %dx%d", call, index, r->map_width,
        r->map_height, w, h);
  size_t size;
  uint8_t* tokens = read_file(token_file, &size);
  CHECK((size_t)r->grid_size * r->grid_size == size && memcmp(tokens, r->token_mask, size) == 0,
        "%s[%d]: token mask differs from Python's", call, index);
  free(tokens);
  if (w == 0 || r->map_width != w || r->map_height != h) {
    CHECK(w != 0 || (r->anomaly_map == NULL && r->mask == NULL), "%s[%d]: a map without being asked", call, index);
    return;
  }
  float* want = read_file(map_file, &size);
  size_t n = (size_t)w * h;
  CHECK(size == n * sizeof(float), "%s[%d]: map file size", call, index);
  float peak = 0;
  for (size_t k = 0; k < n; ++k) peak = fmaxf(peak, fabsf(want[k]));
  double atol = 1e-5 * peak;
  size_t bad_map = 0, bad_mask = 0;
  for (size_t k = 0; k < n; ++k) {
    double tol = atol + 1e-5 * fabs(want[k]);
    if (fabs(r->anomaly_map[k] - want[k]) > tol) ++bad_map;
    if (fabs(want[k] - (float)r->pixel_threshold) > tol && r->mask[k] != (want[k] > (float)r->pixel_threshold)) ++bad_mask;
  }
  CHECK(bad_map == 0, "%s[%d]: %zu map values beyond tolerance", call, index, bad_map);
  CHECK(bad_mask == 0, "%s[%d]: %zu mask pixels differ away from the threshold", call, index, bad_mask);
  free(want);
}

static void run_vectors(const char* path, char* bundle, size_t bundle_size) {
  size_t size;
  char* text = read_file(path, &size);
  text = realloc(text, size + 1);
  text[size] = 0;
  aminet_detector* det = NULL;
  aminet_results* results = NULL;
  aminet_status call_status = AMINET_OK;
  char call[64] = "";
  int n_calls = 0, n_results = 0, n_creates = 0;
  for (char* line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    if (strncmp(line, "bundle ", 7) == 0) {
      snprintf(bundle, bundle_size, "%s", line + 7);
      aminet_status s = aminet_detector_create(bundle, "auto", NULL, &det);
      CHECK(s == AMINET_OK, "create on %s: %s", bundle, aminet_last_error());
      if (s != AMINET_OK) exit(1);
    } else if (strncmp(line, "frame ", 6) == 0) {
      frame* f = &frames[n_frames++];
      char file[1024], order[8];
      aminet_image* im = &f->image;
      long long stride;
      sscanf(line, "frame %63s %1023s %d %d %lld %d %7s", f->name, file, &im->width, &im->height, &stride,
             &im->channels, order);
      im->stride = stride;
      im->order = strcmp(order, "bgr") == 0 ? AMINET_BGR : AMINET_RGB;
      f->data = read_file(file, &size);
      im->data = f->data;
    } else if (strncmp(line, "call ", 5) == 0) {
      char map[16], threshold[64], names[MAX_FRAMES][64];
      double sensitivity, pixel;
      int n, used;
      sscanf(line, "call %63s %15s %63s %lf %lf %d%n", call, map, threshold, &sensitivity, &pixel, &n, &used);
      aminet_image images[MAX_FRAMES];
      const char* p = line + used;
      for (int i = 0; i < n; ++i) {
        int step;
        sscanf(p, " %63s%n", names[i], &step);
        p += step;
        images[i] = find_frame(names[i])->image;
      }
      aminet_predict_params params;
      aminet_predict_params_init(&params);
      params.map = strcmp(map, "model") == 0 ? AMINET_MAP_MODEL : strcmp(map, "none") == 0 ? AMINET_MAP_NONE : AMINET_MAP_INPUT;
      if (strcmp(threshold, "f1") == 0) params.threshold = AMINET_THRESHOLD_F1;
      if (strcmp(threshold, "normal") == 0) params.threshold = AMINET_THRESHOLD_NORMAL;
      if (strncmp(threshold, "value:", 6) == 0) {
        params.threshold = AMINET_THRESHOLD_VALUE;
        params.threshold_value = strtod(threshold + 6, NULL);
      }
      params.sensitivity = sensitivity;
      params.pixel_threshold = pixel;
      aminet_results_release(results);
      results = NULL;
      call_status = aminet_predict(det, images, (size_t)n, &params, &results);
      ++n_calls;
    } else if (strncmp(line, "call_error ", 11) == 0) {
      char status[64];
      sscanf(line, "call_error %63s", status);
      expect_error(call_status, status_of(status), rest(line, 2), call);
      CHECK(results == NULL, "%s: results despite the error", call);
    } else if (strncmp(line, "error ", 6) == 0 || strncmp(line, "ok ", 3) == 0) {
      int index;
      sscanf(line, "%*s %d", &index);
      CHECK(call_status == AMINET_OK, "%s: call failed: %s", call, aminet_last_error());
      const aminet_result* r = aminet_results_get(results, (size_t)index);
      if (!r) continue;
      ++n_results;
      if (line[0] == 'o') {
        check_ok(r, call, line);
      } else {
        char status[64];
        sscanf(line, "error %*d %63s", status);
        CHECK(r->status == (int)status_of(status), "%s[%d]: status %s, want %s", call, index,
              aminet_status_name(r->status), status);
        CHECK(strstr(r->message, rest(line, 3)) != NULL, "%s[%d]: message '%s' lacks '%s'", call, index, r->message,
              rest(line, 3));
        CHECK(isnan(r->score) && r->anomaly_map == NULL && r->token_mask == NULL, "%s[%d]: values on an error", call, index);
      }
    } else if (strncmp(line, "create ", 7) == 0) {
      char dir[1024], backend[64], status[64];
      sscanf(line, "create %1023s %63s %63s", dir, backend, status);
      aminet_detector* bad = (aminet_detector*)&n_creates; /* must be reset to NULL */
      expect_error(aminet_detector_create(dir, backend, NULL, &bad), status_of(status), rest(line, 4), dir);
      CHECK(bad == NULL, "%s: a detector despite the error", dir);
      ++n_creates;
    }
  }
  aminet_results_release(results);
  aminet_detector_release(det);
  printf("vectors: %d calls, %d frame results, %d refused bundles\n", n_calls, n_results, n_creates);
  CHECK(n_calls > 0 && n_results > 0 && n_creates > 0, "the vectors are incomplete");
  free(text);
}

/* ---- what only C callers can get wrong ------------------------------------------------------------- */
static void check_api(const char* bundle) {
  CHECK(aminet_abi_version() == AMINET_ABI_VERSION, "ABI version %d", aminet_abi_version());
  CHECK(strlen(aminet_version()) > 0, "empty version");
  aminet_detector* det = NULL;
  expect_error(aminet_detector_create_abi(AMINET_ABI_VERSION + 1, bundle, "auto", NULL, &det),
               AMINET_ERR_VERSION_MISMATCH, "is ABI version 2 but this libaminet", "newer header");
  CHECK(strstr(aminet_last_error(), "is ABI version 1") != NULL, "mismatch message names one version: %s",
        aminet_last_error());
  expect_error(aminet_detector_create(NULL, "auto", NULL, &det), AMINET_ERR_INVALID_ARGUMENT, "bundle_dir is NULL", "NULL bundle");
  expect_error(aminet_detector_create(bundle, NULL, NULL, &det), AMINET_ERR_INVALID_ARGUMENT, "backend is NULL", "NULL backend");
  expect_error(aminet_detector_create(bundle, "auto", NULL, NULL), AMINET_ERR_INVALID_ARGUMENT, "out is NULL", "NULL out");
  expect_error(aminet_detector_create(bundle, "tensorrt", NULL, &det), AMINET_ERR_BACKEND_UNAVAILABLE,
               "not built into this library", "tensorrt");

  aminet_options* opts = NULL;
  CHECK(aminet_options_create(&opts) == AMINET_OK, "options_create");
  expect_error(aminet_options_set(opts, "bogus", "1"), AMINET_ERR_INVALID_ARGUMENT, "unknown option 'bogus'", "bad key");
  expect_error(aminet_options_set(opts, "threads", "two"), AMINET_ERR_INVALID_ARGUMENT,
               "option 'threads' must be an integer", "bad threads");
  expect_error(aminet_options_set(opts, "sensitivity", "1.5"), AMINET_ERR_INVALID_ARGUMENT, "sensitivity must be in [0, 1]",
               "bad sensitivity");
  expect_error(aminet_options_set(opts, "threshold", "median"), AMINET_ERR_INVALID_ARGUMENT,
               "threshold must be 'normal', 'f1' or a number", "bad threshold");
  expect_error(aminet_options_set(NULL, "threads", "1"), AMINET_ERR_INVALID_ARGUMENT, "options is NULL", "NULL options");
  expect_error(aminet_options_set(opts, "threads", NULL), AMINET_ERR_INVALID_ARGUMENT, "value is NULL", "NULL value");
  CHECK(aminet_options_set(opts, "precision", "fp8") == AMINET_OK, "precision is checked at create");
  expect_error(aminet_detector_create(bundle, "openvino", opts, &det), AMINET_ERR_INVALID_ARGUMENT,
               "precision must be one of fp32, bf16, int8", "bad precision");
  CHECK(aminet_options_set(opts, "precision", "int8") == AMINET_OK, "precision int8");
  expect_error(aminet_detector_create(bundle, "openvino", opts, &det), AMINET_ERR_BUNDLE,
               "model_int8_static.onnx not found: export it with `aminet-edge export", "int8 graph not exported");
  CHECK(strstr(aminet_last_error(), "--precision int8 --calibration-data DATA`") != NULL, "int8 hint: %s",
        aminet_last_error());
  CHECK(aminet_options_set(opts, "precision", "fp32") == AMINET_OK, "precision fp32");
  CHECK(aminet_options_set(opts, "device", "NOSUCHDEVICE") == AMINET_OK, "device");
  expect_error(aminet_detector_create(bundle, "openvino", opts, &det), AMINET_ERR_BACKEND_UNAVAILABLE,
               "OpenVINO device 'NOSUCHDEVICE' is not present here (available: CPU", "absent device");
  CHECK(aminet_options_set(opts, "device", "cpu") == AMINET_OK, "device cpu");
  CHECK(aminet_options_set(opts, "threads", "1") == AMINET_OK, "threads 1");
  CHECK(aminet_detector_create(bundle, "openvino", opts, &det) == AMINET_OK, "create: %s", aminet_last_error());
  aminet_options_release(opts);
  if (!det) return;
  const char* json = NULL;
  CHECK(aminet_detector_describe(det, &json) == AMINET_OK && strstr(json, "\"backend\":\"openvino\""), "describe: %s",
        json ? json : aminet_last_error());

  const frame* f = find_frame("rgb1");
  aminet_image good = f->image, images[2];
  aminet_results* res = NULL;
  expect_error(aminet_predict(NULL, &good, 1, NULL, &res), AMINET_ERR_INVALID_ARGUMENT, "detector is NULL", "NULL detector");
  expect_error(aminet_predict(det, NULL, 1, NULL, &res), AMINET_ERR_INVALID_ARGUMENT, "images is NULL", "NULL images");
  expect_error(aminet_predict(det, &good, 0, NULL, &res), AMINET_ERR_INVALID_ARGUMENT, "empty batch", "no images");
  expect_error(aminet_predict(det, &good, 1, NULL, NULL), AMINET_ERR_INVALID_ARGUMENT, "out is NULL", "NULL results");
  aminet_predict_params params;
  aminet_predict_params_init(&params);
  params.map = 7;
  expect_error(aminet_predict(det, &good, 1, &params, &res), AMINET_ERR_INVALID_ARGUMENT, "params.map is 7", "bad map");
  aminet_predict_params_init(&params);
  params.sensitivity = 1.5;
  expect_error(aminet_predict(det, &good, 1, &params, &res), AMINET_ERR_INVALID_ARGUMENT, "sensitivity must be in [0, 1]",
               "bad sensitivity");

  struct {
    aminet_image image;
    const char* fragment;
  } bad[] = {
      {good, "input[1]: data is NULL"},
      {good, "input[1]: channels is 2: expected 1 (grey), 3 (colour) or 4"},
      {good, "input[1]: stride is"},
      {good, "input[1]: order is 7"},
      {good, "input[1]: image is 0x"},
      {good, "input[1]: image is 150x7 px (WxH); each side must be >= 8 px"},
  };
  bad[0].image.data = NULL;
  bad[1].image.channels = 2;
  bad[2].image.stride = good.width * 3 - 1;
  bad[3].image.order = 7;
  bad[4].image.width = 0;
  bad[5].image.height = 7;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    images[0] = good;
    images[1] = bad[i].image;
    aminet_status s = aminet_predict(det, images, 2, NULL, &res);
    CHECK(s == AMINET_OK, "batch with a bad frame: %s", aminet_last_error());
    const aminet_result* r0 = aminet_results_get(res, 0);
    const aminet_result* r1 = aminet_results_get(res, 1);
    CHECK(r0 && r0->status == AMINET_OK, "the good frame beside a bad one");
    CHECK(r1 && r1->status == AMINET_ERR_INVALID_ARGUMENT && strstr(r1->message, bad[i].fragment),
          "bad frame %zu: '%s' lacks '%s'", i, r1 ? r1->message : "(none)", bad[i].fragment);
    CHECK(aminet_results_get(res, 2) == NULL && aminet_results_count(res) == 2, "results beyond the count");
    aminet_results_release(res);
    res = NULL;
  }
  CHECK(aminet_results_count(NULL) == 0 && aminet_results_get(NULL, 0) == NULL, "NULL results");
  aminet_results_release(NULL);
  aminet_options_release(NULL);
  aminet_detector_release(NULL);
  aminet_detector_release(det);
}

/* ---- threads -------------------------------------------------------------------------------------- */
#define THREADS 8
#define ROUNDS 3
typedef struct {
  aminet_detector* det;
  aminet_image images[6];
  float* maps[6];
  double scores[6];
  int mismatches;
  int failed;
} worker;

static void* work(void* arg) {
  worker* w = arg;
  for (int round = 0; round < ROUNDS; ++round) {
    aminet_results* res = NULL;
    if (aminet_predict(w->det, w->images, 6, NULL, &res) != AMINET_OK) {
      ++w->failed;
      continue;
    }
    for (int i = 0; i < 6; ++i) {
      const aminet_result* r = aminet_results_get(res, (size_t)i);
      size_t n = (size_t)r->map_width * r->map_height;
      if (w->maps[i] == NULL) { /* the serial reference */
        w->maps[i] = malloc(n * sizeof(float));
        memcpy(w->maps[i], r->anomaly_map, n * sizeof(float));
        w->scores[i] = r->score;
      } else if (r->score != w->scores[i] || memcmp(r->anomaly_map, w->maps[i], n * sizeof(float)) != 0) {
        ++w->mismatches;
      }
    }
    aminet_results_release(res);
  }
  /* this thread's failure leaves other threads' messages alone */
  aminet_detector* none = NULL;
  aminet_detector_create("/nonexistent/thread-bundle", "auto", NULL, &none);
  return NULL;
}

static void check_threads(const char* bundle) {
  aminet_detector* det = NULL;
  CHECK(aminet_detector_create(bundle, "auto", NULL, &det) == AMINET_OK, "create: %s", aminet_last_error());
  if (!det) return;
  worker serial = {det, {{0}}, {0}, {0}, 0, 0}, workers[THREADS];
  for (int i = 0; i < 6; ++i) {
    char name[16];
    snprintf(name, sizeof name, "rgb%d", i);
    serial.images[i] = find_frame(name)->image;
  }
  work(&serial); /* fills the reference */
  aminet_detector* none = NULL;
  aminet_detector_create(NULL, "auto", NULL, &none); /* this thread's own message */
  pthread_t threads[THREADS];
  for (int t = 0; t < THREADS; ++t) {
    workers[t] = serial;
    pthread_create(&threads[t], NULL, work, &workers[t]);
  }
  int mismatches = 0, failed = 0;
  for (int t = 0; t < THREADS; ++t) {
    pthread_join(threads[t], NULL);
    mismatches += workers[t].mismatches;
    failed += workers[t].failed;
  }
  CHECK(failed == 0, "%d predict calls failed in threads", failed);
  CHECK(mismatches == 0, "%d of %d results from %d threads differ bitwise from serial use", mismatches,
        THREADS * ROUNDS * 6, THREADS);
  CHECK(strstr(aminet_last_error(), "bundle_dir is NULL") != NULL, "another thread's error leaked: %s", aminet_last_error());
  for (int i = 0; i < 6; ++i) free(serial.maps[i]);
  aminet_detector_release(det);
  printf("threads: %d threads x %d rounds x 6 frames on one detector\n", THREADS, ROUNDS);
}

int main(void) {
  const char* vectors = getenv("AMINET_TEST_VECTORS");
  if (!vectors) {
    fprintf(stderr, "set AMINET_TEST_VECTORS to the vectors.txt written by tests/test_c_api.py\n");
    return 2;
  }
  printf("libaminet %s (ABI %d), backends: %s\n", aminet_version(), aminet_abi_version(), aminet_backends());
  char bundle[1024] = "";
  run_vectors(vectors, bundle, sizeof bundle);
  check_api(bundle);
  check_threads(bundle);
  for (int i = 0; i < n_frames; ++i) free(frames[i].data);
  printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
