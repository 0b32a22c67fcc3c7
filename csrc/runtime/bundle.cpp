// config.json checks and graph verification, the rules of aminet_edge/bundle.py (messages follow its
// wording, so both implementations name a problem alike; docs/c-api.md lists what the C side checks).
#include "bundle.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "error.h"

namespace aminet {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int SCHEMA_VERSION = 2;
constexpr int LEGACY_SCHEMA = 1;
const char* const CONFIG_FILE = "config.json";
constexpr double MAX_SIGMA = 64.0;  // config.py MAX_SIGMA
constexpr int64_t MAX_IMAGE_SIZE = 1024;  // config.py MAX_IMAGE_SIZE
const std::set<std::string> GRAPH_PRECISIONS = {"fp32", "fp16", "int8", "int8_static"};

std::string reexport(const std::string& bundle) {
  return "re-export the bundle: `aminet-edge export " + bundle + "` (and rebuild its engines)";
}

std::string short_json(const json& value) {
  std::string text = value.dump();
  return text.size() <= 40 ? text : text.substr(0, 37) + "...";
}

// Reads config.json's fields for one `where` (the file's path), each failure one BundleError.
struct Fields {
  std::string where;

  Error fail(const std::string& name, const std::string& problem) const {
    return bundle_error(where + ": field '" + name + "' " + problem);
  }
  const json& object(const std::string& name, const json& value) const {
    if (!value.is_object()) throw fail(name, "must be a JSON object, got " + std::string(value.type_name()) + " " + short_json(value));
    return value;
  }
  double number(const std::string& name, const json& value, bool positive = false) const {
    if (!value.is_number()) throw fail(name, "must be a number, got " + short_json(value));
    double v = value.get<double>();
    if (!std::isfinite(v)) throw fail(name, "must be finite, got " + short_json(value));
    if (positive && !(v > 0)) throw fail(name, "must be > 0, got " + short_json(value));
    return v;
  }
  int64_t integer(const std::string& name, const json& value, std::optional<int64_t> minimum = {}) const {
    if (!value.is_number_integer()) throw fail(name, "must be an integer, got " + short_json(value));
    int64_t v = value.get<int64_t>();
    if (minimum && v < *minimum) throw fail(name, "must be >= " + std::to_string(*minimum) + ", got " + std::to_string(v));
    return v;
  }
  std::string text(const std::string& name, const json& value, const std::set<std::string>& choices = {}) const {
    if (!value.is_string()) throw fail(name, "must be a string, got " + short_json(value));
    std::string v = value.get<std::string>();
    if (!choices.empty() && !choices.count(v)) {
      std::string list;
      for (const auto& c : choices) list += (list.empty() ? "" : ", ") + c;
      throw fail(name, "must be one of " + list + ", got '" + v + "'");
    }
    return v;
  }
  static const json& get(const json& obj, const char* key) {
    static const json null;
    auto it = obj.find(key);
    return it == obj.end() ? null : *it;
  }
};

// `rel` as a path that cannot leave the bundle (no absolute path, no '..', no backslash, no drive).
void inside_path(const std::string& rel, const std::string& what) {
  bool drive = rel.size() >= 2 && std::isalpha(static_cast<unsigned char>(rel[0])) && rel[1] == ':';
  bool dotdot = false;
  std::stringstream parts(rel);
  for (std::string part; std::getline(parts, part, '/');) dotdot = dotdot || part == "..";
  if (rel.empty() || rel[0] == '/' || rel.find('\\') != std::string::npos || dotdot || drive)
    throw bundle_error(what + ": '" + rel + "' must be a path relative to the bundle, inside it (no absolute path, "
                       "no '..'): a bundle is self-contained");
}

bool is_hex64(const std::string& text) {
  return text.size() == 64 && text.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// graph keys of artifacts.onnx: the single graph and the split halves, at each exported precision
const std::set<std::string>& graph_keys() {
  static const std::set<std::string> keys = [] {
    std::set<std::string> out;
    for (const char* part : {"model", "model_a", "model_b"})
      for (const char* precision : {"", "_fp16", "_int8", "_int8_static"}) out.insert(std::string(part) + precision);
    return out;
  }();
  return keys;
}

Record record(const Fields& f, const std::string& name, const json& value, bool derived) {
  const json& obj = f.object(name, value);
  Record r;
  r.path = f.text(name + ".path", Fields::get(obj, "path"));
  inside_path(r.path, f.where + ": field '" + name + ".path'");
  const json& sha = Fields::get(obj, "sha256");
  if (!sha.is_string() || !is_hex64(sha.get<std::string>()))
    throw f.fail(name + ".sha256", "must be a sha256 hex digest, got " + short_json(sha) +
                 " (every file of a bundle is checksummed)");
  r.sha256 = sha.get<std::string>();
  r.bytes = f.integer(name + ".bytes", Fields::get(obj, "bytes"), 0);
  if (derived) {
    r.weights_sha256 = f.text(name + ".weights_sha256", Fields::get(obj, "weights_sha256"));
    f.integer(name + ".input_size", Fields::get(obj, "input_size"));
    const json& bank = Fields::get(obj, "guide_bank");
    if (bank.is_string()) r.guide_bank = bank.get<std::string>();
  }
  return r;
}

// A graph or engine record made for this configuration (input size, mask, score map), as bundle.py.
// `computes`: the settings a file bakes in beyond mask and map (bundle.py COMPUTES), as
// (record key, config field, config value, value of records that predate the key).
struct Computed {
  const char* key;
  const char* field;
  json value;
  json before;
};

void check_made_for(const Fields& f, const std::string& name, const json& rec, int image_size,
                    const std::string& mask, const std::string& score_map, double guide_weight,
                    const std::vector<Computed>& computes) {
  int64_t size = rec["input_size"].get<int64_t>();
  if (size != image_size)
    throw f.fail(name + ".input_size", std::to_string(size) + " differs from model.image_size " +
                 std::to_string(image_size) + ": the file was made for another configuration; " + reexport("RUN"));
  const json& made_mask = Fields::get(rec, "mask");
  std::string made_for = made_mask.is_string() ? made_mask.get<std::string>() : "adaptive";
  if (made_for != mask)
    throw f.fail(name + ".mask", "the file computes the '" + made_for + "' mask but model.mask is '" + mask +
                 "': it was made for another configuration; " + reexport("RUN"));
  const json& made_map = Fields::get(rec, "score_map");
  const json& made_weight = Fields::get(rec, "guide_weight");
  std::string map = made_map.is_string() ? made_map.get<std::string>() : "reconstruction";
  double weight = made_weight.is_number() ? made_weight.get<double>() : 0.0;
  if (map != score_map || weight != guide_weight)
    throw f.fail(name + ".score_map", "the file computes score map '" + map + "' (guide_weight " + made_weight.dump() +
                 ") but score is '" + score_map + "': it was made for another configuration; " + reexport("RUN"));
  for (const Computed& c : computes) {
    const json& made = rec.contains(c.key) ? rec[c.key] : c.before;
    if (made != c.value)
      throw f.fail(name + "." + c.key, std::string("the file computes ") + c.field + " = " + made.dump() +
                   " but config.json says " + c.value.dump() + ": it was made for another configuration "
                   "(config.json edited?); put the value back, or " + reexport("RUN"));
  }
}

std::string os_problem(const std::error_code& ec) {
  if (ec == std::errc::permission_denied)
    return "permission denied (check the file's owner and mode; the process must be able to read it)";
  if (ec == std::errc::too_many_symbolic_link_levels) return "symbolic link loop";
  if (ec == std::errc::no_such_file_or_directory) return "not found";
  if (ec == std::errc::is_a_directory) return "is a directory, not a file";
  return "cannot be read (" + ec.message() + ")";
}

std::string read_file(const fs::path& path, std::error_code& ec) {
  ec.clear();
  if (fs::is_directory(path, ec)) {
    ec = std::make_error_code(std::errc::is_a_directory);
    return {};
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ec = std::error_code(errno ? errno : ENOENT, std::generic_category());
    return {};
  }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// bundle / rel, refused when it resolves (through symbolic links) outside the bundle.
fs::path artifact_path(const std::string& bundle, const std::string& rel) {
  fs::path root(bundle), path = root / rel;
  std::error_code ec;
  fs::path real = fs::weakly_canonical(path, ec);
  fs::path real_root = ec ? fs::path() : fs::weakly_canonical(root, ec);
  if (ec) throw bundle_error(path.string() + ": " + os_problem(ec));
  auto mismatch = std::mismatch(real_root.begin(), real_root.end(), real.begin(), real.end());
  if (mismatch.first != real_root.end())
    throw bundle_error(path.string() + " resolves to " + real.string() + ", outside the bundle " + real_root.string() +
                       ": a bundle is self-contained (copy the file into it instead of linking)");
  return path;
}

// IEEE 754 half (binary16) -> float, exact (subnormals, infinities and NaN included).
float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    float v = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -v : v;
  }
  uint32_t bits = exponent == 0x1f ? sign | 0x7f800000u | (mantissa << 13)
                                   : sign | ((exponent + 112) << 23) | (mantissa << 13);
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// The bytes of the recorded file `rec` at `path` (a `what`: "graph", "weights file"), of its recorded size and
// sha256, as bundle.py's verify_record; `fix` ends each message.
std::string read_verified(const fs::path& path, const Record& rec, const std::string& what, const std::string& fix) {
  std::error_code ec;
  std::string bytes = read_file(path, ec);
  if (ec) throw bundle_error(path.string() + ": " + what + " " + os_problem(ec) + "; " + fix);
  if (static_cast<int64_t>(bytes.size()) != rec.bytes)
    throw bundle_error(path.string() + ": " + what + " is " + std::to_string(bytes.size()) + " bytes, " +
                       std::to_string(rec.bytes) + " were recorded (truncated or replaced); " + fix);
  if (sha256_hex(bytes) != rec.sha256)
    throw bundle_error(path.string() + ": " + what + "'s sha256 differs from the one recorded in config.json (file "
                       "changed or corrupt); " + fix);
  return bytes;
}

}  // namespace

std::string sha256_hex(const std::string& bytes) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), bytes.data(), bytes.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), digest, &size) != 1)
    throw Error(AMINET_ERR_INTERNAL, "OpenSSL could not compute a sha256");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < size; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

