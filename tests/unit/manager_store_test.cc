// The SQLite store: schema, WAL, one transaction per change, persistence across reopen.
#include <unistd.h>

#include <filesystem>
#include <thread>

#include <gtest/gtest.h>
#include <sqlite3.h>

#include "manager/store.h"

namespace keel::manager {
namespace {

using nlohmann::json;

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/keel-store-XXXXXX";
    dir = ::mkdtemp(tmpl);
    path = dir + "/keel.db";
  }
  void TearDown() override { std::filesystem::remove_all(dir); }
  std::string dir, path;
};

TEST_F(StoreTest, DefineListGetUndefine) {
  Store store(path);
  EXPECT_EQ(store.schema_version(), Store::kSchemaVersion);
  store.define("b", json{{"name", "b"}});
  store.define("a", json{{"name", "a"}});
  EXPECT_THROW(store.define("a", json{{"name", "a"}}), DuplicateError);
  auto all = store.list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name, "a");  // ordered by name
  EXPECT_EQ(all[0].state, "shut off");
  auto a = store.get("a");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->definition, json({{"name", "a"}}));
  store.undefine("a");
  EXPECT_FALSE(store.get("a"));
  EXPECT_THROW(store.undefine("a"), NotFoundError);
  EXPECT_EQ(store.integrity_check(), "ok");
}

TEST_F(StoreTest, RunningStateSurvivesReopenAndShutOffForgetsTheProcess) {
  {
    Store store(path);
    store.define("vm", json{{"name", "vm"}});
    store.set_running("vm", "running", "booted", 1234, 5678, "/run/vm.sock");
  }
  {
    Store store(path);
    auto r = store.get("vm");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, "running");
    EXPECT_EQ(r->reason, "booted");
    EXPECT_EQ(r->pid, 1234);
    EXPECT_EQ(r->pid_start_time, 5678);
    EXPECT_EQ(r->control_path, "/run/vm.sock");
    store.set_state("vm", "shut off", "crashed");
    r = store.get("vm");
    EXPECT_EQ(r->pid, 0);
    EXPECT_EQ(r->control_path, "");
    EXPECT_EQ(r->reason, "crashed");
    EXPECT_THROW(store.set_state("other", "paused", "user"), NotFoundError);
    EXPECT_THROW(store.set_state("vm", "exploded", "x"), Error);  // CHECK constraint
  }
}

TEST_F(StoreTest, UsesWalJournal) {
  Store store(path);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &stmt, nullptr);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)), "wal");
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

TEST_F(StoreTest, RefusesANewerSchema) {
  { Store store(path); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_exec(db, "PRAGMA user_version = 99", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  EXPECT_THROW(Store{path}, Error);
}

// A store written by the previous keel (schema 1: no owner, no 'crashed' state) is migrated in
// place: its VMs stay, owners are root's, and a VM may now be recorded crashed.
TEST_F(StoreTest, MigratesASchemaOneStore) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, R"(CREATE TABLE vms (
      name TEXT PRIMARY KEY NOT NULL, definition TEXT NOT NULL, state TEXT NOT NULL,
      reason TEXT NOT NULL, pid INTEGER NOT NULL DEFAULT 0,
      pid_start_time INTEGER NOT NULL DEFAULT 0, control_path TEXT NOT NULL DEFAULT '',
      defined_at INTEGER NOT NULL, state_changed_at INTEGER NOT NULL,
      CHECK (state IN ('running', 'paused', 'shut off')));
    INSERT INTO vms VALUES ('old', '{"name":"old"}', 'shut off', 'shutdown', 0, 0, '', 1, 1);
    PRAGMA user_version = 1;)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  Store store(path);
  EXPECT_EQ(store.schema_version(), Store::kSchemaVersion);
  auto old = store.get("old");
  ASSERT_TRUE(old);
  EXPECT_EQ(old->definition, json({{"name", "old"}}));
  EXPECT_EQ(old->reason, "shutdown");
  store.set_state("old", kStateCrashed, "panicked");
  EXPECT_EQ(store.get("old")->state, "crashed");
}

// A schema 3 store (before locations) gains the column in place: its VMs have none recorded,
// and where a VM's state went can be recorded from then on.
TEST_F(StoreTest, MigratesASchemaThreeStoreAndRecordsLocations) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, R"(CREATE TABLE vms (
      name TEXT PRIMARY KEY NOT NULL, definition TEXT NOT NULL, state TEXT NOT NULL,
      reason TEXT NOT NULL, pid INTEGER NOT NULL DEFAULT 0,
      pid_start_time INTEGER NOT NULL DEFAULT 0, control_path TEXT NOT NULL DEFAULT '',
      defined_at INTEGER NOT NULL, state_changed_at INTEGER NOT NULL,
      owner TEXT NOT NULL DEFAULT '',
      CHECK (state IN ('running', 'paused', 'shut off', 'crashed')));
    INSERT INTO vms VALUES ('v3', '{"name":"v3"}', 'shut off', 'shutdown', 0, 0, '', 1, 1, '');
    PRAGMA user_version = 3;)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  Store store(path);
  EXPECT_EQ(store.schema_version(), Store::kSchemaVersion);
  auto v3 = store.get("v3");
  ASSERT_TRUE(v3);
  EXPECT_EQ(v3->location, json::object());
  store.set_location("v3", json{{"migrated_to", "/run/other/keel.sock"}, {"at", 5}});
  EXPECT_EQ(store.get("v3")->location["migrated_to"], "/run/other/keel.sock");
  EXPECT_THROW(store.set_location("nope", json::object()), NotFoundError);
  EXPECT_EQ(store.integrity_check(), "ok");
}

TEST_F(StoreTest, ConcurrentWritersLoseNothing) {
  Store store(path);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        std::string name = "vm" + std::to_string(t) + "-" + std::to_string(i);
        store.define(name, json{{"name", name}});
        store.set_running(name, "running", "booted", 100 + i, 1, "/x");
        store.set_state(name, "paused", "user");
      }
    });
  }
  for (auto& t : threads) t.join();
  auto all = store.list();
  EXPECT_EQ(all.size(), 200u);
  for (auto& r : all) EXPECT_EQ(r.state, "paused");
  EXPECT_EQ(store.integrity_check(), "ok");
}

}  // namespace
}  // namespace keel::manager
