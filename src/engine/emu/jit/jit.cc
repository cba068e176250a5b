#include "engine/emu/jit/jit.h"

#include <sys/mman.h>
#include <unistd.h>
#include <xbyak/xbyak.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#include "base/error.h"

namespace keel::emu::jit {

namespace {

using namespace Xbyak::util;

// The fixed code: enter/exit, the exits translations share, and the jump-cache lookup.
class StubEmitter : public Xbyak::CodeGenerator {
 public:
  StubEmitter(uint8_t* buf, size_t size) : CodeGenerator(size, buf) {}

  void emit(Stubs* s, const void** enter) {
    // enter(CpuHot* rdi, code rsi): save the callee-saved registers, keep rsp 16-byte aligned
    // at every call translated code makes, rbp = the CPU.
    *enter = getCurr();
    push(rbx);
    push(rbp);
    push(r12);
    push(r13);
    push(r14);
    push(r15);
    sub(rsp, 8);
    mov(rbp, rdi);
    mov(r15, qword[rbp + kOffRip]);  // a block runs with its own address in r15
    jmp(rsi);

    s->epilogue = getCurr();
    add(rsp, 8);
    pop(r15);
    pop(r14);
    pop(r13);
    pop(r12);
    pop(rbp);
    pop(rbx);
    ret();

    s->check_exit = getCurr();
    mov(qword[rbp + kOffRip], r15);
    mov(byte[rbp + kOffExit], uint8_t(kJitCheck));
    jmp(s->epilogue);

    s->status_exit = getCurr();
    mov(byte[rbp + kOffExit], al);
    add(qword[rbp + kOffIcount], rdx);
    jmp(s->epilogue);

    // Jump-cache lookup of [rbp+rip], one per soft TLB (Cpu::find_block fills the cache with the
    // same hash and checks the same things: RIP, generation and key, the TLB still mapping the
    // page to the block's page for execution, a translation).
    for (int user = 0; user < 2; ++user) {
      Xbyak::Label miss, found;
      s->lookup[user] = getCurr();
      mov(rax, qword[rbp + kOffRip]);
      imul(edx, eax, int(kJumpCacheHash));  // jump_cache_set(rax) * 2 * sizeof(JumpEntry)
      shr(edx, 32 - kJumpCacheBits);
      shl(edx, 7);
      cmp(rax, qword[rbp + rdx + (kOffJumpCache + kJcRip)]);
      je(found);
      add(edx, 64);  // the set's second way
      cmp(rax, qword[rbp + rdx + (kOffJumpCache + kJcRip)]);
      jne(miss);
      L(found);
      mov(rcx, qword[rbp + rdx + (kOffJumpCache + kJcGenkey)]);
      cmp(rcx, qword[rbp + kOffGenkey]);
      jne(miss);
      mov(rcx, rax);
      shr(rcx, 6);
      and_(ecx, (kTlbSize - 1) << 6);
      and_(rax, uint32_t(-4096));
      cmp(rax, qword[rbp + rcx + (itlb_offset(user) + kTlbXtag)]);
      jne(miss);
      mov(rax, qword[rbp + rcx + (itlb_offset(user) + kTlbGpa)]);
      cmp(rax, qword[rbp + rdx + (kOffJumpCache + kJcPage)]);
      jne(miss);
      mov(rax, qword[rbp + rdx + (kOffJumpCache + kJcCode)]);
      test(rax, rax);
      jz(miss);
      mov(r15, qword[rbp + kOffRip]);
      jmp(rax);
      L(miss);
      mov(byte[rbp + kOffExit], uint8_t(kJitMiss));
      jmp(s->epilogue);
    }
  }
};

}  // namespace

Jit::Jit(const void* call, const void* pack_flags, bool count, size_t cache_bytes)
    : count_(count) {
  // One RWX mapping, written only by this vCPU's thread between runs of translated code.
  void* p = ::mmap(nullptr, cache_bytes, PROT_READ | PROT_WRITE | PROT_EXEC,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw_errno("emu: mmap of the translation cache");
  code_ = Mapping(p, cache_bytes);
  ::madvise(p, cache_bytes, MADV_HUGEPAGE);
  stats_.capacity = cache_bytes;

  stubs_.call = call;
  stubs_.pack_flags = pack_flags;
  StubEmitter e(code_.data(), 4096);
  const void* enter = nullptr;
  e.emit(&stubs_, &enter);
  enter_ = reinterpret_cast<void (*)(CpuHot*, const void*)>(const_cast<void*>(enter));
  stubs_end_ = (e.getSize() + 63) & ~size_t(63);
  used_ = stubs_end_;

  if (const char* d = std::getenv("KEEL_EMU_JIT_DUMP")) dump_dir_ = d;
  if (const char* v = std::getenv("KEEL_EMU_PERFMAP"); v && *v == '1') {
    std::string path = "/tmp/perf-" + std::to_string(getpid()) + ".map";
    perf_map_.reset(std::fopen(path.c_str(), "a"));
  }
}

Jit::~Jit() = default;

std::optional<Translation> Jit::translate(const Block& block, bool user) {
  auto t0 = std::chrono::steady_clock::now();
  uint8_t* at = code_.data() + used_;
  Translation t;
  try {
    t = translate_block(block, user, count_, stubs_, at, code_.size() - used_);
  } catch (const Xbyak::Error& e) {
    if (int(e) == Xbyak::ERR_CODE_IS_TOO_BIG) return std::nullopt;
    throw Error(std::string("emu: translating the block at guest-physical 0x") + [&] {
      char s[32];
      std::snprintf(s, sizeof s, "%llx", static_cast<unsigned long long>(block.start_gpa));
      return std::string(s);
    }() + ": " + e.what());
  }
  used_ += (t.size + 15) & ~size_t(15);
  ++stats_.blocks;
  stats_.native_insns += t.native;
  stats_.helper_insns += t.helpers;
  stats_.code_bytes = used_;
  stats_.translate_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!dump_dir_.empty()) {
    // KEEL_EMU_JIT_DUMP=DIR: DIR/GPA[-user].bin, for objdump -D -b binary -m i386:x86-64.
    char name[64];
    std::snprintf(name, sizeof name, "/%llx%s.bin", static_cast<unsigned long long>(block.start_gpa),
                  user ? "-user" : "");
    if (FILE* f = std::fopen((dump_dir_ + name).c_str(), "wb")) {
      std::fwrite(t.entry, 1, t.size, f);
      std::fclose(f);
    }
  }
  if (perf_map_)
    std::fprintf(perf_map_.get(), "%llx %zx keel-emu gpa 0x%llx%s\n",
                 static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(t.entry)), t.size,
                 static_cast<unsigned long long>(block.start_gpa), user ? " user" : "");
  return t;
}

void Jit::link(uint8_t* slot, const void* target) {
  int64_t rel = reinterpret_cast<const uint8_t*>(target) - (slot + 5);
  int32_t rel32 = int32_t(rel);
  std::memcpy(slot + 1, &rel32, 4);
  ++stats_.links;
}

void Jit::flush() {
  used_ = stubs_end_;
  stats_.code_bytes = used_;
  ++stats_.flushes;
}

}  // namespace keel::emu::jit
