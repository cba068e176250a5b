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
