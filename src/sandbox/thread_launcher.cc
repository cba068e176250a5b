#include "sandbox/thread_launcher.h"

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "base/error.h"

namespace keel::sandbox {

void make_forbidden_call() { ::syscall(SYS_personality, 0xffffffffUL); }

ThreadLauncher::~ThreadLauncher() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (spawner_.joinable()) spawner_.join();
}

bool ThreadLauncher::confined() const {
  std::lock_guard lock(mutex_);
  return policy_.has_value();
}

std::thread ThreadLauncher::make(ThreadKind kind, const std::string& name,
                                 std::function<void()> fn) {
  std::optional<AllowList> filter;
  bool violate = false;
  {
    std::lock_guard lock(mutex_);
    if (policy_) filter = policy_->list(kind);
    violate = test_violation_ == kind;
  }
  return std::thread([kind, name, filter = std::move(filter), violate, fn = std::move(fn)] {
    ::pthread_setname_np(::pthread_self(), name.substr(0, 15).c_str());
    set_thread_identity(kind, name);
    if (filter) {
      try {
        install_filter(*filter);
      } catch (const std::exception& e) {
        // A thread that cannot confine itself must not run its code.
        std::fprintf(stderr, "keel: error: sandbox: thread %s: %s\n", name.c_str(), e.what());
        std::_Exit(1);
      }
      if (violate) make_forbidden_call();
    }
    fn();
  });
}

std::thread ThreadLauncher::start(ThreadKind kind, const std::string& name,
                                  std::function<void()> fn) {
  std::future<std::thread> made;
  {
    std::lock_guard lock(mutex_);
    if (!policy_) {
      // Unconfined: the caller creates it (the lock only guards the policy's presence).
      made = std::future<std::thread>();
    } else {
      requests_.push_back(Request{kind, name, std::move(fn), {}});
      made = requests_.back().made.get_future();
    }
  }
  if (!made.valid()) return make(kind, name, std::move(fn));
  cv_.notify_all();
  return made.get();
}

void ThreadLauncher::spawner() {
  set_thread_identity(ThreadKind::kMainLoop, "thread spawner");
  for (;;) {
    Request request;
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return stopping_ || !requests_.empty(); });
      if (requests_.empty()) return;
      request = std::move(requests_.front());
      requests_.pop_front();
    }
    try {
      request.made.set_value(make(request.kind, request.name, std::move(request.fn)));
    } catch (...) {
      request.made.set_exception(std::current_exception());
    }
  }
}

void ThreadLauncher::confine(SyscallPolicy policy, std::initializer_list<ThreadKind> caller_kinds) {
  install_violation_handler();
  // Every thread that exists now (the engine's timer thread among them) gets the union, which the
  // spawner inherits to start any kind.
  AllowList all = policy.union_of_all();
  // Thread creation, for the spawner only: clone3 hides its flags from seccomp, so it fails and
  // glibc falls back to clone(2), allowed for threads only (CLONE_THREAD), never for processes.
  all.push_back({"clone3", {}, ENOSYS});
  all.push_back({"clone", {{0, CLONE_THREAD, CLONE_THREAD}}});
  install_filter(all, true);
  {
    std::lock_guard lock(mutex_);
    policy_ = policy;
  }
  spawner_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "keel-spawner");
    spawner();
  });
  AllowList mine = libc_syscalls();
  for (ThreadKind kind : caller_kinds) append(mine, policy.list(kind));
  install_filter(mine);
  set_thread_identity(*caller_kinds.begin(), "main");
  if (test_violation_ && std::find(caller_kinds.begin(), caller_kinds.end(), *test_violation_) !=
                             caller_kinds.end())
    make_forbidden_call();
}

}  // namespace keel::sandbox
