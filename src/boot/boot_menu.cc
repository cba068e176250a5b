#include "boot/boot_menu.h"

#include <fnmatch.h>
#include <string.h>

#include <algorithm>
#include <cctype>
#include <optional>

#include "base/error.h"

namespace keel::boot {
namespace {

constexpr size_t kMaxEntries = 512;
constexpr char kVarStart = '\x01', kVarEnd = '\x02';  // an unexpanded $name inside a word

struct Token {
  enum Kind { kWord, kEnd, kOpen, kClose } kind;  // kEnd: newline or ';'
  std::string text;
  int line;
};

// GRUB's script lexer: words with '...' (literal), "..." and bare text (variables expanded later),
// backslash escapes and line continuations, comments, ';' and newlines ending commands, and
// standalone { } delimiting bodies.
std::vector<Token> lex(const std::string& s) {
  std::vector<Token> out;
  int line = 1;
  size_t i = 0;
  auto fail = [&](const std::string& why) { throw Error("grub.cfg: line " + std::to_string(line) + ": " + why); };
  auto read_var = [&](std::string& word) {
    ++i;  // '$'
    std::string name;
    if (i < s.size() && s[i] == '{') {
      size_t close = s.find('}', i);
      if (close == std::string::npos) fail("unterminated ${");
      name = s.substr(i + 1, close - i - 1);
      i = close + 1;
    } else {
      while (i < s.size() && (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '_')) name += s[i++];
      if (name.empty()) {
        word += '$';
        return;
      }
    }
    word += kVarStart + name + kVarEnd;
  };
  while (i < s.size()) {
    char c = s[i];
    if (c == '\n') {
      out.push_back({Token::kEnd, "", line++});
      ++i;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r') {
      ++i;
      continue;
    }
    if (c == '\\' && i + 1 < s.size() && s[i + 1] == '\n') {
      i += 2;
      ++line;
      continue;
    }
    if (c == '#') {
      while (i < s.size() && s[i] != '\n') ++i;
      continue;
    }
    if (c == ';') {
      out.push_back({Token::kEnd, "", line});
      ++i;
      continue;
    }
    if (c == '{' || c == '}') {
      bool alone = i + 1 >= s.size() || std::isspace(static_cast<unsigned char>(s[i + 1])) || s[i + 1] == ';';
      if (alone) {
        out.push_back({c == '{' ? Token::kOpen : Token::kClose, "", line});
        ++i;
        continue;
      }
    }
    std::string word;
    int start = line;
    while (i < s.size()) {
      c = s[i];
      if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ';') break;
      if (c == '\'') {
        size_t close = s.find('\'', i + 1);
        if (close == std::string::npos) {
          line = start;
          fail("unterminated single quote");
        }
        for (size_t k = i + 1; k < close; ++k) line += s[k] == '\n';
        word += s.substr(i + 1, close - i - 1);
        i = close + 1;
      } else if (c == '"') {
        ++i;
        while (i < s.size() && s[i] != '"') {
          if (s[i] == '\\' && i + 1 < s.size()) {
            word += s[i + 1];
            i += 2;
          } else if (s[i] == '$') {
            read_var(word);
          } else {
            line += s[i] == '\n';
            word += s[i++];
          }
        }
        if (i >= s.size()) {
          line = start;
          fail("unterminated double quote");
        }
        ++i;
      } else if (c == '\\' && i + 1 < s.size()) {
        word += s[i + 1];
        i += 2;
      } else if (c == '$') {
        read_var(word);
      } else {
        word += c;
        ++i;
      }
    }
    out.push_back({Token::kWord, word, start});
  }
  out.push_back({Token::kEnd, "", line});
  return out;
}

struct Command {
  std::vector<std::string> words;
  int line = 0;
  std::optional<std::vector<Command>> body;
};

std::vector<Command> parse_block(const std::vector<Token>& t, size_t& i, bool nested, int open_line) {
  std::vector<Command> out;
  Command cur;
  auto finish = [&] {
    if (!cur.words.empty()) out.push_back(std::move(cur));
    cur = Command{};
  };
  while (i < t.size()) {
    const Token& tok = t[i++];
    switch (tok.kind) {
      case Token::kWord:
        if (cur.words.empty()) cur.line = tok.line;
        cur.words.push_back(tok.text);
        break;
      case Token::kEnd:
        finish();
        break;
      case Token::kOpen: {
        if (cur.words.empty())
          throw Error("grub.cfg: line " + std::to_string(tok.line) + ": '{' without a command");
        cur.body = parse_block(t, i, true, tok.line);
        finish();
        break;
      }
      case Token::kClose:
        if (!nested) throw Error("grub.cfg: line " + std::to_string(tok.line) + ": '}' without '{'");
        finish();
        return out;
    }
  }
  if (nested) throw Error("grub.cfg: line " + std::to_string(open_line) + ": '{' is never closed");
  finish();
  return out;
}

std::string expand(const std::string& word, const Environment& env) {
  std::string out;
  for (size_t i = 0; i < word.size(); ++i) {
    if (word[i] != kVarStart) {
      out += word[i];
      continue;
    }
    size_t end = word.find(kVarEnd, i);
    auto it = env.find(word.substr(i + 1, end - i - 1));
    if (it != env.end()) out += it->second;
    i = end;
  }
  return out;
}

// `[ ... ]` / `test ...` as GRUB's test command, for the forms grub-mkconfig writes.
bool evaluate_test(std::vector<std::string> a) {
  if (!a.empty() && (a[0] == "[" || a[0] == "test")) a.erase(a.begin());
  if (!a.empty() && a.back() == "]") a.pop_back();
  bool negate = !a.empty() && a[0] == "!";
  if (negate) a.erase(a.begin());
  bool r = false;
  if (a.size() == 1) r = !a[0].empty();
  else if (a.size() == 2 && a[0] == "-n") r = !a[1].empty();
  else if (a.size() == 2 && a[0] == "-z") r = a[1].empty();
  else if (a.size() == 2 && (a[0] == "-s" || a[0] == "-e" || a[0] == "-f" || a[0] == "-d")) r = true;
  else if (a.size() == 3 && (a[1] == "=" || a[1] == "==")) r = a[0] == a[2];
  else if (a.size() == 3 && a[1] == "!=") r = a[0] != a[2];
  else if (a.size() == 3 && a[1].size() == 3 && a[1][0] == '-') {
    long x = std::strtol(a[0].c_str(), nullptr, 10), y = std::strtol(a[2].c_str(), nullptr, 10);
    if (a[1] == "-eq") r = x == y;
    else if (a[1] == "-ne") r = x != y;
    else if (a[1] == "-lt") r = x < y;
    else if (a[1] == "-le") r = x <= y;
    else if (a[1] == "-gt") r = x > y;
    else if (a[1] == "-ge") r = x >= y;
  }
  return negate ? !r : r;
}

// A GRUB device and path: "(hd0,gpt2)/boot/x" -> ("hd0,gpt2", "/boot/x").
std::pair<std::string, std::string> split_device(const std::string& path) {
  if (!path.empty() && path[0] == '(') {
    size_t close = path.find(')');
    if (close != std::string::npos) return {path.substr(1, close - 1), path.substr(close + 1)};
  }
  return {"", path};
}

class GrubRunner {
 public:
  GrubRunner(BootMenu& menu, const Environment& grubenv) : menu_(menu), grubenv_(grubenv) {}

