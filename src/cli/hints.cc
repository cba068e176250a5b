#include "cli/hints.h"

#include <algorithm>

namespace keel::cli {
namespace {

struct Spelling {
  const char* tool;    // whose spelling it is
  const char* theirs;  // what users of that tool type
  const char* keel;    // keel's
};

constexpr Spelling kSpellings[] = {
    // virsh verbs
    {"virsh", "dominfo", "keel info NAME"},
    {"virsh", "domstate", "keel info NAME"},
    {"virsh", "dumpxml", "keel dumpdef NAME"},
    {"virsh", "create", "keel define FILE.json, then keel start NAME"},
    {"virsh", "event", "keel events"},
    {"virsh", "capabilities", "keel probe"},
    {"virsh", "domcapabilities", "keel probe"},
    {"virsh", "nodeinfo", "keel probe"},
    {"virsh", "vcpuinfo", "keel info NAME"},
    {"virsh", "domblklist", "keel dumpdef NAME"},
    {"virsh", "domiflist", "keel dumpdef NAME"},
    {"virsh", "setvcpus", "keel edit NAME (\"vcpus\")"},
    {"virsh", "setmem", "keel edit NAME (\"memory_mib\")"},
    {"virsh", "setmaxmem", "keel edit NAME (\"memory_mib\")"},
    {"virsh", "qemu-monitor-command", "the VM's control socket (keel info NAME shows its path)"},
    {"virsh", "ttyconsole", "keel console NAME"},
    // QEMU options
    {"QEMU", "-smp", "keel run --cpus N"},
    {"QEMU", "-m", "keel run --memory SIZE"},
    {"QEMU", "-kernel", "keel run --kernel PATH"},
    {"QEMU", "-initrd", "keel run --initrd PATH"},
    {"QEMU", "-append", "keel run --cmdline STR"},
    {"QEMU", "-accel", "keel run --accel kvm|emu"},
    {"QEMU", "-enable-kvm", "keel run --accel kvm"},
    {"QEMU", "-machine", "keel run --accel kvm|emu (there is one machine type)"},
    {"QEMU", "-drive", "keel run --disk PATH[,readonly]"},
    {"QEMU", "-hda", "keel run --disk PATH"},
    {"QEMU", "-netdev", "keel run --net user[,hostfwd=tcp::HOSTPORT-:GUESTPORT] or --net tap:IFNAME"},
    {"QEMU", "-nic", "keel run --net user[,hostfwd=tcp::HOSTPORT-:GUESTPORT] or --net tap:IFNAME"},
    {"QEMU", "-net", "keel run --net user[,hostfwd=tcp::HOSTPORT-:GUESTPORT] or --net tap:IFNAME"},
    {"QEMU", "-nographic", "the default of keel run (the serial console is on the terminal)"},
    {"QEMU", "-serial", "the default of keel run (ttyS0 on the terminal; --console virtio for hvc0)"},
    {"QEMU", "-qmp", "keel run --control PATH"},
    {"QEMU", "-S", "keel run --paused"},
    {"QEMU", "-name", "keel run --name NAME"},
    {"QEMU", "-no-reboot", "the default of keel run (it ends when the guest resets)"},
    {"QEMU", "-device", "keel run --disk, --net, --console virtio, --rng"},
    // Firecracker options
    {"Firecracker", "--api-sock", "keel daemon --socket PATH"},
    {"Firecracker", "--config-file", "keel define FILE.json, then keel start NAME"},
    {"Firecracker", "--no-api", "keel run"},
};

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}

}  // namespace

std::optional<std::string> spelling_hint(std::string_view word) {
  // QEMU takes its options with one dash or two.
  std::string_view bare = word.substr(0, word.find('='));
  for (const Spelling& s : kSpellings) {
    std::string_view theirs = s.theirs;
    bool match = bare == theirs || (theirs[0] == '-' && bare == "-" + std::string(theirs));
    if (match) return std::string(s.tool) + "'s " + s.theirs + " is `" + s.keel + "`";
  }
  return std::nullopt;
}

std::string nearest(std::string_view word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = 3;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_distance) {
      best = c;
      best_distance = d;
    }
  }
  return best;
}

}  // namespace keel::cli
