// What `keel` says when a word is not one of its own: the keel spelling of what virsh, QEMU and
// Firecracker users type by habit (`dominfo` -> `keel info NAME`, `-smp` -> `--cpus N`), or the
// verb a typo was probably meant to be.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace keel::cli {

// "virsh's dominfo is `keel info NAME`", or nothing when keel knows no equivalent.
std::optional<std::string> spelling_hint(std::string_view word);

// The candidate nearest to `word` (at most two edits away), or "" when none is.
std::string nearest(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace keel::cli
