// x87 on emu against the real CPU: hand-written x87 programs run at CPL3 in the differential
// sandbox on KVM (guest CPL3 runs natively on this host) and on emu; each program stores its
// results, status words and finally the whole x87 state (FNSAVE, pointer fields cleared) into the
// data page, which compare() checks byte for byte with registers and flags.
#include <gtest/gtest.h>

#include <string>

#include "difftest/compare.h"
#include "difftest/sandbox.h"
#include "emu_harness.h"
#include "engine/engine_factory.h"

namespace keel::difftest {
namespace {

// Every program ends by dumping the x87 state at data+0x1800 and stopping.
constexpr const char* kEpilogue = R"(
    fnsave [0x21800]
    mov dword [0x2180c], 0      ; FIP, FCS/FOP, FDP, FDS: implementation details
    mov qword [0x21810], 0
    mov dword [0x21818], 0
    out 0xe0, al
    jmp $
)";

Program x87_program(const std::string& body) {
  Program p;
  auto bytes = emu::test::assemble(body + kEpilogue, layout::kCode);
  p.instrs.push_back(Instr{bytes, layout::kCode, InsnClass::kSetup, 0, 0});
  p.gpr[4] = layout::kInitialRsp;
  p.data.assign(layout::kDataSize, 0);
  p.rodata.assign(0x1000, 0);
  p.stack.assign(layout::kStackSize, 0);
  // Operands at data+0: doubles, floats, integers, an 80-bit value and a BCD number.
  auto put = [&](size_t off, const void* v, size_t n) { std::memcpy(p.data.data() + off, v, n); };
  const double d[] = {1.5, -2.25, 1e300, 3.0e-310 /* denormal */, 0.7, -0.0};
  put(0x00, d, sizeof d);
  const float f[] = {4.0f, -0.1f, 3.4e38f};
  put(0x40, f, sizeof f);
  const int16_t w = -7;
  put(0x50, &w, 2);
  const int32_t i32 = 123456789;
  put(0x54, &i32, 4);
  const int64_t i64 = -9007199254740993LL;
  put(0x58, &i64, 8);
  const uint8_t bcd[10] = {0x89, 0x67, 0x45, 0x23, 0x01, 0, 0, 0, 0, 0x80};  // -123456789
  put(0x60, bcd, 10);
  const uint16_t cws[] = {0x037F, 0x077F, 0x0B7F, 0x0F7F, 0x007F /* single precision */};
  put(0x70, cws, sizeof cws);
  return p;
}

struct Case {
  const char* name;
  const char* body;
};

// Results go to data+0x100.. (rdi walks), status words with them.
const Case kCases[] = {
    {"arithmetic in every operand form", R"(
    mov rdi, 0x20100
    fninit
    fld qword [0x20000]
    fadd dword [0x20040]
    fsub qword [0x20008]
    fmul dword [0x20044]
    fdiv qword [0x20020]
    fsubr dword [0x20040]
    fdivr qword [0x20008]
    fiadd word [0x20050]
    fimul dword [0x20054]
    fisub dword [0x20054]
    fidivr word [0x20050]
    fld qword [0x20020]
    fadd st0, st1
    fadd st1, st0
    fsub st0, st1
    fsub st1, st0
    fsubr st0, st1
    fsubr st1, st0
    fmul st1, st0
    fdiv st0, st1
    fdivr st1, st0
    faddp st1, st0
    fld1
    fsubp st1, st0
    fldpi
    fsubrp st1, st0
    fldl2e
    fdivp st1, st0
    fldln2
    fdivrp st1, st0
    fldlg2
    fmulp st1, st0
    fstp tword [rdi]
    fnstsw ax
    mov [rdi + 16], ax
)"},
    {"stores, integer conversions and rounding control", R"(
    mov rdi, 0x20100
    fninit
    xor ecx, ecx
.loop:
    fldcw [0x20070 + rcx * 2]
    fld qword [0x20000]
    fld qword [0x20008]
    fild qword [0x20058]
    fist word [rdi]
    fist dword [rdi + 2]
    fistp qword [rdi + 6]
    fld st0
    fistp dword [rdi + 14]
    fisttp word [rdi + 18]
    fisttp qword [rdi + 20]
    fld qword [0x20020]
    fst dword [rdi + 28]
    fst qword [rdi + 32]
    fstp tword [rdi + 40]
    fld qword [0x20010]     ; 1e300: overflows float and int (masked: indefinite)
    fst dword [rdi + 50]
    fistp dword [rdi + 54]
    fld qword [0x20018]     ; denormal double
    fld tword [rdi + 40]
    fmulp st1, st0
    fst dword [rdi + 58]
    fstp qword [rdi + 62]
    fild dword [0x20054]
    fbstp [rdi + 70]
    fbld [0x20060]
    fstp qword [rdi + 80]
    fnstsw ax
    mov [rdi + 88], ax
    fnclex
    add rdi, 96
    inc ecx
    cmp ecx, 5
    jne .loop
)"},
    {"compares, FXAM, FCMOV and FCOMI into RFLAGS", R"(
    mov rdi, 0x20100
    fninit
    fld qword [0x20008]
    fld qword [0x20000]
    fcom st1
    fnstsw ax
    mov [rdi], ax
    fcom qword [0x20000]
    fnstsw ax
    mov [rdi + 2], ax
    fucom st1
    fnstsw ax
    mov [rdi + 4], ax
    ficom word [0x20050]
    fnstsw ax
    mov [rdi + 6], ax
    ftst
    fnstsw ax
    mov [rdi + 8], ax
    fxam
    fnstsw ax
    mov [rdi + 10], ax
    fcomi st0, st1
    setb [rdi + 12]
    setp [rdi + 13]
    setz [rdi + 14]
    seto [rdi + 15]
    sets [rdi + 16]
    fucomi st0, st1
    setb [rdi + 20]
    seta [rdi + 21]
    sete [rdi + 22]
    fldz
    fdiv st0, st0            ; NaN (masked IE)
    fxam
    fnstsw ax
    mov [rdi + 24], ax
    fucomi st0, st1
    setp [rdi + 26]
    fcomip st0, st1
    setp [rdi + 27]
    mov eax, 1
    cmp eax, 2
    fcmovb st0, st1
    fcmovnb st0, st1
    fcmove st0, st1
    fcmovne st0, st1
    fcmovbe st0, st1
    fcmovnbe st0, st1
    fcmovu st0, st1
    fcmovnu st0, st1
    fcompp
    fnstsw ax
    mov [rdi + 28], ax
    ffree st0
    fxam
    fnstsw ax
    mov [rdi + 30], ax
)"},
    {"transcendental and the rest of D9", R"(
    mov rdi, 0x20100
    fninit
    fld qword [0x20020]     ; 0.7
    fsin
    fstp tword [rdi]
    fld qword [0x20020]
    fcos
    fstp tword [rdi + 10]
    fld qword [0x20020]
    fsincos
    fstp tword [rdi + 20]
    fstp tword [rdi + 30]
    fld qword [0x20020]
    fptan
    fstp tword [rdi + 40]
    fstp tword [rdi + 50]
    fld1
    fld qword [0x20020]
    fpatan
    fstp tword [rdi + 60]
    fld qword [0x20000]
    fld qword [0x20020]
    fyl2x
    fstp tword [rdi + 70]
    fld qword [0x20000]
    fld qword [0x20020]
    fyl2xp1
    fstp tword [rdi + 80]
    fld qword [0x20020]
    f2xm1
    fstp tword [rdi + 90]
    fld qword [0x20020]
    fld qword [0x20010]
    fprem
    fnstsw ax
    mov [rdi + 100], ax
    fstp tword [rdi + 102]
    fld qword [0x20010]
    fprem1
    fnstsw ax
    mov [rdi + 112], ax
    fstp tword [rdi + 114]
    fstp st0
    fld qword [0x20008]
    fld qword [0x20000]
    fscale
    fxtract
    frndint
    fsqrt
    fchs
    fabs
    fxch st2
    fxch
    fincstp
    fdecstp
    fnop
    fstp tword [rdi + 124]
    fnstenv [rdi + 140]
    mov dword [rdi + 152], 0
    mov qword [rdi + 156], 0
    mov dword [rdi + 164], 0
    fldenv [rdi + 140]
    fld1
    fnsave [rdi + 170]
    mov dword [rdi + 182], 0
    mov qword [rdi + 186], 0
    mov word [rdi + 194], 0
    fld qword [0x20000]
    frstor [rdi + 170]
    fstp tword [rdi + 290]
)"},
    {"stack overflow and underflow, masked", R"(
    fninit
    fld1
    fld1
    fld1
    fld1
    fld1
    fld1
    fld1
    fld1
    fld1                    ; overflow: IE SF C1
    fnstsw ax
    mov [0x20100], ax
    fninit
    fadd st0, st1           ; underflow: IE SF
    fnstsw ax
    mov [0x20102], ax
    fst qword [0x20108]
)"},
};

std::unique_ptr<Sandbox> sandbox_or_null(Accel accel, std::string& why) {
  try {
    return std::make_unique<Sandbox>(
        [accel](const EngineContext& ctx) { return create_engine(accel, ctx, EngineConfig{}); });
  } catch (const std::exception& e) {
    why = e.what();
    return nullptr;
  }
}

TEST(DiffTestX87, EmuMatchesKvm) {
  std::string why;
  auto kvm = sandbox_or_null(Accel::kKvm, why);
  if (!kvm) GTEST_SKIP() << "kvm engine unavailable: " << why;
  auto emu = sandbox_or_null(Accel::kEmu, why);
  ASSERT_TRUE(emu) << why;
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    Program p = x87_program(c.body);
    Outcome e = kvm->run(p);
    Outcome a = emu->run(p);
    ASSERT_EQ(e.end, Outcome::End::kDone) << "on kvm: " << e.message << " vector " << e.vector;
    auto diffs = compare(p, e, a, CompareOptions{.mask_undefined_flags = false});
    if (!diffs.empty()) ADD_FAILURE() << report(p, e, a, diffs, "kvm", "emu");
  }
}

}  // namespace
}  // namespace keel::difftest
