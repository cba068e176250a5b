// Strict validation of VM definitions: every refusal names the field.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "manager/vm_definition.h"

namespace keel::manager {
namespace {

using nlohmann::json;

class DefinitionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/keel-def-XXXXXX";
    dir = ::mkdtemp(tmpl);
    kernel = dir + "/vmlinuz";
    disk = dir + "/disk.img";
    std::ofstream(kernel) << "kernel";
    std::ofstream(disk) << "disk";
  }
  void TearDown() override { std::filesystem::remove_all(dir); }

  json valid() const {
    return json{{"name", "web1"}, {"vcpus", 2}, {"memory_mib", 512}, {"accel", "auto"},
                {"kernel", kernel}, {"cmdline", "console=ttyS0"},
                {"disks", {{{"path", disk}, {"readonly", false}}}},
                {"nets", {{{"type", "user"}, {"hostfwd", {"tcp:2222-:22"}}}}}};
  }
  // The DefinitionError message for `doc`.
  std::string refusal(const json& doc) {
    try {
      parse_definition(doc);
    } catch (const DefinitionError& e) {
      return e.what();
    }
    return "accepted";
  }

  std::string dir, kernel, disk;
};

TEST_F(DefinitionTest, AcceptsTheIssueExampleAndRoundTrips) {
  VmDefinition d = parse_definition(valid());
  EXPECT_EQ(d.name, "web1");
  EXPECT_EQ(d.vcpus, 2u);
  EXPECT_EQ(d.disks.size(), 1u);
  EXPECT_EQ(d.nets[0].hostfwd[0], "tcp:2222-:22");
  VmDefinition again = parse_definition(d.to_json());
  EXPECT_EQ(again.to_json(), d.to_json());
}

TEST_F(DefinitionTest, DefaultsForOptionalFields) {
  VmDefinition d = parse_definition(json{{"name", "a"}, {"kernel", kernel}});
  EXPECT_EQ(d.vcpus, 1u);
  EXPECT_EQ(d.memory_mib, 512u);
  EXPECT_EQ(d.accel, "auto");
}

TEST_F(DefinitionTest, RefusesUnknownFieldsNamingThem) {
  json doc = valid();
  doc["colour"] = "blue";
  EXPECT_EQ(refusal(doc), "field 'colour': unknown field");
  doc = valid();
  doc["disks"][0]["cache"] = "none";
  EXPECT_EQ(refusal(doc), "field 'disks[0].cache': unknown field");
  doc = valid();
  doc["nets"][0]["mac"] = "x";
  EXPECT_EQ(refusal(doc), "field 'nets[0].mac': unknown field");
}

TEST_F(DefinitionTest, RefusesBadTypesNamingTheField) {
  json doc = valid();
  doc["vcpus"] = "2";
  EXPECT_EQ(refusal(doc), "field 'vcpus': expected an integer, got string");
  doc = valid();
  doc["memory_mib"] = 1.5;
  EXPECT_EQ(refusal(doc), "field 'memory_mib': expected an integer, got number");
  doc = valid();
  doc["disks"][0]["readonly"] = "yes";
  EXPECT_EQ(refusal(doc), "field 'disks[0].readonly': expected a boolean, got string");
  doc = valid();
  doc["disks"] = json::object();
  EXPECT_EQ(refusal(doc), "field 'disks': expected an array, got object");
  doc = valid();
  doc["name"] = 7;
  EXPECT_EQ(refusal(doc), "field 'name': expected a string, got number");
  EXPECT_NE(refusal(json::array()).find("expected an object"), std::string::npos);
}

