#include "manager/store.h"

#include <sqlite3.h>

#include <ctime>

namespace keel::manager {

using nlohmann::json;

namespace {

// A prepared statement, finalized on scope exit.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) {
      throw Error(std::string("store: prepare: ") + sqlite3_errmsg(db));
    }
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int index, const std::string& text) {
    check(sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()),
                            SQLITE_TRANSIENT));
    return *this;
  }
  Statement& bind(int index, int64_t value) {
    check(sqlite3_bind_int64(stmt_, index, value));
    return *this;
  }
  // true while a row is available.
  bool step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw Error(std::string("store: ") + sqlite3_errmsg(db_));
  }
  std::string text(int col) {
    const unsigned char* t = sqlite3_column_text(stmt_, col);
    return t ? std::string(reinterpret_cast<const char*>(t),
                           static_cast<size_t>(sqlite3_column_bytes(stmt_, col)))
             : std::string();
  }
  int64_t integer(int col) { return sqlite3_column_int64(stmt_, col); }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) throw Error(std::string("store: bind: ") + sqlite3_errmsg(db_));
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

int64_t now_seconds() { return static_cast<int64_t>(std::time(nullptr)); }

constexpr const char* kSelect =
    "SELECT name, definition, state, reason, pid, pid_start_time, control_path, defined_at, "
    "state_changed_at, owner, location FROM vms";

VmRecord read_record(Statement& s) {
  VmRecord r;
  r.name = s.text(0);
  r.definition = json::parse(s.text(1), nullptr, false);
  r.state = s.text(2);
  r.reason = s.text(3);
  r.pid = s.integer(4);
  r.pid_start_time = s.integer(5);
  r.control_path = s.text(6);
  r.defined_at = s.integer(7);
  r.state_changed_at = s.integer(8);
  r.owner = PeerCredentials::from_json(json::parse(s.text(9), nullptr, false));
  r.location = json::parse(s.text(10), nullptr, false);
  if (!r.location.is_object()) r.location = json::object();
  return r;
}

}  // namespace

Store::Store(const std::string& path) : path_(path) {
  int rc = sqlite3_open_v2(path.c_str(), &db_,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    throw Error("store " + path + ": " + msg);
  }
  try {
    sqlite3_busy_timeout(db_, 5000);
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=FULL");
    exec("PRAGMA foreign_keys=ON");
    migrate();
  } catch (...) {
    sqlite3_close(db_);
    throw;
  }
}

Store::~Store() { sqlite3_close(db_); }

void Store::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    throw Error("store " + path_ + ": " + msg);
  }
}

int Store::schema_version() {
  std::lock_guard lock(mutex_);
  Statement s(db_, "PRAGMA user_version");
  s.step();
  return static_cast<int>(s.integer(0));
}

namespace {

// The vms table of the current schema (version 4), named `name`.
std::string vms_table(const std::string& name) {
  return "CREATE TABLE " + name + R"( (
            name             TEXT PRIMARY KEY NOT NULL,
            definition       TEXT NOT NULL,
            state            TEXT NOT NULL,
            reason           TEXT NOT NULL,
            pid              INTEGER NOT NULL DEFAULT 0,
            pid_start_time   INTEGER NOT NULL DEFAULT 0,
            control_path     TEXT NOT NULL DEFAULT '',
            defined_at       INTEGER NOT NULL,
            state_changed_at INTEGER NOT NULL,
            owner            TEXT NOT NULL DEFAULT '',
            location         TEXT NOT NULL DEFAULT '{}',
            CHECK (state IN ('running', 'paused', 'shut off', 'crashed'))))";
}

}  // namespace

