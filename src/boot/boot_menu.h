// The boot menus of a disk image's /boot, as a bootloader would read them (Xen's pygrub reads them
// the same way): GRUB's grub.cfg (menuentry/submenu, set, if/elif/else/fi with `[ ]` tests,
// load_env from grubenv, `linux`/`initrd` with device prefixes, `search --set=root`) and Boot
// Loader Specification entries (loader/entries/*.conf, sorted as the specification says). Both
// give a flat list of entries and the default one. Untrusted input: every malformation is an
// Error naming the file and line, and sizes are bounded.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace keel::boot {

struct MenuEntry {
  std::string title;  // submenu entries: "Submenu title>Entry title"
  std::string id;     // menuentry --id, or the BLS file name without .conf
  std::string kernel;                // path as written, device prefix removed
  std::vector<std::string> initrds;  // concatenated in this order
  std::string cmdline;
  std::string device;  // GRUB device of the kernel: "hd0,gpt2", "hd0,msdos1", "uuid:...", or ""
};

struct BootMenu {
  std::string source;               // "grub.cfg" or "BLS entries"
  std::vector<MenuEntry> entries;   // menu order, submenus flattened
  size_t default_index = 0;
  bool uses_bls = false;            // grub.cfg ran `blscfg`: the BLS entries are the menu
};

using Environment = std::map<std::string, std::string>;

// GRUB's environment block (grubenv): NAME=VALUE lines after the "# GRUB Environment Block" header.
Environment parse_grubenv(const std::string& text);

// Throws Error("grub.cfg: line N: ...") on unbalanced braces or quotes, a menuentry without a
// body or without a `linux` line.
BootMenu parse_grub_cfg(const std::string& text, const Environment& grubenv);

// `files` are (file name, contents) of loader/entries/*.conf; `loader_conf` is loader/loader.conf
// ("default GLOB"), possibly empty; `grubenv` expands $kernelopts as Fedora's entries use it.
BootMenu parse_bls_entries(const std::vector<std::pair<std::string, std::string>>& files,
                           const std::string& loader_conf, const Environment& grubenv);

// The entry `selector` names: "" = the menu's default, a number = that index in the list, else
// an exact title (or "Submenu>Title") or id. Throws Error listing the entries when none matches.
size_t select_entry(const BootMenu& menu, const std::string& selector);

// "0 'Debian GNU/Linux' (default)\n1 '...'" for messages.
std::string describe_entries(const BootMenu& menu);

}  // namespace keel::boot
