// dpnet_segment: segment one query image from K support image/mask pairs with a DPNet
// export, through the ONNX Runtime C++ API, following the I/O contract of
// dpnet_runtime.contract (README, "I/O contract").
//
// It needs a --raw-input export (dpnet-export onnx --raw-input): those graphs take uint8 RGB
// images channels-last and uint8 masks, and normalise inside the graph, so this program only
// resizes. With the split pair dpnet_support.onnx / dpnet_query.onnx it encodes the support
// set once (the way to serve a stream of queries); with only dpnet.onnx it runs the episode.
//
//   dpnet_segment --model out/ --support cat1.ppm:cat1.pgm [--support ...]
//                 --query q.ppm --out mask.pgm [--threads N]
//
// Support masks are PGM files: a 0/1 mask marks the object with 1, any other with > 127 (the
// rule of dpnet_runtime.preprocess.load_mask). The output is a PGM mask at the query's size,
// object 255, background 0: the mask dpnet_runtime.Predictor computes for the same inputs.

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "netpbm.hpp"
#include "resize.hpp"

namespace fs = std::filesystem;

namespace {

// File names and metadata keys of dpnet_runtime.contract. Tensor names are not spelled here:
// each graph's inputs and outputs are read from the graph itself, in the contract's order
// (GRAPHS: the positions below), and checked against the graph's "inputs" / "outputs"
// metadata, so a renamed tensor reaches this program without an edit.
constexpr const char* kEpisodeFile = "dpnet.onnx";
constexpr const char* kSupportFile = "dpnet_support.onnx";
constexpr const char* kQueryFile = "dpnet_query.onnx";
constexpr const char* kMetaMaxShots = "max_shots";
constexpr const char* kMetaInputs = "inputs";
constexpr const char* kMetaOutputs = "outputs";
// Inputs: episode (support images, support masks, query image), support graph (support
// images, support masks), query graph (query image, then the support graph's outputs).
constexpr size_t kSupportImagesAt = 0;
constexpr size_t kSupportMasksAt = 1;
constexpr size_t kEpisodeQueryAt = 2;
constexpr size_t kQueryImageAt = 0;
constexpr size_t kCacheAt = 1;  // first support-cache input of the query graph
constexpr size_t kEpisodeInputs = 3;
constexpr size_t kSupportInputs = 2;
constexpr size_t kCacheSize = 3;
// Outputs of the episode and query graphs: logits, mask, pseudo_count, confidence.
constexpr size_t kLogitsAt = 0;
constexpr size_t kPseudoCountAt = 2;
constexpr size_t kHeadOutputs = 4;

struct Options {
  fs::path model;
  std::vector<std::pair<std::string, std::string>> supports;  // image, mask
  std::string query;
  std::string out;
  int threads = 0;  // 0: ONNX Runtime's default
};

[[noreturn]] void usage_error(const std::string& message) {
  throw std::invalid_argument(
      message +
      " (usage: dpnet_segment --model DIR --support IMAGE.ppm:MASK.pgm [--support ...] "
      "--query QUERY.ppm --out MASK.pgm [--threads N])");
}

Options parse_args(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage_error(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--model") {
      options.model = value;
    } else if (flag == "--support") {
      const auto colon = value.rfind(':');
      if (colon == std::string::npos || colon == 0 || colon + 1 == value.size()) {
        usage_error("--support " + value + " must be IMAGE:MASK");
      }
      options.supports.emplace_back(value.substr(0, colon), value.substr(colon + 1));
    } else if (flag == "--query") {
      options.query = value;
    } else if (flag == "--out") {
      options.out = value;
    } else if (flag == "--threads") {
      options.threads = std::stoi(value);
    } else {
      usage_error("unknown option " + flag);
    }
  }
  if (options.model.empty() || options.supports.empty() || options.query.empty() ||
      options.out.empty()) {
    usage_error("--model, --support, --query and --out are required");
  }
  return options;
}

