#include "boot/disk_boot.h"

#include <memory>
#include <optional>

#include "base/error.h"
#include "boot/ext_filesystem.h"
#include "boot/partition_table.h"

namespace keel::boot {
namespace {

constexpr uint64_t kMaxKernel = 256ull << 20;
constexpr uint64_t kMaxInitrd = 1ull << 30;
constexpr uint64_t kMaxConfig = 4ull << 20;

struct Volume {
  Partition part;
  std::unique_ptr<ExtFilesystem> fs;
  std::string uuid;
  std::string name() const {
    return part.number ? "partition " + std::to_string(part.number) : std::string("the whole disk");
  }
};

std::string text(ExtFilesystem& fs, const std::string& path) {
  auto bytes = fs.read_file(path, kMaxConfig);
  return {bytes.begin(), bytes.end()};
}

Environment grubenv_near(ExtFilesystem& fs, const std::string& dir) {
  for (const std::string& p : {dir + "/grubenv", std::string("/boot/grub2/grubenv"), std::string("/grub2/grubenv")})
    if (fs.is_file(p)) return parse_grubenv(text(fs, p));
  return {};
}

std::optional<BootMenu> bls_menu(ExtFilesystem& fs, const std::string& loader_dir, std::string& where) {
  std::string entries = loader_dir + "/entries";
  if (!fs.is_directory(entries)) return std::nullopt;
  std::vector<std::pair<std::string, std::string>> files;
  for (const auto& name : fs.list(entries))
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".conf") == 0 && fs.is_file(entries + "/" + name))
      files.emplace_back(name, text(fs, entries + "/" + name));
  if (files.empty()) return std::nullopt;
  std::string conf = fs.is_file(loader_dir + "/loader.conf") ? text(fs, loader_dir + "/loader.conf") : "";
  where = entries + "/*.conf";
  std::string base = loader_dir.substr(0, loader_dir.rfind('/'));
  return parse_bls_entries(files, conf, grubenv_near(fs, base + "/grub2"));
}

std::optional<BootMenu> find_menu(ExtFilesystem& fs, std::string& where) {
  for (const char* dir : {"/boot/loader", "/loader"})
    if (auto m = bls_menu(fs, dir, where)) return m;
  for (const char* dir : {"/boot/grub", "/grub", "/boot/grub2", "/grub2"}) {
    std::string cfg = std::string(dir) + "/grub.cfg";
    if (!fs.is_file(cfg)) continue;
    BootMenu menu;
    try {
      menu = parse_grub_cfg(text(fs, cfg), grubenv_near(fs, dir));
    } catch (const Error& e) {
      throw Error(cfg + ": " + e.what());
    }
    if (menu.uses_bls)
      for (const char* loader : {"/boot/loader", "/loader"})
        if (auto m = bls_menu(fs, loader, where)) return m;
    where = cfg;
    return menu;
  }
  return std::nullopt;
}

Volume* volume_for(std::vector<Volume>& volumes, Volume& menu_volume, const std::string& device) {
  if (device.empty()) return &menu_volume;
  if (device.rfind("uuid:", 0) == 0) {
    for (auto& v : volumes)
      if (v.uuid == device.substr(5)) return &v;
    return &menu_volume;
  }
  // hd0,gpt2 / hd0,msdos1 / hd0,2
  size_t comma = device.find(',');
  if (comma == std::string::npos) return &menu_volume;
  std::string p = device.substr(comma + 1);
  size_t digits = p.find_first_of("0123456789");
  if (digits == std::string::npos) return &menu_volume;
  uint32_t n = static_cast<uint32_t>(std::strtoul(p.c_str() + digits, nullptr, 10));
  for (auto& v : volumes)
    if (v.part.number == n) return &v;
  return &menu_volume;
}

// A path from the menu on `v`; with /boot on the root file system, menus may name /vmlinuz for
// /boot/vmlinuz (BLS, GRUB with a separate /boot mounted elsewhere).
std::vector<uint8_t> read_boot_file(Volume& v, const std::string& path, uint64_t max, const char* what,
                                    const std::string& title) {
  for (const std::string& p : {path, "/boot" + path})
    if (v.fs->is_file(p)) return v.fs->read_file(p, max);
  throw Error("boot entry '" + title + "': " + what + " " + path + " not found on " + v.name());
}

}  // namespace

DiskBootEntry find_disk_boot(BlockBackend& disk, const std::string& selector) {
  const std::string prefix = "disk " + disk.path() + ": ";
  std::vector<Volume> volumes;
  std::vector<Partition> parts;
  try {
    parts = read_partitions(disk);
  } catch (const Error& e) {
    throw Error(std::string("--boot disk: ") + e.what());
  }
  std::string seen;
  for (const auto& p : parts) {
    seen += (seen.empty() ? "" : ", ") + (p.number ? std::to_string(p.number) : std::string("whole disk"));
    if (!ExtFilesystem::probe(disk, p.offset, p.size)) continue;
    Volume v{p, nullptr, ""};
    try {
      v.fs = std::make_unique<ExtFilesystem>(disk, p.offset, p.size);
    } catch (const Error&) {
      continue;
    }
    v.uuid = v.fs->uuid();
    volumes.push_back(std::move(v));
  }
  if (volumes.empty())
    throw Error(prefix + "--boot disk found no ext2/3/4 file system (" + parts.front().scheme +
                " partitions: " + seen + "); keel reads /boot from ext2/3/4");
  for (auto& v : volumes) {
    std::string where;
    std::optional<BootMenu> menu;
    try {
      menu = find_menu(*v.fs, where);
    } catch (const Error& e) {
      throw Error(prefix + v.name() + ": " + e.what());
    }
    if (!menu) continue;
    DiskBootEntry out;
    out.menu = std::move(*menu);
    out.where = v.name() + ", " + where;
    try {
      out.index = select_entry(out.menu, selector);
    } catch (const Error& e) {
      throw Error(prefix + out.where + ": " + e.what());
    }
    const MenuEntry& e = out.menu.entries[out.index];
    out.title = e.title;
    out.cmdline = e.cmdline;
    Volume& kv = *volume_for(volumes, v, e.device);
    try {
      out.kernel = read_boot_file(kv, e.kernel, kMaxKernel, "kernel", e.title);
      for (const auto& initrd : e.initrds) {
        auto bytes = read_boot_file(kv, initrd, kMaxInitrd - out.initrd.size(), "initrd", e.title);
        out.initrd.insert(out.initrd.end(), bytes.begin(), bytes.end());
        // Concatenated cpio archives must each start 4-byte aligned.
        out.initrd.resize((out.initrd.size() + 3) & ~size_t{3});
      }
    } catch (const Error& err) {
      throw Error(prefix + out.where + ": " + err.what());
    }
    out.kernel_path = kv.name() + ": " + e.kernel;
    return out;
  }
  std::string names;
  for (auto& v : volumes) names += (names.empty() ? "" : ", ") + v.name();
  throw Error(prefix + "--boot disk found no kernel to boot: no loader/entries/*.conf and no "
              "grub/grub.cfg (in / or /boot) on " + names);
}

}  // namespace keel::boot
