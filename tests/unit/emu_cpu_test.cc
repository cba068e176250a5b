// Unit tests of the emu CPU: small nasm snippets run on the harness machine (emu_harness.h), then
// registers, flags, memory and the exceptions taken are checked.
#include <gtest/gtest.h>

#include <thread>

#include "emu_harness.h"
#include "engine/emu/platform/kvm_clock.h"

namespace keel::emu::test {
namespace {

using namespace x86;

INSTANTIATE_TEST_SUITE_P(Tiers, EmuCpu, testing::Values(kInterpreterTier, kTranslatedTier),
                         tier_name);

TEST_P(EmuCpu, HltWithInterruptsDisabledReturnsHalted) {
  EmuMachine m(GetParam());
  EXPECT_EQ(m.run("mov eax, 42\nhlt"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(RAX), 42u);
  EXPECT_EQ(m.rip(), kCode + 6);
  EXPECT_EQ(m.vector(), -1);
}

TEST_P(EmuCpu, KickBeforeRunIsSticky) {
  EmuMachine m(GetParam());
  m.vcpu->set_state(m.initial_state());
  m.vcpu->kick();
  EXPECT_EQ(m.vcpu->run(), VcpuExit::kStopped);
}

TEST_P(EmuCpu, KickFromAnotherThreadStopsALoop) {
  EmuMachine m(GetParam());
  auto bytes = assemble("l: inc rax\njmp l");
  m.mem.write(kCode, bytes.data(), bytes.size());
  m.vcpu->set_state(m.initial_state());
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    m.vcpu->kick();
  });
  EXPECT_EQ(m.vcpu->run(), VcpuExit::kStopped);
  t.join();
  EXPECT_GT(m.reg(RAX), 1000u);
}

TEST_P(EmuCpu, AddSubFlags) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov eax, 0xFFFFFFFF
    add eax, 1          ; CF ZF PF AF set
    pushfq
    pop rbx
    mov ecx, 0x7FFFFFFF
    add ecx, 1          ; OF SF AF PF
    pushfq
    pop rdx
    mov esi, 5
    sub esi, 7          ; CF SF AF
    pushfq
    pop rdi
    mov r8, 1
    stc
    adc r8, 1           ; 3
    mov r9, 10
    stc
    sbb r9, 3           ; 6
    hlt)"), VcpuExit::kHalted);
  const uint64_t m6 = kFlagCF | kFlagPF | kFlagAF | kFlagZF | kFlagSF | kFlagOF;
  EXPECT_EQ(m.reg(RAX), 0u);
  EXPECT_EQ(m.reg(RBX) & m6, kFlagCF | kFlagZF | kFlagPF | kFlagAF);
  EXPECT_EQ(m.reg(RCX), 0x80000000u);
  EXPECT_EQ(m.reg(RDX) & m6, kFlagOF | kFlagSF | kFlagAF | kFlagPF);
  EXPECT_EQ(m.reg(RDI) & m6, kFlagCF | kFlagSF | kFlagAF);
  EXPECT_EQ(m.reg(R8), 3u);
  EXPECT_EQ(m.reg(R9), 6u);
}

TEST_P(EmuCpu, PartialRegistersAndExtension) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov rax, -1
    mov eax, 1          ; zero-extends
    mov rbx, -1
    mov bx, 2           ; merges
    mov rcx, 0
    mov ch, 0x80
    movsx edx, ch
    movzx esi, ch
    mov edi, 0x80000000
    movsxd rdi, edi
    mov r8, -1
    mov r8b, 0
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(RAX), 1u);
  EXPECT_EQ(m.reg(RBX), 0xFFFFFFFFFFFF0002ull);
  EXPECT_EQ(m.reg(RCX), 0x8000u);
  EXPECT_EQ(m.reg(RDX), 0xFFFFFF80ull);
  EXPECT_EQ(m.reg(RSI), 0x80u);
  EXPECT_EQ(m.reg(RDI), 0xFFFFFFFF80000000ull);
  EXPECT_EQ(m.reg(R8), 0xFFFFFFFFFFFFFF00ull);
}

