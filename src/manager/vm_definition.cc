#include "manager/vm_definition.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <unistd.h>

#include <cstring>
#include <regex>
#include <set>

#include "arch/x86/cpuid_policy.h"
#include "backends/net/slirp_backend.h"
#include "boot/linux_loader.h"
#include "engine/engine_factory.h"
#include "vm/vm_config.h"

namespace keel::manager {

using nlohmann::json;

namespace {

[[noreturn]] void refuse(const std::string& field, const std::string& why) {
  throw DefinitionError("field '" + field + "': " + why);
}

const char* type_name(const json& value) { return value.type_name(); }

std::string get_string(const json& value, const std::string& field, size_t max_length = 4096) {
  if (!value.is_string()) refuse(field, std::string("expected a string, got ") + type_name(value));
  const std::string& s = value.get_ref<const std::string&>();
  if (s.size() > max_length) refuse(field, "longer than " + std::to_string(max_length) + " bytes");
  if (s.find('\0') != std::string::npos) refuse(field, "contains a NUL byte");
  return s;
}

uint64_t get_integer(const json& value, const std::string& field, uint64_t min, uint64_t max) {
  if (!value.is_number_integer()) {
    refuse(field, std::string("expected an integer, got ") + type_name(value));
  }
  if (value.is_number_unsigned()) {
    uint64_t v = value.get<uint64_t>();
    if (v < min || v > max) {
      refuse(field, "must be between " + std::to_string(min) + " and " + std::to_string(max));
    }
    return v;
  }
  int64_t v = value.get<int64_t>();
  if (v < 0 || static_cast<uint64_t>(v) < min || static_cast<uint64_t>(v) > max) {
    refuse(field, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  }
  return static_cast<uint64_t>(v);
}

bool get_bool(const json& value, const std::string& field) {
  if (!value.is_boolean()) refuse(field, std::string("expected a boolean, got ") + type_name(value));
  return value.get<bool>();
}

// A path that must name an existing regular file, or a block device when `block`.
std::string get_file(const json& value, const std::string& field, bool block = false) {
  std::string path = get_string(value, field);
  if (path.empty()) refuse(field, "empty path");
  if (path[0] != '/') refuse(field, "'" + path + "' is not an absolute path");
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) refuse(field, "file '" + path + "' does not exist");
  if (block && !S_ISBLK(st.st_mode)) refuse(field, "'" + path + "' is not a block device");
  if (!block && !S_ISREG(st.st_mode)) {
    refuse(field, "'" + path + "' is not a regular file" +
                      (S_ISBLK(st.st_mode) ? " (a block device needs \"type\": \"block\")" : ""));
  }
  return path;
}

// Opens `path` as `owner`, refusing anything but what the field may name.
UniqueFd open_field(const PeerCredentials& owner, const std::string& field,
                    const std::string& path, bool writable, bool block) {
  // stat first, as the owner: no open(2) of a FIFO or character device, which can have effects.
  struct stat st {};
  if (!stat_as(owner, path, st))
    refuse(field, "uid " + std::to_string(owner.uid) + " cannot reach '" + path + "': " +
                      std::strerror(errno));
  if (block ? !S_ISBLK(st.st_mode) : !S_ISREG(st.st_mode))
    refuse(field, "'" + path + "' is not " + (block ? "a block device" : "a regular file"));
  UniqueFd fd = open_as(owner, path, (writable ? O_RDWR : O_RDONLY) | O_NONBLOCK);
  if (!fd)
    refuse(field, "uid " + std::to_string(owner.uid) + " cannot open '" + path + "' for " +
                      (writable ? "reading and writing" : "reading") + ": " + std::strerror(errno));
  struct stat opened {};
  if (::fstat(fd.get(), &opened) != 0 || opened.st_ino != st.st_ino || opened.st_dev != st.st_dev ||
      (block ? !S_ISBLK(opened.st_mode) : !S_ISREG(opened.st_mode)))
    refuse(field, "'" + path + "' changed while it was being opened");
  int flags = ::fcntl(fd.get(), F_GETFL);
  ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

void check_object(const json& value, const std::string& field,
                  std::initializer_list<const char*> known) {
  if (!value.is_object()) refuse(field, std::string("expected an object, got ") + type_name(value));
  for (auto& [key, v] : value.items()) {
    bool ok = false;
    for (const char* k : known) ok = ok || key == k;
    if (!ok) refuse(field.empty() ? key : field + "." + key, "unknown field");
  }
}

const json* member(const json& object, const char* key) {
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

// Runs one of the VMM's own checks (a UsageError saying what is wrong) for `field`.
template <typename Check>
void check_as_the_vmm(const std::string& field, Check&& check) {
  try {
    check();
  } catch (const UsageError& e) {
    refuse(field, e.what());
  }
}

// The kernel the definition's owner opened: checked as the VMM's loader checks it, with the
// command line against the kernel's own limit.
void check_kernel(int fd, const std::string& path, const std::string& cmdline) {
  constexpr size_t kMaxKernel = 512u << 20;
  std::vector<uint8_t> image;
  uint8_t buf[1 << 16];
  for (off_t at = 0;;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) refuse("kernel", "cannot read '" + path + "': " + std::strerror(errno));
    if (n == 0) break;
    image.insert(image.end(), buf, buf + n);
    at += n;
    if (image.size() > kMaxKernel) refuse("kernel", "'" + path + "' is larger than 512 MiB");
  }
  uint32_t limit = 0;
  try {
    limit = boot::check_kernel_image(image);
  } catch (const Error& e) {
    refuse("kernel", "'" + path + "' is not a kernel keel can boot: " + e.what());
  }
  if (cmdline.size() > limit)
    refuse("cmdline", std::to_string(cmdline.size()) + " bytes; the kernel accepts at most " +
                          std::to_string(limit));
}

}  // namespace

bool valid_vm_name(const std::string& name) {
  static const std::regex pattern(R"(^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$)");
  return std::regex_match(name, pattern);
}

VmDefinition parse_definition(const json& doc) {
  check_object(doc, "", {"name", "vcpus", "memory_mib", "accel", "cpu", "kernel", "initrd", "cmdline",
                         "test_guest", "disks", "nets", "boot", "boot_entry", "cloud_init",
                         "autostart", "on_crash"});
  VmDefinition d;
  const json* name = member(doc, "name");
  if (!name) refuse("name", "missing");
  d.name = get_string(*name, "name", 63);
  if (!valid_vm_name(d.name)) {
    refuse("name", "'" + d.name + "' must be 1-63 characters of A-Z a-z 0-9 . _ - starting with a "
                   "letter or digit");
  }
  if (const json* v = member(doc, "accel")) {
    d.accel = get_string(*v, "accel");
    if (d.accel != "auto" && d.accel != "kvm" && d.accel != "emu") {
      refuse("accel", "'" + d.accel + "' is not one of auto, kvm, emu");
    }
  }
  if (const json* v = member(doc, "cpu")) {
    d.cpu = get_string(*v, "cpu");
    if (!x86::parse_cpu_model(d.cpu)) refuse("cpu", "'" + d.cpu + "' is not one of host, baseline");
  }
  if (const json* v = member(doc, "vcpus")) {
    d.vcpus = static_cast<uint32_t>(get_integer(*v, "vcpus", 1, 255));
    check_as_the_vmm("vcpus", [&] { validate_vcpu_count(d.vcpus, parse_accel(d.accel)); });
  }
  if (const json* v = member(doc, "memory_mib")) {
    d.memory_mib = get_integer(*v, "memory_mib", 1, 1u << 20);
    check_as_the_vmm("memory_mib", [&] { validate_memory_size(d.memory_mib << 20); });
  }
  if (const json* v = member(doc, "autostart")) d.autostart = get_bool(*v, "autostart");
  if (const json* v = member(doc, "on_crash")) {
    d.on_crash = get_string(*v, "on_crash");
    if (std::find(std::begin(kOnCrashActions), std::end(kOnCrashActions), d.on_crash) ==
        std::end(kOnCrashActions))
      refuse("on_crash", "'" + d.on_crash + "' is not one of destroy, restart, preserve");
  }
  if (const json* v = member(doc, "kernel")) d.kernel = get_file(*v, "kernel");
  if (const json* v = member(doc, "initrd")) d.initrd = get_file(*v, "initrd");
  if (const json* v = member(doc, "cmdline")) d.cmdline = get_string(*v, "cmdline", 2048);
  if (const json* v = member(doc, "test_guest")) d.test_guest = get_file(*v, "test_guest");
  if (const json* v = member(doc, "boot")) {
    d.boot = get_string(*v, "boot");
    if (d.boot != "kernel" && d.boot != "disk") refuse("boot", "'" + d.boot + "' is not one of kernel, disk");
  }
  if (const json* v = member(doc, "boot_entry")) {
    if (v->is_number_integer()) d.boot_entry = std::to_string(get_integer(*v, "boot_entry", 0, 511));
    else d.boot_entry = get_string(*v, "boot_entry", 256);
    if (d.boot != "disk") refuse("boot_entry", "needs \"boot\": \"disk\"");
  }
  if (const json* v = member(doc, "cloud_init")) {
    check_object(*v, "cloud_init", {"user_data", "meta_data", "network_config"});
    VmDefinition::CloudInit ci;
    const json* ud = member(*v, "user_data");
    if (!ud) refuse("cloud_init.user_data", "missing");
    ci.user_data = get_file(*ud, "cloud_init.user_data");
    if (const json* m = member(*v, "meta_data")) ci.meta_data = get_file(*m, "cloud_init.meta_data");
    if (const json* n = member(*v, "network_config")) ci.network_config = get_file(*n, "cloud_init.network_config");
    for (const std::string* f : {&ci.user_data, &ci.meta_data, &ci.network_config})
      if (f->find(',') != std::string::npos) refuse("cloud_init", "'" + *f + "' contains a comma");
    d.cloud_init = ci;
  }
  if (d.boot == "disk") {
    if (!d.kernel.empty() || !d.test_guest.empty() || !d.initrd.empty())
      refuse("boot", "\"disk\" takes the kernel from the disk: no kernel, initrd or test_guest");
  } else if (d.kernel.empty() && d.test_guest.empty()) {
    refuse("kernel", "missing (or give test_guest, or \"boot\": \"disk\")");
  }
  if (!d.test_guest.empty()) {
    if (!d.kernel.empty()) refuse("test_guest", "cannot be combined with kernel");
    if (!d.initrd.empty()) refuse("initrd", "needs a kernel, not a test_guest");
    if (!d.cmdline.empty()) refuse("cmdline", "needs a kernel, not a test_guest");
  }

  if (const json* v = member(doc, "disks")) {
    if (!v->is_array()) refuse("disks", std::string("expected an array, got ") + type_name(*v));
    if (v->size() > 16) refuse("disks", "more than 16 disks");
    for (size_t i = 0; i < v->size(); ++i) {
      std::string field = "disks[" + std::to_string(i) + "]";
      const json& disk = (*v)[i];
      check_object(disk, field, {"path", "format", "readonly", "type"});
      DiskDefinition dd;
      if (const json* t = member(disk, "type")) {
        dd.type = get_string(*t, field + ".type");
        if (dd.type != "file" && dd.type != "block")
          refuse(field + ".type", "'" + dd.type + "' is not one of file, block");
      }
      const json* path = member(disk, "path");
      if (!path) refuse(field + ".path", "missing");
      dd.path = get_file(*path, field + ".path", dd.type == "block");
      if (dd.path.find(',') != std::string::npos) refuse(field + ".path", "contains a comma");
      if (const json* ro = member(disk, "readonly")) dd.readonly = get_bool(*ro, field + ".readonly");
      if (const json* f = member(disk, "format")) {
        dd.format = get_string(*f, field + ".format");
        if (dd.format != "raw" && dd.format != "qcow2")
          refuse(field + ".format", "'" + dd.format + "' is not one of raw, qcow2");
      }
      d.disks.push_back(std::move(dd));
    }
  }
  if (d.boot == "disk" && d.disks.empty()) refuse("disks", "\"boot\": \"disk\" needs a disk to boot from");
  if (const json* v = member(doc, "nets")) {
    std::set<std::pair<bool, uint16_t>> host_ports;  // (udp, port): each bound once
    if (!v->is_array()) refuse("nets", std::string("expected an array, got ") + type_name(*v));
    if (v->size() > 8) refuse("nets", "more than 8 networks");
    for (size_t i = 0; i < v->size(); ++i) {
      std::string field = "nets[" + std::to_string(i) + "]";
      const json& net = (*v)[i];
      check_object(net, field, {"type", "hostfwd", "ifname", "host_loopback"});
      NetDefinition nd;
      if (const json* t = member(net, "type")) nd.type = get_string(*t, field + ".type");
      if (nd.type != "user" && nd.type != "tap") {
        refuse(field + ".type", "'" + nd.type + "' is not one of user, tap");
      }
      if (const json* h = member(net, "hostfwd")) {
        if (nd.type != "user") refuse(field + ".hostfwd", "only for type user");
        if (!h->is_array()) {
          refuse(field + ".hostfwd", std::string("expected an array, got ") + type_name(*h));
        }
        for (size_t j = 0; j < h->size(); ++j) {
          std::string f = field + ".hostfwd[" + std::to_string(j) + "]";
          std::string rule = get_string((*h)[j], f, 64);
          HostForward forward;
          check_as_the_vmm(f, [&] { forward = parse_host_forward(rule); });
          if (!host_ports.insert({forward.udp, forward.host_port}).second)
            refuse(f, "host port " + std::to_string(forward.host_port) +
                          " is already forwarded by an earlier rule");
          nd.hostfwd.push_back(rule);
        }
      }
      if (const json* n = member(net, "ifname")) {
        if (nd.type != "tap") refuse(field + ".ifname", "only for type tap");
        nd.ifname = get_string(*n, field + ".ifname", 15);
        static const std::regex ifname(R"(^[A-Za-z0-9_.-]{1,15}$)");
        if (!std::regex_match(nd.ifname, ifname)) refuse(field + ".ifname", "not an interface name");
      }
      if (const json* l = member(net, "host_loopback")) {
        if (nd.type != "user") refuse(field + ".host_loopback", "only for type user");
        nd.host_loopback = get_bool(*l, field + ".host_loopback");
      }
      if (nd.type == "tap" && nd.ifname.empty()) refuse(field + ".ifname", "missing");
      d.nets.push_back(std::move(nd));
    }
  }
  return d;
}

VmDefinition parse_definition_text(const std::string& text) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range (a number too large)
    throw DefinitionError(std::string("malformed JSON: ") + e.what());
  }
  return parse_definition(doc);
}

