#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "devices/pci/pci_acpi.h"

namespace keel {
namespace {

// Wraps the PCI0 AML in a DSDT (Scope (\_SB) { ... }) and disassembles it with iasl.
TEST(PciAcpi, RootBridgeAmlDisassemblesWithIasl) {
  if (std::system("command -v iasl >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "iasl (acpica-tools) is not installed";
  std::vector<uint8_t> dev = pci_root_bridge_aml();
  std::vector<uint8_t> scope_body = {'\\', '_', 'S', 'B', '_'};
  scope_body.insert(scope_body.end(), dev.begin(), dev.end());
  size_t len = scope_body.size() + 2;
  ASSERT_LT(len, 4096u);
  std::vector<uint8_t> aml = {0x10, static_cast<uint8_t>(0x40 | (len & 0xf)),
                              static_cast<uint8_t>(len >> 4)};
  aml.insert(aml.end(), scope_body.begin(), scope_body.end());

  std::vector<uint8_t> table(36, 0);
  const char sig[] = "DSDT";
  std::copy(sig, sig + 4, table.begin());
  table[8] = 2;  // revision
  const char oem[] = "KEEL  KEELPCI ";
  std::copy(oem, oem + 14, table.begin() + 10);
  table.insert(table.end(), aml.begin(), aml.end());
  uint32_t total = table.size();
  for (int i = 0; i < 4; ++i) table[4 + i] = static_cast<uint8_t>(total >> (8 * i));
  uint8_t sum = 0;
  for (uint8_t b : table) sum += b;
  table[9] = static_cast<uint8_t>(-sum);

  auto dir = std::filesystem::temp_directory_path() / ("keel-pci-acpi-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream f(dir / "dsdt.aml", std::ios::binary);
    f.write(reinterpret_cast<const char*>(table.data()), table.size());
  }
  std::string cmd = "cd " + dir.string() + " && iasl -d dsdt.aml >iasl.log 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "iasl failed, see " << dir / "iasl.log";
  std::ifstream dsl(dir / "dsdt.dsl");
  std::stringstream ss;
  ss << dsl.rdbuf();
  std::string text = ss.str();
  std::filesystem::remove_all(dir);
  EXPECT_NE(text.find("Device (PCI0)"), std::string::npos) << text;
  EXPECT_NE(text.find("EisaId (\"PNP0A03\")"), std::string::npos) << text;
  EXPECT_NE(text.find("WordBusNumber"), std::string::npos) << text;
  EXPECT_NE(text.find("0x0CF8"), std::string::npos) << text;
  EXPECT_NE(text.find("0xC0000000"), std::string::npos) << text;
  EXPECT_NE(text.find("0xFEBFFFFF"), std::string::npos) << text;
  EXPECT_EQ(text.find("Unknown"), std::string::npos) << text;
}

}  // namespace
}  // namespace keel
