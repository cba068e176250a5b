// emu x87 (ops_x87.cc): the guest's x87 state runs on the host's x87 unit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "emu_harness.h"

namespace keel::emu::test {
namespace {

using namespace x86;

// x87 arithmetic runs on the host's x87 unit (ops_x87.cc): loads, stores in every format,
// arithmetic in both operand orders, FCOMI into RFLAGS, TOP/tags after pops.
TEST_P(EmuCpu, X87ArithmeticAndStores) {
  EmuMachine m(GetParam());
  m.mem.write_obj<double>(0x300000, 1.5);
  m.mem.write_obj<float>(0x300008, 4.0f);
  m.mem.write_obj<int32_t>(0x30000C, -3);
  ASSERT_EQ(m.run(R"(
    fninit
    fld qword [0x300000]      ; 1.5
    fadd dword [0x300008]     ; 5.5
    fild dword [0x30000C]     ; st0 = -3, st1 = 5.5
    fsub st0, st1             ; -8.5
    fdivr qword [0x300000]    ; 1.5 / -8.5
    fstp tword [0x300100]
    fld1
    fldz
    fcomip st0, st1           ; 0 < 1: CF
    setc dl
    setz bl
    fstp qword [0x300110]     ; 1.0
    fld qword [0x300000]
    fistp qword [0x300118]    ; 1.5 -> 2 (round to nearest even)
    fld qword [0x300000]
    fisttp dword [0x300120]   ; truncates to 1
    fld qword [0x300000]
    fsqrt
    fstp dword [0x300124]
    fstp st0                  ; the 5.5 left from the start
    fnstsw ax
    mov ecx, eax
    hlt)"), VcpuExit::kHalted) << "vector " << m.vector();
  long double q = 0;
  std::memcpy(&q, m.mem.host_ptr(0x300100, 10), 10);
  EXPECT_EQ(q, 1.5L / -8.5L);
  EXPECT_EQ(m.reg(RDX) & 0xFF, 1u);
  EXPECT_EQ(m.reg(RBX) & 0xFF, 0u);
  EXPECT_EQ(m.mem.read_obj<double>(0x300110), 1.0);
  EXPECT_EQ(m.mem.read_obj<int64_t>(0x300118), 2);
  EXPECT_EQ(m.mem.read_obj<int32_t>(0x300120), 1);
  EXPECT_EQ(m.mem.read_obj<float>(0x300124), std::sqrt(1.5f));
  EXPECT_EQ((m.reg(RCX) >> 11) & 7, 0u) << "TOP back at 0 after balanced pushes and pops";
  x86::FpuState f = m.vcpu->get_fpu();
  EXPECT_EQ(f.fxsave[4], 0u) << "every register empty";
}

// An unmasked x87 exception is reported as #MF at the next waiting x87 instruction, and the
// store to a read-only/absent page faults precisely (nothing changes).
TEST_P(EmuCpu, X87DeferredExceptionAndPreciseStoreFault) {
  EmuMachine m(GetParam());
  m.mem.write_obj<uint16_t>(0x300000, 0x37B);  // ZE unmasked
  ASSERT_EQ(m.run(R"(
    fninit
    fldcw [0x300000]
    fld1
    fldz
    fdivp st1, st0            ; 1/0: ZE, pending
    mov eax, 1
    fld1                      ; #MF here
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 16);
  EXPECT_EQ(m.reg(RAX), 1u);

  // Page 3 of the small-page window is not present: FSTP to it faults and pops nothing.
  m.mem.write_obj<uint64_t>(kPt + 3 * 8, 0);
  ASSERT_EQ(m.run(R"(
    fninit
    fld1
    fstp qword [0x1003008]
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 14);
  x86::FpuState f = m.vcpu->get_fpu();
  uint16_t fsw = uint16_t(f.fxsave[2] | (f.fxsave[3] << 8));
  EXPECT_EQ((fsw >> 11) & 7, 7u) << "still one value on the stack";
  EXPECT_EQ(f.fxsave[4], 0x80u);
}

}  // namespace
}  // namespace keel::emu::test
