#include "engine/emu/vcpu_group.h"

#include <algorithm>

#include "engine/emu/cpu.h"

namespace keel::emu {

VcpuGroup::VcpuGroup(uint64_t ram_pages)
    : pages_(ram_pages), code_(std::make_unique<std::atomic<uint8_t>[]>(ram_pages)) {}

void VcpuGroup::add(Cpu* cpu) {
  std::lock_guard lock(mutex_);
  cpus_.push_back(cpu);
}

void VcpuGroup::remove(Cpu* cpu) {
  std::lock_guard lock(mutex_);
  cpus_.erase(std::remove(cpus_.begin(), cpus_.end(), cpu), cpus_.end());
}

void VcpuGroup::mark_code(uint64_t page, Cpu& by) {
  if (page >= pages_) return;
  // The bit first: a vCPU filling its TLB after this sees it and grants no write permission;
  // then the permissions granted before, under each vCPU's TLB lock.
  if (code_[page].exchange(1, std::memory_order_seq_cst)) return;
  std::lock_guard lock(mutex_);
  for (Cpu* c : cpus_) c->revoke_write(page);
}

void VcpuGroup::code_written(uint64_t page, const Cpu* by) {
  if (page >= pages_) return;
  code_[page].store(0, std::memory_order_relaxed);
  std::lock_guard lock(mutex_);
  for (Cpu* c : cpus_)
    if (c != by) c->queue_invalidation(page);
}

namespace {
// The vCPU executing guest code on this thread (between enter and leave), so that a device it
// runs (an I/O exit) may take the dirty log without waiting for its own vCPU to park.
thread_local const Cpu* t_running = nullptr;
}  // namespace

void VcpuGroup::revoke_all_writes() {
  // No vCPU is between a TLB lookup and its store: each is parked at a block boundary, halted,
  // outside run(), or the caller itself inside an I/O access (which stores to no RAM).
  with_others_stopped(t_running, [this] {
    std::lock_guard lock(mutex_);  // the member list
    for (Cpu* c : cpus_) c->revoke_all_writes();
  });
}

void VcpuGroup::enter(Cpu& self) {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return !exclusive_; });
  ++running_;
  t_running = &self;
}

void VcpuGroup::leave(Cpu& self) {
  t_running = nullptr;
  {
    std::lock_guard lock(mutex_);
    --running_;
  }
  changed_.notify_all();
}

void VcpuGroup::park_if_requested(Cpu& self) {
  std::unique_lock lock(mutex_);
  if (!exclusive_) return;
  --running_;
  changed_.notify_all();
  changed_.wait(lock, [&] { return !exclusive_; });
  ++running_;
}

void VcpuGroup::run_exclusive(Cpu& self, const std::function<void()>& fn) { with_others_stopped(&self, fn); }

void VcpuGroup::with_others_stopped(const Cpu* caller, const std::function<void()>& fn) {
  std::unique_lock lock(mutex_);
  // The caller counts as running only if it is one of the group's vCPUs.
  const Cpu* self = std::find(cpus_.begin(), cpus_.end(), caller) != cpus_.end() ? caller : nullptr;
  const unsigned mine = self ? 1 : 0;
  // Another exclusive run goes first: a calling vCPU parks for it like any other vCPU.
  while (exclusive_) {
    running_ -= mine;
    changed_.notify_all();
    changed_.wait(lock, [&] { return !exclusive_; });
    running_ += mine;
  }
  exclusive_ = true;
  for (Cpu* c : cpus_)
    if (c != self) c->request_service();
  changed_.wait(lock, [&] { return running_ == mine; });
  lock.unlock();
  struct Release {
    VcpuGroup& group;
    ~Release() {
      {
        std::lock_guard relock(group.mutex_);
        group.exclusive_ = false;
      }
      group.changed_.notify_all();
    }
  } release{*this};
  fn();
}

}  // namespace keel::emu
