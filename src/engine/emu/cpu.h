// The emu engine's x86-64 CPU: architectural state, the soft TLB, lazy flags, the decoded-block
// cache and the run loop. One Cpu per vCPU, used only by that vCPU's thread (except kick() and
// the code-invalidation queue, which are thread-safe).
//
// Hot paths (register and memory access, flag evaluation) are inline here; slow paths (page
// walks, MMIO, faults, system instructions) live in the .cc files. docs/architecture.md ("emu
// engine") describes the design.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "arch/x86/cpuid_policy.h"
#include "arch/x86/cpu_state.h"
#include "bus/io_bus.h"
#include "engine/emu/code_index.h"
#include "engine/emu/insn.h"
#include "engine/engine.h"
#include "engine/emu/local_apic.h"
#include "engine/emu/platform/kvm_clock.h"
#include "engine/emu/vcpu_group.h"
#include "memory/guest_memory.h"

namespace keel::emu {

namespace jit {
class Jit;
struct Stats;
}  // namespace jit

// A guest exception raised by an instruction. Thrown inside the CPU only, caught by the run loop
// (which rolls RIP back to the faulting instruction and delivers it through the IDT).
struct GuestFault {
  uint8_t vector;
  bool has_error;
  uint32_t error;
  bool noncanonical = false;  // #GP(0) from a non-canonical address (#SS for stack accesses)
};

enum Vector : uint8_t {
  kDE = 0, kDB = 1, kNMI = 2, kBP = 3, kOF = 4, kBR = 5, kUD = 6, kNM = 7, kDF = 8, kTS = 10,
  kNP = 11, kStackFault = 12, kGP = 13, kPF = 14, kMF = 16, kAC = 17, kMC = 18, kXM = 19,
};

[[noreturn]] void raise_fault(uint8_t vector);
[[noreturn]] void raise_fault(uint8_t vector, uint32_t error);

// Lazy flags: the last flag-setting operation's kind, size and operands; the six arithmetic flags
// are computed only when something reads them.
// kHost: the flags a translated block took from the host's own instruction, packed as LAHF/SETO
// leave them: lf_res bits 15..8 = RFLAGS bits 7..0 (SF ZF - AF - PF - CF), bit 0 = OF.
enum class FlagOp : uint8_t { kNone, kAdd, kAdc, kSub, kSbb, kLogic, kInc, kDec, kHost };

struct U128 {
  uint64_t lo, hi;
};

// Host pointer + permission tags for one guest-virtual page. A tag equals the page's linear
// address when that access is allowed without a walk, and kNoTag otherwise.
struct TlbEntry {
  uint64_t rtag, wtag, xtag;
  uintptr_t addend;  // host address = linear address + addend
  uint64_t gpa;      // guest-physical page address
  uint64_t large_mask;  // ~(page size - 1) of the guest mapping (INVLPG of large pages)
  uint64_t global;      // a global mapping (PTE.G with CR4.PGE): survives CR3 writes
  uint64_t pad;         // 64 bytes: translated code scales the index with one shift
};
inline constexpr uint64_t kNoTag = ~0ull;
inline constexpr unsigned kTlbSize = 512;   // ITLB entries; DTLB sets
inline constexpr unsigned kDtlbWays = 2;    // data TLB: 2-way (MRU way first)
inline constexpr unsigned kDtlbSize = kTlbSize * kDtlbWays;
// The jump cache is 2-way set associative: two hot branch targets whose RIPs hash alike (hot
// loops found such pairs with any single hash) do not evict each other.
inline constexpr unsigned kJumpCacheWays = 2;
inline constexpr unsigned kJumpCacheBits = 12;  // sets
inline constexpr unsigned kJumpCacheSize = kJumpCacheWays << kJumpCacheBits;
// Jump-cache set of linear RIP `la`: Fibonacci hashing of its low 32 bits. Translated code
// computes the same: imul r32, r32, kJumpCacheHash; shr r32, 32 - kJumpCacheBits.
inline constexpr uint32_t kJumpCacheHash = 0x9E3779B1u;
inline constexpr uint32_t jump_cache_set(uint64_t la) {
  return (uint32_t(la) * kJumpCacheHash) >> (32 - kJumpCacheBits);
}

// Linear RIP -> decoded block (and its translation), by set (jump_cache_set). An entry is
// valid while `genkey` equals the CPU's ((code generation << 3) | decode mode | user << 2: blocks
// freed since, or another mode or CPL, make it stale) and the soft TLB still maps the RIP's page
// to `page` for execution (so TLB flushes need not touch the cache).
struct JumpEntry {
  uint64_t rip = ~0ull;
  uint64_t genkey = 0;
  uint64_t page = 0;     // guest-physical address of the block's page
  void* code = nullptr;  // checked entry of the block's translation for this key, or nullptr
  Block* block = nullptr;
  uint64_t pad[3] = {};  // 64 bytes: translated code scales the index with one shift
};

// How translated code left (CpuHot::jit_exit). Values 1..3 are also jit_call's statuses.
enum JitExit : uint8_t {
  kJitFault = 1,   // a guest exception is pending (Cpu::jit_fault_), RIP at the instruction
  kJitLeave = 2,   // a handler asked the run loop to look at the CPU state (end_block)
  kJitError = 3,   // a host error (Cpu::jit_error_) to rethrow
  kJitCheck = 4,   // a block entry saw a kick, queued invalidations or a possible interrupt
  kJitChain = 5,   // a same-page direct branch whose target was not linked yet (jit_slot)
  kJitMiss = 6,    // an indirect or cross-page branch missed the jump cache
};

// The part of a Cpu that translated code (engine/emu/jit/) reads and writes by offset from its
// base register. Standard layout, so offsetof is well defined. The interpreter uses the same
// fields by name through Cpu, which derives from it.
struct CpuHot {
  uint64_t r[18] = {};           // GPRs, zero slot, next RIP (insn.h)
  uint64_t seg_base[8] = {};     // per SegIdx; [kSegFlat] stays 0
  uint64_t rflags_ = 0x2;        // arithmetic bits valid only when lf_op == kNone

