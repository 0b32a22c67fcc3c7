/* aminet.h - the C ABI of libaminet: load an aminet-edge bundle and predict camera frames, no Python.
 *
 * The behaviour (bundle checks, preprocessing, decision rule) is the Python Detector's; docs/c-api.md
 * is the spec both follow, with the test vectors that check them.
 *
 * Conventions (as ONNX Runtime's and OpenVINO's C APIs):
 * - every object is an opaque handle created by a *_create call and freed by its *_release call
 *   (release accepts NULL);
 * - every call that can fail returns an aminet_status; on failure, aminet_last_error() gives the
 *   message of the calling thread's last failed call (valid until that thread's next failure), and
 *   every output pointer is set to NULL;
 * - a detector may be shared by any number of threads: each concurrent predict call runs on its own
 *   inference request, and results are bit-identical whatever the thread count;
 * - ABI version: aminet_detector_create passes the header's AMINET_ABI_VERSION; a library older than the
 *   header refuses it (AMINET_ERR_VERSION_MISMATCH, naming both versions).
 */
#ifndef AMINET_AMINET_H
#define AMINET_AMINET_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(AMINET_BUILDING_LIBRARY)
#    define AMINET_API __declspec(dllexport)
#  else
#    define AMINET_API __declspec(dllimport)
#  endif
#else
#  define AMINET_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a declaration of this header changes; a library accepts headers up to its own. */
#define AMINET_ABI_VERSION 1

typedef enum aminet_status {
  AMINET_OK = 0,
  AMINET_ERR_INVALID_ARGUMENT = 1,    /* NULL pointer, bad size/stride/channels, bad option or parameter */
  AMINET_ERR_BUNDLE = 2,              /* bundle missing, invalid, tampered with, stale, or uncalibrated */
  AMINET_ERR_BACKEND_UNAVAILABLE = 3, /* unknown backend, one not built into this library, or no device */
  AMINET_ERR_VERSION_MISMATCH = 4,    /* header newer than the library */
  AMINET_ERR_INFERENCE = 5,           /* the backend failed, or the model produced NaN / infinity */
  AMINET_ERR_INTERNAL = 6             /* out of memory or a bug: the message says which */
} aminet_status;

typedef enum aminet_channel_order { AMINET_RGB = 0, AMINET_BGR = 1 } aminet_channel_order;

/* Which anomaly map a result carries. */
typedef enum aminet_map_size {
  AMINET_MAP_INPUT = 0, /* at the input's width x height (bilinear, as the Python Detector) */
  AMINET_MAP_MODEL = 1, /* the model's S x S map (S = the bundle's image size), as the graph outputs it */
  AMINET_MAP_NONE = 2   /* no map and no pixel mask (scores and decision only) */
} aminet_map_size;

/* Which base thresholds a predict call uses (Python Detector's `threshold`). */
typedef enum aminet_threshold {
  AMINET_THRESHOLD_DEFAULT = 0, /* the detector's (option "threshold", default "normal") */
  AMINET_THRESHOLD_NORMAL = 1,  /* calibrated on held-out normal images */
  AMINET_THRESHOLD_F1 = 2,      /* F1-optimal, recorded by `aminet-edge evaluate` */
  AMINET_THRESHOLD_VALUE = 3    /* threshold_value, raw score units */
} aminet_threshold;

/* One 8-bit frame in the caller's memory (never copied beyond the call). */
typedef struct aminet_image {
  const uint8_t* data; /* first byte of the top row */
  int32_t width;       /* pixels */
  int32_t height;      /* pixels */
  int64_t stride;      /* bytes from one row to the next, >= width * channels */
  int32_t channels;    /* 1 (grey), 3 (colour) or 4 (colour + alpha, alpha ignored) */
  int32_t order;       /* aminet_channel_order of colour frames */
} aminet_image;

/* Per-call parameters: start from aminet_predict_params_init (zero is a real sensitivity); NULL means
 * all defaults. */
typedef struct aminet_predict_params {
  int32_t map;            /* aminet_map_size */
  int32_t threshold;      /* aminet_threshold */
  double threshold_value; /* raw image threshold, with AMINET_THRESHOLD_VALUE */
  double sensitivity;     /* in [0, 1]; NaN = the detector's (option "sensitivity", default 0.5) */
  double pixel_threshold; /* raw map units; NaN = the rule's (see docs/c-api.md, "Decision") */
} aminet_predict_params;

