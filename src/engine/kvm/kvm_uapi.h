// <linux/kvm.h> for C++. The uapi headers of Linux < 6.3 (Debian 12 ships 6.1) declare flexible
// arrays through a macro whose empty struct has size 1 in C++, which shifts `entries` by 4 bytes
// and changes the size encoded in the ioctl numbers (KVM_GET_SUPPORTED_CPUID fails with EINVAL).
// Define it as later kernels do for C++, then check the layouts we depend on.
#pragma once

#include <linux/stddef.h>

#undef __DECLARE_FLEX_ARRAY
#define __DECLARE_FLEX_ARRAY(TYPE, NAME) TYPE NAME[0]

#include <linux/kvm.h>

#include <cstddef>

static_assert(sizeof(kvm_cpuid2) == 8 && offsetof(kvm_cpuid2, entries) == 8);
static_assert(sizeof(kvm_msrs) == 8 && offsetof(kvm_msrs, entries) == 8);
static_assert(sizeof(kvm_irq_routing) == 8 && offsetof(kvm_irq_routing, entries) == 8);
static_assert(KVM_GET_SUPPORTED_CPUID == 0xC008AE05u);