  // Lazy flags: the last flag-setting operation's kind, size and operands; the six arithmetic
  // flags are computed only when something reads them.
  FlagOp lf_op = FlagOp::kNone;
  uint8_t lf_bits = 64;
  uint8_t lf_cin = 0;  // carry in (ADC/SBB), preserved CF (INC/DEC)
  uint64_t lf_res = 0, lf_dst = 0, lf_src = 0;

  uint64_t icount_ = 0;  // guest instructions retired
  uint64_t cr0 = 0x60000010, cr4 = 0;  // translated SSE code checks EM, TS and OSFXSR
  alignas(16) U128 xmm[16] = {};

  // Requests another thread makes of the vCPU. Adjacent: translated code tests both with one
  // 16-bit compare at every block entry. kicked_: stop (Vcpu::kick). service_requested_: look at
  // queued code invalidations, NMI/INIT/SIPI, a pending exclusive run (VcpuGroup).
  std::atomic<bool> kicked_{false};
  std::atomic<bool> service_requested_{false};

  // Translated-code state.
  uint16_t jit_flags_spill = 0;   // guest flags in the kHost packing while host flags are busy
  uint8_t jit_exit = 0;           // JitExit
  uint64_t jit_tmp = 0;
  uint8_t* jit_slot = nullptr;    // kJitChain: the rel32 jump to patch
  const std::atomic<uint32_t>* apic_attention = nullptr;  // LocalApic::attention_word()
  std::atomic<uint32_t> always_attention{1};  // for APIC models without an attention word
  uint64_t genkey = 0;            // see JumpEntry