TEST_P(EmuCpu, ShiftsAndRotates) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov eax, 0x80000001
    shl eax, 1          ; CF=1, eax=2
    setc bl
    mov ecx, 3
    mov edx, 0xF0
    shr edx, cl         ; 0x1E, CF=0
    setc bh
    mov rsi, -16
    sar rsi, 2          ; -4
    mov edi, 0x80000000
    rol edi, 1          ; 1, CF=1
    setc r8b
    mov r9d, 1
    ror r9d, 1          ; 0x80000000
    mov r10, 1
    stc
    rcl r10, 1          ; 3
    mov r11d, 0x12345678
    shl r11d, 0         ; no change
    mov r12d, 0xFF
    shld r12d, r11d, 8  ; 0xFF12
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(RAX), 2u);
  EXPECT_EQ(m.reg(RBX) & 0xFFFF, 0x0001u);
  EXPECT_EQ(m.reg(RDX), 0x1Eu);
  EXPECT_EQ(m.reg(RSI), uint64_t(-4));
  EXPECT_EQ(m.reg(RDI), 1u);
  EXPECT_EQ(m.reg(R8) & 0xFF, 1u);
  EXPECT_EQ(m.reg(R9), 0x80000000u);
  EXPECT_EQ(m.reg(R10), 3u);
  EXPECT_EQ(m.reg(R11), 0x12345678u);
  EXPECT_EQ(m.reg(R12), 0xFF12u);
}

TEST_P(EmuCpu, MulDiv) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov rax, 0x100000000
    mov rbx, 0x100000000
    mul rbx             ; rdx:rax = 2^64
    mov r8, rdx
    mov r9, rax
    mov rax, -7
    cqo
    mov rcx, 2
    idiv rcx            ; -3 rem -1
    mov r10, rax
    mov r11, rdx
    mov eax, 100
    imul eax, eax, -3
    mov r12, rax
    mov ax, 1000
    mov bl, 10
    div bl              ; al=100 ah=0
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(R8), 1u);
  EXPECT_EQ(m.reg(R9), 0u);
  EXPECT_EQ(m.reg(R10), uint64_t(-3));
  EXPECT_EQ(m.reg(R11), uint64_t(-1));
  EXPECT_EQ(m.reg(R12), uint32_t(-300));
  EXPECT_EQ(m.reg(RAX) & 0xFFFF, 100u);
}

TEST_P(EmuCpu, DivideErrorIsPreciseFault) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    xor ecx, ecx
    mov eax, 1
  fault:
    div ecx
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 0);
  EXPECT_EQ(m.frame(0), kCode + 7);  // RIP of the DIV
  EXPECT_EQ(m.frame(1), kKernelCs);
}

TEST_P(EmuCpu, IdivOverflowFaults) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov rax, 0x8000000000000000
    cqo
    mov rcx, -1
    idiv rcx
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 0);
}

