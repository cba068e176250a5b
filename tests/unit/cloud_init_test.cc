// The cloud-init NoCloud seed: option parsing, the ISO 9660 volume keel builds (read back with
// xorriso), and the default guest mounting it and reading the files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "backends/block/cloud_init_seed.h"
#include "base/error.h"
#include "default_guest.h"
#include "guest_shell.h"
#include "qemu_img.h"

namespace keel {
namespace {

namespace fs = std::filesystem;
using testing::sh;
using testing::TempDir;

TEST(CloudInit, OptionForms) {
  CloudInitConfig c = parse_cloud_init_option("user-data=/a,meta-data=/b,network-config=/c");
  EXPECT_EQ(c.user_data, "/a");
  EXPECT_EQ(c.meta_data, "/b");
  EXPECT_EQ(c.network_config, "/c");
  EXPECT_EQ(parse_cloud_init_option("user-data=/u").meta_data, "");
  EXPECT_THROW(parse_cloud_init_option("meta-data=/b"), UsageError);
  EXPECT_THROW(parse_cloud_init_option("user-data=/a,vendor-data=/v"), UsageError);
  EXPECT_THROW(parse_cloud_init_option("user-data"), UsageError);
  EXPECT_EQ(default_meta_data("web1"), "instance-id: iid-web1\nlocal-hostname: web1\n");
}

TEST(CloudInit, SeedIsACidataIsoWithTheFiles) {
  TempDir dir;
  std::ofstream(dir / "user-data") << "#cloud-config\nusers:\n  - name: keel\n";
  std::ofstream(dir / "net") << "version: 2\n";
  auto seed = make_cloud_init_seed({dir / "user-data", {}, dir / "net"}, "web1");
  EXPECT_TRUE(seed->readonly());
  std::vector<uint8_t> bytes(seed->size());
  seed->read_bytes(0, bytes.data(), bytes.size());
  std::ofstream(dir / "seed.iso", std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  testing::Shell info = sh("xorriso -indev " + (dir / "seed.iso").string() + " -pvd_info");
  EXPECT_NE(info.out.find("Volume id    : 'cidata'"), std::string::npos) << info.out;
  ASSERT_EQ(sh("xorriso -osirrox on -indev " + (dir / "seed.iso").string() + " -extract / " +
               (dir / "out").string()).status, 0);
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  EXPECT_EQ(slurp(dir / "out/user-data"), "#cloud-config\nusers:\n  - name: keel\n");
  EXPECT_EQ(slurp(dir / "out/meta-data"), "instance-id: iid-web1\nlocal-hostname: web1\n");
  EXPECT_EQ(slurp(dir / "out/network-config"), "version: 2\n");
  try {
    make_cloud_init_seed({dir / "missing"}, "x");
    ADD_FAILURE() << "a missing user-data file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "missing").string()), std::string::npos) << e.what();
  }
}

TEST(CloudInitLinux, DefaultGuestMountsTheSeed) {
  if (testing::linux_tests_off()) GTEST_SKIP() << "KEEL_LINUX_TESTS=off";
  const auto& dg = testing::default_guest();
  if (!dg) GTEST_SKIP() << dg.why_missing;
  TempDir dir;
  std::ofstream(dir / "user-data") << "#cloud-config\nfqdn: keel-user-data-marker\n";
  std::ofstream(dir / "meta-data") << "instance-id: i-42\nlocal-hostname: from-meta-data\n";
  // With a data disk first, the seed is vdb.
  auto r = testing::type_at_guest_shell(
      {"run", "--accel", "emu", "--disk", dg.disk().string() + ",readonly", "--cloud-init",
       "user-data=" + (dir / "user-data").string() + ",meta-data=" + (dir / "meta-data").string()},
      "mkdir -p /mnt/ci && mount -t iso9660 -o ro /dev/vdb /mnt/ci && "
      "sed 's/^/SEED-UD:/' /mnt/ci/user-data && sed 's/^/SEED-MD:/' /mnt/ci/meta-data",
      std::chrono::seconds(250));
  EXPECT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(testing::contains(r.out, "SEED-UD:fqdn: keel-user-data-marker")) << r.describe();
  EXPECT_TRUE(testing::contains(r.out, "SEED-MD:local-hostname: from-meta-data")) << r.describe();
}

}  // namespace
}  // namespace keel