BundleConfig read_config(const std::string& bundle) {
  fs::path root(bundle), path = root / CONFIG_FILE;
  std::error_code ec;
  fs::file_status status = fs::status(root, ec);
  if (ec || !fs::exists(status)) {
    if (!ec) ec = std::make_error_code(std::errc::no_such_file_or_directory);
    throw bundle_error("bundle directory " + bundle + ": " + os_problem(ec));
  }
  if (!fs::is_directory(status)) throw bundle_error("bundle directory " + bundle + ": not a directory");
  std::string raw = read_file(path, ec);
  if (ec == std::errc::no_such_file_or_directory)
    throw bundle_error(path.string() + " not found: not an aminet-edge bundle (train one with `aminet-edge train`)");
  if (ec) throw bundle_error(path.string() + ": " + os_problem(ec));
  json data;
  try {
    data = json::parse(raw);
  } catch (const json::exception& exc) {
    throw bundle_error(path.string() + ": not valid JSON (" + exc.what() + ")");
  }
  Fields f{path.string()};
  if (!data.is_object())
    throw bundle_error(f.where + ": not an aminet-edge bundle config (a JSON " + data.type_name() + ", expected an object)");
  const json& version = Fields::get(data, "schema_version");
  if (!version.is_number_integer())
    throw bundle_error(f.where + ": no integer 'schema_version' (got " + short_json(version) + "); not an aminet-edge bundle");
  BundleConfig config;
  int64_t schema = version.get<int64_t>();
  if (schema > SCHEMA_VERSION)
    throw bundle_error(f.where + ": schema_version " + std::to_string(schema) + " is newer than this aminet-edge "
                       "understands (" + std::to_string(SCHEMA_VERSION) + "); upgrade aminet-edge (bundle written by " +
                       Fields::get(data, "aminet_edge_version").dump() + ")");
  if (schema < LEGACY_SCHEMA)
    throw f.fail("schema_version", "must be 1..2, got " + std::to_string(schema));
  config.schema_version = static_cast<int>(schema);
  static const std::set<std::string> known = {"schema_version", "aminet_edge_version", "model", "in_channels", "score",
                                              "preprocess", "calibration", "train", "backbone_source", "artifacts"};
  for (const auto& item : data.items())
    if (!known.count(item.key()))
      throw f.fail(item.key(), "is not a bundle config field (a typo? known: aminet_edge_version, artifacts, "
                   "backbone_source, calibration, in_channels, model, preprocess, schema_version, score, train)");
  for (const char* key : {"model", "in_channels", "score", "preprocess"})
    if (!data.contains(key)) throw bundle_error(f.where + ": missing key(s) " + key);

  const json& model = f.object("model", data["model"]);
  int64_t image_size = f.integer("model.image_size", Fields::get(model, "image_size"), 1);
  if (image_size > MAX_IMAGE_SIZE)
    throw f.fail("model.image_size", std::to_string(image_size) + " is above the maximum " +
                 std::to_string(MAX_IMAGE_SIZE) + " px");
  config.image_size = static_cast<int>(image_size);
  config.mask = model.contains("mask") ? f.text("model.mask", model["mask"], {"adaptive", "nearest_normal"}) : "adaptive";
  config.in_channels = static_cast<int>(f.integer("in_channels", data["in_channels"], 1));
  // as config.py's ModelConfig.guide_columns: a bundle recording no guide_dims searched every channel
  int64_t guide_dims = model.contains("guide_dims") ? f.integer("model.guide_dims", model["guide_dims"], 0) : 0;
  config.guide_columns = guide_dims > 0 && guide_dims < config.in_channels ? static_cast<int>(guide_dims) : config.in_channels;

  const json& score = f.object("score", data["score"]);
  std::string score_map = score.contains("map") ? f.text("score.map", score["map"], {"reconstruction", "reconstruction+guide"})
                                                : "reconstruction";
  double guide_weight = score.contains("guide_weight") ? f.number("score.guide_weight", score["guide_weight"]) : 0.0;
  // defaults as config.py's ModelConfig / ScoreConfig; ranges as bundle.py checks them
  json mask_lambda = model.contains("mask_lambda") ? json(f.number("model.mask_lambda", model["mask_lambda"])) : json(0.5);
  json sigma = score.contains("sigma") ? json(f.number("score.sigma", score["sigma"], true)) : json(4.0);
  if (sigma.get<double>() > MAX_SIGMA)
    throw f.fail("score.sigma", "must be a number in (0, 64] (pixels), got " + sigma.dump());
  json image_score = score.contains("image_score") ? json(f.text("score.image_score", score["image_score"], {"std", "max"}))
                                                   : json("std");
  const std::vector<Computed> computes = {{"mask_lambda", "model.mask_lambda", mask_lambda, json(0.5)},
                                          {"sigma", "score.sigma", sigma, json(4.0)},
                                          {"image_score", "score.image_score", image_score, json("std")}};

  const json& pre = f.object("preprocess", data["preprocess"]);
  for (const auto& item : pre.items())
    if (item.key() != "image_size" && item.key() != "mean" && item.key() != "std")
      throw f.fail("preprocess." + item.key(), "is not a preprocess field (image_size, mean, std)");
  int64_t size = f.integer("preprocess.image_size", Fields::get(pre, "image_size"));
  if (size != config.image_size)
    throw f.fail("preprocess.image_size", std::to_string(size) + " differs from model.image_size " +
                 std::to_string(config.image_size));
  for (const char* name : {"mean", "std"}) {
    const json& values = Fields::get(pre, name);
    if (!values.is_array() || values.size() != 3)
      throw f.fail(std::string("preprocess.") + name, "must be 3 numbers (R, G, B), got " + short_json(values));
    auto& out = std::string(name) == "mean" ? config.mean : config.std;
    for (int i = 0; i < 3; ++i)
    {
      std::string where = "preprocess." + std::string(name) + "[" + std::to_string(i) + "]";
      double v = f.number(where, values[i], std::string(name) == "std");
      if (v > 1 || v < 0)  // pixel values scaled to [0, 1]: mean in [0, 1], std in (0, 1]
        throw f.fail(where, "must be in " + std::string(std::string(name) == "std" ? "(0, 1]" : "[0, 1]") +
                     " (pixel values scaled to [0, 1]), got " + values[i].dump());
      out[i] = static_cast<float>(v);
    }
  }

  const json& cal = Fields::get(data, "calibration");
  if (!cal.is_null()) {
    f.object("calibration", cal);
    Calibration c;
    for (const char* key : {"image_threshold", "pixel_threshold"})
      if (!cal.contains(key)) throw f.fail(std::string("calibration.") + key, "is missing");
    c.image_threshold = f.number("calibration.image_threshold", cal["image_threshold"], true);
    c.pixel_threshold = f.number("calibration.pixel_threshold", cal["pixel_threshold"], true);
    for (auto [key, slot] : {std::pair{"f1_image_threshold", &c.f1_image_threshold},
                             std::pair{"f1_pixel_threshold", &c.f1_pixel_threshold}}) {
      const json& v = Fields::get(cal, key);
      if (!v.is_null()) *slot = f.number(std::string("calibration.") + key, v, true);
    }
    config.calibration = c;
  }

  const json& artifacts = data.contains("artifacts") ? f.object("artifacts", data["artifacts"]) : json::object();
  if (config.schema_version < SCHEMA_VERSION) return config;  // schema 1: no records to check (graphs refused)
  for (const auto& item : artifacts.items())
    if (item.key() != "weights" && item.key() != "onnx" && item.key() != "engines")
      throw f.fail("artifacts." + item.key(), "is not an artifact kind (weights, onnx, engines)");
  if (artifacts.contains("weights")) config.weights = record(f, "artifacts.weights", artifacts["weights"], false);
  const json& onnx = artifacts.contains("onnx") ? f.object("artifacts.onnx", artifacts["onnx"]) : json::object();
  for (const auto& item : onnx.items()) {
    std::string name = "artifacts.onnx." + item.key();
    if (!graph_keys().count(item.key())) throw f.fail(name, "is not a graph name (model, model_a, model_b, with "
                                                               "_fp16, _int8 or _int8_static)");
    config.graphs[item.key()] = record(f, name, item.value(), true);
    f.text(name + ".precision", Fields::get(item.value(), "precision"), GRAPH_PRECISIONS);
    check_made_for(f, name, item.value(), config.image_size, config.mask, score_map, guide_weight, computes);
  }
  const json& engines = Fields::get(artifacts, "engines");
  if (!engines.is_null() && !engines.is_array())
    throw f.fail("artifacts.engines", std::string("must be a JSON list of engine records, got ") + engines.type_name());
  for (size_t i = 0; engines.is_array() && i < engines.size(); ++i) {
    std::string name = "artifacts.engines[" + std::to_string(i) + "]";
    record(f, name, engines[i], true);
    check_made_for(f, name, engines[i], config.image_size, config.mask, score_map, guide_weight, computes);
  }
  return config;
}

