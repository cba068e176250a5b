// keel daemon [--state-dir DIR] [--socket PATH] [--http ADDRESS:PORT]
#include <signal.h>
#include <unistd.h>

#include <thread>

#include "base/error.h"
#include "base/log.h"
#include <CLI/CLI.hpp>

#include "cli/verbs.h"
#include "manager/daemon.h"

namespace keel::cli {

void add_daemon_verb(CLI::App& app, Action& action) {
  auto options = std::make_shared<manager::DaemonOptions>();
  auto destroy_grace_ms = std::make_shared<int64_t>(options->domains.destroy_grace.count());
  CLI::App* cmd = app.add_subcommand(
      "daemon", "Run the management daemon: VM definitions, VMM processes and the HTTP API");
  cmd->add_option("--state-dir", options->state_dir, "Where the store, sockets and logs live")
      ->capture_default_str()
      ->type_name("PATH");
  cmd->add_option("--socket", options->socket_path, "The API's unix socket")
      ->capture_default_str()
      ->type_name("PATH");
  cmd->add_option("--group", options->group,
                  "Members of this group may use the API (socket root:GROUP 0660); root always may")
      ->capture_default_str();
  cmd->add_option("--sandbox", options->sandbox,
                  "Whether VMMs confine themselves (keel run --sandbox): uid, namespaces, seccomp")
      ->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  cmd->add_option("--pidfile", options->pidfile, "Write the daemon's pid here once it serves")
      ->type_name("PATH");
  cmd->add_option("--http", options->api.http_listen,
                  "Serve the web console and /metrics on ADDRESS:PORT (e.g. 127.0.0.1:8006; "
                  "loopback only unless --http-allow-remote)");
  cmd->add_flag("--http-allow-remote", options->api.http_allow_remote,
                "Let --http listen on an address other hosts can reach (plain HTTP: use a TLS "
                "proxy or an SSH tunnel)");
  cmd->add_flag("--cgroups,!--no-cgroups", options->cgroups,
                "One cgroup v2 per VM (found and killed by the next daemon if this one dies)");
  // Tests and benchmarks run the daemon with a stand-in VMM; hidden from --help.
  cmd->add_option("--vmm", options->vmm_binary, "The VMM executable (default: this keel)")
      ->group("");
  // Fault injection and shorter timings for the crash-safety tests; hidden from --help.
  cmd->add_option("--migration-address", options->domains.migration_address,
                  "The IPv4 address VMs migrated here from another daemon are received on")
      ->capture_default_str();
  cmd->add_option("--test-kill-point", options->domains.test_kill_point)->group("");
  cmd->add_flag("--test-fail-start-record", options->domains.test_fail_start_record)->group("");
  cmd->add_option("--test-destroy-grace-ms", *destroy_grace_ms)->group("");
  cmd->callback([&action, options, destroy_grace_ms] { action = [options, destroy_grace_ms] {
    log::add_timestamps();  // its log is read later (journald, or a file)
    options->domains.destroy_grace = std::chrono::milliseconds(*destroy_grace_ms);
    // SIGINT/SIGTERM end the daemon (the VMs keep running); a dedicated thread waits for them so
    // that no signal handler runs inside the daemon's threads.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    signal(SIGPIPE, SIG_IGN);

    manager::Daemon daemon(*options);
    std::thread waiter([&] {
      int sig = 0;
      sigwait(&stop_signals, &sig);
      if (sig != 0) daemon.stop();
    });
    daemon.serve();
    // serve() returned: stop() ran (by a signal) or the server failed. A SIGTERM to ourselves
    // wakes the waiter in the second case; in the first it stays pending, blocked, and harmless.
    ::kill(::getpid(), SIGTERM);
    waiter.join();
    return 0;
  }; });
}

}  // namespace keel::cli
