// Restoring on the other engine (engine/engine_convert.h): the counter guest saved on emu runs on
// kvm and the reverse, its count going on; the platform state survives a round trip through the
// other engine's layout field by field; what one side cannot hold is refused by name.
#include "engine/engine_convert.h"

#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "arch/x86/machine_state.h"
#include "control/control_client.h"
#include "counter_guest.h"
#include "engine/kvm/kvm_uapi.h"
#include "guest_harness.h"
#include "keel_process.h"
#include "qemu_img.h"

namespace keel {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

constexpr uint64_t kTscHz = 2'000'000'000;
constexpr uint64_t kNow = 5'000'000'000;  // guest ns at the save

// An emu snapshot's engine sections with a guest's worth of programming in them: a periodic LAPIC
// timer, or with `tsc_deadline` (in emu's clock TSC) one armed in TSC-deadline mode.
constexpr uint64_t kGuestTsc = 123456789;  // the vCPU's TSC MSR: far behind emu's clock TSC
std::vector<uint8_t> emu_state(uint64_t tsc_deadline = 0) {
  state::Writer w;
  auto& e = w.section("engine");
  e.str("name", "emu");
  e.u32("vcpus", 1);
  auto& c = w.section("emu/clock");
  c.u64("guest_ns", kNow);
  c.u64("tsc_hz", kTscHz);
  c.u32("vcpus", 1);
  auto& a = w.section("emu/lapic0");
  a.u32("id", 0);
  a.u32("ldr", 0x0100'0000);
  a.u32("dfr", 0xFFFF'FFFF);
  a.u64("base_msr", 0xFEE0'0900);
  a.u32("tpr", 0x20);
  a.u32("svr", 0x1FF);
  a.u32("esr", 0);
  a.u32("esr_pending", 0);
  a.u32("icr_low", 0x4'00FD);
  a.u32("icr_high", 0x0100'0000);
  std::array<uint32_t, 6> lvt = {0x2'00EC, 0x1'0000, 0x400, 0x700, 0x400, 0xFE};  // periodic timer on 0xEC
  if (tsc_deadline) lvt[0] = 0x4'00EC;
  a.u32s("lvt", lvt);
  std::array<uint64_t, 4> isr = {0, 0, 0, 1ull << (0xEC - 192)}, tmr = {0, 0, 0, 0}, irr = {0, 0, 1ull << (0x61 - 128), 0};
  a.u64s("isr", isr);
  a.u64s("tmr", tmr);
  a.u64s("irr", irr);
  a.u32("divide_conf", 0x3);  // divide by 16
  a.u32("initial_count", 62500);
  a.boolean("counting", tsc_deadline == 0);
  a.u64("count_start_ns", kNow - 16 * 1000);  // 1000 ticks ago
  a.u32("count_start_value", 62500);
  a.u64("tsc_deadline", tsc_deadline);
  a.u64("timer_deadline_ns", tsc_deadline ? kNow + 1'000'000 : kNow + 16 * 61500);
  a.u8("nmi_pending", 0);
  a.boolean("init_pending", false);
  a.boolean("sipi_pending", false);
  a.u8("sipi_vector", 0);
  auto& io = w.section("emu/ioapic");
  io.u32("id", 0);
  io.u32("select", 0x12);
  std::array<uint64_t, 24> redir{};
  for (auto& r : redir) r = 1u << 16;  // masked
  redir[2] = 0x30;                      // the PIT's pin, vector 0x30, unmasked
  redir[9] = 0x8000 | 0x39;             // SCI, level
  io.u64s("redirection", redir);
  io.u32("line_levels", 1u << 9);
  auto& pic = w.section("emu/pic");
  for (const char* p : {"master_", "slave_"}) {
    std::string s = p;
    pic.u8(s + "imr", s == "master_" ? 0xFB : 0xFF);
    pic.u8(s + "irr", 0);
    pic.u8(s + "isr", 0);
    pic.u8(s + "vector_base", s == "master_" ? 0x20 : 0x28);
    pic.u8(s + "init_step", 0);
    pic.boolean(s + "need_icw4", true);
    pic.boolean(s + "single", false);
    pic.boolean(s + "read_isr", s == "slave_");
  }
  auto& pit = w.section("emu/pit");
  for (int i = 0; i < 3; ++i) {
    std::string p = "ch" + std::to_string(i) + "_";
    pit.u8(p + "mode", i == 0 ? 2 : 0);
    pit.u8(p + "access", 3);
    pit.boolean(p + "bcd", false);
    pit.boolean(p + "gate", i != 2);
    pit.u32(p + "reload", i == 0 ? 1193 : 0x10000);
    pit.boolean(p + "counting", i == 0);
    pit.boolean(p + "null_count", false);
    pit.u64(p + "load_ns", kNow - 1000);
    pit.boolean(p + "paused", false);
    pit.u64(p + "paused_ticks", 0);
    pit.boolean(p + "write_msb_next", false);
    pit.u8(p + "write_lsb", 0);
    pit.boolean(p + "read_msb_next", i == 0);
    pit.boolean(p + "count_latched", false);
    pit.u16(p + "latched_count", 0);
    pit.boolean(p + "latch_msb_next", false);
    pit.boolean(p + "status_latched", false);
    pit.u8(p + "latched_status", 0);
  }
  pit.u8("port61", 1);
  pit.u64("next_edge_ns", kNow + 500'000);
  x86::VcpuSnapshot v;
  v.regs.rip = 0x1234;
  v.msrs = {{0x10, kGuestTsc}, {0x48, 1}, {0x174, 0x10}};
  x86::save_vcpu(v, w.section("cpu0"));
  return w.finish();
}

TEST(CrossEngine, EmuPlatformStateRoundTripsThroughKvmsLayout) {
  auto bytes = emu_state();
  state::Document emu = state::Document::parse(bytes, "emu");
  state::Document kvm = convert_engine_state(emu, "emu", "kvm", 1, 0);
  EXPECT_EQ(kvm.section("engine").str("name", 16), "kvm");
  // KVM's structures hold what the guest programmed.
  kvm_irqchip master{};
  kvm.section("kvm/irqchip0").bytes_exact("chip", std::span<uint8_t>(reinterpret_cast<uint8_t*>(&master.chip), sizeof master.chip));
  EXPECT_EQ(master.chip.pic.irq_base, 0x20);
  EXPECT_EQ(master.chip.pic.imr, 0xFB);
  EXPECT_EQ(master.chip.pic.init4, 1);
  kvm_irqchip io{};
  kvm.section("kvm/irqchip2").bytes_exact("chip", std::span<uint8_t>(reinterpret_cast<uint8_t*>(&io.chip), sizeof io.chip));
  EXPECT_EQ(io.chip.ioapic.redirtbl[2].bits, 0x30u);
  EXPECT_EQ(io.chip.ioapic.base_address, 0xFEC0'0000u);
  kvm_pit_state2 pit{};
  kvm.section("kvm/pit").bytes_exact("pit", std::span<uint8_t>(reinterpret_cast<uint8_t*>(&pit), sizeof pit));
  EXPECT_EQ(pit.channels[0].mode, 2);
  EXPECT_EQ(pit.channels[0].count, 1193u);
  EXPECT_EQ(pit.channels[0].read_state, 4);  // the next read is the count's high byte
  EXPECT_EQ(pit.channels[1].mode, 0xFF);     // never given a count: no timer
  EXPECT_EQ(kvm.section("kvm/clock").u64("clock_ns"), kNow);
  x86::VcpuSnapshot v = x86::load_vcpu(kvm.section("cpu0"));
  uint32_t tmcct, lvtt, isr7;
  std::memcpy(&tmcct, v.lapic.data() + 0x390, 4);
  std::memcpy(&lvtt, v.lapic.data() + 0x320, 4);
  std::memcpy(&isr7, v.lapic.data() + 0x170, 4);
  EXPECT_EQ(tmcct, 61500u);  // 1000 ticks of 62500 ran
  EXPECT_EQ(lvtt, 0x2'00ECu);
  EXPECT_EQ(isr7, 1u << (0xEC - 224));
  EXPECT_EQ(v.regs.apic_base, 0xFEE0'0900u);
  EXPECT_FALSE(x86::find_msr(v.msrs, 0x48));  // SPEC_CTRL: not one KVM's restore sets
  EXPECT_EQ(x86::find_msr(v.msrs, 0x10), 123456789u);

  // And back: what both engines model comes out as it went in.
  state::Document back = convert_engine_state(kvm, "kvm", "emu", 1, kTscHz);
  const auto& in_pic = emu.section("emu/pic");
  const auto& out_pic = back.section("emu/pic");
  for (const char* f : {"master_imr", "slave_imr", "master_vector_base", "slave_vector_base", "master_init_step"})
    EXPECT_EQ(out_pic.u8(f), in_pic.u8(f)) << f;
  EXPECT_EQ(out_pic.boolean("slave_read_isr"), true);
  const auto& in_a = emu.section("emu/lapic0");
  const auto& out_a = back.section("emu/lapic0");
  for (const char* f : {"id", "ldr", "dfr", "tpr", "svr", "icr_low", "icr_high", "divide_conf", "initial_count"})
    EXPECT_EQ(out_a.u32(f), in_a.u32(f)) << f;
  EXPECT_EQ(out_a.u32s("lvt", 6), in_a.u32s("lvt", 6));
  EXPECT_EQ(out_a.u64s("isr", 4), in_a.u64s("isr", 4));
  EXPECT_EQ(out_a.u64s("irr", 4), in_a.u64s("irr", 4));
  EXPECT_EQ(out_a.u64("base_msr"), in_a.u64("base_msr"));
  // The timer goes on with what was left of its count: due 61500 ticks of 16 ns after the save.
  EXPECT_TRUE(out_a.boolean("counting"));
  EXPECT_EQ(out_a.u64("timer_deadline_ns"), kNow + 61500 * 16);
  EXPECT_EQ(back.section("emu/ioapic").u64s("redirection", 24), emu.section("emu/ioapic").u64s("redirection", 24));
  EXPECT_EQ(back.section("emu/ioapic").u32("line_levels"), 1u << 9);
  const auto& out_pit = back.section("emu/pit");
  EXPECT_EQ(out_pit.u8("ch0_mode"), 2);
  EXPECT_EQ(out_pit.u32("ch0_reload"), 1193u);
  EXPECT_TRUE(out_pit.boolean("ch0_counting"));
  EXPECT_TRUE(out_pit.boolean("ch0_read_msb_next"));
  EXPECT_FALSE(out_pit.boolean("ch1_counting"));
  EXPECT_EQ(out_pit.u8("port61"), 1);
  EXPECT_EQ(out_pit.u64("next_edge_ns"), kNow + 1193ull * 1'000'000'000 / 1'193'182);
  EXPECT_EQ(back.section("emu/clock").u64("guest_ns"), kNow);
}

// emu's APIC holds a TSC deadline in its clock's TSC, KVM's MSR is in the vCPU's TSC: the deadline
// stays the same distance ahead of the TSC the guest reads, both ways.
TEST(CrossEngine, ATscDeadlineStaysAsFarAheadOfTheGuestsTsc) {
  const uint64_t clock_tsc = kNow * (kTscHz / 1'000'000'000);  // emu's clock TSC at the save
  const uint64_t ahead = 2'000'000;                          // 1 ms at 2 GHz
  auto bytes = emu_state(clock_tsc + ahead);
  state::Document kvm = convert_engine_state(state::Document::parse(bytes, "emu"), "emu", "kvm", 1, 0);
  x86::VcpuSnapshot v = x86::load_vcpu(kvm.section("cpu0"));
  EXPECT_EQ(x86::find_msr(v.msrs, 0x6E0), kGuestTsc + ahead);
  EXPECT_EQ(x86::find_msr(v.msrs, 0x10), kGuestTsc);
  state::Document back = convert_engine_state(kvm, "kvm", "emu", 1, kTscHz);
  EXPECT_EQ(back.section("emu/lapic0").u64("tsc_deadline"), clock_tsc + ahead);
  EXPECT_EQ(back.section("emu/lapic0").u64("timer_deadline_ns"), kNow + 1'000'000);
}

std::string conversion_error(const state::Document& kvm) {
  try {
    convert_engine_state(kvm, "kvm", "emu", 1, kTscHz);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(converted)";
}

// A KVM document changed by `change`, re-encoded.
state::Document kvm_with(const std::function<void(kvm_irqchip&, x86::VcpuSnapshot&)>& change) {
  auto bytes = emu_state();
  state::Document kvm = convert_engine_state(state::Document::parse(bytes, "emu"), "emu", "kvm", 1, 0);
  kvm_irqchip master{};
  kvm.section("kvm/irqchip0").bytes_exact("chip", std::span<uint8_t>(reinterpret_cast<uint8_t*>(&master.chip), sizeof master.chip));
  x86::VcpuSnapshot v = x86::load_vcpu(kvm.section("cpu0"));
  change(master, v);
  state::Writer w;
  for (const char* name : {"engine", "kvm/irqchip1", "kvm/irqchip2", "kvm/pit", "kvm/clock"}) {
    const auto& s = kvm.section(name);
    auto& out = w.section(name);
    if (std::string(name) == "engine") {
      out.str("name", "kvm");
      out.u32("vcpus", 1);
    } else if (std::string(name) == "kvm/clock") {
      out.u64("clock_ns", s.u64("clock_ns"));
    } else {
      const char* field = std::string(name) == "kvm/pit" ? "pit" : "chip";
      out.bytes(field, s.bytes(field, 4096));
    }
  }
  w.section("kvm/irqchip0").bytes("chip", {reinterpret_cast<const uint8_t*>(&master.chip), sizeof master.chip});
  x86::save_vcpu(v, w.section("cpu0"));
  auto out = w.finish();
  return state::Document::parse(out, "kvm");
}

TEST(CrossEngine, WhatTheEmuCannotHoldIsRefusedByName) {
  EXPECT_EQ(conversion_error(kvm_with([](kvm_irqchip&, x86::VcpuSnapshot&) {})), "(converted)");
  std::string aeoi = conversion_error(kvm_with([](kvm_irqchip& c, x86::VcpuSnapshot&) { c.chip.pic.auto_eoi = 1; }));
  EXPECT_NE(aeoi.find("an 8259 mode the emu PIC does not model (auto-EOI"), std::string::npos) << aeoi;
  std::string avx = conversion_error(kvm_with([](kvm_irqchip&, x86::VcpuSnapshot& v) {
    v.xsave.assign(4096, 0);
    v.xcr0 = 7;
  }));
  EXPECT_NE(avx.find("XSAVE state components (XCR0 = 7)"), std::string::npos) << avx;
  // x87 and SSE only: the FXSAVE image carries them, the XSAVE area goes.
  state::Document sse = kvm_with([](kvm_irqchip&, x86::VcpuSnapshot& v) {
    v.xsave.assign(4096, 0);
    v.xcr0 = 3;
  });
  state::Document emu = convert_engine_state(sse, "kvm", "emu", 1, kTscHz);
  EXPECT_TRUE(x86::load_vcpu(emu.section("cpu0")).xsave.empty());
}

// Saves a counting guest (acpi_counter, timer_counter) on `engine` under the baseline CPU model;
// returns the last count.
int save_counter(const std::string& engine, const fs::path& dir, const fs::path& sock,
                 const std::string& guest = "acpi_counter") {
  testing::KeelProcess vmm({"run", "--accel", engine, "--cpu", "baseline", "--memory", "32M", "--sandbox", "off",
                            "--test-guest", testing::test_guest(guest), "--control", sock.string()});
  EXPECT_TRUE(vmm.wait_for_stdout("count 3\n", 60s)) << "the guest never counted";
  control::ControlClient client = control::ControlClient::connect(sock.string());
  client.execute("snapshot-save", json{{"path", dir.string()}, {"resume", false}}, 60s);
  client.execute("quit");
  return testing::last_count(vmm.wait(30s).out);
}

// Restores `dir` on `engine` until the count is 3 past `saved_at`; returns the console output.
std::string expect_continues(const fs::path& dir, const std::string& engine, int saved_at) {
  testing::KeelProcess restored({"run", "--restore", dir.string(), "--accel", engine, "--sandbox", "off"});
  EXPECT_TRUE(restored.wait_for_stdout("count " + std::to_string(saved_at + 3) + "\n", 60s));
  restored.send_signal(SIGTERM);
  testing::ProcessResult r = restored.wait(30s);
  EXPECT_EQ(r.out.find("count " + std::to_string(saved_at) + "\n"), std::string::npos) << r.describe();
  EXPECT_EQ(r.out.find("count 0\n"), std::string::npos) << r.describe();
  return r.out;
}

TEST(CrossEngine, TheCounterSavedOnEmuGoesOnOnKvmAndTheReverse) {
  if (auto why = guest_test::engine_unavailable(Accel::kKvm)) GTEST_SKIP() << *why;
  testing::TempDir dir;
  int on_emu = save_counter("emu", dir.path() / "from-emu", dir.path() / "a.sock");
  ASSERT_GE(on_emu, 3);
  expect_continues(dir.path() / "from-emu", "kvm", on_emu);
  int on_kvm = save_counter("kvm", dir.path() / "from-kvm", dir.path() / "b.sock");
  ASSERT_GE(on_kvm, 3);
  expect_continues(dir.path() / "from-kvm", "emu", on_kvm);
}

// The "lapic L pit P" reports of timer_counter: each timer's interrupts so far.
std::vector<std::pair<int, int>> timer_reports(const std::string& out) {
  std::vector<std::pair<int, int>> r;
  size_t at = 0;
  while ((at = out.find("lapic ", at)) != std::string::npos) {
    int lapic = 0, pit = 0;
    if (std::sscanf(out.c_str() + at, "lapic %d pit %d\n", &lapic, &pit) == 2) r.emplace_back(lapic, pit);
    at += 6;
  }
  return r;
}

// Interrupts that are in flight at the save: the LAPIC timer (periodic) and the PIT through the
// IOAPIC both go on interrupting after the restore on `to`, counting on from where they were.
void expect_timers_go_on(const std::string& from, const std::string& to) {
  SCOPED_TRACE(from + " -> " + to);
  testing::TempDir dir;
  int saved_at = save_counter(from, dir.path() / "snap", dir.path() / "vmm.sock", "timer_counter");
  ASSERT_GE(saved_at, 3);
  auto reports = timer_reports(expect_continues(dir.path() / "snap", to, saved_at));
  ASSERT_GE(reports.size(), 3u);
  auto [lapic0, pit0] = reports.front();
  auto [lapic1, pit1] = reports.back();
  EXPECT_GE(pit0, 10 * (saved_at + 1));  // 10 PIT interrupts a report: not from zero
  EXPECT_GE(pit1 - pit0, 20);
  EXPECT_GT(lapic1 - lapic0, 10);  // every 7 ms against the PIT's 10
}

TEST(CrossEngine, BothTimersGoOnInterruptingAfterARestoreOnTheSameEngine) { expect_timers_go_on("emu", "emu"); }

TEST(CrossEngine, BothTimersGoOnInterruptingOnTheOtherEngine) {
  if (auto why = guest_test::engine_unavailable(Accel::kKvm)) GTEST_SKIP() << *why;
  expect_timers_go_on("emu", "kvm");
  expect_timers_go_on("kvm", "emu");
}

// Live migration across engines: the target names its engine with --accel.
TEST(CrossEngine, TheCounterMigratesLiveFromEmuToKvm) {
  if (auto why = guest_test::engine_unavailable(Accel::kKvm)) GTEST_SKIP() << *why;
  testing::TempDir dir;
  std::string uri = "unix:" + (dir.path() / "in.sock").string();
  std::string sock = (dir.path() / "src.sock").string();
  testing::KeelProcess target({"run", "--incoming", uri, "--accel", "kvm", "--sandbox", "off"});
  testing::KeelProcess source({"run", "--accel", "emu", "--cpu", "baseline", "--memory", "32M", "--sandbox", "off",
                               "--test-guest", testing::test_guest("acpi_counter"), "--control", sock});
  ASSERT_TRUE(source.wait_for_stdout("count 3\n", 60s)) << source.wait(10s).describe();
  control::ControlClient client = control::ControlClient::connect(sock);
  client.execute("migrate", json{{"uri", uri}});
  testing::ProcessResult src = source.wait(120s);
  EXPECT_NE((src.out + src.err).find("migrated to the target"), std::string::npos) << src.describe();
  int moved_at = testing::last_count(src.out);
  ASSERT_GE(moved_at, 3) << src.describe();
  EXPECT_TRUE(target.wait_for_stdout("count " + std::to_string(moved_at + 3) + "\n", 60s));
  target.send_signal(SIGTERM);
  testing::ProcessResult dst = target.wait(30s);
  EXPECT_EQ(dst.out.find("count " + std::to_string(moved_at) + "\n"), std::string::npos) << dst.describe();
}

}  // namespace
}  // namespace keel