/* One frame's outcome; the pointers stay valid until the results are released. */
typedef struct aminet_result {
  int32_t status;            /* aminet_status of this frame; AMINET_OK or why it was not predicted */
  const char* message;       /* "" when OK, else the problem, naming the frame ("input[2]: ...") */
  double score;              /* raw image score (NaN on error) */
  double normalized_score;   /* score / image_threshold: 1.0 = on the threshold */
  int32_t is_anomaly;        /* score > image_threshold */
  double image_threshold;    /* thresholds in force (after sensitivity), raw units */
  double pixel_threshold;
  int32_t map_width;         /* of anomaly_map and mask; 0 with AMINET_MAP_NONE or on error */
  int32_t map_height;
  const float* anomaly_map;  /* map_height x map_width float32, row-major, raw map units */
  const uint8_t* mask;       /* map_height x map_width, 1 where anomaly_map > pixel_threshold */
  int32_t grid_size;         /* side g of the token grid */
  const uint8_t* token_mask; /* g x g, 1 = token the test-time mask chose to inpaint */
} aminet_result;

typedef struct aminet_options aminet_options;
typedef struct aminet_detector aminet_detector;
typedef struct aminet_results aminet_results;

/* The library's version ("0.1.0") and ABI version. */
AMINET_API const char* aminet_version(void);
AMINET_API int32_t aminet_abi_version(void);

/* The message of the calling thread's last failed call ("" if none). */
AMINET_API const char* aminet_last_error(void);

/* A short name of a status code ("AMINET_ERR_BUNDLE"). */
AMINET_API const char* aminet_status_name(aminet_status status);

/* The backends built into this library, comma-separated ("openvino"). */
AMINET_API const char* aminet_backends(void);

/* Detector options, string keys and values (docs/c-api.md lists them): threads, precision, device,
 * batch_size, threshold ("normal", "f1" or a number), sensitivity, pixel_threshold. */
AMINET_API aminet_status aminet_options_create(aminet_options** out);
AMINET_API aminet_status aminet_options_set(aminet_options* options, const char* key, const char* value);
AMINET_API void aminet_options_release(aminet_options* options);

/* Load `bundle_dir` (written by `aminet-edge train` + `export`) on `backend` ("auto", "openvino",
 * "tensorrt"); `options` may be NULL. Checks the bundle as the Python Detector does. */
AMINET_API aminet_status aminet_detector_create_abi(int32_t abi_version, const char* bundle_dir,
                                                    const char* backend, const aminet_options* options,
                                                    aminet_detector** out);
#define aminet_detector_create(bundle_dir, backend, options, out) \
  aminet_detector_create_abi(AMINET_ABI_VERSION, (bundle_dir), (backend), (options), (out))
AMINET_API void aminet_detector_release(aminet_detector* detector);

/* One line of JSON describing the detector (backend, device, precision, image_size, grid_size,
 * thresholds in force); valid until the detector is released. */
AMINET_API aminet_status aminet_detector_describe(const aminet_detector* detector, const char** json);

/* Predict `count` frames. A frame that cannot be used gets its own status and message in the results
 * and the others are predicted (batches of the option batch_size). With count == 1, an unusable frame
 * is the call's status instead (no results), as the Python Detector raises for a single image. */
AMINET_API aminet_status aminet_predict(aminet_detector* detector, const aminet_image* images, size_t count,
                                        const aminet_predict_params* params, aminet_results** out);

AMINET_API size_t aminet_results_count(const aminet_results* results);
/* The i-th frame's result (NULL if results is NULL or i is out of range). */
AMINET_API const aminet_result* aminet_results_get(const aminet_results* results, size_t i);
AMINET_API void aminet_results_release(aminet_results* results);

/* Set every field of *params to its default (map at input size, the detector's thresholds). */
AMINET_API void aminet_predict_params_init(aminet_predict_params* params);

#ifdef __cplusplus
}
#endif

#endif /* AMINET_AMINET_H */