TEST_F(DefinitionTest, RefusesOutOfRangeAndBadValues) {
  json doc = valid();
  doc["vcpus"] = 0;
  EXPECT_EQ(refusal(doc), "field 'vcpus': must be between 1 and 255");
  doc["vcpus"] = -3;
  EXPECT_EQ(refusal(doc), "field 'vcpus': must be between 1 and 255");
  doc = valid();
  doc["accel"] = "tcg";
  EXPECT_EQ(refusal(doc), "field 'accel': 'tcg' is not one of auto, kvm, emu");
  for (const char* bad : {"", "../etc", "a b", "-x", "x/y"}) {
    doc = valid();
    doc["name"] = bad;
    EXPECT_EQ(refusal(doc).rfind("field 'name'", 0), 0u) << bad;
  }
  doc = valid();
  doc["nets"][0]["hostfwd"][0] = "tcp:22";
  EXPECT_EQ(refusal(doc).rfind("field 'nets[0].hostfwd[0]'", 0), 0u);
  doc = valid();
  doc["nets"][0]["type"] = "bridge";
  EXPECT_EQ(refusal(doc), "field 'nets[0].type': 'bridge' is not one of user, tap");
}

TEST_F(DefinitionTest, RefusesMissingFilesNamingTheField) {
  json doc = valid();
  doc["kernel"] = dir + "/nope";
  EXPECT_EQ(refusal(doc), "field 'kernel': file '" + dir + "/nope' does not exist");
  doc = valid();
  doc["disks"][0]["path"] = dir + "/missing.img";
  EXPECT_EQ(refusal(doc), "field 'disks[0].path': file '" + dir + "/missing.img' does not exist");
  doc = valid();
  doc["initrd"] = "relative.img";
  EXPECT_EQ(refusal(doc), "field 'initrd': 'relative.img' is not an absolute path");
  doc = valid();
  doc["kernel"] = dir;  // a directory
  EXPECT_EQ(refusal(doc), "field 'kernel': '" + dir + "' is not a regular file");
  doc = valid();
  doc.erase("kernel");
  EXPECT_EQ(refusal(doc), "field 'kernel': missing (or give test_guest, or \"boot\": \"disk\")");
  doc = valid();
  doc.erase("name");
  EXPECT_EQ(refusal(doc), "field 'name': missing");
}

TEST_F(DefinitionTest, TestGuestExcludesKernel) {
  json doc{{"name", "t"}, {"test_guest", kernel}};
  EXPECT_EQ(parse_definition(doc).test_guest, kernel);
  doc["kernel"] = kernel;
  EXPECT_EQ(refusal(doc), "field 'test_guest': cannot be combined with kernel");
}

// define refuses what the VMM would refuse at start, with the VMM's own checks, naming the field.
TEST_F(DefinitionTest, RefusesWhatTheVmmWouldRefuseAtStart) {
  json doc = valid();
  doc["nets"][0]["hostfwd"] = {"tcp::70000-:22"};
  EXPECT_EQ(refusal(doc), "field 'nets[0].hostfwd[0]': hostfwd tcp::70000-:22: port out of range: 70000");
  doc["nets"][0]["hostfwd"] = {"tcp::2222-10.0.2.99:22"};
  EXPECT_NE(refusal(doc).find("field 'nets[0].hostfwd[0]': "), std::string::npos);
  EXPECT_NE(refusal(doc).find("10.0.2.15"), std::string::npos) << refusal(doc);
  doc["nets"][0]["hostfwd"] = {"tcp::2222-:22", "tcp::2222-:80"};
  EXPECT_EQ(refusal(doc), "field 'nets[0].hostfwd[1]': host port 2222 is already forwarded by an earlier rule");
  doc = valid();
  doc["accel"] = "emu";
  doc["vcpus"] = 255;
  EXPECT_EQ(refusal(doc), "field 'vcpus': the emu engine runs at most 254 vCPUs, got 255");
  doc = valid();
  doc["memory_mib"] = 8;
  EXPECT_NE(refusal(doc).find("field 'memory_mib': memory size 8 MiB is below the minimum"),
            std::string::npos) << refusal(doc);
}

TEST_F(DefinitionTest, AutostartAndOnCrash) {
  VmDefinition d = parse_definition(valid());
  EXPECT_FALSE(d.autostart);
  EXPECT_EQ(d.on_crash, "destroy");
  json doc = valid();
  doc["autostart"] = true;
  doc["on_crash"] = "preserve";
  d = parse_definition(doc);
  EXPECT_TRUE(d.autostart);
  EXPECT_EQ(d.on_crash, "preserve");
  EXPECT_EQ(parse_definition(d.to_json()).to_json(), d.to_json());
  doc["on_crash"] = "coredump-destroy";
  EXPECT_EQ(refusal(doc), "field 'on_crash': 'coredump-destroy' is not one of destroy, restart, preserve");
  doc["on_crash"] = "restart";
  doc["vcpus"] = 4;
  EXPECT_EQ(parse_definition(doc).changed_fields(d.to_json()),
            (std::vector<std::string>{"on_crash", "vcpus"}));
}

