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
  std::unique_lock lock(mutex_);
  const Cpu* self =
      std::find(cpus_.begin(), cpus_.end(), t_running) != cpus_.end() ? t_running : nullptr;
  const unsigned mine = self ? 1 : 0;
  while (exclusive_) {  // another exclusive run first; a calling vCPU parks for it
    running_ -= mine;
    changed_.notify_all();
    changed_.wait(lock, [&] { return !exclusive_; });
    running_ += mine;
  }
  exclusive_ = true;
  for (Cpu* c : cpus_)
    if (c != self) c->request_service();
  // No vCPU is between a TLB lookup and its store: each is parked at a block boundary, halted,
  // outside run(), or the caller itself inside an I/O access (which stores to no RAM).
  changed_.wait(lock, [&] { return running_ == mine; });
  for (Cpu* c : cpus_) c->revoke_all_writes();
  exclusive_ = false;
  lock.unlock();
  changed_.notify_all();
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

void VcpuGroup::run_exclusive(Cpu& self, const std::function<void()>& fn) {
  std::unique_lock lock(mutex_);
  // Another vCPU's exclusive run goes first: park for it like any other vCPU.
  while (exclusive_) {
    --running_;
    changed_.notify_all();
    changed_.wait(lock, [&] { return !exclusive_; });
    ++running_;
  }
  exclusive_ = true;
  for (Cpu* c : cpus_)
    if (c != &self) c->request_service();
  changed_.wait(lock, [&] { return running_ == 1; });
  lock.unlock();
  try {
    fn();
  } catch (...) {
    {
      std::lock_guard relock(mutex_);
      exclusive_ = false;
    }
    changed_.notify_all();
    throw;
  }
  {
    std::lock_guard relock(mutex_);
    exclusive_ = false;
  }
  changed_.notify_all();
}

}  // namespace keel::emu
