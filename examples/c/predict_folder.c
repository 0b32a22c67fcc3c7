/* Load a bundle, predict every PNG of a folder (sorted by name), print one JSON line per image:
 *   {"file": "a.png", "score": ..., "normalized_score": ..., "is_anomaly": true, "anomalous_pixel_fraction": ...}
 * or {"file": "b.png", "error": "..."} for an image that cannot be read or predicted.
 * Usage: predict_folder BUNDLE FOLDER [BACKEND]   (exit 1 if any image failed, 2 on a setup error) */
#include <dirent.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aminet/aminet.h"

static int by_name(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

static void print_string(const char* s) { /* a JSON string */
  putchar('"');
  for (; *s; ++s) {
    if (*s == '"' || *s == '\\') putchar('\\');
    if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
    else putchar(*s);
  }
  putchar('"');
}

/* 8-bit RGB pixels of a PNG (malloc'ed), or NULL with the reason in *error */
static unsigned char* read_png(const char* path, png_image* image, const char** error) {
  memset(image, 0, sizeof *image);
  image->version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(image, path)) {
    *error = image->message;
    return NULL;
  }
  image->format = PNG_FORMAT_RGB;
  unsigned char* pixels = malloc(PNG_IMAGE_SIZE(*image));
  if (!pixels || !png_image_finish_read(image, NULL, pixels, 0, NULL)) {
    *error = pixels ? image->message : "out of memory";
    free(pixels);
    png_image_free(image);
    return NULL;
  }
  return pixels;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s BUNDLE FOLDER [BACKEND]\n", argv[0]);
    return 2;
  }
  aminet_detector* det = NULL;
  if (aminet_detector_create(argv[1], argc > 3 ? argv[3] : "auto", NULL, &det) != AMINET_OK) {
    fprintf(stderr, "cannot load %s: %s\n", argv[1], aminet_last_error());
    return 2;
  }
  DIR* dir = opendir(argv[2]);
  if (!dir) {
    fprintf(stderr, "cannot open folder %s\n", argv[2]);
    aminet_detector_release(det);
    return 2;
  }
  char** names = NULL;
  size_t n = 0;
  for (struct dirent* e; (e = readdir(dir));) {
    size_t len = strlen(e->d_name);
    if (len > 4 && strcmp(e->d_name + len - 4, ".png") == 0) {
      names = realloc(names, (n + 1) * sizeof *names);
      names[n++] = strdup(e->d_name);
    }
  }
  closedir(dir);
  qsort(names, n, sizeof *names, by_name);
  int failed = 0;
  for (size_t i = 0; i < n; ++i) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", argv[2], names[i]);
    png_image png;
    const char* error = NULL;
    unsigned char* pixels = read_png(path, &png, &error);
    aminet_results* results = NULL;
    if (pixels) {
      aminet_image frame = {pixels, (int32_t)png.width, (int32_t)png.height, (int64_t)png.width * 3, 3, AMINET_RGB};
      if (aminet_predict(det, &frame, 1, NULL, &results) != AMINET_OK) error = aminet_last_error();
    }
    printf("{\"file\": ");
    print_string(names[i]);
    if (results) {
      const aminet_result* r = aminet_results_get(results, 0);
      size_t flagged = 0, pixels_n = (size_t)r->map_width * r->map_height;
      for (size_t k = 0; k < pixels_n; ++k) flagged += r->mask[k];
      printf(", \"score\": %.9g, \"normalized_score\": %.9g, \"is_anomaly\": %s, \"anomalous_pixel_fraction\": %.6g}\n",
             r->score, r->normalized_score, r->is_anomaly ? "true" : "false", (double)flagged / pixels_n);
    } else {
      printf(", \"error\": ");
      print_string(error ? error : "unknown");
      printf("}\n");
      failed = 1;
    }
    aminet_results_release(results);
    free(pixels);
    free(names[i]);
  }
  free(names);
  aminet_detector_release(det);
  return failed;
}