  // Soft TLBs, [0] supervisor and [1] user: data accesses (rtag, wtag) and instruction fetches
  // (xtag) apart, as the hardware's DTLB and ITLB, so data pages do not evict code pages (whose
  // entries also validate cached branch targets, JumpEntry).
  // The DTLB is 2-way set associative: two hot pages whose linear addresses are 2 MiB apart
  // (guest ASLR makes such pairs at random) do not evict each other on every access. Set s is
  // entries [2s] (most recently filled) and [2s + 1].
  TlbEntry tlb_table[2][kDtlbSize];
  TlbEntry itlb_table[2][kTlbSize];
  JumpEntry jump_cache[kJumpCacheSize];  // set s: [2s] most recently filled, [2s + 1] older
};

enum class Access : uint8_t { kRead, kWrite, kExec };

class Cpu : public CpuHot {
 public:
  struct Deps {
    GuestMemory& memory;
    IoBus& pio;
    IoBus& mmio;
    LocalApic& apic;
    GuestClock& clock;
    uint32_t apic_id = 0;
    bool tsc_deadline = false;  // the platform implements the TSC-deadline timer
    bool kvm_clock = true;      // advertise kvm-clock (the CPU serves its MSRs)
    EmuTier tier = EmuTier::kJit;
    uint32_t hot_threshold = 64;  // executions of a block before it is translated (0: at once)
    // Translated code counts the instructions it retires (instructions()): a memory add per
    // block, so only when someone reads the figure (KEEL_EMU_STATS).
    bool count_instructions = true;
    size_t code_cache_bytes = 0;  // 0: jit::Jit::kDefaultCacheBytes
    // The VM's vCPUs (shared code pages, exclusive execution); the Cpu adds itself.
    VcpuGroup* group = nullptr;
    bool smp = false;  // other vCPUs exist: TLB fills lock against their revocations
    x86::CpuModel cpu_model = x86::CpuModel::kHost;  // what CPUID shows (keel run --cpu)
  };
  explicit Cpu(const Deps& deps);
  ~Cpu();
  Cpu(const Cpu&) = delete;
  Cpu& operator=(const Cpu&) = delete;

  // ---- Vcpu-facing interface ----
  x86::CpuState get_state();
  void set_state(const x86::CpuState& s);
  x86::FpuState get_fpu();
  void set_fpu(const x86::FpuState& f);
  // kInit: an INIT IPI arrived; the vCPU waits for a SIPI (EmuVcpu) from the INIT state.
  enum class Exit { kStopped, kShutdown, kHalted, kInit };
  Exit run();
  void kick();                               // thread-safe, sticky
  bool take_kick() { return kicked_.exchange(false, std::memory_order_acquire); }
  const std::atomic<bool>& kick_flag() const { return kicked_; }
  // Thread-safe, for VcpuGroup: the run loop should look at its requests.
  void request_service() { service_requested_.store(true, std::memory_order_release); }
  // Thread-safe, for VcpuGroup: drop the decoded code of guest page `page` at the next block
  // boundary (another vCPU or a device wrote it).
  void queue_invalidation(uint64_t page);
  // Thread-safe, for VcpuGroup: stores to guest page `page` must take the slow path.
  void revoke_write(uint64_t page);
  // Thread-safe, for VcpuGroup while this vCPU is stopped: no store takes the fast path until
  // its page is walked again (dirty logging).
  void revoke_all_writes();
  // The architectural state after INIT, then a SIPI with `vector`: real mode at vector << 12.
  void start_at_sipi(uint8_t vector);
  // IRET ends NMI blocking.
  void nmi_done() {
    nmi_blocked_ = false;
    if (nmi_latched_) request_service();  // the held NMI goes first at the next boundary
  }
  // Instructions retired (translated code's only when Deps::count_instructions).
  uint64_t instructions() const { return icount_; }
  uint64_t interpreted_instructions() const { return interpreted_; }
  // Decoded blocks built, and guest-physical pages whose decoded code was dropped (writes).
  uint64_t blocks_decoded() const { return blocks_decoded_; }
  uint64_t code_pages_invalidated() const { return pages_invalidated_; }
  // Page walks (soft-TLB misses) and whole-TLB flushes.
  uint64_t page_walks() const { return walks_; }
  uint64_t tlb_flushes() const { return tlb_flushes_; }
  // Translation-tier figures (KEEL_EMU_STATS), or nullptr on the interpreter tier.
  const jit::Stats* jit_stats() const;
  // For diagnostics: RIP and the bytes at it (best effort, no faults).
  std::string describe_rip();

