// One vCPU's decoded blocks by guest-physical page: what find_block looks up on a jump-cache miss
// and what a write to a page drops. A two-level table of pages (chunks of 4096 page slots,
// allocated when a chunk first holds code), each page's blocks sorted by (offset, decode mode):
// a lookup is two loads and a short binary search, where a hash map of every block (tens of
// thousands after a boot) cost 7% of a boot in cache misses.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/emu/insn.h"

namespace keel::emu {

class CodeIndex {
 public:
  // The block decoded at `gpa` in decode `mode`: a normal block, or with `crossing`, one whose
  // first instruction crosses into the next page (Block::gpa2). nullptr when there is none.
  Block* find(uint64_t gpa, uint8_t mode, bool crossing) const {
    const Page* p = page(gpa >> 12);
    if (!p) return nullptr;
    const uint32_t key = make_key(gpa, mode, crossing);
    auto it = std::lower_bound(p->begin(), p->end(), key,
                               [](const Entry& e, uint32_t k) { return e.key < k; });
    return it != p->end() && it->key == key ? it->block : nullptr;
  }

  // Lists `b` under its page, and a crossing block also under the next page (for invalidation).
  void add(Block* b);

  // Removes every block listed under guest-physical page `page` (a crossing block also from its
  // other page) and returns them.
  std::vector<Block*> take_page(uint64_t page);

  // Every block, once.
  template <typename F>
  void for_each(F&& f) const {
    for (const auto& chunk : chunks_)
      if (chunk)
        for (const Page& p : chunk->pages)
          for (const Entry& e : p)
            if (!(e.key & kOtherPage)) f(e.block);
  }

 private:
  struct Entry {
    uint32_t key;
    Block* block;
  };
  using Page = std::vector<Entry>;
  static constexpr unsigned kChunkBits = 12;
  struct Chunk {
    Page pages[1u << kChunkBits];
  };
  // key: page offset << 4 | crossing << 3 | mode; kOtherPage marks a crossing block's listing
  // under its second page (found by take_page only).
  static constexpr uint32_t kOtherPage = 1u << 31;
  static uint32_t make_key(uint64_t gpa, uint8_t mode, bool crossing) {
    return uint32_t(gpa & 0xFFF) << 4 | (crossing ? 8u : 0u) | mode;
  }
  // Page `pn`'s list, or nullptr when its chunk was never allocated.
  Page* page(uint64_t pn) const {
    uint64_t c = pn >> kChunkBits;
    if (c >= chunks_.size() || !chunks_[c]) return nullptr;
    return &chunks_[c]->pages[pn & ((1u << kChunkBits) - 1)];
  }
  Page& page_for_insert(uint64_t pn);
  void insert(uint64_t pn, Entry e);

  std::vector<std::unique_ptr<Chunk>> chunks_;
};

}  // namespace keel::emu
