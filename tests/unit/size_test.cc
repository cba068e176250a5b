#include "base/size.h"

#include <gtest/gtest.h>

#include "base/error.h"

namespace keel {
namespace {

TEST(ParseSize, Suffixes) {
  EXPECT_EQ(parse_size("0"), 0u);
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("4K"), 4096u);
  EXPECT_EQ(parse_size("4k"), 4096u);
  EXPECT_EQ(parse_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_size("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_size("512mb"), 512ull << 20);
  EXPECT_EQ(parse_size("2G"), 2ull << 30);
  EXPECT_EQ(parse_size("1T"), 1ull << 40);
}

TEST(ParseSize, DefaultUnitAppliesOnlyWithoutSuffix) {
  EXPECT_EQ(parse_size("512", 1 << 20), 512ull << 20);
  EXPECT_EQ(parse_size("512K", 1 << 20), 512ull << 10);
}

TEST(ParseSize, MaxValues) {
  EXPECT_EQ(parse_size("18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(parse_size("16777215T"), 16777215ull << 40);
}

void expect_refused(const char* text, const char* why) {
  try {
    parse_size(text);
    ADD_FAILURE() << "accepted '" << text << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(std::string("'") + text + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(why), std::string::npos) << msg;
  }
}

TEST(ParseSize, RefusesGarbage) {
  expect_refused("", "empty");
  expect_refused("M", "expected a decimal number");
  expect_refused("-1", "expected a decimal number");
  expect_refused("+1", "expected a decimal number");
  expect_refused(" 1", "expected a decimal number");
  expect_refused("1.5G", "unknown suffix '.5G'");
  expect_refused("12X", "unknown suffix 'X'");
  expect_refused("12MX", "unknown suffix 'MX'");
  expect_refused("12 M", "unknown suffix ' M'");
  expect_refused("12M ", "unknown suffix 'M '");
  expect_refused("0x10", "unknown suffix 'x10'");
}

TEST(ParseSize, RefusesOverflow) {
  expect_refused("18446744073709551616", "too large");
  expect_refused("99999999999999999999999", "too large");
  expect_refused("16777216T", "too large");
  expect_refused("17179869184G", "too large");
}

TEST(FormatSize, PicksLargestExactUnit) {
  EXPECT_EQ(format_size(512ull << 20), "512 MiB");
  EXPECT_EQ(format_size(1536ull << 10), "1536 KiB");
  EXPECT_EQ(format_size(1000), "1000 bytes");
  EXPECT_EQ(format_size(0), "0 bytes");
}

}  // namespace
}  // namespace keel