void check_files(const VmDefinition& d) {
  // Re-parsing the stored form re-runs every file check with the same messages.
  parse_definition(d.to_json());
}

DefinitionFiles open_definition_files(const VmDefinition& d, const PeerCredentials& owner) {
  DefinitionFiles files;
  if (!d.kernel.empty()) {
    files.kernel = open_field(owner, "kernel", d.kernel, false, false);
    check_kernel(files.kernel.get(), d.kernel, d.cmdline);
  }
  if (!d.initrd.empty()) files.initrd = open_field(owner, "initrd", d.initrd, false, false);
  if (!d.test_guest.empty())
    files.test_guest = open_field(owner, "test_guest", d.test_guest, false, false);
  for (size_t i = 0; i < d.disks.size(); ++i) {
    const DiskDefinition& disk = d.disks[i];
    std::string field = "disks[" + std::to_string(i) + "]";
    bool block = disk.type == "block";
    if (block && !owner.is_root())
      refuse(field + ".type", "only root may give a VM a block device (uid " +
                                  std::to_string(owner.uid) + " asked for '" + disk.path + "')");
    files.disks.push_back(open_field(owner, field + ".path", disk.path, !disk.readonly, block));
  }
  for (size_t i = 0; i < d.nets.size(); ++i)
    if (d.nets[i].type == "tap" && !owner.is_root())
      refuse("nets[" + std::to_string(i) + "].type",
             "only root may attach a VM to a tap interface");
  return files;
}