  // Top-level items (menuentry or submenu), for `set default=N` and "N>M".
  struct Item {
    size_t first;  // index in menu.entries
    size_t count;
    std::string id, title;
  };
  std::vector<Item> items;
  Environment env;

  void run(const std::vector<Command>& block, const std::string& prefix, MenuEntry* entry,
           std::vector<Item>* level) {
    struct Frame {
      bool parent, active, taken;
    };
    std::vector<Frame> frames;
    auto active = [&] { return frames.empty() || frames.back().active; };
    for (const Command& c : block) {
      std::vector<std::string> w;
      for (const auto& raw : c.words) w.push_back(expand(raw, env));
      std::string head = w[0];
      // Keywords of the if statement; "then"/"else" may carry a command on the same line.
      if (head == "if" || head == "elif") {
        std::vector<std::string> cond(w.begin() + 1, w.end());
        if (head == "if") {
          bool parent = active();
          bool r = parent && evaluate_test(cond);
          frames.push_back({parent, r, r});
        } else {
          if (frames.empty()) fail(c, "elif without if");
          Frame& f = frames.back();
          f.active = f.parent && !f.taken && evaluate_test(cond);
          f.taken = f.taken || f.active;
        }
        continue;
      }
      if (head == "else") {
        if (frames.empty()) fail(c, "else without if");
        Frame& f = frames.back();
        f.active = f.parent && !f.taken;
        f.taken = true;
        w.erase(w.begin());
      } else if (head == "fi") {
        if (frames.empty()) fail(c, "fi without if");
        frames.pop_back();
        continue;
      } else if (head == "then") {
        w.erase(w.begin());
      }
      if (w.empty() || !active()) continue;
      execute(c, w, prefix, entry, level);
    }
    if (!frames.empty()) throw Error("grub.cfg: an if statement is never closed with fi");
  }

