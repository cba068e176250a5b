// keel's version (CMake's project version), the same for `keel --version`, `keel version` and
// the daemon's GET /v1/version.
#pragma once

namespace keel {

inline constexpr const char* kVersion = KEEL_VERSION;
inline constexpr int kApiVersion = 1;  // the HTTP API's major version (/v1/...)

}  // namespace keel