// examples/*.json are accepted as written, their relative paths resolved against the folder as
// `keel define` resolves them (the default guest must be built: scripts/build.sh).
TEST_F(DefinitionTest, ExamplesAreAccepted) {
  std::filesystem::path examples = std::filesystem::path(KEEL_SOURCE_DIR) / "examples";
  if (!std::filesystem::exists(std::filesystem::path(KEEL_DEFAULT_GUEST_DIR) / "vmlinuz"))
    GTEST_SKIP() << "the default guest is not built";
  int seen = 0;
  for (const auto& entry : std::filesystem::directory_iterator(examples)) {
    if (entry.path().extension() != ".json") continue;
    ++seen;
    std::ifstream in(entry.path());
    json doc = json::parse(in);
    auto resolve = [&](json& v) { v = (examples / v.get<std::string>()).lexically_normal().string(); };
    for (const char* key : {"kernel", "initrd"})
      if (doc.contains(key)) resolve(doc[key]);
    if (doc.contains("disks"))
      for (json& disk : doc["disks"]) resolve(disk["path"]);
    EXPECT_NO_THROW(parse_definition(doc)) << entry.path();
  }
  EXPECT_GE(seen, 2);
}

TEST_F(DefinitionTest, MalformedJsonTextIsRefused) {
  EXPECT_THROW(parse_definition_text("{\"name\": "), DefinitionError);
  EXPECT_THROW(parse_definition_text("\xff\xfe"), DefinitionError);
}

TEST_F(DefinitionTest, VmmArgumentsStartPausedUnderTheControlSocket) {
  auto args = vmm_arguments(parse_definition(valid()), "/run/x.sock");
  std::vector<std::string> expected{"run", "--control", "/run/x.sock", "--paused", "--cpus", "2",
                                    "--memory", "512M", "--accel", "auto", "--name", "web1", "--on-panic", "pause",
                                    "--kernel", kernel,
                                    "--cmdline", "console=ttyS0", "--disk", disk, "--net",
                                    "user,hostfwd=tcp:2222-:22"};
  EXPECT_EQ(args, expected);
  auto logged = vmm_arguments(parse_definition(valid()), "/run/x.sock", "/log/x.log");
  expected.insert(expected.begin() + 10, {"--log-file", "/log/x.log"});
  EXPECT_EQ(logged, expected);
}

TEST_F(DefinitionTest, TheCpuModelIsCheckedKeptAndPassedToTheVmm) {
  json doc = valid();
  doc["cpu"] = "baseline";
  VmDefinition d = parse_definition(doc);
  EXPECT_EQ(d.to_json()["cpu"], "baseline");
  auto args = vmm_arguments(d, "/run/x.sock");
  auto at = std::find(args.begin(), args.end(), "--cpu");
  ASSERT_NE(at, args.end());
  EXPECT_EQ(*(at + 1), "baseline");
  // The default is not written, so definitions from before the field compare equal.
  json stored = parse_definition(valid()).to_json();
  EXPECT_FALSE(stored.contains("cpu"));
  EXPECT_TRUE(parse_definition(stored).changed_fields(stored).empty());
  EXPECT_EQ(d.changed_fields(stored), (std::vector<std::string>{"cpu"}));
  doc["cpu"] = "pentium";
  EXPECT_EQ(refusal(doc), "field 'cpu': 'pentium' is not one of host, baseline");
}

