// MachineTarget: the ControlTarget a running Machine offers `keel run --control PATH`. It maps the
// machine's lifecycle listener to QMP events (STOP, RESUME, SHUTDOWN, RESET) and its serial port
// to the console stream, and hosts the ControlServer on the machine's main loop.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "control/control_server.h"
#include "control/control_target.h"

namespace keel {
class Machine;
struct MachineEvent;
}  // namespace keel

namespace keel::control {

class MachineTarget : public ControlTarget {
 public:
  // Adds the lifecycle listener and the serial sink; call before machine.start()/run().
  explicit MachineTarget(Machine& machine);

  RunStatus query_status() override;
  void pause() override;
  void resume() override;
  void powerdown() override;
  void reset() override;
  void quit() override;
  std::vector<CpuInfo> query_cpus() override;
  void set_event_callback(EventCallback callback) override;
  void set_console_callback(ConsoleCallback callback) override;
  void console_input(std::string_view bytes) override;

 private:
  void on_machine_event(const MachineEvent& event);
  void emit(const char* name, nlohmann::json data);

  Machine& machine_;
  std::mutex mutex_;  // guards the callbacks and last_ (listeners run on any thread)
  EventCallback on_event_;
  ConsoleCallback on_console_;
  bool was_paused_ = false;
  bool user_paused_ = false;
};

// Serves `path` for `machine` on its main loop for as long as it lives (create before run()).
class MachineControl {
 public:
  MachineControl(Machine& machine, const std::string& path);
  ~MachineControl();

 private:
  Machine& machine_;
  MachineTarget target_;
  std::unique_ptr<ControlServer> server_;
};

}  // namespace keel::control
