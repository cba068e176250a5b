// Runs ACPICA's iasl over ACPI tables in tests: disassembles a table, then compiles the
// disassembly again, and reports every error, warning or remark either step printed. Tests call
// GTEST_SKIP() when iasl (acpica-tools) is missing.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

namespace keel::testing {

inline bool have_iasl() { return std::system("command -v iasl >/dev/null 2>&1") == 0; }

struct IaslResult {
  std::string dsl;       // the disassembly
  std::string problems;  // empty when iasl was satisfied; otherwise what it complained about
};

inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// `name` is the file stem (lower-case signature, e.g. "facp").
inline IaslResult iasl_check(const std::string& name, const std::vector<uint8_t>& table) {
  namespace fs = std::filesystem;
  std::string templ = (fs::temp_directory_path() / "keel-iasl-XXXXXX").string();
  if (!::mkdtemp(templ.data())) return {"", "mkdtemp failed"};
  const fs::path dir = templ;
  {
    std::ofstream f(dir / (name + ".dat"), std::ios::binary);
    f.write(reinterpret_cast<const char*>(table.data()), std::streamsize(table.size()));
  }
  IaslResult r;
  const std::string cd = "cd '" + dir.string() + "' && ";
  const int dis = std::system((cd + "iasl -d " + name + ".dat >dis.log 2>&1").c_str());
  const std::string dis_log = slurp(dir / "dis.log");
  r.dsl = slurp(dir / (name + ".dsl"));
  // Disassembly problems show up in the log or as comments in the .dsl ("Incorrect checksum").
  static const std::regex bad(R"(warning|error|incorrect|invalid|unknown|terminates|\*\*\*\*)",
                              std::regex::icase);
  if (dis != 0 || r.dsl.empty()) r.problems += "iasl -d failed:\n" + dis_log;
  std::smatch m;
  if (std::regex_search(dis_log, m, bad)) r.problems += "iasl -d reported:\n" + dis_log;
  if (std::regex_search(r.dsl, m, bad)) r.problems += "the disassembly flags a problem:\n" + r.dsl;
  if (r.problems.empty()) {
    // Compiling the disassembly back checks the semantics (object types, resource fields).
    const int comp = std::system((cd + "iasl -p recompiled " + name + ".dsl >comp.log 2>&1").c_str());
    const std::string comp_log = slurp(dir / "comp.log");
    if (comp != 0 || comp_log.find("0 Errors, 0 Warnings, 0 Remarks") == std::string::npos)
      r.problems += "recompiling the disassembly reported:\n" + comp_log;
  }
  fs::remove_all(dir);
  return r;
}

}  // namespace keel::testing