json VmDefinition::to_json() const {
  json j{{"name", name}, {"vcpus", vcpus}, {"memory_mib", memory_mib}, {"accel", accel}};
  if (cpu != "host") j["cpu"] = cpu;
  if (!kernel.empty()) j["kernel"] = kernel;
  if (!initrd.empty()) j["initrd"] = initrd;
  if (!cmdline.empty()) j["cmdline"] = cmdline;
  if (!test_guest.empty()) j["test_guest"] = test_guest;
  if (boot != "kernel") j["boot"] = boot;
  if (!boot_entry.empty()) j["boot_entry"] = boot_entry;
  if (cloud_init) {
    json ci{{"user_data", cloud_init->user_data}};
    if (!cloud_init->meta_data.empty()) ci["meta_data"] = cloud_init->meta_data;
    if (!cloud_init->network_config.empty()) ci["network_config"] = cloud_init->network_config;
    j["cloud_init"] = ci;
  }
  json disk_list = json::array();
  for (const auto& disk : disks) {
    json dj{{"path", disk.path}, {"readonly", disk.readonly}, {"type", disk.type}};
    if (!disk.format.empty()) dj["format"] = disk.format;
    disk_list.push_back(dj);
  }
  j["disks"] = disk_list;
  json net_list = json::array();
  for (const auto& net : nets) {
    json n{{"type", net.type}};
    if (net.type == "user") n["hostfwd"] = net.hostfwd;
    if (net.type == "user" && net.host_loopback) n["host_loopback"] = true;
    if (net.type == "tap") n["ifname"] = net.ifname;
    net_list.push_back(n);
  }
  j["nets"] = net_list;
  j["autostart"] = autostart;
  j["on_crash"] = on_crash;
  return j;
}