  // ---- State (public: the handlers in ops_*.cc operate on it directly) ----
  // r, seg_base, rflags_ and the lazy flags live in CpuHot.
  x86::Segment sreg[6];          // ES CS SS DS FS GS
  x86::Segment tr, ldtr;
  x86::DescriptorTable gdt, idt;
  uint64_t cr2 = 0, cr3 = 0, efer = 0;  // CR0 and CR4 live in CpuHot
  uint64_t star = 0, lstar = 0, cstar = 0, fmask = 0, kernel_gs_base = 0;
  uint64_t sysenter_cs = 0, sysenter_esp = 0, sysenter_eip = 0;
  uint64_t pat = 0x0007040600070406ull, tsc_aux = 0, misc_enable = 1;  // fast strings
  uint64_t spec_ctrl = 0;  // IA32_SPEC_CTRL: stored, nothing to control (emu does not speculate)
  int64_t tsc_offset = 0;
  uint8_t cpl = 0;
  uint8_t mode = 0;  // decode mode: 0 = 64-bit, 1 = 32-bit, 2 = 16-bit

  // xmm lives in CpuHot.
  uint32_t mxcsr = 0x1F80;
  uint16_t fcw = 0x37F, fsw = 0;
  uint8_t ftw = 0;  // abridged tag word as FXSAVE stores it
  uint8_t st_regs[8][16] = {};  // x87/MMX registers in FXSAVE layout

  // ---- Registers ----
  uint64_t& rip() { return r[kRegRip]; }
  template <typename T>
  T reg(uint8_t i) const {
    if constexpr (sizeof(T) == 1) {
      if (i >= kHigh8) return static_cast<T>(r[i - kHigh8] >> 8);
    }
    return static_cast<T>(r[i]);
  }
  template <typename T>
  void set_reg(uint8_t i, T v) {
    if constexpr (sizeof(T) == 8) {
      r[i] = v;
    } else if constexpr (sizeof(T) == 4) {
      r[i] = v;  // zero-extends
    } else if constexpr (sizeof(T) == 2) {
      r[i] = (r[i] & ~0xFFFFull) | v;
    } else {
      if (i >= kHigh8)
        r[i - kHigh8] = (r[i - kHigh8] & ~0xFF00ull) | (uint64_t(v) << 8);
      else
        r[i] = (r[i] & ~0xFFull) | v;
    }
  }

  // Effective (linear) address of the instruction's memory operand.
  uint64_t ea(const Insn& in) const {
    uint64_t a = uint64_t(int64_t(in.disp)) + r[in.base] + (r[in.index] << in.scale);
    if (in.asz != 8) [[unlikely]]
      a = in.asz == 4 ? uint32_t(a) : uint16_t(a);
    return a + seg_base[in.seg];
  }

  // ---- Memory (linear addresses) ----
  // The DTLB entry that allows a `size`-byte read (write) at `la` without a walk, or nullptr.
  const TlbEntry* dtlb_read(uint64_t la, unsigned size) const {
    const TlbEntry* set = &tlb_[((la >> 12) & kTlbMask) * kDtlbWays];
    const uint64_t tag = la & ~0xFFFull;
    if ((la & 0xFFF) > 4096 - size) [[unlikely]] return nullptr;
    if (set[0].rtag == tag) [[likely]] return &set[0];
    return set[1].rtag == tag ? &set[1] : nullptr;
  }
  const TlbEntry* dtlb_write(uint64_t la, unsigned size) const {
    const TlbEntry* set = &tlb_[((la >> 12) & kTlbMask) * kDtlbWays];
    const uint64_t tag = la & ~0xFFFull;
    if ((la & 0xFFF) > 4096 - size) [[unlikely]] return nullptr;
    // Other vCPUs may revoke write tags concurrently (VcpuGroup::mark_code).
    if (__atomic_load_n(&set[0].wtag, __ATOMIC_RELAXED) == tag) [[likely]] return &set[0];
    return __atomic_load_n(&set[1].wtag, __ATOMIC_RELAXED) == tag ? &set[1] : nullptr;
  }
  template <typename T>
  T rd(uint64_t la) {
    T v;
    if (const TlbEntry* e = dtlb_read(la, sizeof(T))) [[likely]] {
      std::memcpy(&v, reinterpret_cast<void*>(la + e->addend), sizeof(T));
      return v;
    }
    read_slow(la, &v, sizeof(T), tlb_user_);
    return v;
  }
  template <typename T>
  void wr(uint64_t la, T v) {
    if (const TlbEntry* e = dtlb_write(la, sizeof(T))) [[likely]] {
      std::memcpy(reinterpret_cast<void*>(la + e->addend), &v, sizeof(T));
      return;
    }
    write_slow(la, &v, sizeof(T), tlb_user_);
  }
  // Host pointer for a read-modify-write of sizeof(T) bytes at `la` (write permission checked,
  // faults raised), or nullptr when the target is MMIO or crosses a page: then use rd/wr.
  template <typename T>
  uint8_t* wptr(uint64_t la) {
    if (const TlbEntry* e = dtlb_write(la, sizeof(T))) [[likely]]
      return reinterpret_cast<uint8_t*>(la + e->addend);
    return wptr_slow(la, sizeof(T));
  }
  // Supervisor-mode (implicit) accesses: descriptor tables, TSS, interrupt stack frames.
  template <typename T>
  T sys_rd(uint64_t la) {
    T v;
    read_slow(la, &v, sizeof(T), false);
    return v;
  }
  template <typename T>
  void sys_wr(uint64_t la, T v) {
    write_slow(la, &v, sizeof(T), false);
  }

