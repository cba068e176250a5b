// The verbs of `keel`. Each lives in its own file under cli/ and registers itself with one line
// in main.cc's kVerbs table. A verb adds its subcommand and options to the app; when the user
// picks it, its parse callback stores in `action` what to run after parsing, which returns the
// process exit status (0 ok, 1 failure). Throw keel::UsageError for bad input (exit 2) and
// keel::Error for failures (exit 1); main() prints them.
#pragma once

#include <functional>

namespace CLI {
class App;
}

namespace keel::cli {

using Action = std::function<int()>;
using AddVerb = void (*)(CLI::App& app, Action& action);

void add_run_verb(CLI::App& app, Action& action);
void add_probe_verb(CLI::App& app, Action& action);
void add_daemon_verb(CLI::App& app, Action& action);   // daemon_cmd.cc
void add_client_verbs(CLI::App& app, Action& action);  // client_cmds.cc: the virsh-like verbs
void add_doc_verbs(CLI::App& app, Action& action);     // docs.cc: help, completion, manpage
void add_img_verb(CLI::App& app, Action& action);      // img.cc: keel img create
void add_stats_verb(CLI::App& app, Action& action);    // stats_cmd.cc: keel stats

}  // namespace keel::cli
