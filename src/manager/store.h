// The daemon's persistent state: VM definitions and their live status, in one SQLite database
// (WAL journal, synchronous=FULL, one transaction per change, schema version in user_version).
//
// Thread-safe: one connection guarded by a mutex (the daemon's API threads and its supervisor
// thread share it; every call is one short transaction).
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "manager/peer.h"

struct sqlite3;

namespace keel::manager {

// State names as libvirt prints them.
inline constexpr const char* kStateRunning = "running";
inline constexpr const char* kStatePaused = "paused";
inline constexpr const char* kStateShutOff = "shut off";
// The guest panicked and the VMM is kept, paused, for inspection (on_crash "preserve").
inline constexpr const char* kStateCrashed = "crashed";

struct VmRecord {
  std::string name;
  nlohmann::json definition;  // validated definition (VmDefinition::to_json)
  std::string state = kStateShutOff;
  std::string reason = "unknown";
  int64_t pid = 0;             // VMM process while running or paused, else 0
  int64_t pid_start_time = 0;  // its start time (/proc/PID/stat field 22): guards pid reuse
  std::string control_path;    // its control socket
  int64_t defined_at = 0;      // unix seconds
  int64_t state_changed_at = 0;
  PeerCredentials owner;       // who defined it (root for definitions older than schema 2)
  // Where its state went or came from ({} when nothing moved it; schema 4): {"saved_to": DIR},
  // {"restored_from": DIR}, {"migrated_to": SOCKET}, {"migrated_in": true}, with "at" (unix s).
  nlohmann::json location = nlohmann::json::object();
};

// A definition with that name exists already.
class DuplicateError : public Error {
 public:
  using Error::Error;
};
// No definition with that name.
class NotFoundError : public Error {
 public:
  using Error::Error;
};

class Store {
 public:
  static constexpr int kSchemaVersion = 4;

  // Opens (creating if needed) `path`; migrates an older schema; refuses a newer one.
  explicit Store(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  void define(const std::string& name, const nlohmann::json& definition,
              const PeerCredentials& owner = {});  // DuplicateError
  void undefine(const std::string& name);                                  // NotFoundError
  // A new definition for an existing VM (its state is kept); NotFoundError.
  void redefine(const std::string& name, const nlohmann::json& definition,
                const PeerCredentials& owner);
  std::optional<VmRecord> get(const std::string& name);
  std::vector<VmRecord> list();
  // Records a running or paused VM with its VMM process.
  void set_running(const std::string& name, const std::string& state, const std::string& reason,
                   int64_t pid, int64_t pid_start_time, const std::string& control_path);
  // Records a state change; "shut off" also forgets the process.
  void set_state(const std::string& name, const std::string& state, const std::string& reason);

  // Records where the VM's state went (VmRecord::location).
  void set_location(const std::string& name, const nlohmann::json& location);

  // PRAGMA integrity_check: "ok" when the database is sound.
  std::string integrity_check();
  int schema_version();

 private:
  void exec(const char* sql);
  void migrate();

  std::mutex mutex_;
  sqlite3* db_ = nullptr;
  std::string path_;
};

}  // namespace keel::manager