std::vector<std::string> VmDefinition::changed_fields(const json& b) const {
  json a = to_json();
  if (!b.is_object()) return {"name"};
  std::vector<std::string> changed;
  for (auto& [key, value] : a.items())
    if (!b.contains(key) || b.at(key) != value) changed.push_back(key);
  for (auto& [key, value] : b.items())
    if (!a.contains(key)) changed.push_back(key);
  return changed;
}

std::vector<std::string> vmm_arguments(const VmDefinition& d, const std::string& control_path,
                                       const std::string& log_path) {
  std::vector<std::string> args{"run",
                                "--control", control_path,
                                "--paused",
                                "--cpus", std::to_string(d.vcpus),
                                "--memory", std::to_string(d.memory_mib) + "M",
                                "--accel", d.accel};
  if (!log_path.empty()) args.insert(args.end(), {"--log-file", log_path});
  args.insert(args.end(), {"--name", d.name});
  if (d.cpu != "host") args.insert(args.end(), {"--cpu", d.cpu});
  // A panic pauses the guest and is reported: the daemon applies on_crash.
  args.insert(args.end(), {"--on-panic", "pause"});
  if (d.boot == "disk") {
    args.insert(args.end(), {"--boot", "disk"});
    if (!d.boot_entry.empty()) args.insert(args.end(), {"--boot-entry", d.boot_entry});
    if (!d.cmdline.empty()) args.insert(args.end(), {"--cmdline", d.cmdline});
  } else if (!d.test_guest.empty()) {
    args.insert(args.end(), {"--test-guest", d.test_guest});
  } else {
    args.insert(args.end(), {"--kernel", d.kernel});
    if (!d.initrd.empty()) args.insert(args.end(), {"--initrd", d.initrd});
    if (!d.cmdline.empty()) args.insert(args.end(), {"--cmdline", d.cmdline});
  }
  for (const auto& disk : d.disks) {
    args.insert(args.end(), {"--disk", disk.path + (disk.format.empty() ? "" : ",format=" + disk.format) +
                                           (disk.readonly ? ",readonly" : "")});
  }
  if (d.cloud_init) {
    std::string spec = "user-data=" + d.cloud_init->user_data;
    if (!d.cloud_init->meta_data.empty()) spec += ",meta-data=" + d.cloud_init->meta_data;
    if (!d.cloud_init->network_config.empty()) spec += ",network-config=" + d.cloud_init->network_config;
    args.insert(args.end(), {"--cloud-init", spec});
  }
  for (const auto& net : d.nets) {
    std::string spec = net.type == "tap" ? "tap:" + net.ifname : "user";
    for (const auto& rule : net.hostfwd) spec += ",hostfwd=" + rule;
    if (net.host_loopback) spec += ",host-loopback=on";
    args.insert(args.end(), {"--net", spec});
  }
  return args;
}

}  // namespace keel::manager