  // Stack helpers (64-bit mode stack width is 8 unless 66h).
  template <typename T>
  void push(T v) {
    uint64_t sp = r[x86::RSP] - sizeof(T);
    if (ss_32_) [[unlikely]] {
      sp = uint32_t(sp);
      wr<T>(sp + seg_base[kSS], v);
      r[x86::RSP] = (r[x86::RSP] & ~0xFFFFFFFFull) | sp;
      return;
    }
    wr<T>(sp, v);
    r[x86::RSP] = sp;
  }
  template <typename T>
  T pop() {
    if (ss_32_) [[unlikely]] {
      uint32_t sp = uint32_t(r[x86::RSP]);
      T v = rd<T>(sp + seg_base[kSS]);
      r[x86::RSP] = (r[x86::RSP] & ~0xFFFFFFFFull) | uint32_t(sp + sizeof(T));
      return v;
    }
    T v = rd<T>(r[x86::RSP]);
    r[x86::RSP] += sizeof(T);
    return v;
  }

  // ---- Lazy flags ----
  void set_lazy(FlagOp op, uint8_t bits, uint64_t res, uint64_t dst, uint64_t src) {
    lf_op = op;
    lf_bits = bits;
    lf_res = res;
    lf_dst = dst;
    lf_src = src;
  }
  static uint64_t sign_of(uint64_t v, uint8_t bits) { return (v >> (bits - 1)) & 1; }
  static int64_t sext(uint64_t v, uint8_t bits) {
    return int64_t(v << (64 - bits)) >> (64 - bits);
  }
  bool cf() const;
  bool of() const;
  bool af() const;
  bool zf() const {
    if (lf_op == FlagOp::kNone) return rflags_ & x86::kFlagZF;
    if (lf_op == FlagOp::kHost) [[unlikely]] return (lf_res >> 14) & 1;
    return lf_res == 0;
  }
  bool sf() const {
    if (lf_op == FlagOp::kNone) return rflags_ & x86::kFlagSF;
    if (lf_op == FlagOp::kHost) [[unlikely]] return (lf_res >> 15) & 1;
    return sign_of(lf_res, lf_bits);
  }
  bool pf() const {
    if (lf_op == FlagOp::kNone) return rflags_ & x86::kFlagPF;
    if (lf_op == FlagOp::kHost) [[unlikely]] return (lf_res >> 10) & 1;
    return !(__builtin_popcount(unsigned(lf_res & 0xFF)) & 1);
  }
  // The full RFLAGS value (materialises the lazy flags).
  uint64_t flags() const;
  // Replaces RFLAGS wholesale (the arithmetic bits become authoritative).
  void set_flags(uint64_t f) {
    rflags_ = f | 0x2;
    lf_op = FlagOp::kNone;
  }
  // Materialises the lazy flags into rflags_ (before changing individual bits).
  void materialize() {
    if (lf_op != FlagOp::kNone) set_flags(flags());
  }
  void set_cf(bool v) {
    materialize();
    rflags_ = (rflags_ & ~x86::kFlagCF) | (v ? x86::kFlagCF : 0);
  }
  // Evaluates condition code 0..15 (O NO B AE E NE BE A S NS P NP L GE LE G).
  bool cond(uint8_t cc) const {
    bool v;
    switch (cc >> 1) {
      case 0: v = of(); break;
      case 1: v = cf(); break;
      case 2: v = zf(); break;
      case 3:
        if (lf_op == FlagOp::kSub) v = lf_dst <= lf_src;
        else v = cf() || zf();
        break;
      case 4: v = sf(); break;
      case 5: v = pf(); break;
      case 6:
        if (lf_op == FlagOp::kSub) v = sext(lf_dst, lf_bits) < sext(lf_src, lf_bits);
        else v = sf() != of();
        break;
      default:
        if (lf_op == FlagOp::kSub) v = sext(lf_dst, lf_bits) <= sext(lf_src, lf_bits);
        else v = zf() || (sf() != of());
        break;
    }
    return v != (cc & 1);
  }

