// Machine snapshots (machine.h: save_snapshot() and the restoring constructor): the order in which
// the machine's parts are saved and restored, and the quiescing around it. The formats are each
// part's own (engine/engine_state.h, the devices' save_state()); the files are vm/snapshot.h's.
#include <filesystem>

#include "base/error.h"
#include "base/log.h"
#include "devices/legacy/acpi_pm.h"
#include "devices/legacy/boot_progress.h"
#include "devices/legacy/cmos_rtc.h"
#include "devices/legacy/fw_cfg.h"
#include "devices/legacy/i8042.h"
#include "devices/legacy/serial16550.h"
#include "devices/virtio/virtio_pci.h"
#include "devices/virtio/virtio_platform.h"
#include "engine/engine_state.h"
#include "state/state_format.h"
#include "vm/machine.h"
#include "vm/snapshot.h"

namespace keel {

namespace fs = std::filesystem;

namespace {

// The legacy devices' sections, in a fixed order.
template <typename F>
void for_each_legacy(F&& f, Serial16550& serial, I8042& i8042, CmosRtc& rtc, BootProgress& boot,
                     AcpiPm& pm) {
  f("dev/serial0", static_cast<state::Persistent&>(serial));
  f("dev/i8042", static_cast<state::Persistent&>(i8042));
  f("dev/rtc", static_cast<state::Persistent&>(rtc));
  f("dev/boot_progress", static_cast<state::Persistent&>(boot));
  f("dev/acpi_pm", static_cast<state::Persistent&>(pm));
}

std::string virtio_section(size_t i) { return "dev/virtio" + std::to_string(i); }

}  // namespace

void Machine::set_devices_quiesced(bool quiesced) {
  for (const auto& dev : pci_->devices()) {
    if (quiesced)
      dev->quiesce();
    else
      dev->unquiesce();
  }
}

void Machine::save_state(state::Writer& out) {
  snapshot::save_config(config_, out.section("vm"), pci_->disk_file_sizes());
  save_engine_state(*engine_, vcpus_, out);
  for_each_legacy(
      [&](const char* name, state::Persistent& d) { d.save_state(out.section(name, d.state_version())); },
      *serial_, *i8042_, *rtc_, *boot_progress_, *acpi_pm_);
  fw_cfg_->save_state(out.section("dev/fw_cfg", fw_cfg_->state_version()));
  const auto& devices = pci_->devices();
  for (size_t i = 0; i < devices.size(); ++i)
    devices[i]->save_state(out.section(virtio_section(i), devices[i]->state_version()));
}

void Machine::restore_state(const state::Document& in) {
  restore_engine_state(*engine_, vcpus_, in);
  for_each_legacy(
      [&](const char* name, state::Persistent& d) { d.restore_state(in.section(name, d.state_version())); },
      *serial_, *i8042_, *rtc_, *boot_progress_, *acpi_pm_);
  // Snapshots from before fw_cfg was saved have no section: its cursor starts rewound.
  if (in.has("dev/fw_cfg")) fw_cfg_->restore_state(in.section("dev/fw_cfg", fw_cfg_->state_version()));
  const auto& devices = pci_->devices();
  for (size_t i = 0; i < devices.size(); ++i)
    devices[i]->restore_state(in.section(virtio_section(i), devices[i]->state_version()));
  if (in.has(virtio_section(devices.size())))
    throw state::StateError("snapshot: it has more virtio devices than this machine (" +
                            std::to_string(devices.size()) + ")");
  restored_ = true;
}

void Machine::stop_and_send(const std::function<void(std::vector<uint8_t> state)>& send) {
  MachineState before = state();
  if (before != MachineState::kRunning && before != MachineState::kPaused)
    throw Error(std::string("migration: the VM is ") + to_string(before) + ", not running or paused");
  pause();
  set_devices_quiesced(true);
  try {
    state::Writer out;
    save_state(out);
    send(out.finish());
  } catch (...) {
    set_devices_quiesced(false);
    if (before == MachineState::kRunning) resume();
    throw;
  }
}

void Machine::save_snapshot(const fs::path& dir, bool resume_after) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("snapshot: cannot create " + dir.string() + ": " + ec.message());
  with_quiesced(resume_after, [&](state::Writer& out) {
    // RAM first, under a temporary name: a VM restored from this very directory maps the old
    // memory file, which must stay intact until it is replaced by rename.
    fs::path memory_tmp = dir / (std::string(snapshot::kMemoryFile) + ".tmp");
    snapshot::write_memory(*memory_, memory_tmp, out.section("memory", snapshot::kMemoryVersion));
    fs::rename(memory_tmp, dir / snapshot::kMemoryFile);
    snapshot::write_file_atomically(dir / snapshot::kStateFile, out.finish());
  });
  log::info("snapshot saved to {}", dir.string());
}

void Machine::save_snapshot_to(int state_fd, int memory_fd, bool resume_after) {
  with_quiesced(resume_after, [&](state::Writer& out) {
    snapshot::write_memory(*memory_, memory_fd, "the memory file passed", out.section("memory", snapshot::kMemoryVersion));
    snapshot::write_file(state_fd, out.finish(), "the state file passed");
  });
  log::info("snapshot saved to the files passed");
}

void Machine::with_quiesced(bool resume_after, const std::function<void(state::Writer&)>& write) {
  MachineState before = state();
  if (before != MachineState::kRunning && before != MachineState::kPaused)
    throw Error(std::string("snapshot: the VM is ") + to_string(before) + ", not running or paused");
  pause();
  set_devices_quiesced(true);
  try {
    state::Writer out;
    save_state(out);
    write(out);
  } catch (...) {
    set_devices_quiesced(false);
    if (before == MachineState::kRunning) this->resume();
    throw;
  }
  set_devices_quiesced(false);
  if (before == MachineState::kRunning && resume_after) resume();
}

}  // namespace keel
