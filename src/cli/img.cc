// keel img: disk image utilities. `keel img create [--backing BASE] PATH [SIZE]` makes an empty
// qcow2 v3 image (the thin wrapper users expect beside qemu-img; qemu-img does everything else).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "backends/block/qcow2_image.h"
#include "base/error.h"
#include "base/size.h"
#include "cli/verbs.h"

namespace keel::cli {
namespace {

struct CreateOptions {
  std::string path, size, backing, backing_format = "auto", cluster_size = "64K";
};

int create(const CreateOptions& o) {
  uint64_t size = 0;
  if (!o.size.empty()) {
    try {
      size = parse_size(o.size);
    } catch (const Error& e) {
      throw UsageError(std::string("SIZE: ") + e.what());
    }
  } else if (o.backing.empty()) {
    throw UsageError("img create needs a SIZE (or --backing, whose size it takes)");
  }
  uint64_t cluster = 0;
  try {
    cluster = parse_size(o.cluster_size);
  } catch (const Error& e) {
    throw UsageError(std::string("--cluster-size: ") + e.what());
  }
  if (cluster < 512 || cluster > (2u << 20) || (cluster & (cluster - 1)))
    throw UsageError("--cluster-size must be a power of two from 512 to 2M");
  Qcow2Image::create(o.path, size, o.backing, parse_image_format(o.backing_format),
                     static_cast<uint32_t>(__builtin_ctzll(cluster)));
  std::printf("created %s (qcow2%s%s)\n", o.path.c_str(), o.backing.empty() ? "" : ", backing file ",
              o.backing.c_str());
  return 0;
}

}  // namespace

void add_img_verb(CLI::App& app, Action& action) {
  CLI::App* img = app.add_subcommand("img", "Disk image utilities (qemu-img does the rest)");
  img->require_subcommand(1, 1);
  auto o = std::make_shared<CreateOptions>();
  CLI::App* c = img->add_subcommand(
      "create", "Create an empty qcow2 image; with --backing, an overlay that reads BASE until written");
  c->add_option("PATH", o->path, "The new image (never overwritten)")->required();
  c->add_option("SIZE", o->size, "Virtual size with a K/M/G/T suffix (default with --backing: BASE's)");
  c->add_option("--backing,-b", o->backing,
                "Backing file, stored as given (a relative name is relative to PATH's directory)");
  c->add_option("--backing-format,-F", o->backing_format, "raw, qcow2 or auto (detect)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "raw", "qcow2"}));
  c->add_option("--cluster-size", o->cluster_size, "Cluster size, 512 to 2M")->capture_default_str();
  c->callback([o, &action] { action = [o] { return create(*o); }; });
}

}  // namespace keel::cli
