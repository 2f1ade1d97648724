// Header-only reader and writer for binary PPM (P6, RGB) and PGM (P5, grey) images.
//
// The example reads its inputs in these formats so that it needs no image library:
// convert a PNG or JPEG with e.g. `convert in.png out.ppm` (ImageMagick) or
// `python -c "from PIL import Image; Image.open('in.png').convert('RGB').save('out.ppm')"`.
#pragma once

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace netpbm {

// An 8-bit image, rows top to bottom, channels interleaved (RGB for PPM).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<std::uint8_t> pixels;  // height * width * channels bytes
};

namespace detail {

inline void skip_space_and_comments(std::istream& in) {
  for (;;) {
    int c = in.peek();
    if (c == '#') {
      std::string comment;
      std::getline(in, comment);
    } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      in.get();
    } else {
      return;
    }
  }
}

inline int read_header_int(std::istream& in, const std::string& path, const char* what) {
  skip_space_and_comments(in);
  long value = -1;
  if (!(in >> value) || value <= 0 || value > 1000000) {
    throw std::runtime_error(path + ": bad or missing " + what + " in the PPM/PGM header");
  }
  return static_cast<int>(value);
}

}  // namespace detail

// Reads a binary PPM (P6) or PGM (P5) file with maxval 255.
// Throws std::runtime_error naming the file on any problem.
inline Image read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open the file");
  char magic[2] = {0, 0};
  in.read(magic, 2);
  if (!in || magic[0] != 'P' || (magic[1] != '6' && magic[1] != '5')) {
    throw std::runtime_error(path + ": not a binary PPM (P6) or PGM (P5) file");
  }
  Image image;
  image.channels = magic[1] == '6' ? 3 : 1;
  image.width = detail::read_header_int(in, path, "width");
  image.height = detail::read_header_int(in, path, "height");
  int maxval = detail::read_header_int(in, path, "maxval");
  if (maxval != 255) {
    throw std::runtime_error(path + ": maxval " + std::to_string(maxval) +
                             " is not supported, write 8-bit images (maxval 255)");
  }
  in.get();  // exactly one whitespace byte separates the header from the pixels
  image.pixels.resize(static_cast<std::size_t>(image.width) * image.height * image.channels);
  in.read(reinterpret_cast<char*>(image.pixels.data()),
          static_cast<std::streamsize>(image.pixels.size()));
  if (in.gcount() != static_cast<std::streamsize>(image.pixels.size())) {
    throw std::runtime_error(path + ": truncated pixel data");
  }
  return image;
}

// Writes a grey image as a binary PGM (P5).
inline void write_pgm(const std::string& path, int width, int height,
                      const std::vector<std::uint8_t>& pixels) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error(path + ": cannot create the file");
  out << "P5\n" << width << " " << height << "\n255\n";
  out.write(reinterpret_cast<const char*>(pixels.data()),
            static_cast<std::streamsize>(pixels.size()));
  if (!out) throw std::runtime_error(path + ": write failed");
}

}  // namespace netpbm