  // ---- Block control (for handlers) ----
  // Makes the run loop leave the current block after this instruction (state that decoding
  // depends on changed, or the block's code was overwritten).
  void end_block() {
    block_end_ = nullptr;
    leave_chain_ = true;
  }

  // ---- Slow paths and system operations (mmu.cc, cpu.cc, ops_sys.cc) ----
  void read_slow(uint64_t la, void* dst, unsigned len, bool user);
  void write_slow(uint64_t la, const void* src, unsigned len, bool user);
  uint8_t* wptr_slow(uint64_t la, unsigned len);
  // Translates a linear address (walk + fill); raises #PF/#GP. Returns the guest-physical address.
  uint64_t translate(uint64_t la, Access acc, bool user);
  // Every TLB entry, or (CR3 writes) all but the global ones.
  void flush_tlb(bool keep_global = false);
  void flush_tlb_page(uint64_t la);
  bool paging() const { return cr0 & (1u << 31); }
  bool long_mode() const { return efer & (1u << 10); }  // EFER.LMA

  // Port I/O, with the TSS permission-bitmap check done by the caller.
  uint64_t io_in(uint16_t port, unsigned size);
  void io_out(uint16_t port, unsigned size, uint64_t value);
  void check_io(uint16_t port, unsigned size);

  // Exceptions and interrupts (cpu.cc).
  // Delivers an interrupt/exception through the IDT. `soft` marks INT n/INT3/INTO (gate DPL
  // checked, RIP already past the instruction).
  void deliver(uint8_t vector, bool has_error, uint32_t error, bool soft);
  void deliver_fault(const GuestFault& f);

  // Segments (ops_sys.cc).
  void load_segment(int sreg_index, uint16_t selector);  // data segments and SS, with checks
  void load_cs(uint16_t selector, const uint8_t desc[8], uint8_t new_cpl);
  void set_sreg_raw(int idx, const x86::Segment& s);  // no checks; refreshes caches
  void read_descriptor(uint16_t selector, uint8_t out[8], uint8_t vec_on_fault);
  uint64_t descriptor_address(uint16_t selector);
  static x86::Segment parse_descriptor(uint16_t selector, const uint8_t d[8]);
  void update_mode();  // after CS/EFER/CR0 changes: decode mode, CPL, TLB selection

