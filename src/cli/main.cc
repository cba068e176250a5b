// keel: command-line entry point. Exit status: 0 success, 1 failure (the message names the
// cause), 2 usage error.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "base/error.h"
#include "cli/verbs.h"

namespace {

// One line per verb (each in its own file under cli/).
constexpr keel::cli::AddVerb kVerbs[] = {
    keel::cli::add_run_verb,
    keel::cli::add_probe_verb,
    keel::cli::add_daemon_verb,
    keel::cli::add_client_verbs,  // define, undefine, start, shutdown, ..., console, events
    keel::cli::add_img_verb,
    keel::cli::add_stats_verb,
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel: a virtual machine monitor (KVM, or keel's own x86-64 emulator)"};
  app.require_subcommand(1, 1);
  keel::cli::Action action;
  for (auto add : kVerbs) add(app, action);

  try {
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      int code = app.exit(e);  // prints help (code 0) or the error
      return code == 0 ? 0 : 2;
    }
    return action ? action() : 0;
  } catch (const keel::UsageError& e) {
    std::fprintf(stderr, "keel: %s\nRun with --help for more information.\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keel: error: %s\n", e.what());
    return 1;
  }
}
