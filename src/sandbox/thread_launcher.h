// Starts a VMM's threads, each with its kind's seccomp filter once the VMM is confined.
//
// A thread inherits its creator's filter and can only narrow it, so confined threads are not
// started by whoever asks (a vCPU thread starts a virtio device's worker when the driver sets
// DRIVER_OK): the launcher's own "spawner" thread, whose filter is the union of every kind's list,
// creates them, and each narrows itself to its kind's list before it runs its code. The spawner
// runs nothing else. Before confine() threads start directly, unconfined.
//
// Threading: start() may be called from any thread; it returns once the thread exists.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "sandbox/seccomp.h"

namespace keel::sandbox {

class ThreadLauncher {
 public:
  ThreadLauncher() = default;
  ~ThreadLauncher();
  ThreadLauncher(const ThreadLauncher&) = delete;
  ThreadLauncher& operator=(const ThreadLauncher&) = delete;

  // A new thread of `kind` named `name` (at most 15 characters are kept) running `fn`.
  std::thread start(ThreadKind kind, const std::string& name, std::function<void()> fn);

  // From now on threads start under `policy`: installs the union of its lists on every thread of
  // the process, starts the spawner, and narrows the calling thread to `caller_kinds`' lists.
  // Throws Error when a filter cannot be installed.
  void confine(SyscallPolicy policy, std::initializer_list<ThreadKind> caller_kinds);
  bool confined() const;

  // For the sandbox tests: a thread of `kind` makes a forbidden call once its filter is in place.
  void test_violation_in(std::optional<ThreadKind> kind) { test_violation_ = kind; }

 private:
  struct Request {
    ThreadKind kind;
    std::string name;
    std::function<void()> fn;
    std::promise<std::thread> made;
  };
  std::thread make(ThreadKind kind, const std::string& name, std::function<void()> fn);
  void spawner();

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Request> requests_;
  bool stopping_ = false;
  std::optional<SyscallPolicy> policy_;
  std::optional<ThreadKind> test_violation_;
  std::thread spawner_;
};

// The forbidden call the sandbox tests make (personality(2) query: harmless if it ran).
void make_forbidden_call();

}  // namespace keel::sandbox