std::string read_graph(const std::string& bundle, const BundleConfig& config, const std::string& precision) {
  std::string key = precision == "fp32" ? "model" : "model_" + precision;
  std::string fix = reexport(bundle);
  if (config.schema_version < SCHEMA_VERSION)
    throw bundle_error(bundle + ": schema 1 bundle (written before aminet-edge recorded checksums): its ONNX graphs "
                       "cannot be verified and may be stale; " + fix);
  auto it = config.graphs.find(key);
  if (it == config.graphs.end()) {
    fs::path path = fs::path(bundle) / (key + ".onnx");
    std::error_code ec;
    bool stray = fs::exists(path, ec);
    std::string flag = precision == "fp32" ? "" : precision == "int8_static" ? " --precision int8 --calibration-data DATA"
                                                                              : " --precision " + precision;
    throw bundle_error(path.string() + (stray ? " is not recorded in config.json (left from an earlier training or export?)"
                                              : " not found") + ": export it with `aminet-edge export " + bundle + flag + "`");
  }
  const Record& rec = it->second;
  fs::path path = artifact_path(bundle, rec.path);
  if (config.mask == "nearest_normal" && rec.guide_bank != "weights")
    throw bundle_error(path.string() + ": this graph was exported by an older aminet-edge that put the nearest-normal "
                       "guide's bank inside the graph (bundles keep it once, in their weights file, now); " + fix);
  if (rec.weights_sha256 && (!config.weights || *rec.weights_sha256 != config.weights->sha256))
    throw bundle_error(path.string() + ": this graph was made from other weights than the bundle's weights"
                       " (left from an earlier training?); " + fix);
  return read_verified(path, rec, "graph", fix);
}

