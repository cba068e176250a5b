// The console and the log of a VM run by the daemon, end to end with the real VMM and
// tests/guests/serial_irq_echo.asm on emu (it prints READY, then echoes serial input until 'q'):
// a paste much longer than the UART's FIFO typed into `keel console` arrives intact (the VMM
// queues it, control/machine_target.cc), and each start moves the previous run's log aside.
#include <filesystem>

#include "e2e_manager_helpers.h"

namespace keel::e2e {
namespace {

class ManagerConsoleTest : public DaemonFixture {
 protected:
  void SetUp() override {
    DaemonFixture::SetUp();
    start_daemon();
    json definition{{"name", "echo"}, {"vcpus", 1}, {"memory_mib", 16}, {"accel", "emu"},
                    {"test_guest", KEEL_TEST_GUEST_DIR "/serial_irq_echo.bin"}};
    api().call("POST", "/v1/vms", definition);
  }

  // Starts the VM and waits for the guest to say READY on its console.
  void start_echo() {
    CommandResult r = keel({"start", "echo"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    read_console_until("echo", [](const std::string& s) { return s.find("READY") != s.npos; });
  }
};

TEST_F(ManagerConsoleTest, PasteLongerThanTheUartFifoReachesTheGuestIntact) {
  start_echo();
  std::string paste;
  for (int i = 0; paste.size() < 4096; ++i) paste += "line " + std::to_string(i) + " of a paste\r";
  // `keel console` sends its stdin in 1 KiB requests, then detaches at end of input.
  CommandResult r = keel({"console", "echo"}, paste + "q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string console = read_console_until("echo", [](const std::string& s) {
    return s.find('q') != s.npos;
  });
  EXPECT_EQ(console, "READY\r\n" + paste + "q");
  wait_state("echo", "shut off", "shutdown");  // 'q' ends the guest: all of it arrived
}

TEST_F(ManagerConsoleTest, EachStartMovesThePreviousRunsLogAside) {
  start_echo();
  std::string log = info("echo")["log"];
  EXPECT_EQ(log, state_dir + "/log/echo.log");
  ASSERT_EQ(keel({"console", "echo"}, "first run\rq").exit_code, 0);
  wait_state("echo", "shut off", "shutdown");
  EXPECT_NE(read_whole(log).find("first run"), std::string::npos) << read_whole(log);

  start_echo();
  EXPECT_NE(read_whole(log + ".1").find("first run"), std::string::npos) << read_whole(log + ".1");
  EXPECT_EQ(read_whole(log).find("first run"), std::string::npos) << read_whole(log);
  ASSERT_EQ(keel({"console", "echo"}, "q").exit_code, 0);
  wait_state("echo", "shut off", "shutdown");
}

}  // namespace
}  // namespace keel::e2e
