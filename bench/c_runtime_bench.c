/* Latency of libaminet's aminet_predict at one batch size, driven by bench/c_runtime.py.
 * Usage: c_runtime_bench BUNDLE FRAMES WIDTH HEIGHT COUNT BATCH THREADS
 *   FRAMES: COUNT packed RGB uint8 frames of WIDTH x HEIGHT, back to back.
 * After loading and one warm-up pass it prints "ready"; then for every line read from stdin it predicts
 * all COUNT frames in calls of BATCH (maps at the input size, as the Python Detector returns them) and
 * prints the ms per image of that pass; at end of input it prints one JSON line with the load time and
 * the process's peak resident memory (getrusage ru_maxrss). The driver alternates passes with the
 * Python side's, so both see the same machine load. */
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

int main(int argc, char** argv) {
  if (argc != 8) {
    fprintf(stderr, "usage: %s BUNDLE FRAMES WIDTH HEIGHT COUNT BATCH THREADS\n", argv[0]);
    return 2;
  }
  int width = atoi(argv[3]), height = atoi(argv[4]), count = atoi(argv[5]), batch = atoi(argv[6]);
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
  if (aminet_options_set(opts, "threads", argv[7]) != AMINET_OK || aminet_options_set(opts, "batch_size", batch_text) != AMINET_OK) {
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
  char line[64];
  for (int pass = -1; pass == -1 || fgets(line, sizeof line, stdin); ++pass) {
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
    if (pass == -1) printf("ready\n");
    else printf("%.4f\n", (now_ms() - start) / count);
    fflush(stdout);
  }
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  printf("{\"load_ms\": %.1f, \"peak_rss_mib\": %.1f}\n", load_ms, usage.ru_maxrss / 1024.0);
  aminet_detector_release(det);
  aminet_options_release(opts);
  free(images);
  free(pixels);
  return 0;
}