  // Control registers and MSRs (ops_sys.cc).
  void write_cr0(uint64_t v);
  void write_cr3(uint64_t v);
  void write_cr4(uint64_t v);
  void write_efer(uint64_t v);
  uint64_t read_msr(uint32_t index);  // raises #GP(0) for unknown MSRs
  void write_msr(uint32_t index, uint64_t value);
  // What the guest's CPUID returns: everything the emu implements, under the CPU model.
  void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]);
  uint64_t read_tsc() const { return clock_.read_tsc() + uint64_t(tsc_offset); }

  // A device handler may have kicked this vCPU (power off, reset, a test's stop port): stop right
  // after the current instruction, as KVM does after the exit.
  void stop_if_kicked() {
    if (kicked_.load(std::memory_order_relaxed)) end_block();
  }
  void halt() {
    halted_ = true;
    end_block();
  }
  void set_shadow() {
    shadow_ = true;
    leave_chain_ = true;
  }
  bool interrupt_shadow() const { return shadow_; }
  // What lies between instructions besides the registers, for snapshots (cpu_state.cc): HLT,
  // the STI/MOV SS shadow, NMI blocking (a handler runs) and an NMI held for after its IRET.
  struct EventFlags {
    bool halted = false, shadow = false, nmi_blocked = false, nmi_latched = false;
  };
  EventFlags event_flags() const { return {halted_, shadow_, nmi_blocked_, nmi_latched_}; }
  // After set_state(), which clears them.
  void set_event_flags(const EventFlags& f) {
    halted_ = f.halted;
    shadow_ = f.shadow;
    nmi_blocked_ = f.nmi_blocked;
    nmi_latched_ = f.nmi_latched;
    if (shadow_ || nmi_latched_) request_service();
  }

  GuestMemory& memory() { return mem_; }
  LocalApic& apic() { return apic_; }
  // Runs `fn` while every other vCPU is stopped outside guest code (a locked access that
  // straddles two pages).
  void run_exclusive(const std::function<void()>& fn) { group_.run_exclusive(*this, fn); }
  bool real_mode() const { return !(cr0 & 1); }
  bool smp() const { return smp_; }
  IoBus& pio() { return pio_; }
  uint32_t apic_id() const { return apic_id_; }
  bool tsc_deadline_supported() const { return tsc_deadline_; }
  bool kvm_clock_supported() const { return kvm_clock_; }
  void mark_shutdown() {
    shutdown_ = true;
    end_block();
  }

  // The decoded-instruction cache (cpu.cc / decode.cc).
  static constexpr unsigned kMaxBlockInsns = 64;

 private:
  friend class Decoder;
  friend class jit::Jit;
  static constexpr unsigned kTlbMask = kTlbSize - 1;

  // A page walk's outcome: the guest-physical address and what the mapping allows.
  struct Walk {
    uint64_t gpa = 0;
    uint64_t large_mask = ~0xFFFull;  // ~(page size - 1)
    bool writable = false;  // only once the dirty bit is set
    bool executable = false;
    bool global = false;
  };
  Walk walk(uint64_t la, Access acc, bool user);
  void fill_tlb(uint64_t la, const Walk& w, Access acc, bool user);
  template <typename F>
  void for_each_tlb_entry(F&& f);
  void mmio_read(uint64_t gpa, void* dst, unsigned len);
  void mmio_write(uint64_t gpa, const void* src, unsigned len);
  bool is_apic_page(uint64_t gpa) const;
  // The soft TLB maps linear `la`'s page to guest-physical page address `page` for execution
  // (validates cached branch targets after TLB flushes, which leave the caches alone).
  bool maps_for_exec(uint64_t la, uint64_t page) const {
    const TlbEntry& e = itlb_[(la >> 12) & kTlbMask];
    return e.xtag == (la & ~0xFFFull) && e.gpa == page;
  }
  // Block `b` is still what runs at linear `la` (both its pages, for a page-crossing block).
  bool block_mapped(uint64_t la, const Block* b) const {
    return maps_for_exec(la, b->page << 12) &&
           (b->gpa2 == ~0ull || maps_for_exec((la & ~0xFFFull) + 4096, b->gpa2));
  }

  Block* find_block();
  Block* next_block(Block* prev);
  Block* build_block(uint64_t gpa, const uint8_t* host, unsigned avail, uint64_t gpa2 = ~0ull);
  Block* find_crossing_block(uint64_t la, uint64_t gpa, const uint8_t* host, unsigned avail);
  Block* fill_jump_cache(uint64_t la, Block* b);
  void mark_code_page(uint64_t page);
  void invalidate_page(uint64_t page);
  // This vCPU wrote code page `page`: drop its code here, and on every other vCPU.
  void code_page_written(uint64_t page);
  void process_pending_invalidations();
  // service_requested_: invalidations, NMI/INIT, exclusive runs. False when INIT arrived.
  bool service();
  void free_retired_blocks();
  void flush_jump_cache();
  void refresh_genkey() { genkey = (code_gen_ << 3) | mode | (uint64_t(tlb_user_) << 2); }
  bool check_interrupts();
  void deliver_nested(uint8_t vector, bool has_error, uint32_t error, bool soft);
  void do_deliver(uint8_t vector, bool has_error, uint32_t error, bool soft);
  void run_block(Block* b);
  bool must_leave_chain();

  // The translation tier (jit/). `translated(b)` returns the body entry of b's translation for
  // the current CPL class, translating b when it has become hot, or nullptr (interpret it).
  void* translated(Block* b);
  // Runs translated code from `body` until it exits; throws a pending guest fault or host error.
  void run_translated(void* body);
  void flush_translations();
  // Called by translated code (jit/): runs one instruction's interpreter handler and returns 0
  // or a JitExit status; packs the lazy flags for the host's SAHF.
  static uint32_t jit_call(CpuHot* hot, const Insn* in);
  static uint32_t jit_pack_flags(CpuHot* hot);

  GuestMemory& mem_;
  IoBus& pio_;
  IoBus& mmio_;
  LocalApic& apic_;
  GuestClock& clock_;
  uint32_t apic_id_;
  bool tsc_deadline_;
  bool kvm_clock_;
  KvmClock kvmclock_;  // kvm-clock MSRs (engine/emu/platform)

  // tlb_ points at the soft TLB (CpuHot::tlb_table) for the current CPL.
  TlbEntry* tlb_ = nullptr;
  TlbEntry* itlb_ = nullptr;
  bool tlb_user_ = false;
  bool ss_32_ = false;  // stack pointer is 32-bit (compatibility mode with a 32-bit SS)

  // Decoded code.
  CodeIndex code_;  // every live block, by guest-physical page
  std::vector<Block*> retired_;  // invalidated, freed at the next block boundary
  VcpuGroup& group_;
  const bool smp_;
  std::unique_lock<std::mutex> tlb_lock() {
    return smp_ ? std::unique_lock(tlb_mutex_) : std::unique_lock<std::mutex>();
  }
  // Other vCPUs' threads revoke write tags (revoke_write) under it; this vCPU's fills and
  // flushes take it when smp_.
  std::mutex tlb_mutex_;
  const Insn* block_end_ = nullptr;
  // Generation of translations and decoded code: jump-cache entries and block links made under
  // an older generation are ignored (so flushes are O(1) and freed blocks are never followed).
  uint64_t code_gen_ = 1;
  bool leave_chain_ = false;  // a handler changed state the chained loop must look at
  Block* current_block_ = nullptr;
  std::mutex pending_mutex_;
  std::vector<uint64_t> pending_pages_;

  // Translation tier; null when the interpreter runs alone (EmuTier::kInterp).
  std::unique_ptr<jit::Jit> jit_;
  uint32_t hot_threshold_ = 0;
  x86::CpuModel cpu_model_ = x86::CpuModel::kHost;
  void implemented_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]);
  GuestFault jit_fault_{};
  std::exception_ptr jit_error_;
  uint64_t interpreted_ = 0;  // instructions run by the interpreter's block loop
  uint64_t blocks_decoded_ = 0, pages_invalidated_ = 0, walks_ = 0, tlb_flushes_ = 0;

  bool halted_ = false;
  bool nmi_blocked_ = false;  // an NMI handler runs (until IRET)
  bool nmi_latched_ = false;  // an NMI arrived while blocked: delivered after the IRET
  bool init_pending_ = false;
  bool shadow_ = false;
  bool shutdown_ = false;
  bool trace_faults_ = false;
  // KEEL_EMU_PROFILE=1: dynamic instruction count per Zydis mnemonic (interpreted blocks), and
  // per mnemonic of the instructions translated code hands to the interpreter, printed at exit.
  std::unique_ptr<uint64_t[]> mnemonic_counts_;
  std::unique_ptr<uint64_t[]> helper_counts_;
  bool rf_for_frame_ = false;  // the exception being delivered is a fault
  void* decoder_ = nullptr;  // Decoder (decode.cc)

  // Exception nesting: the vector being delivered, or -1.
  int delivering_ = -1;
};

}  // namespace keel::emu