TEST_P(EmuCpu, PageFaultErrorCodeAndCr2) {
  EmuMachine m(GetParam());
  // Unmap one 4 KiB page and make another read-only.
  m.mem.write_obj<uint64_t>(kPt + 5 * 8, 0);
  m.mem.write_obj<uint64_t>(kPt + 6 * 8, (kSmallPages + 6 * 4096) | 5);
  ASSERT_EQ(m.run(R"(
    mov rbx, 0x1005010
    mov rax, [rbx]
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 14);
  EXPECT_EQ(m.frame(0), 0u);  // not present, read, supervisor
  EXPECT_EQ(m.frame(1), kCode + 5);  // mov ebx, imm32 is 5 bytes
  EXPECT_EQ(m.vcpu->get_state().cr2, 0x1005010u);

  ASSERT_EQ(m.run(R"(
    mov rbx, 0x1006000
    mov rax, [rbx]      ; reads are fine
    mov [rbx], rax      ; CR0.WP: supervisor write to a read-only page faults
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 14);
  EXPECT_EQ(m.frame(0), 3u);  // present, write
  EXPECT_EQ(m.vcpu->get_state().cr2, 0x1006000u);
}

// MOV to/from a 64-bit absolute address (A0-A3 with an 8-byte moffs) uses all 64 bits: a
// constant pointer above 2 GiB is not sign-extended from 32 bits (kvm-unit-tests reads the
// xAPIC this way at 0xfee00020). Both addresses are unmapped here, so CR2 shows the address used.
TEST_P(EmuCpu, Moffs64UsesTheWholeAddress) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov eax, [qword 0x80001000]
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 14);
  EXPECT_EQ(m.vcpu->get_state().cr2, 0x80001000u);
  ASSERT_EQ(m.run(R"(
    mov [qword 0x123456789000], rax
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 14);
  EXPECT_EQ(m.frame(0), 2u);  // not present, write
  EXPECT_EQ(m.vcpu->get_state().cr2, 0x123456789000u);
  // And a mapped one, through both directions.
  ASSERT_EQ(m.run(R"(
    mov rax, 0x1122334455667788
    mov [qword 0x1000100], rax
    mov rax, 0
    mov ax, [qword 0x1000102]
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(RAX), 0x5566u);
}

TEST_P(EmuCpu, AccessedAndDirtyBits) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov rbx, 0x1003000
    mov rax, [rbx]
    mov rbx, 0x1004000
    mov [rbx], rax
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.mem.read_obj<uint64_t>(kPt + 3 * 8) & 0x60, 0x20u);  // accessed only
  EXPECT_EQ(m.mem.read_obj<uint64_t>(kPt + 4 * 8) & 0x60, 0x60u);  // accessed + dirty
}

TEST_P(EmuCpu, NxFaultsOnFetch) {
  EmuMachine m(GetParam());
  m.mem.write_obj<uint64_t>(kPt + 7 * 8, (kSmallPages + 7 * 4096) | 7 | (1ull << 63));
  m.mem.write_obj<uint8_t>(kSmallPages + 7 * 4096, 0xF4);
  ASSERT_EQ(m.run(R"(
    mov rax, 0x1007000
    call rax
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 14);
  EXPECT_EQ(m.frame(0), 0x11u);  // present, instruction fetch
  EXPECT_EQ(m.frame(1), 0x1007000u);
}

TEST_P(EmuCpu, Int3AndUd2HavePreciseRip) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run("nop\nint3\nhlt"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 3);
  EXPECT_EQ(m.frame(0), kCode + 2);  // trap: after the INT3
  ASSERT_EQ(m.run("nop\nud2\nhlt"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 6);
  EXPECT_EQ(m.frame(0), kCode + 1);  // fault: at the UD2
}

TEST_P(EmuCpu, UnknownMsrRaisesGp) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run("mov ecx, 0x12345\nrdmsr\nhlt"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 13);
  EXPECT_EQ(m.frame(0), 0u);
  EXPECT_EQ(m.frame(1), kCode + 5);
}

TEST_P(EmuCpu, MsrRoundTrip) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov ecx, 0xC0000102   ; KERNEL_GS_BASE
    mov eax, 0x89abcdef
    mov edx, 0x1234
    wrmsr
    swapgs
    mov ecx, 0xC0000101
    rdmsr
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(RAX), 0x89abcdefu);
  EXPECT_EQ(m.reg(RDX), 0x1234u);
}

TEST_P(EmuCpu, CpuidVendorAndCacheLeaves) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    xor eax, eax
    cpuid
    mov r8d, ebx
    mov r9d, edx
    mov r10d, ecx
    mov eax, 4
    xor ecx, ecx
    cpuid
    mov r11d, eax
    mov eax, 0x40000000
    cpuid
    mov r12d, ebx
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(R8), 0x756e6547u);   // "Genu"
  EXPECT_EQ(m.reg(R9), 0x49656e69u);   // "ineI"
  EXPECT_EQ(m.reg(R10), 0x6c65746eu);  // "ntel"
  EXPECT_EQ(m.reg(R11) & 0x1F, 1u);    // data cache
  EXPECT_EQ(m.reg(R12), 0x4b4d564bu);  // "KVMK"
}