 private:
  [[noreturn]] void fail(const Command& c, const std::string& why) {
    throw Error("grub.cfg: line " + std::to_string(c.line) + ": " + why);
  }

  void assign(const std::string& text) {
    size_t eq = text.find('=');
    if (eq == std::string::npos) return;
    env[text.substr(0, eq)] = text.substr(eq + 1);
  }

  void execute(const Command& c, const std::vector<std::string>& w, const std::string& prefix,
               MenuEntry* entry, std::vector<Item>* level) {
    const std::string& head = w[0];
    if (head == "set") {
      for (size_t i = 1; i < w.size(); ++i) assign(w[i]);
    } else if (w.size() == 1 && head.find('=') != std::string::npos && head[0] != '=') {
      assign(head);
    } else if (head == "load_env") {
      for (const auto& [k, v] : grubenv_) env[k] = v;
    } else if (head == "blscfg") {
      menu_.uses_bls = true;
    } else if (head == "function") {
      // bodies of functions are never run for the menu
    } else if (head == "menuentry" || head == "submenu") {
      if (!c.body) fail(c, head + " without a { body }");
      std::string title, id;
      for (size_t i = 1; i < w.size(); ++i) {
        if (w[i] == "--id" && i + 1 < w.size()) id = w[++i];
        else if ((w[i] == "--class" || w[i] == "--users" || w[i] == "--hotkey") && i + 1 < w.size()) ++i;
        else if (w[i].rfind("--", 0) == 0) continue;
        else if (title.empty()) title = w[i];
      }
      if (title.empty()) fail(c, head + " without a title");
      if (menu_.entries.size() >= kMaxEntries) fail(c, "more than " + std::to_string(kMaxEntries) + " entries");
      size_t first = menu_.entries.size();
      Environment saved = env;  // entries run in their own scope
      if (head == "menuentry") {
        MenuEntry e;
        e.title = prefix + title;
        e.id = id;
        run(*c.body, prefix, &e, nullptr);
        if (e.kernel.empty()) fail(c, "menuentry '" + title + "' has no linux line");
        menu_.entries.push_back(std::move(e));
      } else {
        std::vector<Item> inner;
        run(*c.body, prefix + title + ">", nullptr, &inner);
        sub_items_[first] = inner;
      }
      env = std::move(saved);
      if (level) level->push_back({first, menu_.entries.size() - first, id, title});
    } else if (entry && (head == "linux" || head == "linuxefi" || head == "linux16")) {
      if (w.size() < 2) fail(c, head + " without a kernel path");
      auto [device, path] = split_device(w[1]);
      entry->kernel = path;
      entry->device = device.empty() ? root_device() : device;
      entry->cmdline.clear();
      for (size_t i = 2; i < w.size(); ++i) entry->cmdline += (i > 2 ? " " : "") + w[i];
    } else if (entry && (head == "initrd" || head == "initrdefi" || head == "initrd16")) {
      entry->initrds.clear();
      for (size_t i = 1; i < w.size(); ++i) entry->initrds.push_back(split_device(w[i]).second);
    } else if (head == "search") {
      std::string target = "root", uuid;
      bool by_uuid = false;
      for (size_t i = 1; i < w.size(); ++i) {
        if (w[i].rfind("--set=", 0) == 0) target = w[i].substr(6);
        else if (w[i] == "--set" && i + 1 < w.size()) target = w[++i];
        else if (w[i] == "--fs-uuid" || w[i] == "-u") by_uuid = true;
        else if (w[i][0] != '-') uuid = w[i];
      }
      if (by_uuid && !uuid.empty()) env[target] = "uuid:" + uuid;
    }
  }

