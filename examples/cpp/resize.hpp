// The resizes of dpnet_runtime, re-implemented so that C++ feeds the graphs the same pixels.
//
// dpnet_runtime resizes with Pillow: images bilinear (a triangle filter widened by the scale
// when shrinking, so it antialiases; 8-bit fixed point, horizontal pass then vertical),
// masks nearest neighbour, and the float logits back to the image size bilinear (same
// filter in double precision). These functions follow Pillow's Resample.c / Geometry.c.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace pilresize {

namespace detail {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS for 8-bit images

// Filter taps of one output pixel: the first input index and the weights.
struct Taps {
  int first = 0;
  std::vector<double> weights;
};

inline double triangle(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Pillow's precompute_coeffs for the bilinear filter (support 1), box = whole image.
inline std::vector<Taps> bilinear_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;
  std::vector<Taps> taps(out_size);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    Taps& t = taps[xx];
    t.first = xmin;
    double total = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = triangle((x + xmin - center + 0.5) * ss);
      t.weights.push_back(w);
      total += w;
    }
    if (total != 0.0) {
      for (double& w : t.weights) w /= total;
    }
  }
  return taps;
}

inline std::vector<std::int64_t> fixed_point(const std::vector<double>& weights) {
  std::vector<std::int64_t> out;
  for (double w : weights) {
    const double scaled = w * (1 << kPrecisionBits);
    out.push_back(static_cast<std::int32_t>(w < 0 ? -0.5 + scaled : 0.5 + scaled));
  }
  return out;
}

inline std::uint8_t clip8(std::int64_t value) {
  const std::int64_t shifted = value >> kPrecisionBits;
  return static_cast<std::uint8_t>(std::clamp<std::int64_t>(shifted, 0, 255));
}

// One 8-bit pass along an axis: `stride_in`/`stride_out` step between taps / outputs.
inline std::vector<std::uint8_t> pass_u8(const std::vector<std::uint8_t>& in, int width,
                                         int height, int channels, int out_width,
                                         int out_height, bool horizontal) {
  const int in_size = horizontal ? width : height;
  const int out_size = horizontal ? out_width : out_height;
  const std::vector<Taps> taps = bilinear_taps(in_size, out_size);
  std::vector<std::uint8_t> out(static_cast<std::size_t>(out_width) * out_height * channels);
  for (int o = 0; o < out_size; ++o) {
    const std::vector<std::int64_t> k = fixed_point(taps[o].weights);
    const int lines = horizontal ? out_height : out_width;
    for (int line = 0; line < lines; ++line) {
      for (int c = 0; c < channels; ++c) {
        std::int64_t sum = 1 << (kPrecisionBits - 1);
        for (std::size_t i = 0; i < k.size(); ++i) {
          const int src = taps[o].first + static_cast<int>(i);
          const int x = horizontal ? src : line;
          const int y = horizontal ? line : src;
          sum += static_cast<std::int64_t>(in[(static_cast<std::size_t>(y) * width + x) * channels + c]) * k[i];
        }
        const int x = horizontal ? o : line;
        const int y = horizontal ? line : o;
        out[(static_cast<std::size_t>(y) * out_width + x) * channels + c] = clip8(sum);
      }
    }
  }
  return out;
}

// One float pass (Pillow's 32bpc path: double weights, float result).
inline std::vector<float> pass_f32(const std::vector<float>& in, int width, int height,
                                   int out_width, int out_height, bool horizontal) {
  const int out_size = horizontal ? out_width : out_height;
  const std::vector<Taps> taps = bilinear_taps(horizontal ? width : height, out_size);
  std::vector<float> out(static_cast<std::size_t>(out_width) * out_height);
  for (int o = 0; o < out_size; ++o) {
    const int lines = horizontal ? out_height : out_width;
    for (int line = 0; line < lines; ++line) {
      double sum = 0.0;
      for (std::size_t i = 0; i < taps[o].weights.size(); ++i) {
        const int src = taps[o].first + static_cast<int>(i);
        const int x = horizontal ? src : line;
        const int y = horizontal ? line : src;
        sum += in[static_cast<std::size_t>(y) * width + x] * taps[o].weights[i];
      }
      const int x = horizontal ? o : line;
      const int y = horizontal ? line : o;
      out[static_cast<std::size_t>(y) * out_width + x] = static_cast<float>(sum);
    }
  }
  return out;
}

}  // namespace detail

// Bilinear resize of an interleaved 8-bit image, as Image.resize(..., BILINEAR): horizontal
// pass, then vertical, each rounded to 8 bits (Pillow's Resample.c). Pillow 13's wheels agree
// exactly for most sizes and within one grey level for some (they order the passes otherwise).
inline std::vector<std::uint8_t> bilinear_u8(const std::vector<std::uint8_t>& in, int width,
                                             int height, int channels, int out_width,
                                             int out_height) {
  std::vector<std::uint8_t> pixels = in;
  int w = width;
  if (out_width != width) {
    pixels = detail::pass_u8(pixels, w, height, channels, out_width, height, true);
    w = out_width;
  }
  if (out_height != height) {
    pixels = detail::pass_u8(pixels, w, height, channels, w, out_height, false);
  }
  return pixels;
}

// Bilinear resize of one float plane, as Image.fromarray(float32).resize(..., BILINEAR).
inline std::vector<float> bilinear_f32(const std::vector<float>& in, int width, int height,
                                       int out_width, int out_height) {
  std::vector<float> plane = in;
  int w = width;
  if (out_width != width) {
    plane = detail::pass_f32(plane, w, height, out_width, height, true);
    w = out_width;
  }
  if (out_height != height) {
    plane = detail::pass_f32(plane, w, height, w, out_height, false);
  }
  return plane;
}

// Nearest-neighbour resize of a one-channel 8-bit plane, as Image.resize(..., NEAREST):
// the source of output pixel x is floor((x + 0.5) * in / out), accumulated as Pillow does.
inline std::vector<std::uint8_t> nearest_u8(const std::vector<std::uint8_t>& in, int width,
                                            int height, int out_width, int out_height) {
  const double sx = static_cast<double>(width) / out_width;
  const double sy = static_cast<double>(height) / out_height;
  std::vector<std::uint8_t> out(static_cast<std::size_t>(out_width) * out_height);
  double yy = sy * 0.5;
  for (int y = 0; y < out_height; ++y, yy += sy) {
    const int src_y = std::min(static_cast<int>(yy), height - 1);
    double xx = sx * 0.5;
    for (int x = 0; x < out_width; ++x, xx += sx) {
      const int src_x = std::min(static_cast<int>(xx), width - 1);
      out[static_cast<std::size_t>(y) * out_width + x] =
          in[static_cast<std::size_t>(src_y) * width + src_x];
    }
  }
  return out;
}

}  // namespace pilresize