// What the kernel reads to decide on speculation mitigations: ARCH_CAPABILITIES advertised in
// CPUID.7 and the MSR saying "not affected" (RDCL_NO, MDS_NO, BHI_NO, ...); SPEC_CTRL writable.
TEST_P(EmuCpu, ArchCapabilitiesSayNotAffected) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov eax, 7
    xor ecx, ecx
    cpuid
    mov r8d, edx
    mov ecx, 0x10a
    rdmsr
    mov r9d, eax
    mov ecx, 0x48
    mov eax, 0x401        ; IBRS | BHI_DIS_S
    xor edx, edx
    wrmsr
    rdmsr
    mov r10d, eax
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(R8) & (1u << 29), 1u << 29);  // ARCH_CAPABILITIES
  EXPECT_EQ(m.reg(R8) & (1u << 26), 1u << 26);  // IBRS/IBPB
  const uint32_t caps = uint32_t(m.reg(R9));
  for (int bit : {0, 1, 4, 5, 6, 8, 20, 24, 26, 27}) EXPECT_TRUE(caps & (1u << bit)) << bit;
  EXPECT_EQ(m.reg(R10), 0x401u);
}

// CPUID.1:EDX.APIC follows IA32_APIC_BASE's enable bit (kvm-unit-tests' xapic checks it), and the
// machine-check MSRs read as "no banks" (its msr test reads them without looking at CPUID).
TEST_P(EmuCpu, CpuidApicBitFollowsApicBaseAndMachineCheckMsrsRead) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov eax, 1
    cpuid
    mov r8d, edx
    mov ecx, 0x1b
    rdmsr
    and eax, ~0x800
    wrmsr
    mov eax, 1
    cpuid
    mov r9d, edx
    mov ecx, 0x179
    rdmsr
    mov r10d, eax
    mov r11d, edx
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(R8) & (1u << 9), 1u << 9);
  EXPECT_EQ(m.reg(R9) & (1u << 9), 0u);
  EXPECT_EQ(m.reg(R10), 0u);
  EXPECT_EQ(m.reg(R11), 0u);
}

TEST_P(EmuCpu, StringInstructions) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov rdi, 0x200000
    mov rcx, 100
    mov al, 0xAB
    rep stosb
    mov rsi, 0x200000
    mov rdi, 0x201000
    mov rcx, 13
    rep movsq           ; 104 bytes: 100 of 0xAB then 4 zero
    mov rdi, 0x201000
    mov rcx, 200
    xor al, al
    repne scasb         ; stops after the first zero (index 100)
    mov r8, rcx
    std
    mov rsi, 0x200063
    mov rdi, 0x202063
    mov rcx, 100
    rep movsb           ; backwards
    cld
    mov rsi, 0x200000
    mov rdi, 0x202000
    mov rcx, 100
    repe cmpsb
    setz r9b
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(R8), 99u);
  EXPECT_EQ(m.reg(R9) & 0xFF, 1u);
  EXPECT_EQ(m.mem.read_obj<uint8_t>(0x201000 + 99), 0xABu);
  EXPECT_EQ(m.mem.read_obj<uint8_t>(0x201000 + 100), 0u);
  EXPECT_EQ(m.mem.read_obj<uint8_t>(0x202000), 0xABu);
}