  std::string root_device() const {
    auto it = env.find("root");
    return it == env.end() ? "" : it->second;
  }

  BootMenu& menu_;
  const Environment& grubenv_;
  std::map<size_t, std::vector<Item>> sub_items_;

 public:
  const std::vector<Item>* submenu_items(size_t first) const {
    auto it = sub_items_.find(first);
    return it == sub_items_.end() ? nullptr : &it->second;
  }
};

std::optional<size_t> parse_index(const std::string& s) {
  if (s.empty() || s.size() > 6 || !std::all_of(s.begin(), s.end(), ::isdigit)) return std::nullopt;
  return std::stoul(s);
}

}  // namespace

Environment parse_grubenv(const std::string& text) {
  Environment env;
  size_t pos = 0;
  while (pos < text.size() && pos < 65536) {
    size_t nl = text.find('\n', pos);
    std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text.size() : nl + 1;
    if (line.empty() || line[0] == '#') continue;
    size_t eq = line.find('=');
    if (eq != std::string::npos && eq > 0) env[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return env;
}

BootMenu parse_grub_cfg(const std::string& text, const Environment& grubenv) {
  if (text.size() > (4 << 20)) throw Error("grub.cfg: larger than 4 MiB");
  std::vector<Token> tokens = lex(text);
  size_t i = 0;
  std::vector<Command> script = parse_block(tokens, i, false, 0);
  BootMenu menu;
  menu.source = "grub.cfg";
  GrubRunner runner(menu, grubenv);
  // GRUB 2's built-in feature variables, which grub-mkconfig's scripts test.
  for (const char* f : {"feature_menuentry_id", "feature_default_font_path", "feature_all_video_module",
                        "feature_platform_search_hint", "feature_timeout_style"})
    runner.env[f] = "y";
  runner.run(script, "", nullptr, &runner.items);
  if (menu.uses_bls) return menu;
  // GRUB's default: an index ("1"), a path into submenus ("1>2"), an id or a title.
  std::string def = runner.env.count("default") ? runner.env.at("default") : "0";
  if (def.empty()) def = "0";
  const std::vector<GrubRunner::Item>* level = &runner.items;
  size_t chosen = 0;
  bool found = false;
  size_t start = 0;
  while (level) {
    size_t gt = def.find('>', start);
    std::string part = def.substr(start, gt == std::string::npos ? std::string::npos : gt - start);
    const GrubRunner::Item* item = nullptr;
    if (auto n = parse_index(part); n && *n < level->size()) item = &(*level)[*n];
    for (const auto& it : *level)
      if (!item && (it.id == part || it.title == part)) item = &it;
    if (!item || item->count == 0) break;
    chosen = item->first;
    found = true;
    level = runner.submenu_items(item->first);
    if (gt == std::string::npos) break;
    start = gt + 1;
  }
  if (!found)  // a full title "Sub>Entry" or an id anywhere
    for (size_t k = 0; k < menu.entries.size(); ++k)
      if (menu.entries[k].title == def || (!menu.entries[k].id.empty() && menu.entries[k].id == def)) {
        chosen = k;
        break;
      }
  menu.default_index = chosen;
  return menu;
}

BootMenu parse_bls_entries(const std::vector<std::pair<std::string, std::string>>& files,
                           const std::string& loader_conf, const Environment& grubenv) {
  struct Parsed {
    MenuEntry entry;
    std::string file, sort_key, machine_id, version;
  };
  std::vector<Parsed> all;
  for (const auto& [name, text] : files) {
    if (all.size() >= kMaxEntries) break;
    if (text.size() > 65536) throw Error("BLS entry " + name + ": larger than 64 KiB");
    Parsed p;
    p.file = name;
    p.entry.id = name.size() > 5 ? name.substr(0, name.size() - 5) : name;
    std::vector<std::string> options;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
      pos = nl == std::string::npos ? text.size() : nl + 1;
      size_t b = line.find_first_not_of(" \t");
      if (b == std::string::npos || line[b] == '#') continue;
      size_t sp = line.find_first_of(" \t", b);
      std::string key = line.substr(b, sp == std::string::npos ? std::string::npos : sp - b);
      std::string value;
      if (sp != std::string::npos) {
        size_t v = line.find_first_not_of(" \t", sp);
        if (v != std::string::npos) value = line.substr(v);
      }
      while (!value.empty() && (value.back() == ' ' || value.back() == '\r')) value.pop_back();
      if (key == "title") p.entry.title = value;
      else if (key == "linux") p.entry.kernel = value;
      else if (key == "initrd") p.entry.initrds.push_back(value);
      else if (key == "options") options.push_back(value);
      else if (key == "sort-key") p.sort_key = value;
      else if (key == "machine-id") p.machine_id = value;
      else if (key == "version") p.version = value;
    }
    if (p.entry.kernel.empty()) throw Error("BLS entry " + name + " has no linux line");
    for (const auto& o : options) {
      // $kernelopts and friends come from grubenv (Fedora).
      std::string expanded;
      for (size_t i = 0; i < o.size(); ++i) {
        if (o[i] == '$') {
          size_t j = i + 1;
          while (j < o.size() && (std::isalnum(static_cast<unsigned char>(o[j])) || o[j] == '_')) ++j;
          auto it = grubenv.find(o.substr(i + 1, j - i - 1));
          if (it != grubenv.end()) expanded += it->second;
          i = j - 1;
        } else {
          expanded += o[i];
        }
      }
      p.entry.cmdline += (p.entry.cmdline.empty() ? "" : " ") + expanded;
    }
    if (p.entry.title.empty()) p.entry.title = p.entry.id;
    all.push_back(std::move(p));
  }
  if (all.empty()) throw Error("loader/entries holds no *.conf entry");
  std::sort(all.begin(), all.end(), [](const Parsed& a, const Parsed& b) {
    if (a.sort_key.empty() != b.sort_key.empty()) return !a.sort_key.empty();
    if (a.sort_key != b.sort_key) return a.sort_key < b.sort_key;
    if (a.machine_id != b.machine_id) return a.machine_id < b.machine_id;
    if (int c = strverscmp(a.version.c_str(), b.version.c_str())) return c > 0;  // newest first
    return strverscmp(a.file.c_str(), b.file.c_str()) > 0;
  });
  BootMenu menu;
  menu.source = "BLS entries";
  for (auto& p : all) menu.entries.push_back(std::move(p.entry));
  // loader.conf "default GLOB" picks the first matching entry id.
  Environment conf = parse_grubenv("");
  size_t pos = 0;
  while (pos < loader_conf.size()) {
    size_t nl = loader_conf.find('\n', pos);
    std::string line = loader_conf.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? loader_conf.size() : nl + 1;
    if (line.rfind("default", 0) == 0 && line.size() > 8) {
      std::string glob = line.substr(line.find_first_not_of(" \t", 7));
      if (glob.size() > 5 && glob.compare(glob.size() - 5, 5, ".conf") == 0) glob.resize(glob.size() - 5);
      for (size_t k = 0; k < menu.entries.size(); ++k)
        if (fnmatch(glob.c_str(), menu.entries[k].id.c_str(), 0) == 0) {
          menu.default_index = k;
          break;
        }
    }
  }
  return menu;
}

std::string describe_entries(const BootMenu& menu) {
  std::string out;
  for (size_t i = 0; i < menu.entries.size(); ++i)
    out += "  " + std::to_string(i) + " '" + menu.entries[i].title + "'" +
           (i == menu.default_index ? " (default)" : "") + "\n";
  return out;
}

size_t select_entry(const BootMenu& menu, const std::string& selector) {
  if (menu.entries.empty()) throw Error(menu.source + ": no boot entries");
  if (selector.empty()) return menu.default_index;
  if (auto n = parse_index(selector); n && *n < menu.entries.size()) return *n;
  for (size_t i = 0; i < menu.entries.size(); ++i)
    if (menu.entries[i].title == selector || menu.entries[i].id == selector) return i;
  throw Error("no boot entry '" + selector + "' in " + menu.source + "; the entries are:\n" +
              describe_entries(menu));
}

}  // namespace keel::boot
