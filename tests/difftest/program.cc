#include "difftest/program.h"

#include <Zydis/Zydis.h>
#include <fmt/format.h>

namespace keel::difftest {

const char* to_string(InsnClass c) {
  switch (c) {
    case InsnClass::kSetup: return "setup";
    case InsnClass::kAlu: return "alu";
    case InsnClass::kShift: return "shift";
    case InsnClass::kDoubleShift: return "doubleshift";
    case InsnClass::kMulDiv: return "muldiv";
    case InsnClass::kBitTest: return "bittest";
    case InsnClass::kBitScan: return "bitscan";
    case InsnClass::kString: return "string";
    case InsnClass::kCondMove: return "condmove";
    case InsnClass::kExtend: return "extend";
    case InsnClass::kExchange: return "exchange";
    case InsnClass::kMisc: return "misc";
    case InsnClass::kStack: return "stack";
    case InsnClass::kSse: return "sse";
    case InsnClass::kSseFp: return "ssefp";
    case InsnClass::kFault: return "fault";
    case InsnClass::kCount: break;
  }
  return "?";
}

std::vector<uint8_t> Program::code() const {
  std::vector<uint8_t> out;
  for (const auto& in : instrs) out.insert(out.end(), in.bytes.begin(), in.bytes.end());
  return out;
}

const Instr* Program::find(uint64_t rip) const {
  for (const auto& in : instrs)
    if (in.address == rip) return &in;
  return nullptr;
}

Program prefix(const Program& program, size_t n) {
  Program p = program;
  if (n + kStopLength >= p.instrs.size()) return p;
  std::vector<Instr> stop(p.instrs.end() - kStopLength, p.instrs.end());
  p.instrs.resize(n);
  uint64_t address = n ? p.instrs.back().address + p.instrs.back().bytes.size() : layout::kCode;
  uint32_t undef = n ? p.instrs.back().undef_after : 0;
  for (auto& in : stop) {
    in.address = address;
    in.undef_before = in.undef_after = undef;
    address += in.bytes.size();
    p.instrs.push_back(in);
  }
  return p;
}

std::string flag_names(uint64_t flags) {
  static const struct {
    uint64_t bit;
    const char* name;
  } kNames[] = {{1u << 0, "CF"},  {1u << 2, "PF"},  {1u << 4, "AF"},  {1u << 6, "ZF"},
                {1u << 7, "SF"},  {1u << 8, "TF"},  {1u << 9, "IF"},  {1u << 10, "DF"},
                {1u << 11, "OF"}, {3u << 12, "IOPL"}, {1u << 14, "NT"}, {1u << 16, "RF"},
                {1u << 17, "VM"}, {1u << 18, "AC"}, {1u << 21, "ID"}};
  std::string s;
  for (const auto& n : kNames) {
    if (flags & n.bit) {
      if (!s.empty()) s += ' ';
      s += n.name;
    }
  }
  return s.empty() ? "-" : s;
}

std::string listing(const Program& program, uint64_t mark_rip) {
  std::string out;
  for (const auto& in : program.instrs) {
    ZydisDisassembledInstruction d;
    std::string text = "(undecodable)";
    if (ZYAN_SUCCESS(ZydisDisassembleIntel(ZYDIS_MACHINE_MODE_LONG_64, in.address, in.bytes.data(),
                                           in.bytes.size(), &d)))
      text = d.text;
    std::string hex;
    for (uint8_t b : in.bytes) hex += fmt::format("{:02x}", b);
    out += fmt::format("{} {:#07x}  {:<30} {:<48} [{}]", in.address == mark_rip ? ">>" : "  ",
                       in.address, hex, text, to_string(in.cls));
    if (in.undef_after) out += " undefined after: " + flag_names(in.undef_after);
    out += '\n';
  }
  return out;
}

}  // namespace keel::difftest
