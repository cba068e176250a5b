// The VM state format (state/state_format.h): round trips, and every kind of damage refused with
// an error naming it.
#include "state/state_format.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace keel::state {
namespace {

std::vector<uint8_t> sample() {
  Writer w;
  auto& a = w.section("cpu0", 2);
  a.u8("b", 0xAB);
  a.u16("w", 0xBEEF);
  a.u32("d", 0xDEADBEEF);
  a.u64("q", 0x0123456789ABCDEFull);
  a.boolean("t", true);
  a.str("s", "hello");
  const uint64_t list[] = {1, 2, 3};
  a.u64s("l", list);
  w.section("dev/serial0").bytes("fifo", std::vector<uint8_t>{1, 2, 3, 4});
  return w.finish();
}

std::string parse_error(const std::vector<uint8_t>& bytes) {
  try {
    Document::parse(bytes, "test.state");
  } catch (const StateError& e) {
    return e.what();
  }
  return "";
}

TEST(StateFormat, RoundTripsEveryFieldKind) {
  Document doc = Document::parse(sample(), "test.state");
  const auto& a = doc.section("cpu0", 2);
  EXPECT_EQ(a.version(), 2u);
  EXPECT_EQ(a.u8("b"), 0xAB);
  EXPECT_EQ(a.u16("w"), 0xBEEF);
  EXPECT_EQ(a.u32("d"), 0xDEADBEEFu);
  EXPECT_EQ(a.u64("q"), 0x0123456789ABCDEFull);
  EXPECT_TRUE(a.boolean("t"));
  EXPECT_EQ(a.str("s", 16), "hello");
  EXPECT_EQ(a.u64s("l", 3), (std::vector<uint64_t>{1, 2, 3}));
  auto fifo = doc.section("dev/serial0").bytes("fifo", 16);
  EXPECT_EQ(std::vector<uint8_t>(fifo.begin(), fifo.end()), (std::vector<uint8_t>{1, 2, 3, 4}));
  EXPECT_EQ(doc.names(), (std::vector<std::string>{"cpu0", "dev/serial0"}));
}

TEST(StateFormat, EveryTruncationIsRefusedAsTruncated) {
  auto bytes = sample();
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + n);
    std::string error = parse_error(cut);
    ASSERT_NE(error.find("truncated"), std::string::npos) << "at " << n << ": " << error;
    EXPECT_EQ(error.rfind("test.state", 0), 0u) << error;
  }
}

TEST(StateFormat, EveryFlippedBitIsRefused) {
  auto bytes = sample();
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      auto bad = bytes;
      bad[i] ^= static_cast<uint8_t>(1 << bit);
      ASSERT_NE(parse_error(bad), "") << "byte " << i << " bit " << bit;
    }
  }
  // A payload byte: the record's checksum names it.
  auto bad = bytes;
  bad[kHeaderSize + 10] ^= 1;
  EXPECT_NE(parse_error(bad).find("section 'cpu0' fails its checksum"), std::string::npos)
      << parse_error(bad);
}

TEST(StateFormat, AnotherFormatVersionIsRefusedByNumber) {
  auto bytes = sample();
  bytes[8] = 2;  // format version 2, with a valid header checksum
  uint32_t crc = crc32({bytes.data(), 12});
  for (int i = 0; i < 4; ++i) bytes[12 + i] = static_cast<uint8_t>(crc >> (8 * i));
  EXPECT_NE(parse_error(bytes).find("state format version 2 is not supported"), std::string::npos)
      << parse_error(bytes);
  bytes[0] = 'X';
  EXPECT_NE(parse_error(bytes).find("bad magic"), std::string::npos);
}

TEST(StateFormat, ANewerSectionVersionIsRefusedByName) {
  Document doc = Document::parse(sample(), "test.state");
  try {
    doc.section("cpu0", 1);
    FAIL() << "version 2 accepted";
  } catch (const StateError& e) {
    EXPECT_NE(std::string(e.what()).find("section 'cpu0': version 2 is not supported"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(doc.section("cpu1"), StateError);
}

TEST(StateFormat, TrailingDataAndMissingOrMistypedFieldsAreRefused) {
  auto bytes = sample();
  bytes.push_back(0);
  EXPECT_NE(parse_error(bytes).find("trailing data"), std::string::npos);

  Document doc = Document::parse(sample(), "test.state");
  const auto& a = doc.section("cpu0", 2);
  try {
    a.u32("q");
    FAIL();
  } catch (const StateError& e) {
    EXPECT_STREQ(e.what(), "state: section 'cpu0': field 'q' has 8 bytes, expected 4");
  }
  EXPECT_THROW(a.u8("missing"), StateError);
  EXPECT_THROW(a.str("s", 4), StateError);        // longer than allowed
  EXPECT_THROW(a.u64s("l", 2), StateError);       // more entries than allowed
  EXPECT_THROW(a.u64_in("q", 0, 10), StateError);  // out of range
}

TEST(StateFormat, DuplicateSectionsAndFieldsAreRefused) {
  Writer w;
  w.section("a").u8("x", 1);
  w.section("a").u8("x", 2);
  EXPECT_NE(parse_error(w.finish()).find("section 'a' appears twice"), std::string::npos);

  Writer f;
  auto& s = f.section("b");
  s.u8("x", 1);
  s.u8("x", 2);
  EXPECT_NE(parse_error(f.finish()).find("field 'x' appears twice"), std::string::npos);
}

TEST(StateFormat, AHugeDeclaredLengthIsRefusedBeforeAllocating) {
  auto bytes = sample();
  // The first record: name length (2) | "cpu0" | version (4) | payload length (4).
  size_t len_at = kHeaderSize + 2 + 4 + 4;
  bytes[len_at + 3] = 0xFF;
  EXPECT_NE(parse_error(bytes).find("more than the limit"), std::string::npos) << parse_error(bytes);
}

}  // namespace
}  // namespace keel::state
