// Helpers for tests that build or patch binary images (kernels, headers) byte by byte.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

namespace keel::testing {

// The whole file; empty if it cannot be read.
inline std::vector<uint8_t> read_file_bytes(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Stores `value` (host byte order: little-endian) at `offset`, which must lie inside `v`.
template <typename T>
void put(std::vector<uint8_t>& v, uint64_t offset, T value) {
  std::memcpy(v.data() + offset, &value, sizeof value);
}

}  // namespace keel::testing