void Store::migrate() {
  int version;
  {
    Statement s(db_, "PRAGMA user_version");
    s.step();
    version = static_cast<int>(s.integer(0));
  }
  if (version > kSchemaVersion) {
    throw Error("store " + path_ + ": schema version " + std::to_string(version) +
                " is newer than this keel (" + std::to_string(kSchemaVersion) + ")");
  }
  if (version == kSchemaVersion) return;
  exec("BEGIN IMMEDIATE");
  try {
    if (version < 1) {
      exec(vms_table("vms").c_str());  // a new store: the current schema at once
    } else {
      if (version < 2) {
        // Who defined each VM ({"uid", "gid", "groups"}): the files it names are opened with
        // these credentials at every start. Definitions from version 1 had no owner: root's.
        exec("ALTER TABLE vms ADD COLUMN owner TEXT NOT NULL DEFAULT ''");
      }
      if (version < 3) {
        // State 'crashed' (a panicked guest kept for inspection). SQLite cannot change a CHECK
        // constraint in place: the table is copied into one with the new constraint.
        exec(vms_table("vms_v3").c_str());
        const char* columns = "name, definition, state, reason, pid, pid_start_time, control_path, "
                              "defined_at, state_changed_at, owner";
        exec(("INSERT INTO vms_v3 (" + std::string(columns) + ") SELECT " + columns + " FROM vms").c_str());
        exec("DROP TABLE vms");
        exec("ALTER TABLE vms_v3 RENAME TO vms");
      } else if (version < 4) {
        // Where a VM's state went (saved, restored, migrated): a column of its own.
        exec("ALTER TABLE vms ADD COLUMN location TEXT NOT NULL DEFAULT '{}'");
      }
    }
    exec(("PRAGMA user_version = " + std::to_string(kSchemaVersion)).c_str());
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

void Store::define(const std::string& name, const json& definition, const PeerCredentials& owner) {
  std::lock_guard lock(mutex_);
  Statement s(db_,
              "INSERT INTO vms (name, definition, state, reason, defined_at, state_changed_at, "
              "owner) VALUES (?1, ?2, 'shut off', 'unknown', ?3, ?3, ?4) ON CONFLICT(name) DO NOTHING");
  s.bind(1, name).bind(2, definition.dump()).bind(3, now_seconds()).bind(4, owner.to_json().dump());
  s.step();
  if (sqlite3_changes(db_) == 0) throw DuplicateError("a VM named '" + name + "' is already defined");
}

void Store::redefine(const std::string& name, const json& definition, const PeerCredentials& owner) {
  std::lock_guard lock(mutex_);
  Statement s(db_, "UPDATE vms SET definition = ?2, owner = ?3 WHERE name = ?1");
  s.bind(1, name).bind(2, definition.dump()).bind(3, owner.to_json().dump());
  s.step();
  if (sqlite3_changes(db_) == 0) throw NotFoundError("no VM named '" + name + "'");
}

void Store::undefine(const std::string& name) {
  std::lock_guard lock(mutex_);
  Statement s(db_, "DELETE FROM vms WHERE name = ?1");
  s.bind(1, name);
  s.step();
  if (sqlite3_changes(db_) == 0) throw NotFoundError("no VM named '" + name + "'");
}

std::optional<VmRecord> Store::get(const std::string& name) {
  std::lock_guard lock(mutex_);
  Statement s(db_, (std::string(kSelect) + " WHERE name = ?1").c_str());
  s.bind(1, name);
  if (!s.step()) return std::nullopt;
  return read_record(s);
}

std::vector<VmRecord> Store::list() {
  std::lock_guard lock(mutex_);
  Statement s(db_, (std::string(kSelect) + " ORDER BY name").c_str());
  std::vector<VmRecord> out;
  while (s.step()) out.push_back(read_record(s));
  return out;
}

void Store::set_running(const std::string& name, const std::string& state,
                        const std::string& reason, int64_t pid, int64_t pid_start_time,
                        const std::string& control_path) {
  std::lock_guard lock(mutex_);
  Statement s(db_,
              "UPDATE vms SET state = ?2, reason = ?3, pid = ?4, pid_start_time = ?5, "
              "control_path = ?6, state_changed_at = ?7 WHERE name = ?1");
  s.bind(1, name).bind(2, state).bind(3, reason).bind(4, pid).bind(5, pid_start_time);
  s.bind(6, control_path).bind(7, now_seconds());
  s.step();
  if (sqlite3_changes(db_) == 0) throw NotFoundError("no VM named '" + name + "'");
}

void Store::set_state(const std::string& name, const std::string& state,
                      const std::string& reason) {
  std::lock_guard lock(mutex_);
  bool off = state == kStateShutOff;
  Statement s(db_, off ? "UPDATE vms SET state = ?2, reason = ?3, pid = 0, pid_start_time = 0, "
                         "control_path = '', state_changed_at = ?4 WHERE name = ?1"
                       : "UPDATE vms SET state = ?2, reason = ?3, state_changed_at = ?4 "
                         "WHERE name = ?1");
  s.bind(1, name).bind(2, state).bind(3, reason).bind(4, now_seconds());
  s.step();
  if (sqlite3_changes(db_) == 0) throw NotFoundError("no VM named '" + name + "'");
}

void Store::set_location(const std::string& name, const json& location) {
  std::lock_guard lock(mutex_);
  Statement s(db_, "UPDATE vms SET location = ?2 WHERE name = ?1");
  s.bind(1, name).bind(2, location.dump());
  s.step();
  if (sqlite3_changes(db_) == 0) throw NotFoundError("no VM named '" + name + "'");
}

std::string Store::integrity_check() {
  std::lock_guard lock(mutex_);
  Statement s(db_, "PRAGMA integrity_check");
  std::string result;
  while (s.step()) result += (result.empty() ? "" : "\n") + s.text(0);
  return result;
}

}  // namespace keel::manager