TEST_P(EmuCpu, RepStosFaultIsRestartable) {
  EmuMachine m(GetParam());
  m.mem.write_obj<uint64_t>(kPt + 1 * 8, 0);  // 0x1001000 not present
  ASSERT_EQ(m.run(R"(
    mov rdi, 0x1000ff0
    mov rcx, 64
    mov al, 1
    rep stosb
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 14);
  EXPECT_EQ(m.frame(1), kCode + 12);  // the REP STOSB
  auto st = m.vcpu->get_state();
  EXPECT_EQ(st.gpr[RCX], 48u);  // 16 bytes were stored before the fault
  EXPECT_EQ(st.gpr[RDI], 0x1001000u);
}

TEST_P(EmuCpu, AtomicsAndBitOps) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov qword [0x300000], 5
    mov rax, 5
    mov rbx, 9
    lock cmpxchg [0x300000], rbx   ; equal: store 9
    setz r8b
    mov rax, 5
    lock cmpxchg [0x300000], rbx   ; not equal: rax = 9
    mov r9, rax
    mov rcx, 3
    lock xadd [0x300000], rcx      ; rcx = 9, mem = 12
    mov r10, rcx
    mov rax, 1
    xor edx, edx
    mov rbx, 0x1111
    mov rcx, 0x2222
    mov qword [0x300010], 1
    mov qword [0x300018], 0
    lock cmpxchg16b [0x300010]
    setz r11b
    mov r12, 0
    bts r12, 40
    bt r12, 40
    setc r13b
    mov r14, 0x00F0
    bsf rax, r14
    bsr rdx, r14
    rep bsf rsi, r14      ; BSF without BMI1
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(R8) & 0xFF, 1u);
  EXPECT_EQ(m.reg(R9), 9u);
  EXPECT_EQ(m.reg(R10), 9u);
  EXPECT_EQ(m.mem.read_obj<uint64_t>(0x300000), 12u);
  EXPECT_EQ(m.reg(R11) & 0xFF, 1u);
  EXPECT_EQ(m.mem.read_obj<uint64_t>(0x300010), 0x1111u);
  EXPECT_EQ(m.mem.read_obj<uint64_t>(0x300018), 0x2222u);
  EXPECT_EQ(m.reg(R12), 1ull << 40);
  EXPECT_EQ(m.reg(R13) & 0xFF, 1u);
  EXPECT_EQ(m.reg(RAX), 4u);
  EXPECT_EQ(m.reg(RDX), 7u);
  EXPECT_EQ(m.reg(RSI), 4u);
}

TEST_P(EmuCpu, SelfModifyingCodeIsInvalidated) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov ecx, 2
  again:
    call target
    mov byte [target + 1], 7   ; patch "mov eax, 1" into "mov eax, 7"
    dec ecx
    jnz again
    hlt
  target:
    mov eax, 1
    ret)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(RAX), 7u);
}

TEST_P(EmuCpu, WritesThroughGuestMemoryInvalidateCode) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run("mov eax, 1\nhlt"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(RAX), 1u);
  // The loader / a device rewrites the code (GuestMemory::write reports to the observer).
  auto bytes = assemble("mov eax, 2\nhlt");
  m.mem.write(kCode, bytes.data(), bytes.size());
  m.vcpu->set_state(m.initial_state());
  ASSERT_EQ(m.vcpu->run(), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(RAX), 2u);
}

TEST_P(EmuCpu, UserModeSyscallSysretAndIretq) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    ; STAR: kernel CS 0x10 (SS 0x18), user base 0x23 (64-bit CS 0x33, SS 0x2b)
    mov ecx, 0xC0000081
    xor eax, eax
    mov edx, 0x00230010
    wrmsr
    mov ecx, 0xC0000082
    mov rax, kentry
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, 0xC0000084
    mov eax, 0x200        ; clear IF on entry
    xor edx, edx
    wrmsr
    ; iretq to user mode
    push 0x2b
    push 0x70000
    push 0x202
    push 0x33
    push user
    iretq
  user:
    mov r8, 0x55
    syscall
    ; back in user mode after sysret
    mov r10, rcx
    int3
  kentry:
    mov r9, rcx           ; user return address
    mov rbx, rsp
    mov r12, 0x66
    o64 sysret)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 3);
  auto st = m.vcpu->get_state();
  EXPECT_EQ(st.gpr[R8], 0x55u);
  EXPECT_EQ(st.gpr[R12], 0x66u);
  EXPECT_EQ(st.gpr[R9], st.gpr[R10] - 0);  // RCX from syscall = return address
  // INT3 from CPL3 switched to RSP0 and pushed the user CS/SS.
  EXPECT_EQ(m.frame(1), kUserCs);
  EXPECT_EQ(m.frame(4), kUserDs);
  EXPECT_EQ(st.gpr[RSP], kRsp0 - 40);
}