// A support mask as 0/1 bytes, by load_mask's rule (0/1 labels, else > 127).
std::vector<std::uint8_t> binary_mask(const netpbm::Image& mask) {
  const std::uint8_t top = *std::max_element(mask.pixels.begin(), mask.pixels.end());
  const std::uint8_t threshold = top <= 1 ? 0 : 127;
  std::vector<std::uint8_t> binary(mask.pixels.size());
  std::transform(mask.pixels.begin(), mask.pixels.end(), binary.begin(),
                 [threshold](std::uint8_t v) { return static_cast<std::uint8_t>(v > threshold); });
  return binary;
}

netpbm::Image read_rgb(const std::string& path) {
  netpbm::Image image = netpbm::read(path);
  if (image.channels != 3) throw std::runtime_error(path + ": expected an RGB PPM (P6) image");
  return image;
}

// The metadata's JSON list of names, as dpnet-export writes it: ["a", "b"].
std::string json_names(const std::vector<std::string>& names) {
  std::string text = "[";
  for (size_t i = 0; i < names.size(); ++i) text += (i ? ", \"" : "\"") + names[i] + "\"";
  return text + "]";
}

// One graph: its session, its I/O names (read from the graph) and its max_shots metadata.
class Graph {
 public:
  Graph(Ort::Env& env, const fs::path& path, const Ort::SessionOptions& options,
        size_t input_count, size_t output_count)
      : path_(path), session_(env, path.c_str(), options) {
    Ort::AllocatorWithDefaultOptions allocator;
    for (size_t i = 0; i < session_.GetInputCount(); ++i) {
      inputs_.emplace_back(session_.GetInputNameAllocated(i, allocator).get());
    }
    for (size_t i = 0; i < session_.GetOutputCount(); ++i) {
      outputs_.emplace_back(session_.GetOutputNameAllocated(i, allocator).get());
    }
    if (inputs_.size() != input_count || outputs_.size() != output_count) {
      throw std::runtime_error(path.string() + ": " + std::to_string(inputs_.size()) +
                               " inputs and " + std::to_string(outputs_.size()) +
                               " outputs, not the contract's " + std::to_string(input_count) +
                               " and " + std::to_string(output_count) + "; is it a dpnet export?");
    }
    Ort::ModelMetadata metadata = session_.GetModelMetadata();
    check_order(metadata, kMetaInputs, inputs_);
    check_order(metadata, kMetaOutputs, outputs_);
    auto shots = metadata.LookupCustomMetadataMapAllocated(kMetaMaxShots, allocator);
    max_shots_ = shots ? std::stoi(shots.get()) : 0;
  }

  const char* output(size_t at) const { return outputs_.at(at).c_str(); }
  std::vector<const char*> outputs() const {
    std::vector<const char*> names;
    for (const std::string& name : outputs_) names.push_back(name.c_str());
    return names;
  }

