// The emu MMU: 4-level page walks (NX, 2 MiB / 1 GiB pages, accessed/dirty bits, CR0.WP), the soft
// TLB fill and flushes, and the slow paths of memory access (page-crossing, MMIO, the APIC page,
// writes to pages that hold decoded code).
#include <atomic>
#include <span>

#include "engine/emu/cpu.h"

namespace keel::emu {

namespace {

constexpr uint64_t kPteP = 1, kPteW = 2, kPteU = 4, kPteA = 0x20, kPteD = 0x40, kPtePs = 0x80,
                   kPteG = 0x100;
constexpr uint64_t kCr4Pge = 1u << 7;
constexpr uint64_t kPteNx = 1ull << 63;
constexpr uint64_t kAddrMask = 0x000F'FFFF'FFFF'F000ull;
constexpr uint64_t kCr0Wp = 1ull << 16;
constexpr uint64_t kEferNxe = 1ull << 11;

inline bool canonical(uint64_t la) { return uint64_t(int64_t(la << 16) >> 16) == la; }

}  // namespace

Cpu::Walk Cpu::walk(uint64_t la, Access acc, bool user) {
  ++walks_;
  Walk w;
  if (!paging()) {
    w.gpa = long_mode() ? la : uint32_t(la);
    w.writable = w.executable = true;
    return w;
  }
  if (!canonical(la)) throw GuestFault{kGP, true, 0, true};
  const bool nxe = efer & kEferNxe;
  auto fault = [&](bool present, bool rsvd) {
    cr2 = la;
    uint32_t err = (present ? 1u : 0u) | (acc == Access::kWrite ? 2u : 0u) | (user ? 4u : 0u) |
                   (rsvd ? 8u : 0u) | (acc == Access::kExec && nxe ? 16u : 0u);
    raise_fault(kPF, err);
  };
  uint64_t table = cr3 & kAddrMask;
  bool rw = true, us = true, nx = false;
  uint64_t gpa = 0;
  uint8_t* leaf = nullptr;
  uint64_t leaf_pte = 0, leaf_pte_gpa = 0;
  for (int level = 4; level >= 1; --level) {
    unsigned shift = 12 + 9 * (level - 1);
    uint64_t pte_gpa = table + ((la >> shift) & 0x1FF) * 8;
    uint8_t* p = mem_.host_ptr(pte_gpa, 8);
    if (!p) fault(false, false);  // page tables outside RAM: treat as not present
    // Other vCPUs write page tables concurrently: atomic loads, and A/D updates by
    // compare-and-swap on the value used, as the hardware's locked updates (never setting bits in
    // an entry another vCPU just changed, e.g. made not-present: a swap entry then).
    uint64_t* entry = reinterpret_cast<uint64_t*>(p);  // 8-byte aligned: table + index * 8
    uint64_t pte = __atomic_load_n(entry, __ATOMIC_ACQUIRE);
    if (!(pte & kPteP)) fault(false, false);
    if ((pte & kPteNx) && !nxe) fault(true, true);
    rw = rw && (pte & kPteW);
    us = us && (pte & kPteU);
    nx = nx || (pte & kPteNx);
    bool is_leaf = level == 1 || ((level == 2 || level == 3) && (pte & kPtePs));
    if (level == 4 && (pte & kPtePs)) fault(true, true);
    if (is_leaf) {
      uint64_t page_mask = (1ull << shift) - 1;
      gpa = ((pte & kAddrMask) & ~page_mask) | (la & page_mask);
      w.large_mask = ~page_mask;
      leaf = p;
      leaf_pte = pte;
      leaf_pte_gpa = pte_gpa;
      break;
    }
    if (!(pte & kPteA)) {
      uint64_t expected = pte;
      if (!__atomic_compare_exchange_n(entry, &expected, pte | kPteA, false, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE))
        return walk(la, acc, user);  // changed under us: walk again
      mem_.mark_dirty(pte_gpa, 8);
      pte |= kPteA;
    }
    table = pte & kAddrMask;
  }
  // Permission checks (no SMEP/SMAP: they are not advertised).
  bool ok = true;
  if (user && !us) ok = false;
  if (acc == Access::kWrite && !rw && (user || (cr0 & kCr0Wp))) ok = false;
  if (acc == Access::kExec && nx && nxe) ok = false;
  if (!ok) fault(true, false);
  uint64_t upd = leaf_pte | kPteA | (acc == Access::kWrite ? kPteD : 0);
  if (upd != leaf_pte) {
    uint64_t expected = leaf_pte;
    if (!__atomic_compare_exchange_n(reinterpret_cast<uint64_t*>(leaf), &expected, upd, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      return walk(la, acc, user);  // changed under us (another vCPU): walk again
    mem_.mark_dirty(leaf_pte_gpa, 8);
  }
  bool may_write = user ? (rw && us) : (rw || !(cr0 & kCr0Wp));
  w.gpa = gpa;
  w.writable = may_write && (upd & kPteD);
  w.executable = !(nx && nxe) && (!user || us);
  w.global = (upd & kPteG) && (cr4 & kCr4Pge);
  return w;
}

void Cpu::fill_tlb(uint64_t la, const Walk& w, Access acc, bool user) {
  uint64_t page = la & ~0xFFFull;
  uint64_t gpage = w.gpa & ~0xFFFull;
  uint8_t* host = mem_.host_ptr(gpage, 4096);
  if (!host) return;  // MMIO: always the slow path
  if (acc == Access::kExec) {
    TlbEntry& e = itlb_table[user][(la >> 12) & kTlbMask];
    e.xtag = w.executable ? page : kNoTag;
    e.gpa = gpage;
    e.addend = reinterpret_cast<uintptr_t>(host) - page;
    e.large_mask = w.large_mask;
    e.global = w.global;
    return;
  }
  // The set's way that holds this page already, else the older way's slot after moving the
  // most recent entry into it. Under the TLB lock with other vCPUs: a revocation must not be
  // lost in the copy.
  auto lock = tlb_lock();
  TlbEntry* set = &tlb_table[user][((la >> 12) & kTlbMask) * kDtlbWays];
  TlbEntry* way = &set[0];
  if (set[0].rtag != page) {
    if (set[1].rtag == page) {
      std::swap(set[0], set[1]);
    } else {
      set[1] = set[0];
      set[0].rtag = set[0].wtag = kNoTag;
    }
  }
  TlbEntry& e = *way;
  if (e.rtag != page || e.gpa != gpage) e.wtag = kNoTag;
  e.rtag = page;
  e.gpa = gpage;
  e.addend = reinterpret_cast<uintptr_t>(host) - page;
  e.large_mask = w.large_mask;
  e.global = w.global;
  // A code page (on any vCPU) gets no write tag: stores to it take the slow path. While dirty
  // pages are logged, only a store gets one, and the page is marked before it can be used.
  if (w.writable && !group_.holds_code(gpage >> 12)) {
    if (mem_.dirty_logging()) [[unlikely]] {
      if (acc != Access::kWrite) return;
      mem_.mark_dirty(gpage, 4096);
    }
    __atomic_store_n(&e.wtag, page, __ATOMIC_RELAXED);
  }
}

uint64_t Cpu::translate(uint64_t la, Access acc, bool user) {
  Walk w = walk(la, acc, user);
  fill_tlb(la, w, acc, user);
  return w.gpa;
}

// Every entry of both CPL classes' DTLB and ITLB.
template <typename F>
void Cpu::for_each_tlb_entry(F&& f) {
  for (int u = 0; u < 2; ++u) {
    for (TlbEntry& e : tlb_table[u]) f(e);
    for (TlbEntry& e : itlb_table[u]) f(e);
  }
}

void Cpu::flush_tlb(bool keep_global) {
  ++tlb_flushes_;
  auto lock = tlb_lock();
  for_each_tlb_entry([&](TlbEntry& e) {
    if (keep_global && e.global) return;
    e.rtag = e.wtag = e.xtag = kNoTag;
    e.gpa = ~0ull;
    e.global = 0;
  });
}

void Cpu::flush_tlb_page(uint64_t la) {
  auto lock = tlb_lock();
  for_each_tlb_entry([&](TlbEntry& e) {
    const uint64_t tag = e.rtag != kNoTag ? e.rtag : e.xtag;  // a DTLB or an ITLB entry
    if (tag != kNoTag && ((tag ^ la) & e.large_mask) == 0) {
      e.rtag = e.wtag = e.xtag = kNoTag;
      e.gpa = ~0ull;
    }
  });
}

bool Cpu::is_apic_page(uint64_t gpa) const {
  uint64_t base = apic_.base_msr();
  return (base & (1u << 11)) && (gpa & ~0xFFFull) == (base & kAddrMask);
}

void Cpu::mmio_read(uint64_t gpa, void* dst, unsigned len) {
  std::span<uint8_t> data(static_cast<uint8_t*>(dst), len);
  if (is_apic_page(gpa)) {
    apic_.mmio_read(uint32_t(gpa & 0xFFF), data);
    return;
  }
  mmio_.read(gpa, data);
  stop_if_kicked();
}

void Cpu::mmio_write(uint64_t gpa, const void* src, unsigned len) {
  std::span<const uint8_t> data(static_cast<const uint8_t*>(src), len);
  if (is_apic_page(gpa)) {
    apic_.mmio_write(uint32_t(gpa & 0xFFF), data);
    return;
  }
  mmio_.write(gpa, data);
  stop_if_kicked();
}

void Cpu::read_slow(uint64_t la, void* dst, unsigned len, bool user) {
  unsigned in_page = 4096 - unsigned(la & 0xFFF);
  if (len > in_page) {
    // Page-crossing access: both halves are translated before anything is returned.
    read_slow(la, dst, in_page, user);
    read_slow(la + in_page, static_cast<uint8_t*>(dst) + in_page, len - in_page, user);
    return;
  }
  uint64_t gpa = translate(la, Access::kRead, user);
  if (uint8_t* h = mem_.host_ptr(gpa, len)) std::memcpy(dst, h, len);
  else mmio_read(gpa, dst, len);
}

void Cpu::write_slow(uint64_t la, const void* src, unsigned len, bool user) {
  unsigned in_page = 4096 - unsigned(la & 0xFFF);
  if (len > in_page) {
    // Translate both pages first so a fault on the second leaves memory untouched.
    translate(la, Access::kWrite, user);
    translate(la + in_page, Access::kWrite, user);
    write_slow(la, src, in_page, user);
    write_slow(la + in_page, static_cast<const uint8_t*>(src) + in_page, len - in_page, user);
    return;
  }
  uint64_t gpa = translate(la, Access::kWrite, user);
  if (group_.holds_code(gpa >> 12)) code_page_written(gpa >> 12);
  if (uint8_t* h = mem_.host_ptr(gpa, len)) {
    std::memcpy(h, src, len);
    mem_.mark_dirty(gpa, len);  // code pages get no write tag, so their fill marked nothing
  } else {
    mmio_write(gpa, src, len);
  }
}

uint8_t* Cpu::wptr_slow(uint64_t la, unsigned len) {
  if ((la & 0xFFF) + len > 4096) {
    translate(la, Access::kWrite, tlb_user_);
    translate(la + len - 1, Access::kWrite, tlb_user_);
    return nullptr;
  }
  uint64_t gpa = translate(la, Access::kWrite, tlb_user_);
  if (group_.holds_code(gpa >> 12)) code_page_written(gpa >> 12);
  // The caller writes through the pointer after this: marking first is safe, since the log is
  // only taken with this vCPU stopped at a block boundary.
  mem_.mark_dirty(gpa, len);
  return mem_.host_ptr(gpa, len);
}

// ---------------------------------------------------------------- port I/O

void Cpu::check_io(uint16_t port, unsigned size) {
  unsigned iopl = unsigned((rflags_ >> 12) & 3);
  if (cpl <= iopl) return;
  // The TSS I/O permission bitmap: every bit for the accessed ports must be clear.
  if (tr.limit < 103) raise_fault(kGP, 0);
  uint16_t base = sys_rd<uint16_t>(tr.base + 102);
  uint32_t byte = base + port / 8u;
  if (byte + 1 > tr.limit) raise_fault(kGP, 0);
  uint16_t bits = sys_rd<uint16_t>(tr.base + byte);
  uint16_t mask = uint16_t(((1u << size) - 1) << (port & 7));
  if (bits & mask) raise_fault(kGP, 0);
}

uint64_t Cpu::io_in(uint16_t port, unsigned size) {
  uint64_t v = 0;
  pio_.read(port, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&v), size));
  stop_if_kicked();
  return v;
}

void Cpu::io_out(uint16_t port, unsigned size, uint64_t value) {
  pio_.write(port, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&value), size));
  stop_if_kicked();
}

}  // namespace keel::emu