TEST_P(EmuCpu, UserAccessToSupervisorPageFaults) {
  EmuMachine m(GetParam());
  m.mem.write_obj<uint64_t>(kPt + 9 * 8, (kSmallPages + 9 * 4096) | 3);  // supervisor-only
  ASSERT_EQ(m.run(R"(
    push 0x2b
    push 0x70000
    push 0x2
    push 0x33
    push user
    iretq
  user:
    mov rax, [0x1009000]
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 14);
  EXPECT_EQ(m.frame(0), 5u);  // present, read, user
}

TEST_P(EmuCpu, PrivilegedInstructionAtCpl3RaisesGp) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    push 0x2b
    push 0x70000
    push 0x2
    push 0x33
    push user
    iretq
  user:
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 13);
}

TEST_P(EmuCpu, TripleFaultShutsDown) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    push 0
    push 0
    lidt [rsp+6]        ; limit 0
    ud2)"), VcpuExit::kShutdown);
}

TEST_P(EmuCpu, DoubleFaultUsesIst) {
  EmuMachine m(GetParam());
  // #PF handler's gate points at an unmapped page: #PF during #PF delivery -> #DF on IST1.
  ASSERT_EQ(m.run(R"(
    mov rsp, 0x1006000   ; stack in a page we unmap below
    mov rax, 0x1005000
    mov qword [rax + 8], 0
    mov rbx, 0x7028      ; PTE of page 5
    mov qword [rbx], 0
    invlpg [0x1004000]
    invlpg [0x1005000]
    push rax             ; #PF; delivery pushes on the same (unmapped) stack -> #DF
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.vector(), 8);
  EXPECT_EQ(m.reg(RSP), kIst1 - 48);
}

TEST_P(EmuCpu, ExternalInterruptAfterStiHlt) {
  EmuMachine m(GetParam());
  auto bytes = assemble("sti\nhlt\nhlt");
  m.mem.write(kCode, bytes.data(), bytes.size());
  m.vcpu->set_state(m.initial_state());
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    m.apic().deliver_fixed(0x31, false);
  });
  EXPECT_EQ(m.vcpu->run(), VcpuExit::kHalted);
  t.join();
  EXPECT_EQ(m.vector(), 0x31);
  EXPECT_EQ(m.frame(0), kCode + 2);  // returns after the HLT
  ASSERT_EQ(m.apic().accepted.size(), 1u);
}

// Points IDT vector `v` at `target` (an interrupt gate in the kernel code segment).
void set_gate(EmuMachine& m, unsigned v, uint64_t target) {
  uint64_t g = (target & 0xFFFF) | (uint64_t(kKernelCs) << 16) | (0xEull << 40) | (1ull << 47) |
               ((target & 0xFFFF0000ull) << 32);
  m.mem.write_obj<uint64_t>(kIdt + v * 16, g);
  m.mem.write_obj<uint64_t>(kIdt + v * 16 + 8, target >> 32);
}