  // Side S of the square image input, and a check that the graph takes raw uint8 images:
  // raw image inputs are [B, (K,) S, S, 3] uint8; normalised ones are float [.., 3, S, S].
  int raw_input_size(size_t index) {
    // The shape info is a view into the type info: keep the type info alive while using it.
    const Ort::TypeInfo type_info = session_.GetInputTypeInfo(index);
    const auto info = type_info.GetTensorTypeAndShapeInfo();
    const std::vector<int64_t> shape = info.GetShape();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || shape.back() != 3) {
      throw std::runtime_error(
          "the graphs take normalised float images; re-export with dpnet-export onnx --raw-input");
    }
    return static_cast<int>(shape[shape.size() - 2]);
  }

  int max_shots() const { return max_shots_; }

  // Runs the graph on one value per input, in the graph's input order.
  std::vector<Ort::Value> run(const std::vector<Ort::Value>& values,
                              const std::vector<const char*>& outputs) {
    if (values.size() != inputs_.size()) {
      throw std::logic_error("one value per input of " + path_.string());
    }
    std::vector<const char*> names;
    for (const std::string& name : inputs_) names.push_back(name.c_str());
    return session_.Run(Ort::RunOptions{nullptr}, names.data(), values.data(), values.size(),
                        outputs.data(), outputs.size());
  }

 private:
  // The graph's own list of its I/O names (metadata) must be what the session reports.
  void check_order(Ort::ModelMetadata& metadata, const char* key,
                   const std::vector<std::string>& names) const {
    Ort::AllocatorWithDefaultOptions allocator;
    auto declared = metadata.LookupCustomMetadataMapAllocated(key, allocator);
    if (declared && json_names(names) != declared.get()) {
      throw std::runtime_error(path_.string() + ": metadata " + key + " " + declared.get() +
                               " differs from the graph's " + json_names(names) +
                               "; re-export it with dpnet-export onnx");
    }
  }

  fs::path path_;
  Ort::Session session_;
  std::vector<std::string> inputs_;
  std::vector<std::string> outputs_;
  int max_shots_ = 0;
};

template <typename T>
Ort::Value tensor(std::vector<T>& data, const std::vector<int64_t>& shape) {
  static const Ort::MemoryInfo memory =
      Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  return Ort::Value::CreateTensor<T>(memory, data.data(), data.size(), shape.data(),
                                     shape.size());
}

// Support inputs at the model size: images [1, K, S, S, 3] and masks [1, K, S, S], uint8.
struct SupportBatch {
  std::vector<std::uint8_t> images;
  std::vector<std::uint8_t> masks;
  int64_t shots = 0;
};

SupportBatch load_supports(const Options& options, int size) {
  SupportBatch batch;
  for (const auto& [image_path, mask_path] : options.supports) {
    const netpbm::Image image = read_rgb(image_path);
    const netpbm::Image mask = netpbm::read(mask_path);
    if (mask.channels != 1 || mask.width != image.width || mask.height != image.height) {
      throw std::runtime_error(mask_path + ": a mask must be a PGM of its image's size " +
                               std::to_string(image.width) + "x" + std::to_string(image.height));
    }
    const std::vector<std::uint8_t> small =
        pilresize::nearest_u8(binary_mask(mask), mask.width, mask.height, size, size);
    if (std::none_of(small.begin(), small.end(), [](std::uint8_t v) { return v != 0; })) {
      throw std::runtime_error(mask_path + ": no object pixel at the model size " +
                               std::to_string(size) + "; mark the object in the mask");
    }
    const std::vector<std::uint8_t> resized =
        pilresize::bilinear_u8(image.pixels, image.width, image.height, 3, size, size);
    batch.images.insert(batch.images.end(), resized.begin(), resized.end());
    batch.masks.insert(batch.masks.end(), small.begin(), small.end());
    ++batch.shots;
  }
  return batch;
}

// Logits [1, 2, S, S] -> 0/255 mask at the query's size: bilinear logits, softmax, argmax
// (ties to background), as dpnet_runtime.postprocess does.
std::vector<std::uint8_t> logits_to_mask(const Ort::Value& logits, int width, int height) {
  const std::vector<int64_t> shape = logits.GetTensorTypeAndShapeInfo().GetShape();
  const int side_h = static_cast<int>(shape[2]);
  const int side_w = static_cast<int>(shape[3]);
  const float* data = logits.GetTensorData<float>();
  const size_t plane = static_cast<size_t>(side_h) * side_w;
  const std::vector<float> background = pilresize::bilinear_f32(
      std::vector<float>(data, data + plane), side_w, side_h, width, height);
  const std::vector<float> object = pilresize::bilinear_f32(
      std::vector<float>(data + plane, data + 2 * plane), side_w, side_h, width, height);
  std::vector<std::uint8_t> mask(background.size());
  for (size_t i = 0; i < mask.size(); ++i) {
    const float top = std::max(background[i], object[i]);
    const float e0 = std::exp(background[i] - top);
    const float e1 = std::exp(object[i] - top);
    const float sum = e0 + e1;
    mask[i] = e1 / sum > e0 / sum ? 255 : 0;
  }
  return mask;
}