TEST_F(DefinitionTest, DiskBootFormatsAndCloudInit) {
  json doc = valid();
  doc.erase("kernel");
  doc.erase("cmdline");
  doc["boot"] = "disk";
  doc["boot_entry"] = 1;
  doc["disks"][0]["format"] = "qcow2";
  doc["cloud_init"] = {{"user_data", disk}};
  VmDefinition d = parse_definition(doc);
  EXPECT_EQ(d.boot_entry, "1");
  EXPECT_EQ(parse_definition(d.to_json()).to_json(), d.to_json());
  auto args = vmm_arguments(d, "/run/x.sock");
  std::vector<std::string> expected{"run", "--control", "/run/x.sock", "--paused", "--cpus", "2",
                                    "--memory", "512M", "--accel", "auto", "--name", "web1", "--on-panic", "pause",
                                    "--boot", "disk",
                                    "--boot-entry", "1", "--disk", disk + ",format=qcow2",
                                    "--cloud-init", "user-data=" + disk, "--net", "user,hostfwd=tcp:2222-:22"};
  EXPECT_EQ(args, expected);

  doc["disks"][0]["format"] = "vmdk";
  EXPECT_EQ(refusal(doc), "field 'disks[0].format': 'vmdk' is not one of raw, qcow2");
  doc["disks"][0]["format"] = "raw";
  doc["boot"] = "cdrom";
  EXPECT_EQ(refusal(doc), "field 'boot': 'cdrom' is not one of kernel, disk");
  doc["boot"] = "disk";
  doc["kernel"] = kernel;
  EXPECT_EQ(refusal(doc), "field 'boot': \"disk\" takes the kernel from the disk: no kernel, initrd or test_guest");
  doc.erase("kernel");
  doc["disks"] = json::array();
  EXPECT_EQ(refusal(doc), "field 'disks': \"boot\": \"disk\" needs a disk to boot from");
  doc = valid();
  doc["boot_entry"] = "Debian";
  EXPECT_EQ(refusal(doc), "field 'boot_entry': needs \"boot\": \"disk\"");
  doc = valid();
  doc["cloud_init"] = {{"meta_data", disk}};
  EXPECT_EQ(refusal(doc), "field 'cloud_init.user_data': missing");
  doc["cloud_init"] = {{"user_data", dir + "/nope"}};
  EXPECT_EQ(refusal(doc), "field 'cloud_init.user_data': file '" + dir + "/nope' does not exist");
}

}  // namespace
}  // namespace keel::manager

namespace keel::manager {
namespace {

TEST_F(DefinitionTest, HostLoopbackAndDiskTypesRoundTripAndReachTheVmm) {
  json doc = valid();
  doc["nets"][0]["host_loopback"] = true;
  VmDefinition d = parse_definition(doc);
  EXPECT_TRUE(d.nets[0].host_loopback);
  EXPECT_EQ(d.disks[0].type, "file");
  EXPECT_EQ(parse_definition(d.to_json()).to_json(), d.to_json());
  std::vector<std::string> args = vmm_arguments(d, "/run/x.sock");
  EXPECT_NE(std::find(args.begin(), args.end(), "user,hostfwd=tcp:2222-:22,host-loopback=on"),
            args.end());
  // Refused where it means nothing, and block devices only with their type.
  doc = valid();
  doc["nets"] = json::array({json{{"type", "tap"}, {"ifname", "tap0"}, {"host_loopback", true}}});
  EXPECT_EQ(refusal(doc), "field 'nets[0].host_loopback': only for type user");
  doc = valid();
  doc["disks"][0]["type"] = "block";
  EXPECT_EQ(refusal(doc), "field 'disks[0].path': '" + disk + "' is not a block device");
  doc["disks"][0]["type"] = "pipe";
  EXPECT_EQ(refusal(doc), "field 'disks[0].type': 'pipe' is not one of file, block");
}

}  // namespace
}  // namespace keel::manager

namespace keel::manager {
namespace {

TEST(DefinitionText, ANumberTooLargeForAnyTypeIsMalformedJson) {
  // Found by fuzz_definition: json::parse throws out_of_range, not parse_error, for these.
  try {
    parse_definition_text("9E4747");
    ADD_FAILURE() << "accepted";
  } catch (const DefinitionError& e) {
    EXPECT_NE(std::string(e.what()).find("malformed JSON"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace keel::manager
