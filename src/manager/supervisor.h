// The supervisor thread: one epoll loop watching every live VMM's control connection (replies and
// events), console stream and pidfd (exit). It hands events, console bytes and exits to the
// callbacks the caller registered; those run on the supervisor thread and must not block long
// (they never take a per-VM command lock).
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "manager/vmm_process.h"

namespace keel::manager {

class Supervisor {
 public:
  struct Callbacks {
    std::function<void(const nlohmann::json& event)> on_event;
    std::function<void(std::string_view bytes)> on_console;
    // The process ended. `wait_status` is waitpid's status for a child of this daemon, -1 for a
    // VMM adopted after a daemon restart (its parent was the old daemon).
    std::function<void(int wait_status)> on_exit;
  };

  Supervisor();
  ~Supervisor();  // stops watching; the VMM processes go on running
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Thread-safe: starts watching `link` (handed to the supervisor thread through a queue).
  void watch(std::shared_ptr<VmmLink> link, Callbacks callbacks);

 private:
  struct Watched {
    std::shared_ptr<VmmLink> link;
    Callbacks callbacks;
    bool control_open = true;
    bool console_open = true;
  };
  void run();
  void add(uint64_t id, Watched watched);
  void drain_control(Watched& w, uint64_t id);
  void drain_console(Watched& w, uint64_t id);
  void finish(uint64_t id);

  UniqueFd epoll_;
  UniqueFd wake_;
  std::mutex mutex_;  // guards incoming_ and stop_
  std::vector<std::pair<uint64_t, Watched>> incoming_;
  bool stop_ = false;
  uint64_t next_id_ = 1;
  std::map<uint64_t, Watched> watched_;  // supervisor thread only
  std::thread thread_;
};

}  // namespace keel::manager
