// keel: command-line entry point. Exit status: 0 success, 1 failure (the message names the
// cause), 2 usage error.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/log.h"
#include "base/version.h"
#include "cli/hints.h"
#include "cli/verbs.h"

namespace {

// One line per verb (each in its own file under cli/). The help, the bash completion and the man
// page are generated from what these register.
constexpr keel::cli::AddVerb kVerbs[] = {
    keel::cli::add_run_verb,
    keel::cli::add_probe_verb,
    keel::cli::add_daemon_verb,
    keel::cli::add_client_verbs,  // define, undefine, start, shutdown, ..., console, events, version
    keel::cli::add_img_verb,
    keel::cli::add_doc_verbs,     // help, completion, manpage
    keel::cli::add_stats_verb,
};

bool is_global_flag(const char* arg) {
  for (const char* f : {"-q", "--quiet", "-v", "--verbose"})
    if (std::strcmp(arg, f) == 0) return true;
  return false;
}

// The first word must be a verb: say which word is not, and what its user probably meant.
// Returns false (after saying so) when it is not one.
bool check_verb(const CLI::App& app, int argc, char** argv) {
  std::vector<std::string> verbs;
  for (const CLI::App* v : app.get_subcommands([](const CLI::App* a) { return !a->get_group().empty(); }))
    verbs.push_back(v->get_name());
  for (int i = 1; i < argc; ++i) {
    std::string word = argv[i];
    if (is_global_flag(argv[i])) continue;
    if (word == "-h" || word == "--help" || word == "--version") return true;
    for (const CLI::App* v : app.get_subcommands({}))
      if (v->get_name() == word) return true;
    bool option = word[0] == '-';
    std::fprintf(stderr, "keel: unknown %s '%s'", option ? "option" : "command", word.c_str());
    if (auto hint = keel::cli::spelling_hint(word)) {
      std::fprintf(stderr, "; %s", hint->c_str());
    } else if (std::string near = keel::cli::nearest(word, verbs); !option && !near.empty()) {
      std::fprintf(stderr, "; did you mean '%s'?", near.c_str());
    }
    std::fprintf(stderr, "\nRun 'keel help' for the list of commands.\n");
    return false;
  }
  return true;  // no verb at all: CLI11 says that one
}

// After a CLI11 error: the keel spelling of any QEMU/virsh words on the command line.
void print_spelling_hints(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (auto hint = keel::cli::spelling_hint(argv[i]))
      std::fprintf(stderr, "keel: note: %s\n", hint->c_str());
}

}  // namespace

int main(int argc, char** argv) {
  keel::log::init();
  CLI::App app{"a virtual machine monitor (KVM, or keel's own x86-64 emulator)", "keel"};
  app.set_version_flag("--version", std::string("keel ") + keel::kVersion);
  bool quiet = false, verbose = false;
  app.add_flag("-q,--quiet", quiet, "Print only warnings and errors (not keel's informational lines)");
  app.add_flag("-v,--verbose", verbose, "Print debugging messages too");
  app.fallthrough();  // -q and -v after the verb too (set before the verbs, which inherit it)
  app.require_subcommand(1, 1);
  // CLI11's parse errors in keel's style, pointing at keel's help rather than the binary's path.
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return std::string("keel: ") + e.what() + "\nRun 'keel help' for more information.\n";
  });
  keel::cli::Action action;
  for (auto add : kVerbs) add(app, action);

  if (!check_verb(app, argc, argv)) return 2;
  try {
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      int code = app.exit(e);  // prints help (code 0) or the error
      if (code == 0) return 0;
      print_spelling_hints(argc, argv);
      return 2;
    }
    keel::log::init(quiet     ? keel::log::Level::kQuiet
                    : verbose ? keel::log::Level::kVerbose
                              : keel::log::Level::kNormal);
    return action ? action() : 0;
  } catch (const keel::UsageError& e) {
    std::fprintf(stderr, "keel: %s\nRun 'keel help' for more information.\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keel: error: %s\n", e.what());
    return 1;
  }
}