int run(const Options& options) {
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "dpnet_segment");
  Ort::SessionOptions session_options;
  if (options.threads > 0) session_options.SetIntraOpNumThreads(options.threads);

  const bool split =
      fs::is_regular_file(options.model / kSupportFile) && fs::is_regular_file(options.model / kQueryFile);
  if (!split && !fs::is_regular_file(options.model / kEpisodeFile)) {
    throw std::runtime_error(options.model.string() + ": no " + kEpisodeFile + " nor " +
                             kSupportFile + " + " + kQueryFile +
                             "; export with dpnet-export onnx --raw-input --out DIR");
  }
  Graph first(env, options.model / (split ? kSupportFile : kEpisodeFile), session_options,
              split ? kSupportInputs : kEpisodeInputs, split ? kCacheSize : kHeadOutputs);
  const int size = first.raw_input_size(kSupportImagesAt);
  SupportBatch supports = load_supports(options, size);
  if (first.max_shots() > 0 && supports.shots > first.max_shots()) {
    throw std::runtime_error("the graphs take at most " + std::to_string(first.max_shots()) +
                             " support shots, got " + std::to_string(supports.shots));
  }
  const netpbm::Image query = read_rgb(options.query);
  std::vector<std::uint8_t> query_pixels =
      pilresize::bilinear_u8(query.pixels, query.width, query.height, 3, size, size);

  static_assert(kSupportImagesAt == 0 && kSupportMasksAt == 1 && kEpisodeQueryAt == 2,
                "the values below are pushed in the contract's input order");
  std::vector<Ort::Value> values;
  values.push_back(tensor(supports.images, {1, supports.shots, size, size, 3}));
  values.push_back(tensor(supports.masks, {1, supports.shots, size, size}));
  std::vector<Ort::Value> results;
  if (split) {
    // The support cache: computed once, it serves any number of queries of this class.
    std::vector<Ort::Value> cache = first.run(values, first.outputs());
    Graph query_graph(env, options.model / kQueryFile, session_options, kCacheAt + kCacheSize,
                      kHeadOutputs);
    static_assert(kQueryImageAt == 0 && kCacheAt == 1, "query image first, then the cache");
    std::vector<Ort::Value> query_values;
    query_values.push_back(tensor(query_pixels, {1, size, size, 3}));
    for (Ort::Value& value : cache) query_values.push_back(std::move(value));
    results = query_graph.run(query_values, {query_graph.output(kLogitsAt),
                                             query_graph.output(kPseudoCountAt)});
  } else {
    values.push_back(tensor(query_pixels, {1, size, size, 3}));
    results = first.run(values, {first.output(kLogitsAt), first.output(kPseudoCountAt)});
  }

  const std::vector<std::uint8_t> mask = logits_to_mask(results[0], query.width, query.height);
  netpbm::write_pgm(options.out, query.width, query.height, mask);
  const auto object = std::count(mask.begin(), mask.end(), std::uint8_t{255});
  std::cout << "wrote " << options.out << " (" << object << " object pixels of " << mask.size()
            << ", pseudo_count " << *results[1].GetTensorData<int32_t>() << ", "
            << (split ? "cached support" : "episode graph") << ")\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const std::invalid_argument& exc) {
    std::cerr << "dpnet_segment: " << exc.what() << "\n";
    return 2;
  } catch (const Ort::Exception& exc) {
    std::cerr << "dpnet_segment: ONNX Runtime error: " << exc.what() << "\n";
    return 1;
  } catch (const std::exception& exc) {
    std::cerr << "dpnet_segment: " << exc.what() << "\n";
    return 1;
  }
}
