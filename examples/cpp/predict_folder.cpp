// Load a bundle, predict every PNG of a folder (sorted by name), print one JSON line per image, as
// examples/c/predict_folder.c does, through the C++ wrapper aminet.hpp.
// Usage: predict_folder BUNDLE FOLDER [BACKEND]   (exit 1 if any image failed, 2 on a setup error)
#include <png.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "aminet/aminet.hpp"

namespace fs = std::filesystem;

// 8-bit RGB pixels of a PNG; throws std::runtime_error naming the problem.
static std::vector<uint8_t> read_png(const fs::path& path, int& width, int& height) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str())) throw std::runtime_error(image.message);
  image.format = PNG_FORMAT_RGB;
  std::vector<uint8_t> pixels(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, pixels.data(), 0, nullptr)) {
    std::string message = image.message;
    png_image_free(&image);
    throw std::runtime_error(message);
  }
  width = static_cast<int>(image.width);
  height = static_cast<int>(image.height);
  return pixels;
}

static std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " BUNDLE FOLDER [BACKEND]\n";
    return 2;
  }
  std::vector<fs::path> files;
  try {
    for (const auto& entry : fs::directory_iterator(argv[2]))
      if (entry.path().extension() == ".png") files.push_back(entry.path());
  } catch (const fs::filesystem_error& exc) {
    std::cerr << "cannot list " << argv[2] << ": " << exc.what() << "\n";
    return 2;
  }
  std::sort(files.begin(), files.end());
  try {
    aminet::Detector detector(argv[1], argc > 3 ? argv[3] : "auto");
    int failed = 0;
    for (const auto& file : files) {
      std::string line = "{\"file\": " + quoted(file.filename().string());
      try {
        int width = 0, height = 0;
        std::vector<uint8_t> pixels = read_png(file, width, height);
        aminet::Results results = detector.predict(aminet::frame(pixels.data(), width, height, 3));
        const aminet_result& r = results[0];
        size_t flagged = std::count(r.mask, r.mask + size_t(r.map_width) * r.map_height, uint8_t(1));
        char numbers[256];
        std::snprintf(numbers, sizeof numbers,
                      ", \"score\": %.9g, \"normalized_score\": %.9g, \"is_anomaly\": %s, \"anomalous_pixel_fraction\": %.6g}",
                      r.score, r.normalized_score, r.is_anomaly ? "true" : "false",
                      double(flagged) / (double(r.map_width) * r.map_height));
        line += numbers;
      } catch (const std::exception& exc) {  // aminet::Error (status + message) or an unreadable PNG
        line += ", \"error\": " + quoted(exc.what()) + "}";
        failed = 1;
      }
      std::cout << line << "\n";
    }
    return failed;
  } catch (const aminet::Error& exc) {
    std::cerr << "cannot load " << argv[1] << ": " << exc.what() << "\n";
    return 2;
  }
}
