// The diagnostic page walker follows guest-written page tables: any table contents, CR3, paging
// mode and address must give an answer or nullopt, never a read outside guest RAM.
//
// Input: 8 bytes VA, 8 bytes CR3, 1 byte mode (bit 0 PG, bit 1 PAE, bit 2 LMA, bit 3 PSE), then
// up to 64 KiB of guest RAM contents.
#include <cstdint>
#include <cstring>

#include "arch/x86/page_walk.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 17) return 0;
  static keel::GuestMemory memory(64 * 1024);
  uint64_t va, cr3;
  std::memcpy(&va, data, 8);
  std::memcpy(&cr3, data + 8, 8);
  uint8_t mode = data[16];
  data += 17;
  size -= 17;
  auto ram = memory.write_span(0, memory.ram_size());
  std::memset(ram.data(), 0, ram.size());
  std::memcpy(ram.data(), data, std::min(size, ram.size()));

  keel::x86::CpuState st;
  st.cr0 = (mode & 1) ? (1ull << 31) | 1 : 1;
  st.cr4 = ((mode & 2) ? 1ull << 5 : 0) | ((mode & 8) ? 1ull << 4 : 0);
  st.efer = (mode & 4) ? 1ull << 10 : 0;
  st.cr3 = cr3;
  if (auto gpa = keel::x86::translate(memory, st, va)) (void)*gpa;
  uint8_t bytes[15];
  keel::x86::read_virtual(memory, st, va, bytes);
  return 0;
}
