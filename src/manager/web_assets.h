// The web console's files, bundled from web/ by web/build.mjs (esbuild) at build time and embedded
// in keel (the generated build/generated/manager/web_assets.cc), so the binary serves them itself.
#pragma once

#include <cstddef>
#include <span>

namespace keel::manager {

struct WebAsset {
  const char* path;  // "index.html", "assets/app.js", ...
  const char* type;  // its Content-Type
  const unsigned char* data;
  size_t size;
};

std::span<const WebAsset> web_assets();

}  // namespace keel::manager