GuideBank read_guide_bank(const std::string& bundle, const BundleConfig& config) {
  if (!config.weights)
    throw bundle_error(bundle + "/" + CONFIG_FILE + " records no weights (artifacts.weights): the bundle is incomplete; "
                       "train it again with `aminet-edge train`");
  fs::path path = artifact_path(bundle, config.weights->path);
  std::string fix = "the bundle is damaged: copy it again from where it was trained, or retrain";
  std::string bytes = read_verified(path, *config.weights, "weights file", fix);
  // safetensors: u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the data
  auto damaged = [&](const std::string& problem) { return bundle_error(path.string() + ": " + problem + "; " + fix); };
  if (bytes.size() < 8) throw damaged("not a safetensors file (shorter than its header length)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  if (header_len > bytes.size() - 8) throw damaged("not a safetensors file (header length beyond the file)");
  json header;
  try {
    header = json::parse(bytes.substr(8, header_len));
  } catch (const json::exception& exc) {
    throw damaged(std::string("safetensors header is not valid JSON (") + exc.what() + ")");
  }
  const json& entry = header.is_object() ? Fields::get(header, "guide.bank") : json();
  if (!entry.is_object())
    throw bundle_error(path.string() + ": holds no guide.bank, but config.json's model.mask is nearest_normal; rebuild "
                       "the guide (`aminet-edge set-mask RUN DATA --mask nearest-normal`) or retrain");
  const json &dtype = Fields::get(entry, "dtype"), &shape = Fields::get(entry, "shape"),
             &offsets = Fields::get(entry, "data_offsets");
  bool shape_ok = shape.is_array() && shape.size() == 2 && shape[0].is_number_unsigned() && shape[1].is_number_unsigned();
  if (dtype != "F16" || !shape_ok || shape[0].get<uint64_t>() == 0 ||
      shape[1].get<uint64_t>() != static_cast<uint64_t>(config.guide_columns))
    throw damaged("guide.bank is " + dtype.dump() + " " + shape.dump() + ", expected F16 [M, " +
                  std::to_string(config.guide_columns) + "] (model.guide_dims, else in_channels)");
  GuideBank out;
  out.rows = static_cast<int64_t>(shape[0].get<uint64_t>());
  out.cols = config.guide_columns;
  uint64_t count = static_cast<uint64_t>(out.rows) * static_cast<uint64_t>(out.cols);
  uint64_t data = 8 + header_len;
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned() ||
      offsets[1].get<uint64_t>() < offsets[0].get<uint64_t>() ||
      offsets[1].get<uint64_t>() - offsets[0].get<uint64_t>() != 2 * count ||
      offsets[1].get<uint64_t>() > bytes.size() - data)
    throw damaged("guide.bank's data_offsets " + offsets.dump() + " do not hold its " + std::to_string(count) +
                  " float16 values inside the file");
  const unsigned char* src = reinterpret_cast<const unsigned char*>(bytes.data()) + data + offsets[0].get<uint64_t>();
  out.values.resize(count);
  for (uint64_t i = 0; i < count; ++i) {
    float v = half_to_float(static_cast<uint16_t>(src[2 * i] | (src[2 * i + 1] << 8)));
    if (!std::isfinite(v)) throw damaged("guide.bank holds NaN or infinite values");
    out.values[i] = v;
  }
  return out;
}

}  // namespace aminet
