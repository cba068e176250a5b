// The emu CPU: construction, lazy-flag evaluation, the run loop, the decoded-block cache and its
// invalidation, and interrupt/exception delivery through the IDT (64-bit mode).
#include "engine/emu/cpu.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "base/error.h"
#include "engine/emu/decode.h"
#include "engine/emu/jit/jit.h"

namespace keel::emu {

using namespace x86;

void raise_fault(uint8_t vector) { throw GuestFault{vector, false, 0}; }
void raise_fault(uint8_t vector, uint32_t error) { throw GuestFault{vector, true, error}; }

namespace {
constexpr uint64_t kArith = kFlagCF | kFlagPF | kFlagAF | kFlagZF | kFlagSF | kFlagOF;
Decoder& decoder_of(void* p) { return *static_cast<Decoder*>(p); }
}  // namespace

Cpu::Cpu(const Deps& d)
    : mem_(d.memory),
      pio_(d.pio),
      mmio_(d.mmio),
      apic_(d.apic),
      clock_(d.clock),
      apic_id_(d.apic_id),
      tsc_deadline_(d.tsc_deadline),
      kvm_clock_(d.kvm_clock),
      kvmclock_(d.memory, d.clock),
      group_(*d.group),
      smp_(d.smp) {
  apic_attention = apic_.attention_word();
  if (!apic_attention) apic_attention = &always_attention;
  if (d.tier == EmuTier::kJit) {
    jit_ = std::make_unique<jit::Jit>(reinterpret_cast<const void*>(&Cpu::jit_call),
                                      reinterpret_cast<const void*>(&Cpu::jit_pack_flags),
                                      d.count_instructions,
                                      d.code_cache_bytes ? d.code_cache_bytes
                                                         : jit::Jit::kDefaultCacheBytes);
    hot_threshold_ = d.hot_threshold;
  }
  cpu_model_ = d.cpu_model;
  decoder_ = new Decoder();
  // Debugging aid: KEEL_EMU_TRACE_FAULTS=1 logs every exception the CPU raises.
  if (const char* t = std::getenv("KEEL_EMU_TRACE_FAULTS")) trace_faults_ = *t == '1';
  if (const char* p = std::getenv("KEEL_EMU_PROFILE"); p && *p == '1') {
    mnemonic_counts_ = std::make_unique<uint64_t[]>(ZYDIS_MNEMONIC_MAX_VALUE + 1);
    helper_counts_ = std::make_unique<uint64_t[]>(ZYDIS_MNEMONIC_MAX_VALUE + 1);
  }
  flush_tlb();
  // Power-on-like defaults for the segment caches; set_state() replaces them.
  for (int i = 0; i < 6; ++i) {
    sreg[i] = Segment{};
    sreg[i].limit = 0xFFFF;
    sreg[i].present = 1;
    sreg[i].s = 1;
    sreg[i].type = i == kCS ? 0xB : 0x3;
  }
  update_mode();
  // NMI, INIT and SIPI from other vCPUs' IPIs: the run loop looks at them (service()).
  apic_.set_event_listener([this] { request_service(); });
  group_.add(this);
}

namespace {
void print_mnemonics(const char* title, const uint64_t* counts) {
  std::vector<std::pair<uint64_t, int>> top;
  uint64_t total = 0;
  for (int m = 0; m <= ZYDIS_MNEMONIC_MAX_VALUE; ++m)
    if (counts[m]) {
      top.emplace_back(counts[m], m);
      total += counts[m];
    }
  std::sort(top.rbegin(), top.rend());
  std::fprintf(stderr, "emu profile: %s: %llu instructions\n", title,
               static_cast<unsigned long long>(total));
  for (size_t i = 0; i < top.size() && i < 60; ++i)
    std::fprintf(stderr, "  %-12s %12llu %5.2f%%\n",
                 ZydisMnemonicGetString(static_cast<ZydisMnemonic>(top[i].second)),
                 static_cast<unsigned long long>(top[i].first),
                 100.0 * double(top[i].first) / double(total));
}
}  // namespace

Cpu::~Cpu() {
  group_.remove(this);
  apic_.set_event_listener(nullptr);
  if (mnemonic_counts_) {
    print_mnemonics("interpreted", mnemonic_counts_.get());
    if (jit_) print_mnemonics("handlers called from translated code", helper_counts_.get());
  }
  code_.for_each([](Block* b) { delete b; });
  for (Block* b : retired_) delete b;
  delete static_cast<Decoder*>(decoder_);
}

const jit::Stats* Cpu::jit_stats() const { return jit_ ? &jit_->stats() : nullptr; }

// ---------------------------------------------------------------- lazy flags

bool Cpu::cf() const {
  switch (lf_op) {
    case FlagOp::kNone: return rflags_ & kFlagCF;
    case FlagOp::kAdd: return lf_res < lf_dst;
    case FlagOp::kAdc: return lf_res < lf_dst || (lf_cin && lf_res == lf_dst);
    case FlagOp::kSub: return lf_dst < lf_src;
    case FlagOp::kSbb: return lf_dst < lf_src || (lf_cin && lf_dst == lf_src);
    case FlagOp::kLogic: return false;
    case FlagOp::kInc:
    case FlagOp::kDec: return lf_cin;
    case FlagOp::kHost: return (lf_res >> 8) & 1;
  }
  return false;
}

bool Cpu::of() const {
  switch (lf_op) {
    case FlagOp::kNone: return rflags_ & kFlagOF;
    case FlagOp::kAdd:
    case FlagOp::kAdc:
    case FlagOp::kInc: return sign_of((lf_dst ^ lf_res) & (lf_src ^ lf_res), lf_bits);
    case FlagOp::kSub:
    case FlagOp::kSbb:
    case FlagOp::kDec: return sign_of((lf_dst ^ lf_src) & (lf_dst ^ lf_res), lf_bits);
    case FlagOp::kLogic: return false;
    case FlagOp::kHost: return lf_res & 1;
  }
  return false;
}

bool Cpu::af() const {
  switch (lf_op) {
    case FlagOp::kNone: return rflags_ & kFlagAF;
    case FlagOp::kLogic: return false;
    case FlagOp::kHost: return (lf_res >> 12) & 1;
    default: return (lf_dst ^ lf_src ^ lf_res) & 0x10;
  }
}

uint64_t Cpu::flags() const {
  if (lf_op == FlagOp::kNone) return rflags_ | 0x2;
  if (lf_op == FlagOp::kHost)
    return (rflags_ & ~kArith) | 0x2 | ((lf_res >> 8) & 0xD5) | ((lf_res & 1) << 11);
  uint64_t f = (rflags_ & ~kArith) | 0x2;
  if (cf()) f |= kFlagCF;
  if (pf()) f |= kFlagPF;
  if (af()) f |= kFlagAF;
  if (zf()) f |= kFlagZF;
  if (sf()) f |= kFlagSF;
  if (of()) f |= kFlagOF;
  return f;
}

// ---------------------------------------------------------------- state

void Cpu::update_mode() {
  const Segment& cs = sreg[kCS];
  if (long_mode() && cs.l) mode = 0;
  else mode = cs.db ? 1 : 2;
  cpl = uint8_t(cs.selector & 3);
  if (!(cr0 & 1)) cpl = 0;
  tlb_user_ = cpl == 3;
  tlb_ = tlb_table[tlb_user_];
  itlb_ = itlb_table[tlb_user_];
  ss_32_ = mode != 0;
  for (int i = 0; i < 6; ++i) seg_base[i] = sreg[i].base;
  seg_base[kSegFlat] = 0;
  refresh_genkey();
}

void Cpu::set_sreg_raw(int idx, const Segment& s) {
  sreg[idx] = s;
  seg_base[idx] = s.base;
  if (idx == kCS || idx == kSS) update_mode();
}

CpuState Cpu::get_state() {
  CpuState s;
  for (int i = 0; i < 16; ++i) s.gpr[i] = r[i];
  s.rip = r[kRegRip];
  s.rflags = flags();
  s.es = sreg[kES];
  s.cs = sreg[kCS];
  s.ss = sreg[kSS];
  s.ds = sreg[kDS];
  s.fs = sreg[kFS];
  s.gs = sreg[kGS];
  s.tr = tr;
  s.ldt = ldtr;
  s.gdt = gdt;
  s.idt = idt;
  s.cr0 = cr0;
  s.cr2 = cr2;
  s.cr3 = cr3;
  s.cr4 = cr4;
  s.cr8 = apic_.cr8();
  s.efer = efer;
  s.apic_base = apic_.base_msr();
  return s;
}

void Cpu::set_state(const CpuState& s) {
  for (int i = 0; i < 16; ++i) r[i] = s.gpr[i];
  r[kRegZero] = 0;
  r[kRegRip] = s.rip;
  set_flags(s.rflags);
  sreg[kES] = s.es;
  sreg[kCS] = s.cs;
  sreg[kSS] = s.ss;
  sreg[kDS] = s.ds;
  sreg[kFS] = s.fs;
  sreg[kGS] = s.gs;
  tr = s.tr;
  ldtr = s.ldt;
  gdt = s.gdt;
  idt = s.idt;
  cr0 = s.cr0;
  cr2 = s.cr2;
  cr3 = s.cr3;
  cr4 = s.cr4;
  efer = s.efer;
  if (s.cr8) apic_.set_cr8(uint8_t(s.cr8));
  if (s.apic_base) apic_.set_base_msr(s.apic_base);
  halted_ = false;
  shutdown_ = false;
  shadow_ = false;
  update_mode();
  flush_tlb();
}

FpuState Cpu::get_fpu() {
  FpuState f{};
  uint8_t* p = f.fxsave.data();
  std::memcpy(p + 0, &fcw, 2);
  std::memcpy(p + 2, &fsw, 2);
  p[4] = ftw;
  std::memcpy(p + 24, &mxcsr, 4);
  uint32_t mask = 0xFFFF;
  std::memcpy(p + 28, &mask, 4);
  for (int i = 0; i < 8; ++i) std::memcpy(p + 32 + 16 * i, st_regs[i], 16);
  for (int i = 0; i < 16; ++i) std::memcpy(p + 160 + 16 * i, &xmm[i], 16);
  return f;
}

void Cpu::set_fpu(const FpuState& f) {
  const uint8_t* p = f.fxsave.data();
  std::memcpy(&fcw, p + 0, 2);
  std::memcpy(&fsw, p + 2, 2);
  ftw = p[4];
  std::memcpy(&mxcsr, p + 24, 4);
  for (int i = 0; i < 8; ++i) std::memcpy(st_regs[i], p + 32 + 16 * i, 16);
  for (int i = 0; i < 16; ++i) std::memcpy(&xmm[i], p + 160 + 16 * i, 16);
}

std::string Cpu::describe_rip() {
  char buf[160];
  uint64_t la = r[kRegRip] + seg_base[kCS];
  std::string bytes;
  try {
    for (int i = 0; i < 15; ++i) {
      uint64_t gpa = translate(la + i, Access::kRead, false);
      const uint8_t* h = mem_.host_ptr(gpa, 1);
      if (!h) break;
      char b[4];
      std::snprintf(b, sizeof b, "%02x ", *h);
      bytes += b;
    }
  } catch (const GuestFault&) {
  }
  std::snprintf(buf, sizeof buf, "RIP 0x%llx (CPL %u, %s mode), bytes: ",
                static_cast<unsigned long long>(r[kRegRip]), cpl,
                mode == 0 ? "64-bit" : mode == 1 ? "32-bit" : "16-bit");
  return buf + (bytes.empty() ? std::string("<unmapped>") : bytes);
}

// ---------------------------------------------------------------- block cache

void Cpu::flush_jump_cache() {
  ++code_gen_;
  refresh_genkey();
}

void Cpu::mark_code_page(uint64_t page) { group_.mark_code(page, *this); }

void Cpu::revoke_write(uint64_t page) {
  const uint64_t gpa = page << 12;
  std::lock_guard lock(tlb_mutex_);
  for (auto& t : tlb_table)
    for (TlbEntry& e : t)
      if (e.gpa == gpa) __atomic_store_n(&e.wtag, kNoTag, __ATOMIC_RELAXED);
}

void Cpu::revoke_all_writes() {
  std::lock_guard lock(tlb_mutex_);
  for (auto& t : tlb_table)
    for (TlbEntry& e : t) __atomic_store_n(&e.wtag, kNoTag, __ATOMIC_RELAXED);
}

void Cpu::invalidate_page(uint64_t page) {
  std::vector<Block*> gone = code_.take_page(page);
  if (gone.empty()) return;
  ++pages_invalidated_;
  flush_jump_cache();
  for (Block* b : gone) {
    if (b == current_block_) end_block();
    retired_.push_back(b);
  }
  leave_chain_ = true;
}

void Cpu::code_page_written(uint64_t page) {
  invalidate_page(page);
  group_.code_written(page, this);
}

void Cpu::queue_invalidation(uint64_t page) {
  {
    std::lock_guard lock(pending_mutex_);
    pending_pages_.push_back(page);
  }
  request_service();
}

void Cpu::process_pending_invalidations() {
  std::vector<uint64_t> pages;
  {
    std::lock_guard lock(pending_mutex_);
    pages.swap(pending_pages_);
  }
  for (uint64_t p : pages) invalidate_page(p);
}

bool Cpu::service() {
  if (!service_requested_.exchange(false, std::memory_order_acq_rel)) return true;
  process_pending_invalidations();
  (void)apic_.take_sipi();  // a SIPI reaches only a vCPU waiting for one (EmuVcpu)
  if (apic_.take_init()) {
    init_pending_ = true;
    return false;
  }
  if (shadow_) {
    // The instruction after STI or MOV SS runs before any event, an NMI too (kvm-unit-tests'
    // nmi-after-sti): look again at the next boundary.
    service_requested_.store(true, std::memory_order_relaxed);
  } else {
    if (!nmi_blocked_ && (std::exchange(nmi_latched_, false) || apic_.take_nmi())) {
      halted_ = false;
      nmi_blocked_ = true;
      deliver(kNMI, false, 0, false);
    }
    // While a handler runs, x86 holds one more NMI for after its IRET; further ones merge.
    if (nmi_blocked_)
      while (apic_.take_nmi()) nmi_latched_ = true;
  }
  group_.park_if_requested(*this);
  return true;
}

void Cpu::free_retired_blocks() {
  if (retired_.empty()) return;
  flush_jump_cache();
  for (Block* b : retired_) delete b;
  retired_.clear();
}

Block* Cpu::build_block(uint64_t gpa, const uint8_t* host, unsigned avail, uint64_t gpa2) {
  Decoder& dec = decoder_of(decoder_);
  auto b = std::make_unique<Block>();
  ++blocks_decoded_;
  b->start_gpa = gpa;
  b->page = gpa >> 12;
  b->key = (gpa << 3) | mode;
  unsigned off = 0;
  while (off < avail) {
    Insn in;
    bool ends = false, need_more = false;
    if (!dec.decode(mode, host + off, avail - off, in, &ends, &need_more)) {
      if (off > 0) break;  // the next instruction crosses the page: it starts the next block
      return nullptr;
    }
    b->insns.push_back(in);
    off += in.len;
    if (ends || b->insns.size() >= kMaxBlockInsns) break;
  }
  b->bytes = off;
  b->gpa2 = gpa2;
  Block* raw = b.release();
  code_.add(raw);
  mark_code_page(raw->page);
  if (gpa2 != ~0ull) mark_code_page(gpa2 >> 12);
  return raw;
}

// The first instruction at `la` (guest-physical `gpa`, `avail` bytes left on its page) crosses
// into the next page: decoded from both pages once, found again while the next page still maps
// to the same guest-physical page.
Block* Cpu::find_crossing_block(uint64_t la, uint64_t gpa, const uint8_t* host, unsigned avail) {
  const uint64_t la2 = la + avail;
  const TlbEntry& e2 = itlb_[(la2 >> 12) & kTlbMask];
  uint64_t gpa2 = e2.xtag == la2 ? e2.gpa : translate(la2, Access::kExec, tlb_user_);
  if (Block* known = code_.find(gpa, mode, true)) {
    if (known->gpa2 == gpa2) return fill_jump_cache(la, known);
    invalidate_page(gpa >> 12);  // the next page is mapped elsewhere now: decode again
  }
  uint8_t buf[16] = {};
  std::memcpy(buf, host, avail);
  unsigned more = 15 - avail;
  if (const uint8_t* h2 = mem_.host_ptr(gpa2, more)) std::memcpy(buf + avail, h2, more);
  Block* b = build_block(gpa, buf, 15, gpa2);
  if (!b) raise_fault(kUD);
  return fill_jump_cache(la, b);
}

Block* Cpu::fill_jump_cache(uint64_t la, Block* b) {
  JumpEntry* set = &jump_cache[jump_cache_set(la) * kJumpCacheWays];
  set[1] = set[0];
  set[0] = JumpEntry{la, genkey, b->page << 12, b->jit_entry[tlb_user_], b};
  return b;
}

Block* Cpu::find_block() {
  const uint64_t la = r[kRegRip] + seg_base[kCS];
  JumpEntry* set = &jump_cache[jump_cache_set(la) * kJumpCacheWays];
  for (unsigned w = 0; w < kJumpCacheWays; ++w)
    if (set[w].rip == la && set[w].genkey == genkey && block_mapped(la, set[w].block)) [[likely]]
      return set[w].block;

  const TlbEntry& e = itlb_[(la >> 12) & kTlbMask];
  uint64_t gpa;
  if (e.xtag == (la & ~0xFFFull)) gpa = e.gpa | (la & 0xFFF);
  else gpa = translate(la, Access::kExec, tlb_user_);

  Block* b = code_.find(gpa, mode, false);
  if (!b) {
    uint8_t* host = mem_.host_ptr(gpa, 1);
    if (!host) throw Error("emu: execution outside RAM at guest-physical 0x" + [&] {
      char s[32];
      std::snprintf(s, sizeof s, "%llx", static_cast<unsigned long long>(gpa));
      return std::string(s);
    }() + ", " + describe_rip());
    unsigned avail = 4096 - unsigned(gpa & 0xFFF);
    if (avail >= 15 || !code_.find(gpa, mode, true))
      b = build_block(gpa, host, avail);
    else
      b = nullptr;
    if (!b) return find_crossing_block(la, gpa, host, avail);
  }
  return fill_jump_cache(la, b);
}

Block* Cpu::next_block(Block* prev) {
  const uint64_t rip = r[kRegRip];
  const uint32_t key = mode | (uint32_t(tlb_user_) << 2);
  for (Block::Link& l : prev->links)
    if (l.rip == rip && l.gen == code_gen_ && l.key == key &&
        block_mapped(rip + seg_base[kCS], l.block))
      return l.block;
  Block* b = find_block();
  {
    Block::Link& l = prev->links[prev->next_link];
    prev->next_link ^= 1;
    l = Block::Link{rip, code_gen_, key, b};
  }
  return b;
}

void Cpu::run_block(Block* b) {
  const Insn* start = b->insns.data();
  const Insn* ip = start;
  block_end_ = start + b->insns.size();
  current_block_ = b;
  try {
    while (ip < block_end_) {
      const Insn& in = *ip++;
      if (mnemonic_counts_) [[unlikely]] ++mnemonic_counts_[in.mnem];
      r[kRegRip] += in.len;
      in.fn(*this, in);
      if (in.prefix & kPfxFence) [[unlikely]]
        std::atomic_thread_fence(std::memory_order_seq_cst);  // see kPfxFence
    }
  } catch (GuestFault& f) {
    const Insn& in = *(ip - 1);
    r[kRegRip] -= in.len;
    icount_ += uint64_t(ip - start) - 1;
    interpreted_ += uint64_t(ip - start) - 1;
    current_block_ = nullptr;
    if (f.noncanonical && (in.prefix & kPfxStack)) f.vector = kStackFault;
    throw;
  }
  icount_ += uint64_t(ip - start);
  interpreted_ += uint64_t(ip - start);
  current_block_ = nullptr;
}

// ---------------------------------------------------------------- run loop

void Cpu::kick() {
  kicked_.store(true, std::memory_order_release);
  apic_.wake();
}

bool Cpu::check_interrupts() {
  int v = apic_.pending_vector();
  if (v < 0) return false;
  apic_.accept(v);
  halted_ = false;
  deliver(uint8_t(v), false, 0, false);
  return true;
}

bool Cpu::must_leave_chain() {
  return leave_chain_ || kicked_.load(std::memory_order_relaxed) ||
         service_requested_.load(std::memory_order_relaxed) ||
         ((rflags_ & kFlagIF) && apic_.maybe_pending());
}

Cpu::Exit Cpu::run() {
  // Counted as executing guest code for exclusive runs (VcpuGroup), except while halted.
  struct Running {
    VcpuGroup& g;
    Cpu& c;
    Running(VcpuGroup& g, Cpu& c) : g(g), c(c) { g.enter(c); }
    ~Running() { g.leave(c); }
  } running(group_, *this);
  for (;;) {
    if (kicked_.load(std::memory_order_acquire)) {
      kicked_.store(false, std::memory_order_relaxed);
      return Exit::kStopped;
    }
    if (shutdown_) return Exit::kShutdown;
    free_retired_blocks();
    jit_slot = nullptr;
    try {
      if (!service()) return Exit::kInit;
      free_retired_blocks();
      if (shadow_) {
        shadow_ = false;
      } else if ((rflags_ & kFlagIF) && apic_.maybe_pending()) {
        check_interrupts();
        if (shutdown_) return Exit::kShutdown;
      }
      if (halted_) {
        if (!(rflags_ & kFlagIF)) {
          // Halted for good, unless another vCPU sends an NMI or INIT: alone, say so (the
          // machine ends when no vCPU can run); with others, wait for them or a kick.
          if (!smp_) return Exit::kHalted;
          group_.leave(*this);
          apic_.wait_for_event(kicked_);
          group_.enter(*this);
          continue;
        }
        group_.leave(*this);
        apic_.wait_for_interrupt(kicked_);
        group_.enter(*this);
        if (!kicked_.load(std::memory_order_acquire) && apic_.maybe_pending()) check_interrupts();
        continue;
      }
      // The chained loop: block after block without the checks above, until something needs
      // them (a handler changed state, another thread kicked or asked for service, or an
      // interrupt may be pending). Translated code chains on its own and comes back here only
      // for what it cannot do itself.
      leave_chain_ = false;
      Block* b = find_block();
      for (;;) {
        if (void* body = translated(b)) {
          run_translated(body);
          if (must_leave_chain()) break;
          b = find_block();
          continue;
        }
        run_block(b);
        if (must_leave_chain()) break;
        b = next_block(b);
      }
    } catch (const GuestFault& f) {
      deliver_fault(f);
    }
  }
}

void Cpu::start_at_sipi(uint8_t vector) {
  // The INIT state (SDM 10.4.7.3 / 9.1.1) with CS:IP = vector << 8 : 0.
  CpuState s{};
  auto seg = [](uint16_t sel, uint8_t type) {
    Segment g{};
    g.selector = sel;
    g.base = uint64_t(sel) << 4;
    g.limit = 0xFFFF;
    g.type = type;
    g.s = 1;
    g.present = 1;
    return g;
  };
  s.cs = seg(uint16_t(vector) << 8, 0xB);
  s.ds = s.es = s.ss = s.fs = s.gs = seg(0, 0x3);
  s.tr.limit = 0xFFFF;
  s.tr.type = 0xB;
  s.tr.present = 1;
  s.ldt.limit = 0xFFFF;
  s.ldt.type = 0x2;
  s.ldt.present = 1;
  s.gdt.limit = 0xFFFF;
  s.idt.limit = 0xFFFF;
  s.rflags = 0x2;
  s.cr0 = 0x60000010;
  s.gpr[x86::RDX] = 0x000306A9;  // the CPUID.1 signature, as after INIT
  s.apic_base = apic_.base_msr();
  set_state(s);
  set_fpu(x86::FpuState{});  // x87 and SSE state as after INIT: zero, then the two defaults
  mxcsr = 0x1F80;
  fcw = 0x37F;
  nmi_blocked_ = nmi_latched_ = false;
  init_pending_ = false;
}

// ---------------------------------------------------------------- translation tier

void* Cpu::translated(Block* b) {
  // The same-page branch that exited to find this block, if any: linked below once b has a
  // translation, forgotten otherwise (it must not be linked to a later block).
  uint8_t* slot = std::exchange(jit_slot, nullptr);
  if (!jit_ || mode != 0) return nullptr;
  const bool user = tlb_user_;
  if (!b->jit_body[user]) {
    if (b->untranslatable || ++b->heat <= hot_threshold_) return nullptr;
    auto t = jit_->translate(*b, user);
    if (!t) {
      flush_translations();
      slot = nullptr;
      t = jit_->translate(*b, user);
      if (!t) {
        b->untranslatable = true;
        return nullptr;
      }
    }
    b->jit_entry[user] = t->entry;
    b->jit_body[user] = t->body;
    // The jump-cache entry that led here learns the translation.
    const uint64_t la = r[kRegRip] + seg_base[kCS];
    JumpEntry* set = &jump_cache[jump_cache_set(la) * kJumpCacheWays];
    for (unsigned w = 0; w < kJumpCacheWays; ++w)
      if (set[w].rip == la && set[w].genkey == genkey && set[w].block == b) set[w].code = t->entry;
  }
  if (slot) jit_->link(slot, b->jit_entry[user]);
  return b->jit_body[user];
}

void Cpu::run_translated(void* body) {
  jit_slot = nullptr;
  jit_exit = 0;
  jit_->enter(this, body);
  jit_->count_exit(jit_exit);
  switch (jit_exit) {
    case kJitFault:
      throw GuestFault(jit_fault_);
    case kJitError:
      std::rethrow_exception(std::exchange(jit_error_, nullptr));
    case kJitChain:
      break;  // jit_slot names the jump to link once the target is translated
    default:
      jit_slot = nullptr;
      break;
  }
}

void Cpu::flush_translations() {
  jit_->flush();
  code_.for_each([](Block* b) {
    b->jit_entry[0] = b->jit_entry[1] = nullptr;
    b->jit_body[0] = b->jit_body[1] = nullptr;
  });
  flush_jump_cache();
  jit_slot = nullptr;
}

uint32_t Cpu::jit_call(CpuHot* hot, const Insn* in) {
  Cpu& c = static_cast<Cpu&>(*hot);
  if (c.helper_counts_) [[unlikely]] ++c.helper_counts_[in->mnem];
  try {
    in->fn(c, *in);
    if (in->prefix & kPfxFence) std::atomic_thread_fence(std::memory_order_seq_cst);
  } catch (GuestFault& f) {
    c.r[kRegRip] -= in->len;  // precise: RIP at the faulting instruction
    if (f.noncanonical && (in->prefix & kPfxStack)) f.vector = kStackFault;
    c.jit_fault_ = f;
    return kJitFault;
  } catch (...) {
    c.jit_error_ = std::current_exception();
    return kJitError;
  }
  return c.leave_chain_ ? kJitLeave : 0;
}

uint32_t Cpu::jit_pack_flags(CpuHot* hot) {
  uint64_t f = static_cast<Cpu&>(*hot).flags();
  return uint32_t(((f & 0xD5) << 8) | ((f >> 11) & 1));
}

// ---------------------------------------------------------------- exceptions and interrupts

void Cpu::deliver_fault(const GuestFault& f) {
  halted_ = false;
  // Faults (all but #DB traps here) push RFLAGS with RF set, so IRET does not re-trigger an
  // instruction breakpoint.
  if (f.vector != kDB) rf_for_frame_ = true;
  if (trace_faults_) {
    std::fprintf(stderr, "emu: fault %u err %#x cr2 %#llx at %s\n", f.vector, f.error,
                 static_cast<unsigned long long>(cr2), describe_rip().c_str());
  }
  deliver(f.vector, f.has_error, f.error, false);
}

namespace {
bool contributory(uint8_t v) { return v == 0 || (v >= 10 && v <= 13); }
}  // namespace

void Cpu::deliver(uint8_t vector, bool has_error, uint32_t error, bool soft) {
  if (soft) {
    // INT n / INT3 / INTO: a fault while delivering is reported on the instruction itself.
    do_deliver(vector, has_error, error, soft);
    return;
  }
  int prev = delivering_;
  delivering_ = vector;
  try {
    do_deliver(vector, has_error, error, soft);
    delivering_ = prev;
  } catch (const GuestFault& f2) {
    delivering_ = prev;
    if (vector == kDF) {
      mark_shutdown();  // triple fault
      return;
    }
    bool df = (vector == kPF && (f2.vector == kPF || contributory(f2.vector))) ||
              (contributory(vector) && contributory(f2.vector));
    if (df) deliver(kDF, true, 0, false);
    else deliver(f2.vector, f2.has_error, f2.error, false);
  }
}

void Cpu::do_deliver(uint8_t vector, bool has_error, uint32_t error, bool soft) {
  if (!long_mode()) throw Error("emu: interrupt delivery outside long mode is not supported; " + describe_rip());
  const uint32_t ext = soft ? 0 : 1;
  const uint32_t idt_err = uint32_t(vector) * 8 + 2 + ext;
  if (uint32_t(vector) * 16 + 15 > idt.limit) raise_fault(kGP, idt_err);
  uint64_t lo = sys_rd<uint64_t>(idt.base + uint64_t(vector) * 16);
  uint64_t hi = sys_rd<uint64_t>(idt.base + uint64_t(vector) * 16 + 8);
  uint8_t type = (lo >> 40) & 0xF;
  uint8_t gate_dpl = (lo >> 45) & 3;
  if (type != 0xE && type != 0xF) raise_fault(kGP, idt_err);
  if (soft && gate_dpl < cpl) raise_fault(kGP, idt_err);
  if (!((lo >> 47) & 1)) raise_fault(kNP, idt_err);
  uint16_t sel = uint16_t(lo >> 16);
  uint64_t target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000ull) | (hi << 32);
  uint8_t ist = (lo >> 32) & 7;