// Three NMIs raised before the vCPU looks: one is delivered, one is held while its handler runs
// and delivered after its IRET, the third merges into the held one (kvm-unit-tests' multiple and
// pending NMI tests).
TEST_P(EmuCpu, NmiArrivingDuringTheHandlerIsHeldUntilIret) {
  EmuMachine m(GetParam());
  auto handler = assemble("inc r14\niretq");
  m.mem.write(kCode + 0x800, handler.data(), handler.size());
  set_gate(m, 2, kCode + 0x800);
  m.apic().raise_nmi();
  m.apic().raise_nmi();
  m.apic().raise_nmi();
  m.cpu().request_service();
  ASSERT_EQ(m.run("xor r13, r13\nnop\nnop\nhlt"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(R14), 2u);
}

// An NMI that arrives just before STI waits for the instruction after STI (kvm-unit-tests'
// nmi-after-sti): the handler never sees the interrupt shadow's instruction not yet run.
TEST_P(EmuCpu, NmiWaitsForTheInstructionAfterSti) {
  EmuMachine m(GetParam());
  struct Raise : BusDevice {
    EmuMachine* m;
    void read(uint64_t, std::span<uint8_t>) override {}
    void write(uint64_t, std::span<const uint8_t>) override { m->apic().raise_nmi(); }
  };
  auto dev = std::make_shared<Raise>();
  dev->m = &m;
  m.pio.add(0x80, 1, dev);
  auto handler = assemble("mov r13, rbx\niretq");
  m.mem.write(kCode + 0x800, handler.data(), handler.size());
  set_gate(m, 2, kCode + 0x800);
  ASSERT_EQ(m.run(R"(
    xor rbx, rbx
    mov r13, -1
    out 0x80, al
    sti
    mov rbx, 1
    cli
    hlt
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(R13), 1u);  // 0 if the NMI came between STI and the MOV
}

TEST_P(EmuCpu, ApicPageGoesToLocalApic) {
  EmuMachine m(GetParam());
  // Map 0xFEE00000 through PD entry of the fourth GiB.
  m.mem.write_obj<uint64_t>(kPdpt + 3 * 8, 0x8000 | 3);
  m.mem.write_obj<uint64_t>(0x8000 + 503 * 8, 0xFEE00000ull | 0x83);
  ASSERT_EQ(m.run(R"(
    mov rbx, 0xFEE00000
    mov dword [rbx + 0xB0], 0x1234
    mov eax, [rbx + 0x20]
    hlt)"), VcpuExit::kHalted);
  ASSERT_EQ(m.apic().writes.size(), 1u);
  EXPECT_EQ(m.apic().writes[0].first, 0xB0u);
  EXPECT_EQ(m.apic().writes[0].second, 0x1234u);
  EXPECT_EQ(m.reg(RAX), 0x23222120u);
}

TEST_P(EmuCpu, PortIo) {
  EmuMachine m(GetParam());
  struct Dev : BusDevice {
    uint64_t last = 0;
    void read(uint64_t off, std::span<uint8_t> d) override {
      for (size_t i = 0; i < d.size(); ++i) d[i] = uint8_t(0x10 + off + i);
    }
    void write(uint64_t, std::span<const uint8_t> d) override {
      last = 0;
      std::memcpy(&last, d.data(), d.size());
    }
  };
  auto dev = std::make_shared<Dev>();
  m.pio.add(0x3F8, 8, dev);
  ASSERT_EQ(m.run(R"(
    mov dx, 0x3F8
    mov eax, 0x41
    out dx, al
    in al, dx
    mov rbx, rax
    inc dx
    in ax, dx
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(dev->last, 0x41u);
  EXPECT_EQ(m.reg(RBX) & 0xFF, 0x10u);
  EXPECT_EQ(m.reg(RAX) & 0xFFFF, 0x1211u);
}

TEST_P(EmuCpu, SseBasics) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov rax, 0x0011223344556677
    movq xmm0, rax
    pxor xmm1, xmm1
    pcmpeqb xmm1, xmm0     ; byte lanes equal to zero
    pmovmskb ebx, xmm1
    mov rax, 0x4000000000000000   ; 2.0
    movq xmm2, rax
    addsd xmm2, xmm2       ; 4.0
    movq rcx, xmm2
    mov rax, 3
    cvtsi2sd xmm3, rax
    ucomisd xmm3, xmm2     ; 3 < 4: CF
    setc dl
    cvttsd2si rsi, xmm3
    movdqa [0x300000], xmm0
    movdqu xmm4, [0x300000]
    pshufd xmm5, xmm4, 0x4E
    movq rdi, xmm5
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(RBX), 0xFF80u);  // bytes 7..15 zero, byte 7 = 0x00
  EXPECT_EQ(m.reg(RCX), 0x4010000000000000u);
  EXPECT_EQ(m.reg(RDX) & 0xFF, 1u);
  EXPECT_EQ(m.reg(RSI), 3u);
  EXPECT_EQ(m.reg(RDI), 0u);
}

TEST_P(EmuCpu, FxsaveFxrstorRoundTrip) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov rax, 0x1122334455667788
    movq xmm7, rax
    fninit
    fnstcw [0x300100]
    fxsave [0x300200]
    pxor xmm7, xmm7
    fxrstor [0x300200]
    movq rbx, xmm7
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.reg(RBX), 0x1122334455667788u);
  EXPECT_EQ(m.mem.read_obj<uint16_t>(0x300100), 0x37Fu);
  EXPECT_EQ(m.mem.read_obj<uint32_t>(0x300200 + 24), 0x1F80u);
}

TEST_P(EmuCpu, MoreVcpusThanXapicIdsAreRefused) {
  GuestMemory mem(16 << 20);
  IoBus pio("pio"), mmio("mmio");
  try {
    EmuEngine e(EngineContext{mem, pio, mmio}, EngineConfig{255}, std::make_unique<StubPlatform>());
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_STREQ(e.what(), "the emu engine runs at most 254 vCPUs");
  }
}

TEST_P(EmuCpu, KvmClockIsWrittenOnEnable) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov ecx, 0x4b564d01
    mov eax, 0x300001
    xor edx, edx
    wrmsr
    hlt)"), VcpuExit::kHalted);
  EXPECT_EQ(m.mem.read_obj<uint32_t>(0x300000), 2u);            // version (even)
  EXPECT_NE(m.mem.read_obj<uint32_t>(0x300000 + 24), 0u);       // tsc_to_system_mul
  EXPECT_EQ(m.mem.read_obj<uint8_t>(0x300000 + 29), 1u);        // TSC stable
}

