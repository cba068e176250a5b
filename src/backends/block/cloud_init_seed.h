// A cloud-init NoCloud seed: an ISO 9660 volume labelled "cidata" (Rock Ridge and Joliet names,
// as cloud-localds and genisoimage make it) holding user-data, meta-data and optionally
// network-config, built in memory with libisofs and attached as a read-only disk. cloud-init's
// NoCloud datasource finds it by its label and sets the hostname, users and SSH keys from it.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "backends/block/block_backend.h"

namespace keel {

struct CloudInitConfig {
  std::filesystem::path user_data;       // required
  std::filesystem::path meta_data;       // empty: "instance-id: iid-NAME\nlocal-hostname: NAME\n"
  std::filesystem::path network_config;  // empty: none
};

// "user-data=FILE[,meta-data=FILE][,network-config=FILE]"; throws UsageError naming the bad part.
CloudInitConfig parse_cloud_init_option(const std::string& text);

// The default meta-data for a VM called `name`.
std::string default_meta_data(const std::string& name);

// Reads the files (each at most 16 MiB; a missing one is an Error naming it) and returns the seed
// as a read-only raw image in a memfd.
std::unique_ptr<BlockBackend> make_cloud_init_seed(const CloudInitConfig& config, const std::string& vm_name);

}  // namespace keel
