// Boots keel with `args`, waits for the default guest's KEEL-GUEST-READY, types `commands` at its
// shell and then `exit` (which powers off), and returns everything keel printed. Within `budget`:
// a guest that hangs is killed and the test fails with keel's output.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <string>
#include <vector>

#include "keel_process.h"

namespace keel::testing {

inline ProcessResult type_at_guest_shell(const std::vector<std::string>& args, const std::string& commands,
                                         std::chrono::milliseconds budget) {
  using namespace std::chrono_literals;
  Budget b(budget);
  KeelProcess p(args);
  if (!p.wait_for_stdout("KEEL-GUEST-READY", b.left())) {
    p.send_signal(SIGTERM);
    ProcessResult r = p.wait(15s);
    ADD_FAILURE() << "the guest never became ready: " << r.describe();
    return r;
  }
  p.write_stdin(commands + "\nexit\n");
  ProcessResult r = p.wait(b.left());
  if (r.timed_out) ADD_FAILURE() << "the guest did not power off after its commands: " << r.describe();
  return r;
}

}  // namespace keel::testing
