// DeadlineWatcher: the one thread per VM that turns guest-time deadlines into attention flags.
//
// The emu CPU checks LocalApic::maybe_pending() (an atomic load) at block boundaries; it never
// reads the clock there. Something must therefore notice that a timer deadline (LAPIC timer, PIT)
// has passed while the vCPU is busy running guest code. This thread sleeps on a condition variable
// until the earliest deadline of its clients, then calls deadline_reached() on each client whose
// deadline has passed (which sets that vCPU's attention flag; the vCPU fires the timer itself in
// pending_vector()). It never spins: with no deadline armed it sleeps until rearm() is called.
// A halted vCPU does not need it: wait_for_interrupt() sleeps with the nearest deadline as timeout.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/emu/local_apic.h"

namespace keel::emu {

class DeadlineClient {
 public:
  virtual ~DeadlineClient() = default;
  // Host-monotonic ns of the client's next deadline, or kNever. Called from the watcher thread:
  // must be a cheap thread-safe read (atomics).
  virtual uint64_t next_deadline_ns() const = 0;
  // The deadline has passed. Called from the watcher thread with the watcher's lock held: must
  // not block nor call back into the watcher (an atomic store).
  virtual void deadline_reached() = 0;
};

class DeadlineWatcher {
 public:
  explicit DeadlineWatcher(const GuestClock& clock);
  ~DeadlineWatcher();  // stops and joins the thread
  DeadlineWatcher(const DeadlineWatcher&) = delete;
  DeadlineWatcher& operator=(const DeadlineWatcher&) = delete;

  // Before start() only.
  void add(DeadlineClient* client);
  void start();

  // Thread-safe: a client's deadline may have moved earlier than what the watcher waits for.
  // Cheap when it did not (one atomic load).
  void rearm(uint64_t deadline_ns);

 private:
  void run();

  const GuestClock& clock_;
  std::vector<DeadlineClient*> clients_;
  std::vector<uint64_t> signaled_;  // per client: the deadline already reported
  std::mutex mutex_;
  std::condition_variable cv_;
  bool changed_ = false;
  bool stop_ = false;
  std::atomic<uint64_t> waiting_until_{UINT64_MAX};  // kNever
  std::thread thread_;
};

}  // namespace keel::emu