  if ((sel & ~3) == 0) raise_fault(kGP, ext);
  uint8_t desc[8];
  read_descriptor(sel, desc, kGP);
  Segment cs = parse_descriptor(sel, desc);
  if (!cs.s || !(cs.type & 8) || !cs.l || cs.db) raise_fault(kGP, (sel & ~3u) + ext);
  if (!cs.present) raise_fault(kNP, (sel & ~3u) + ext);
  uint8_t new_cpl = (cs.type & 4) ? cpl : cs.dpl;  // conforming code keeps the CPL
  if (new_cpl > cpl) raise_fault(kGP, (sel & ~3u) + ext);

  bool switch_stack = new_cpl < cpl;
  uint64_t rsp = r[RSP];
  if (ist) rsp = sys_rd<uint64_t>(tr.base + 36 + (ist - 1) * 8);
  else if (switch_stack) rsp = sys_rd<uint64_t>(tr.base + 4 + uint64_t(new_cpl) * 8);
  rsp &= ~0xFull;

  uint64_t frame[6];
  int n = 0;
  if (has_error) frame[n++] = error;
  frame[n++] = r[kRegRip];
  frame[n++] = sreg[kCS].selector;
  frame[n++] = flags() | (rf_for_frame_ ? kFlagRF : 0);
  rf_for_frame_ = false;
  frame[n++] = r[RSP];
  frame[n++] = sreg[kSS].selector;
  // Push (highest address first) with supervisor rights; nothing is committed until all fit.
  uint64_t sp = rsp;
  for (int i = n - 1; i >= 0; --i) {
    sp -= 8;
    sys_wr<uint64_t>(sp, frame[i]);
  }

  cs.selector = uint16_t((sel & ~3) | new_cpl);
  sreg[kCS] = cs;
  if (switch_stack) {
    Segment ss{};
    ss.selector = new_cpl;
    ss.unusable = 1;
    ss.s = 1;
    ss.type = 3;
    ss.dpl = new_cpl;
    ss.present = 1;
    ss.db = 1;
    sreg[kSS] = ss;
  }
  r[RSP] = sp;
  uint64_t f = flags() & ~(kFlagTF | kFlagNT | kFlagRF | kFlagVM);
  if (type == 0xE) f &= ~kFlagIF;
  set_flags(f);
  r[kRegRip] = target;
  update_mode();
  end_block();
}

}  // namespace keel::emu
