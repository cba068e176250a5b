#include "engine/emu/code_index.h"

namespace keel::emu {

CodeIndex::Page& CodeIndex::page_for_insert(uint64_t pn) {
  uint64_t c = pn >> kChunkBits;
  if (c >= chunks_.size()) chunks_.resize(c + 1);
  if (!chunks_[c]) chunks_[c] = std::make_unique<Chunk>();
  return chunks_[c]->pages[pn & ((1u << kChunkBits) - 1)];
}

void CodeIndex::insert(uint64_t pn, Entry e) {
  Page& p = page_for_insert(pn);
  auto it = std::lower_bound(p.begin(), p.end(), e.key,
                             [](const Entry& x, uint32_t k) { return x.key < k; });
  p.insert(it, e);
}

void CodeIndex::add(Block* b) {
  const bool crossing = b->gpa2 != ~0ull;
  insert(b->page, Entry{make_key(b->start_gpa, uint8_t(b->key & 7), crossing), b});
  if (crossing) {
    // Under the second page with a key of its own (offset 0 there is not where it starts).
    insert(b->gpa2 >> 12, Entry{kOtherPage | uint32_t(reinterpret_cast<uintptr_t>(b) >> 4), b});
  }
}

std::vector<Block*> CodeIndex::take_page(uint64_t pn) {
  std::vector<Block*> out;
  Page* p = page(pn);
  if (!p) return out;
  for (const Entry& e : *p) {
    Block* b = e.block;
    out.push_back(b);
    if (b->gpa2 == ~0ull) continue;
    // A crossing block is also listed under its other page: unlist it there.
    uint64_t other = (e.key & kOtherPage) ? b->page : b->gpa2 >> 12;
    if (Page* op = page(other)) std::erase_if(*op, [b](const Entry& x) { return x.block == b; });
  }
  Page().swap(*p);
  return out;
}

}  // namespace keel::emu