// The TSC deadline MSR is in the guest's TSC, which WRMSR TSC moves away from the clock's: the
// APIC is armed in the clock's TSC (the same distance ahead) and the guest reads back what it wrote.
TEST_P(EmuCpu, TscDeadlineFollowsAWrittenTsc) {
  EmuMachine m(GetParam());
  uint64_t before = m.platform->clock().read_tsc();
  ASSERT_EQ(m.run(R"(
    mov ecx, 0x10
    mov edx, 0x10000
    xor eax, eax
    wrmsr
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r10, 4000000000
    add rax, r10
    mov r9, rax
    mov rdx, rax
    shr rdx, 32
    mov ecx, 0x6E0
    wrmsr
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov r8, rax
    hlt)"), VcpuExit::kHalted);
  uint64_t after = m.platform->clock().read_tsc();
  auto st = m.vcpu->get_state();
  EXPECT_EQ(st.gpr[R8], st.gpr[R9]);  // read back as written
  uint64_t armed = m.apic().tsc_deadline();
  EXPECT_GE(armed, before + 4'000'000'000u);  // 2 s ahead of the clock, not 2^48 ticks
  EXPECT_LE(armed, after + 4'000'000'000u);
}

TEST_P(EmuCpu, KvmClockFollowsAWrittenTsc) {
  EmuMachine m(GetParam());
  ASSERT_EQ(m.run(R"(
    mov ecx, 0x10
    mov edx, 0x10000
    xor eax, eax
    wrmsr
    mov ecx, 0x4b564d01
    mov eax, 0x300001
    xor edx, edx
    wrmsr
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r8, rax
    hlt)"), VcpuExit::kHalted);
  uint64_t now = m.platform->clock().now_ns();
  auto info = m.mem.read_obj<PvclockVcpuTimeInfo>(0x300000);
  uint64_t guest_ns = pvclock_ns(info, m.vcpu->get_state().gpr[R8]);
  EXPECT_LE(guest_ns, now);
  EXPECT_GT(guest_ns + 1'000'000'000, now);  // within a second, not 2^48 ticks off
}

}  // namespace
}  // namespace keel::emu::test
