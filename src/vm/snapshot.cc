#include "vm/snapshot.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "backends/block/block_backend.h"
#include "base/error.h"

namespace keel::snapshot {

namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxPath = 4096;
constexpr size_t kMaxItems = 64;  // disks, networks, host forwards
constexpr size_t kChunk = 1 << 20;

bool zero_page(const uint8_t* p) {
  static const uint8_t zeros[kPageSize] = {};
  return std::memcmp(p, zeros, kPageSize) == 0;
}

// The memory checksum: CRC-32 over (page index, page) of every non-zero page in order. Zero
// pages (the holes of the sparse file) add nothing, so a reader walks only the file's data.
uint32_t page_crc(uint32_t crc, uint64_t index, const uint8_t* page) {
  uint8_t le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<uint8_t>(index >> (8 * i));
  crc = state::crc32(le, crc);
  return state::crc32({page, kPageSize}, crc);
}

void write_all(int fd, const uint8_t* data, size_t len, off_t offset, const fs::path& file) {
  while (len) {
    ssize_t n = ::pwrite(fd, data, len, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw_errno("snapshot: write " + file.string());
    data += n;
    len -= static_cast<size_t>(n);
    offset += n;
  }
}

std::string str_path(const fs::path& p) { return p.string(); }

// The memory file's last page starts with this: a magic, the RAM size and the 128-bit id the
// state file records too. It catches a memory file swapped, truncated or extended without
// reading RAM; a full read (`--verify-memory`) also checks every page's CRC.
struct MemoryTrailer {
  static constexpr size_t kSize = 32;
  std::array<uint8_t, 16> id{};
  std::array<uint8_t, kSize> encode(uint64_t ram_bytes) const {
    std::array<uint8_t, kSize> out{};
    std::memcpy(out.data(), "KEELRAM2", 8);
    for (int i = 0; i < 8; ++i) out[8 + i] = static_cast<uint8_t>(ram_bytes >> (8 * i));
    std::memcpy(out.data() + 16, id.data(), id.size());
    return out;
  }
};

}  // namespace

void save_config(const VmConfig& c, state::SectionWriter& out, std::span<const uint64_t> disk_sizes) {
  out.str("kernel", str_path(c.kernel));
  out.str("initrd", str_path(c.initrd));
  out.str("cmdline", c.cmdline);
  out.str("test_guest", str_path(c.test_guest));
  out.u8("boot", static_cast<uint8_t>(c.boot));
  out.str("boot_entry", c.boot_entry);
  out.u64("memory_bytes", c.memory_bytes);
  out.u32("cpus", c.cpus);
  out.u8("emu_tier", static_cast<uint8_t>(c.emu_tier));
  out.u32("emu_hot_threshold", c.emu_hot_threshold);
  out.u8("cpu_model", static_cast<uint8_t>(c.cpu_model));
  out.boolean("isa_debug_exit", c.isa_debug_exit);
  const VirtioConfig& v = c.virtio;
  out.u32("disks", static_cast<uint32_t>(v.disks.size()));
  for (size_t i = 0; i < v.disks.size(); ++i) {
    std::string p = "disk" + std::to_string(i) + "_";
    const DiskConfig& d = v.disks[i];
    std::error_code ec;
    uint64_t size = i < disk_sizes.size() ? disk_sizes[i] : fs::file_size(d.path, ec);
    if (ec) throw Error("snapshot: disk " + d.path.string() + ": " + ec.message());
    out.str(p + "path", str_path(d.path.is_absolute() ? d.path : fs::absolute(d.path)));
    out.str(p + "format", to_string(d.format));
    out.boolean(p + "readonly", d.readonly);
    out.u64(p + "size", size);
  }
  out.boolean("cloud_init", v.cloud_init.has_value());
  if (v.cloud_init) {
    out.str("cloud_init_user_data", str_path(fs::absolute(v.cloud_init->user_data)));
    out.str("cloud_init_meta_data", str_path(v.cloud_init->meta_data.empty() ? fs::path() : fs::absolute(v.cloud_init->meta_data)));
    out.str("cloud_init_network_config", str_path(v.cloud_init->network_config.empty() ? fs::path() : fs::absolute(v.cloud_init->network_config)));
  }
  out.str("vm_name", v.vm_name);
  out.u32("nets", static_cast<uint32_t>(v.nets.size()));
  for (size_t i = 0; i < v.nets.size(); ++i) {
    std::string p = "net" + std::to_string(i) + "_";
    const NetConfig& n = v.nets[i];
    out.u8(p + "kind", static_cast<uint8_t>(n.kind));
    out.u32(p + "hostfwds", static_cast<uint32_t>(n.hostfwd.size()));
    for (size_t k = 0; k < n.hostfwd.size(); ++k) out.str(p + "hostfwd" + std::to_string(k), n.hostfwd[k]);
    out.str(p + "tap", n.tap);
    out.boolean(p + "host_loopback", n.host_loopback);
  }
  out.boolean("console", v.console);
  out.boolean("rng", v.rng);
}

VmConfig load_config(const state::SectionReader& in) {
  VmConfig c;
  c.kernel = in.str("kernel", kMaxPath);
  c.initrd = in.str("initrd", kMaxPath);
  c.cmdline = in.str("cmdline", 64 * 1024);
  c.test_guest = in.str("test_guest", kMaxPath);
  uint8_t boot = in.u8("boot");
  if (boot > static_cast<uint8_t>(VmConfig::Boot::kDisk)) in.fail("field 'boot' is not a boot kind");
  c.boot = static_cast<VmConfig::Boot>(boot);
  c.boot_entry = in.str("boot_entry", 4096);
  c.memory_bytes = in.u64("memory_bytes");
  c.cpus = in.u32("cpus");
  uint8_t tier = in.u8("emu_tier");
  if (tier > static_cast<uint8_t>(EmuTier::kJit)) in.fail("field 'emu_tier' is not an emu tier");
  c.emu_tier = static_cast<EmuTier>(tier);
  c.emu_hot_threshold = in.u32("emu_hot_threshold");
  if (in.has("cpu_model")) {  // snapshots from before CPU models showed the host model
    uint8_t model = in.u8("cpu_model");
    if (model > static_cast<uint8_t>(x86::CpuModel::kBaseline)) in.fail("field 'cpu_model' is not a CPU model");
    c.cpu_model = static_cast<x86::CpuModel>(model);
  }
  c.isa_debug_exit = in.boolean("isa_debug_exit");
  VirtioConfig& v = c.virtio;
  uint32_t disks = in.u32("disks");
  if (disks > kMaxItems) in.fail("field 'disks' = " + std::to_string(disks) + " is above " + std::to_string(kMaxItems));
  for (uint32_t i = 0; i < disks; ++i) {
    std::string p = "disk" + std::to_string(i) + "_";
    DiskConfig d;
    d.path = in.str(p + "path", kMaxPath);
    try {
      d.format = parse_image_format(in.str(p + "format", 16));
    } catch (const Error& e) {
      in.fail("field '" + p + "format': " + e.what());
    }
    d.readonly = in.boolean(p + "readonly");
    uint64_t size = in.u64(p + "size");
    std::error_code ec;
    uint64_t now = fs::file_size(d.path, ec);
    if (ec && d.path.string().rfind("/proc/self/fd/", 0) == 0)
      in.fail("disk " + d.path.string() + " is a descriptor the keel daemon passed its VMM: restore this "
              "snapshot through the daemon (keel restore DIR)");
    if (ec) in.fail("disk " + d.path.string() + ": " + ec.message());
    if (now != size)
      in.fail("disk " + d.path.string() + " is " + std::to_string(now) + " bytes, it was " +
              std::to_string(size) + " when the snapshot was taken");
    v.disks.push_back(std::move(d));
  }
  if (in.boolean("cloud_init")) {
    CloudInitConfig ci;
    ci.user_data = in.str("cloud_init_user_data", kMaxPath);
    ci.meta_data = in.str("cloud_init_meta_data", kMaxPath);
    ci.network_config = in.str("cloud_init_network_config", kMaxPath);
    v.cloud_init = ci;
  }
  v.vm_name = in.str("vm_name", 256);
  uint32_t nets = in.u32("nets");
  if (nets > kMaxItems) in.fail("field 'nets' = " + std::to_string(nets) + " is above " + std::to_string(kMaxItems));
  for (uint32_t i = 0; i < nets; ++i) {
    std::string p = "net" + std::to_string(i) + "_";
    NetConfig n;
    uint8_t kind = in.u8(p + "kind");
    if (kind > static_cast<uint8_t>(NetConfig::Kind::kTap)) in.fail("field '" + p + "kind' is not a network kind");
    n.kind = static_cast<NetConfig::Kind>(kind);
    uint32_t fwds = in.u32(p + "hostfwds");
    if (fwds > kMaxItems) in.fail("field '" + p + "hostfwds' is above " + std::to_string(kMaxItems));
    for (uint32_t k = 0; k < fwds; ++k) n.hostfwd.push_back(in.str(p + "hostfwd" + std::to_string(k), 256));
    n.tap = in.str(p + "tap", 64);
    n.host_loopback = in.boolean(p + "host_loopback");
    v.nets.push_back(std::move(n));
  }
  v.console = in.boolean("console");
  v.rng = in.boolean("rng");
  try {
    c.validate();
  } catch (const Error& e) {
    in.fail(std::string("the saved configuration is not valid: ") + e.what());
  }
  return c;
}

void check_same_vm(const VmConfig& saved, const VmConfig& wanted) {
  auto differ = [](const std::string& what, const std::string& was, const std::string& want) {
    throw state::StateError("the saved VM's " + what + " is '" + was + "', the VM to run has '" + want +
                            "': a snapshot or migration continues only the VM it was taken from");
  };
  auto same = [&](const std::string& what, const std::string& was, const std::string& want) {
    if (was != want) differ(what, was, want);
  };
  same("kernel", saved.kernel.string(), wanted.kernel.string());
  same("initrd", saved.initrd.string(), wanted.initrd.string());
  same("test guest", saved.test_guest.string(), wanted.test_guest.string());
  same("RAM size", std::to_string(saved.memory_bytes), std::to_string(wanted.memory_bytes));
  same("vCPU count", std::to_string(saved.cpus), std::to_string(wanted.cpus));
  same("CPU model", x86::to_string(saved.cpu_model), x86::to_string(wanted.cpu_model));
  const VirtioConfig &s = saved.virtio, &w = wanted.virtio;
  same("disk count", std::to_string(s.disks.size()), std::to_string(w.disks.size()));
  for (size_t i = 0; i < s.disks.size(); ++i) {
    std::string d = "disk " + std::to_string(i);
    same(d + " path", s.disks[i].path.string(), w.disks[i].path.string());
    same(d + " access", s.disks[i].readonly ? "readonly" : "read-write", w.disks[i].readonly ? "readonly" : "read-write");
    if (w.disks[i].format != ImageFormat::kAuto)
      same(d + " format", to_string(s.disks[i].format), to_string(w.disks[i].format));
  }
  auto seed = [](const std::optional<CloudInitConfig>& c) {
    return c ? c->user_data.string() + "," + c->meta_data.string() + "," + c->network_config.string() : std::string();
  };
  same("cloud-init seed", seed(s.cloud_init), seed(w.cloud_init));
  same("network count", std::to_string(s.nets.size()), std::to_string(w.nets.size()));
  for (size_t i = 0; i < s.nets.size(); ++i) {
    auto describe = [](const NetConfig& n) {
      std::string out = n.kind == NetConfig::Kind::kTap ? "tap:" + n.tap : "user";
      for (const auto& rule : n.hostfwd) out += ",hostfwd=" + rule;
      if (n.host_loopback) out += ",host-loopback=on";
      return out;
    };
    same("network " + std::to_string(i), describe(s.nets[i]), describe(w.nets[i]));
  }
}

state::Document read_state(const fs::path& dir) { return read_state_file(dir / kStateFile); }

state::Document read_state_file(const fs::path& file) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw state::StateError("snapshot " + file.parent_path().string() + ": cannot open its state file " + file.filename().string() + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw_errno("snapshot: fstat " + file.string());
  if (!S_ISREG(st.st_mode)) throw state::StateError(file.string() + ": not a regular file");
  if (static_cast<uint64_t>(st.st_size) > kMaxStateFile)
    throw state::StateError(file.string() + ": " + std::to_string(st.st_size) +
                            " bytes, more than the limit of " + std::to_string(kMaxStateFile));
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t n = ::pread(fd.get(), bytes.data() + got, bytes.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("snapshot: read " + file.string());
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  bytes.resize(got);
  return state::Document::parse(bytes, file.string());
}

VmConfig read_config(const fs::path& dir) { return config_of(read_state(dir)); }

VmConfig config_of(const state::Document& doc) {
  VmConfig config = load_config(doc.section("vm"));
  const auto& engine = doc.section("engine");
  std::string name = engine.str("name", 16);
  if (name == "emu")
    config.accel = Accel::kEmu;
  else if (name == "kvm")
    config.accel = Accel::kKvm;
  else
    engine.fail("field 'name' names an unknown engine '" + name + "'");
  return config;
}

void write_memory(const GuestMemory& memory, const fs::path& file, state::SectionWriter& out) {
  UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) throw_errno("snapshot: create " + file.string());
  write_memory(memory, fd.get(), file, out);
}

void write_memory(const GuestMemory& memory, int fd, const fs::path& file,
                  state::SectionWriter& out) {
  const uint8_t* ram = memory.ram_base();
  const uint64_t size = memory.ram_size();
  // Emptied first: zero pages are holes, which must not keep what a passed file held before.
  if (::ftruncate(fd, 0) != 0 || ::ftruncate(fd, static_cast<off_t>(size + kPageSize)) != 0)
    throw_errno("snapshot: size " + file.string());
  uint32_t crc = 0;
  uint64_t pages = 0;
  // Runs of non-zero pages are written with one pwrite; zero pages stay holes.
  uint64_t run = 0, run_len = 0;
  for (uint64_t off = 0; off < size; off += kPageSize) {
    if (zero_page(ram + off)) {
      if (run_len) write_all(fd, ram + run, run_len, static_cast<off_t>(run), file);
      run_len = 0;
      continue;
    }
    crc = page_crc(crc, off / kPageSize, ram + off);
    ++pages;
    if (!run_len) run = off;
    run_len += kPageSize;
  }
  if (run_len) write_all(fd, ram + run, run_len, static_cast<off_t>(run), file);
  MemoryTrailer trailer;
  if (::getrandom(trailer.id.data(), trailer.id.size(), 0) != static_cast<ssize_t>(trailer.id.size()))
    throw_errno("snapshot: getrandom");
  auto encoded = trailer.encode(size);
  write_all(fd, encoded.data(), encoded.size(), static_cast<off_t>(size), file);
  if (::fsync(fd) != 0) throw_errno("snapshot: fsync " + file.string());
  out.u64("ram_bytes", size);
  out.u64("pages", pages);
  out.u32("crc", crc);
  out.bytes("id", trailer.id);
}

UniqueFd open_memory(const fs::path& dir, const state::Document& st, uint64_t ram_bytes, bool verify) {
  return open_memory_file(dir / kMemoryFile, st, ram_bytes, verify);
}

UniqueFd open_memory_file(const fs::path& file, const state::Document& st, uint64_t ram_bytes, bool verify) {
  const auto& m = st.section("memory", kMemoryVersion);
  std::string what = "snapshot memory file " + file.string();
  if (m.u64("ram_bytes") != ram_bytes)
    m.fail("RAM is " + std::to_string(m.u64("ram_bytes")) + " bytes, the configuration says " +
           std::to_string(ram_bytes));
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw state::StateError(what + ": " + std::strerror(errno));
  struct stat st_;
  if (::fstat(fd.get(), &st_) != 0) throw_errno(what + ": fstat");
  // Version 1 files are RAM alone and are always read whole; later ones end with a trailer page
  // that ties them to their state file, so a restore need not read RAM it maps lazily.
  const bool trailer = m.version() >= 2;
  const uint64_t expected = ram_bytes + (trailer ? kPageSize : 0);
  if (static_cast<uint64_t>(st_.st_size) != expected)
    throw state::StateError(what + ": " + std::to_string(st_.st_size) + " bytes, expected " +
                            std::to_string(expected) + " (truncated or not this snapshot's)");
  if (trailer) {
    MemoryTrailer want;
    m.bytes_exact("id", want.id);
    auto expect = want.encode(ram_bytes);
    std::array<uint8_t, MemoryTrailer::kSize> got{};
    ssize_t n;
    do n = ::pread(fd.get(), got.data(), got.size(), static_cast<off_t>(ram_bytes));
    while (n < 0 && errno == EINTR);
    if (n != static_cast<ssize_t>(got.size())) throw state::StateError(what + ": short read of its trailer");
    if (got != expect)
      throw state::StateError(what + ": its trailer does not match the state file (the memory file of "
                              "another snapshot, or damaged)");
    if (!verify) return fd;
  }
  // Walk the file's data (SEEK_DATA/SEEK_HOLE) and checksum its non-zero pages.
  uint32_t crc = 0;
  uint64_t pages = 0;
  std::vector<uint8_t> buf(kChunk);
  off_t pos = 0;
  const off_t end = static_cast<off_t>(ram_bytes);
  while (pos < end) {
    off_t data = ::lseek(fd.get(), pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole remains
      throw_errno(what + ": SEEK_DATA");
    }
    if (data >= end) break;  // the trailer
    off_t hole = ::lseek(fd.get(), data, SEEK_HOLE);
    if (hole < 0) throw_errno(what + ": SEEK_HOLE");
    data &= ~static_cast<off_t>(kPageSize - 1);
    for (off_t off = data; off < hole && off < end;) {
      size_t n = static_cast<size_t>(std::min<off_t>(kChunk, std::min(hole, end) - off));
      n = (n + kPageSize - 1) & ~(kPageSize - 1);
      n = std::min<size_t>(n, static_cast<size_t>(end - off));
      ssize_t got = ::pread(fd.get(), buf.data(), n, off);
      if (got < 0 && errno == EINTR) continue;
      if (got != static_cast<ssize_t>(n)) throw state::StateError(what + ": short read");
      for (size_t p = 0; p < n; p += kPageSize)
        if (!zero_page(buf.data() + p)) {
          crc = page_crc(crc, (static_cast<uint64_t>(off) + p) / kPageSize, buf.data() + p);
          ++pages;
        }
      off += static_cast<off_t>(n);
    }
    pos = std::max(hole, pos + 1);
    pos = (pos + kPageSize - 1) & ~static_cast<off_t>(kPageSize - 1);
  }
  if (pages != m.u64("pages") || crc != m.u32("crc"))
    throw state::StateError(what + ": fails its checksum (" + std::to_string(pages) + " pages in use, " +
                            std::to_string(m.u64("pages")) + " recorded)");
  return fd;
}

void write_file(int fd, std::span<const uint8_t> bytes, const fs::path& what) {
  if (::ftruncate(fd, 0) != 0) throw_errno("snapshot: truncate " + what.string());
  write_all(fd, bytes.data(), bytes.size(), 0, what);
  if (::fsync(fd) != 0) throw_errno("snapshot: fsync " + what.string());
}

void write_file_atomically(const fs::path& path, std::span<const uint8_t> bytes) {
  fs::path tmp = path;
  tmp += ".tmp";
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) throw_errno("snapshot: create " + tmp.string());
    write_all(fd.get(), bytes.data(), bytes.size(), 0, tmp);
    if (::fsync(fd.get()) != 0) throw_errno("snapshot: fsync " + tmp.string());
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw_errno("snapshot: rename " + tmp.string());
}

}  // namespace keel::snapshot
