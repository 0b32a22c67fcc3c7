/* Latency of libaminet's aminet_predict at one batch size, for bench/c_runtime.py.
 * Usage: c_runtime_bench BUNDLE FRAMES WIDTH HEIGHT COUNT BATCH REPEATS THREADS
 *   FRAMES: COUNT packed RGB uint8 frames of WIDTH x HEIGHT, back to back.
 * Each repeat predicts all COUNT frames in calls of BATCH (maps at the input size, as the Python
 * Detector returns them); prints one JSON line: median ms per image over REPEATS after one warm-up
 * repeat, and the process's peak resident memory (getrusage ru_maxrss). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "aminet/aminet.h"

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int by_value(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  if (argc != 9) {
    fprintf(stderr, "usage: %s BUNDLE FRAMES WIDTH HEIGHT COUNT BATCH REPEATS THREADS\n", argv[0]);
    return 2;
  }
  int width = atoi(argv[3]), height = atoi(argv[4]), count = atoi(argv[5]), batch = atoi(argv[6]);
  int repeats = atoi(argv[7]);
  size_t frame_bytes = (size_t)width * height * 3;
  unsigned char* pixels = malloc(frame_bytes * count);
  FILE* f = fopen(argv[2], "rb");
  if (!f || fread(pixels, 1, frame_bytes * count, f) != frame_bytes * count) {
    fprintf(stderr, "cannot read %d frames from %s\n", count, argv[2]);
    return 2;
  }
  fclose(f);
  aminet_options* opts = NULL;
  aminet_options_create(&opts);
  char batch_text[16];
  snprintf(batch_text, sizeof batch_text, "%d", batch);
  if (aminet_options_set(opts, "threads", argv[8]) != AMINET_OK || aminet_options_set(opts, "batch_size", batch_text) != AMINET_OK) {
    fprintf(stderr, "%s\n", aminet_last_error());
    return 2;
  }
  aminet_detector* det = NULL;
  double t0 = now_ms();
  if (aminet_detector_create(argv[1], "openvino", opts, &det) != AMINET_OK) {
    fprintf(stderr, "%s\n", aminet_last_error());
    return 2;
  }
  double load_ms = now_ms() - t0;
  aminet_image* images = calloc((size_t)count, sizeof *images);
  for (int i = 0; i < count; ++i)
    images[i] = (aminet_image){pixels + frame_bytes * i, width, height, (int64_t)width * 3, 3, AMINET_RGB};
  double* ms = calloc((size_t)repeats, sizeof *ms);
  for (int r = -1; r < repeats; ++r) {
    double start = now_ms();
    for (int s = 0; s < count; s += batch) {
      aminet_results* res = NULL;
      int n = count - s < batch ? count - s : batch;
      if (aminet_predict(det, images + s, (size_t)n, NULL, &res) != AMINET_OK) {
        fprintf(stderr, "%s\n", aminet_last_error());
        return 1;
      }
      aminet_results_release(res);
    }
    if (r >= 0) ms[r] = (now_ms() - start) / count;
  }
  qsort(ms, (size_t)repeats, sizeof *ms, by_value);
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  printf("{\"batch\": %d, \"ms_per_image\": %.4f, \"load_ms\": %.1f, \"peak_rss_mib\": %.1f}\n", batch,
         ms[repeats / 2], load_ms, usage.ru_maxrss / 1024.0);
  aminet_detector_release(det);
  aminet_options_release(opts);
  free(ms);
  free(images);
  free(pixels);
  return 0;
}
