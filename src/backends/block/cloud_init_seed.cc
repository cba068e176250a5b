#include "backends/block/cloud_init_seed.h"

#define LIBISOFS_WITHOUT_LIBBURN 1
#include <libisofs/libisofs.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "backends/block/image_file.h"
#include "backends/block/raw_image.h"
#include "base/error.h"

namespace keel {
namespace {

constexpr uint64_t kMaxFile = 16ull << 20;

std::string read_seed_file(const std::filesystem::path& path, const char* what) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(std::string("cloud-init ") + what + " " + path.string() + ": " + ec.message());
  if (size > kMaxFile) throw Error(std::string("cloud-init ") + what + " " + path.string() + ": larger than 16 MiB");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(std::string("cloud-init ") + what + " " + path.string() + ": cannot open");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

[[noreturn]] void iso_fail(const char* what, int code) {
  throw Error(std::string("cloud-init seed: ") + what + ": " + iso_error_to_msg(code));
}

// libisofs' image and options, freed on every path.
struct IsoBuild {
  IsoImage* image = nullptr;
  IsoWriteOpts* opts = nullptr;
  burn_source* source = nullptr;
  ~IsoBuild() {
    if (source) {
      source->free_data(source);
      std::free(source);
    }
    if (opts) iso_write_opts_free(opts);
    if (image) iso_image_unref(image);
  }
};

std::vector<uint8_t> build_iso(const std::vector<std::pair<std::string, std::string>>& files) {
  if (int r = iso_init(); r < 0) iso_fail("iso_init", r);
  std::vector<uint8_t> out;
  {
    IsoBuild b;
    if (int r = iso_image_new("cidata", &b.image); r < 0) iso_fail("iso_image_new", r);
    iso_image_set_volume_id(b.image, "cidata");
    IsoDir* root = iso_image_get_root(b.image);
    for (const auto& [name, data] : files) {
      // The stream takes ownership of a malloc'ed copy.
      auto* buf = static_cast<unsigned char*>(std::malloc(std::max<size_t>(data.size(), 1)));
      if (!buf) throw Error("cloud-init seed: out of memory");
      std::memcpy(buf, data.data(), data.size());
      IsoStream* stream = nullptr;
      if (int r = iso_memory_stream_new(buf, data.size(), &stream); r < 0) {
        std::free(buf);
        iso_fail("iso_memory_stream_new", r);
      }
      IsoFile* file = nullptr;
      int r = iso_tree_add_new_file(root, name.c_str(), stream, &file);
      // The new file owns the stream reference from here on.
      if (r < 0) iso_fail(name.c_str(), r);
    }
    if (int r = iso_write_opts_new(&b.opts, 0); r < 0) iso_fail("iso_write_opts_new", r);
    iso_write_opts_set_rockridge(b.opts, 1);
    iso_write_opts_set_joliet(b.opts, 1);
    iso_write_opts_set_relaxed_vol_atts(b.opts, 1);  // the label stays lower-case "cidata"
    if (int r = iso_image_create_burn_source(b.image, b.opts, &b.source); r < 0)
      iso_fail("iso_image_create_burn_source", r);
    unsigned char block[2048];
    for (;;) {
      int n = b.source->read_xt(b.source, block, sizeof block);
      if (n <= 0) break;
      out.insert(out.end(), block, block + n);
      if (out.size() > 4 * kMaxFile) throw Error("cloud-init seed: image too large");
    }
  }
  iso_finish();
  if (out.empty()) throw Error("cloud-init seed: libisofs produced nothing");
  return out;
}

}  // namespace

CloudInitConfig parse_cloud_init_option(const std::string& text) {
  CloudInitConfig c;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string part = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t eq = part.find('=');
    std::string key = part.substr(0, eq), value = eq == std::string::npos ? "" : part.substr(eq + 1);
    if (value.empty())
      throw UsageError("--cloud-init " + text + ": '" + part + "' is not KEY=FILE");
    if (key == "user-data") c.user_data = value;
    else if (key == "meta-data") c.meta_data = value;
    else if (key == "network-config") c.network_config = value;
    else
      throw UsageError("--cloud-init " + text + ": unknown key '" + key +
                       "' (expected user-data, meta-data, network-config)");
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  if (c.user_data.empty()) throw UsageError("--cloud-init needs user-data=FILE");
  return c;
}

std::string default_meta_data(const std::string& name) {
  return "instance-id: iid-" + name + "\nlocal-hostname: " + name + "\n";
}

std::unique_ptr<BlockBackend> make_cloud_init_seed(const CloudInitConfig& config, const std::string& vm_name) {
  std::vector<std::pair<std::string, std::string>> files;
  files.emplace_back("user-data", read_seed_file(config.user_data, "user-data"));
  files.emplace_back("meta-data", config.meta_data.empty() ? default_meta_data(vm_name)
                                                           : read_seed_file(config.meta_data, "meta-data"));
  if (!config.network_config.empty())
    files.emplace_back("network-config", read_seed_file(config.network_config, "network-config"));
  std::vector<uint8_t> iso = build_iso(files);
  UniqueFd fd(::memfd_create("keel-cidata", MFD_CLOEXEC));
  if (!fd) throw_errno("cloud-init seed: memfd_create");
  pwrite_all(fd.get(), iso.data(), iso.size(), 0, "cloud-init seed");
  return std::make_unique<RawImage>("cloud-init seed (cidata)", std::move(fd), iso.size(), true);
}

}  // namespace keel
