#include "engine/engine_factory.h"

#include <cstdlib>

#include "base/error.h"
#include "engine/emu/emu_engine.h"
#include "engine/emu/platform/pc_platform.h"
#include "engine/kvm/kvm_engine.h"
#include "engine/kvm/kvm_vcpu.h"

namespace keel {

const char* to_string(Accel accel) {
  switch (accel) {
    case Accel::kAuto: return "auto";
    case Accel::kKvm: return "kvm";
    case Accel::kEmu: return "emu";
  }
  return "unknown";
}

Accel parse_accel(std::string_view text) {
  if (text == "auto") return Accel::kAuto;
  if (text == "kvm") return Accel::kKvm;
  if (text == "emu") return Accel::kEmu;
  throw UsageError("unknown accelerator '" + std::string(text) + "' (use auto, kvm or emu)");
}

EngineChoice choose_engine(Accel requested, const KvmProbeResult& probe) {
  switch (requested) {
    case Accel::kKvm:
      if (probe.can_run_stock_kernel()) return {Accel::kKvm, "kvm requested; " + probe.verdict()};
      return {Accel::kKvm, "kvm requested, although " + probe.verdict()};
    case Accel::kEmu:
      return {Accel::kEmu, "emu requested"};
    case Accel::kAuto:
      break;
  }
  if (probe.can_run_stock_kernel()) return {Accel::kKvm, "auto chose kvm: " + probe.verdict()};
  return {Accel::kEmu, "auto chose emu: " + probe.verdict() + "; `keel probe` shows why"};
}

uint32_t max_vcpus(Accel accel) {
  switch (accel) {
    case Accel::kEmu: return emu::EmuEngine::kMaxVcpus;
    case Accel::kKvm:
    case Accel::kAuto: break;
  }
  return 255;  // xAPIC ids 0..254 (0xFF is the broadcast id): keel's MADT
}

VcpuCounters vcpu_counters(Vcpu& vcpu) {
  VcpuCounters out;
  // The factory is the one place that knows both engines' vCPU types.
  if (auto* kvm = dynamic_cast<KvmVcpu*>(&vcpu)) {
    for (const auto& [name, count] : kvm->exit_counts()) out.exits.emplace_back(name, count);
  } else if (auto* emu = dynamic_cast<emu::EmuVcpu*>(&vcpu)) {
    emu::Cpu& cpu = emu->cpu();
    // As EmuEngine decides whether translated code counts (emu_engine.cc).
    bool counted = cpu.jit_stats() == nullptr;
    for (const char* name : {"KEEL_EMU_STATS", "KEEL_EMU_PROFILE"})
      if (const char* v = std::getenv(name); v && *v == '1') counted = true;
    // The vCPU thread alone writes the count; an aligned 64-bit load does not tear on x86-64.
    if (counted) out.instructions = cpu.instructions();
  }
  return out;
}

std::unique_ptr<Engine> create_engine(Accel accel, EngineContext context, EngineConfig config) {
  if (accel == Accel::kAuto) accel = choose_engine(Accel::kAuto, probe_kvm()).accel;
  switch (accel) {
    case Accel::kKvm:
      return std::make_unique<KvmEngine>(context, config);
    case Accel::kEmu: {
      // Refuse extra vCPUs before the platform claims bus ranges and starts its watcher.
      if (config.vcpus > emu::EmuEngine::kMaxVcpus)
        throw UsageError("the emu engine runs at most " +
                         std::to_string(emu::EmuEngine::kMaxVcpus) + " vCPUs");
      auto platform = emu::create_emu_platform(context, config.vcpus);
      return std::make_unique<emu::EmuEngine>(context, config, std::move(platform));
    }
    case Accel::kAuto:
      break;
  }
  throw Error("no engine for accelerator " + std::string(to_string(accel)));
}

}  // namespace keel

namespace keel {

sandbox::AllowList main_thread_syscalls(std::string_view engine_name) {
  if (engine_name == "kvm") return {{"ioctl", {{1, 0xFF00, 0xAE00}}}};
  return {};
}

sandbox::AllowList vcpu_syscalls(std::string_view engine_name) {
  if (engine_name == "kvm") {
    return {
        // KVM_RUN and the register, routing and irqfd ioctls of the vCPU and VM fds: every KVM
        // ioctl has type 0xAE; nothing else may be ioctl'ed.
        {"ioctl", {{1, 0xFF00, 0xAE00}}},
        // The kick: SIGUSR1 to a thread of this process (tgkill is in every list, to this pid).
    };
  }
  // emu: no system calls of its own beyond every thread's (HLT and exclusive runs sleep on
  // condition variables, PAUSE yields): the translator's code cache is mapped executable when
  // the vCPU is created, before confinement, so its threads keep the PROT_EXEC ban too.
  return {};
}

}  // namespace keel
