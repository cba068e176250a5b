// Partition tables of a disk image (GPT and MBR with logical partitions), read through the
// disk's BlockBackend so raw and qcow2 images alike. An image with neither is one file system
// spanning the whole disk. Entries that point outside the image, overlap the table, or are
// malformed are refused with an Error naming the entry; the GPT header's CRC is checked.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backends/block/block_backend.h"

namespace keel::boot {

struct Partition {
  uint32_t number = 0;  // 1-based, as Linux and GRUB's (hd0,gptN)/(hd0,msdosN) count them; 0: whole disk
  uint64_t offset = 0;  // bytes
  uint64_t size = 0;
  std::string scheme;   // "gpt", "mbr", "none"
};

std::vector<Partition> read_partitions(BlockBackend& disk);

}  // namespace keel::boot
