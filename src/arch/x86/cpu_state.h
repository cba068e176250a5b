// Architectural x86-64 vCPU state, engine-neutral. Both engines load and report it; the boot code
// builds the 64-bit Linux entry state in it; the differential tests compare it.
#pragma once

#include <array>
#include <cstdint>

namespace keel::x86 {

enum Gpr : int { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15 };

struct Segment {
  uint64_t base = 0;
  uint32_t limit = 0;
  uint16_t selector = 0;
  uint8_t type = 0;  // descriptor type field (4 bits)
  uint8_t s = 0;     // 1 = code/data, 0 = system
  uint8_t dpl = 0;
  uint8_t present = 0;
  uint8_t avl = 0;
  uint8_t l = 0;   // 64-bit code
  uint8_t db = 0;  // default operation size
  uint8_t g = 0;   // granularity
  uint8_t unusable = 0;
};

struct DescriptorTable {
  uint64_t base = 0;
  uint16_t limit = 0;
};

struct CpuState {
  std::array<uint64_t, 16> gpr{};  // indexed by Gpr (x86 encoding order)
  uint64_t rip = 0;
  uint64_t rflags = 0x2;
  Segment cs, ds, es, fs, gs, ss, tr, ldt;
  DescriptorTable gdt, idt;
  uint64_t cr0 = 0, cr2 = 0, cr3 = 0, cr4 = 0, cr8 = 0;
  uint64_t efer = 0;
  uint64_t apic_base = 0;
};

// The FXSAVE image (x87, MMX, SSE state and MXCSR), 512 bytes, as FXSAVE lays it out.
struct FpuState {
  alignas(16) std::array<uint8_t, 512> fxsave{};
};

// RFLAGS bits.
inline constexpr uint64_t kFlagCF = 1ull << 0;
inline constexpr uint64_t kFlagPF = 1ull << 2;
inline constexpr uint64_t kFlagAF = 1ull << 4;
inline constexpr uint64_t kFlagZF = 1ull << 6;
inline constexpr uint64_t kFlagSF = 1ull << 7;
inline constexpr uint64_t kFlagTF = 1ull << 8;
inline constexpr uint64_t kFlagIF = 1ull << 9;
inline constexpr uint64_t kFlagDF = 1ull << 10;
inline constexpr uint64_t kFlagOF = 1ull << 11;
inline constexpr uint64_t kFlagIOPL = 3ull << 12;
inline constexpr uint64_t kFlagNT = 1ull << 14;
inline constexpr uint64_t kFlagRF = 1ull << 16;
inline constexpr uint64_t kFlagVM = 1ull << 17;
inline constexpr uint64_t kFlagAC = 1ull << 18;
inline constexpr uint64_t kFlagID = 1ull << 21;

}  // namespace keel::x86
