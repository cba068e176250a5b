#include <fcntl.h>
#include <pty.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <deque>
#include <string>

#include "backends/console/escape_filter.h"
#include "backends/console/raw_terminal.h"
#include "backends/console/terminal_console.h"
#include "base/error.h"
#include "base/event_loop.h"
#include "base/fd.h"
#include "fake_console_input.h"

namespace keel {
namespace {

std::string feed(EscapeFilter& f, const std::string& s, bool* quit = nullptr) {
  auto r = f.feed({reinterpret_cast<const uint8_t*>(s.data()), s.size()});
  if (quit) *quit = r.quit;
  return r.to_guest;
}

TEST(EscapeFilter, PassesOrdinaryBytes) {
  EscapeFilter f;
  bool quit = true;
  EXPECT_EQ(feed(f, "ls -l\r\x03", &quit), "ls -l\r\x03");
  EXPECT_FALSE(quit);
}

TEST(EscapeFilter, CtrlAxQuits) {
  EscapeFilter f;
  bool quit = false;
  EXPECT_EQ(feed(f, "ab\x01xcd", &quit), "ab");
  EXPECT_TRUE(quit);
}

TEST(EscapeFilter, CtrlACtrlASendsOneCtrlA) {
  EscapeFilter f;
  EXPECT_EQ(feed(f, "\x01\x01"), "\x01");
  EXPECT_EQ(feed(f, "\x01\x01\x01\x01"), "\x01\x01");
}

TEST(EscapeFilter, EscapeSplitAcrossReads) {
  EscapeFilter f;
  bool quit = false;
  EXPECT_EQ(feed(f, "a\x01", &quit), "a");
  EXPECT_FALSE(quit);
  EXPECT_EQ(feed(f, "x", &quit), "");
  EXPECT_TRUE(quit);
}

TEST(EscapeFilter, UnknownEscapeIsDroppedAndHelpIsReported) {
  EscapeFilter f;
  EXPECT_EQ(feed(f, "\x01qz"), "z");
  auto r = f.feed(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>("\x01h"), 2));
  EXPECT_TRUE(r.help);
  EXPECT_TRUE(r.to_guest.empty());
}

struct Pipe {
  Pipe() {
    int p[2];
    EXPECT_EQ(pipe2(p, O_CLOEXEC), 0);
    r.reset(p[0]);
    w.reset(p[1]);
  }
  UniqueFd r, w;
};

TEST(TerminalConsole, InputIsFlowControlledByTheDevice) {
  EventLoop loop;
  Pipe in, out;
  testing::FakeConsoleInput dev(4);
  bool quit = false;
  TerminalConsole console(loop, in.r.get(), out.w.get(), dev, [&] { quit = true; });
  ASSERT_EQ(write(in.w.get(), "hello world", 11), 11);
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(dev.drain(), "hell");  // the rest waits in the console, the pipe is not watched
  loop.run_once(std::chrono::milliseconds(1000));  // runs the posted pump()
  EXPECT_EQ(dev.drain(), "o wo");
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(dev.drain(), "rld");
  EXPECT_FALSE(quit);
}

TEST(TerminalConsole, CtrlAxCallsQuit) {
  EventLoop loop;
  Pipe in, out;
  testing::FakeConsoleInput dev(4);
  bool quit = false;
  TerminalConsole console(loop, in.r.get(), out.w.get(), dev, [&] { quit = true; });
  ASSERT_EQ(write(in.w.get(), "ab\x01x", 4), 4);
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_TRUE(quit);
  EXPECT_EQ(dev.drain(), "ab");
}

TEST(TerminalConsole, EndOfInputStopsReading) {
  EventLoop loop;
  Pipe in, out;
  testing::FakeConsoleInput dev(4);
  TerminalConsole console(loop, in.r.get(), out.w.get(), dev, [] {});
  in.w.reset();
  EXPECT_EQ(loop.run_once(std::chrono::milliseconds(1000)), 1);
  // The closed pipe is no longer watched: nothing more to dispatch.
  EXPECT_EQ(loop.run_once(std::chrono::milliseconds(0)), 0);
}

TEST(TerminalConsole, RegularFileInputIsReadAsTheDeviceTakesIt) {
  EventLoop loop;
  char path[] = "/tmp/keel-console-XXXXXX";
  UniqueFd file(mkstemp(path));
  unlink(path);
  ASSERT_EQ(write(file.get(), "abcdef\x01x", 8), 8);  // bigger than the device's FIFO
  lseek(file.get(), 0, SEEK_SET);
  Pipe out;
  testing::FakeConsoleInput dev(4);
  bool quit = false;
  TerminalConsole console(loop, file.get(), out.w.get(), dev, [&] { quit = true; });
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(dev.drain(), "abcd");
  // The escape was read with the first chunk: quit is immediate, as when typed.
  EXPECT_TRUE(quit);
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(dev.drain(), "ef");
}

TEST(TerminalConsole, OutputWritesStraightToTheFd) {
  Pipe out;
  auto sink = TerminalConsole::output(out.w.get());
  const uint8_t text[] = {'o', 'k'};
  sink(text);
  char buf[4] = {};
  ASSERT_EQ(read(out.r.get(), buf, sizeof buf), 2);
  EXPECT_STREQ(buf, "ok");
}

TEST(RawTerminal, NotATerminalIsLeftAlone) {
  Pipe p;
  RawTerminal raw(p.r.get());
  EXPECT_FALSE(raw.active());
}

struct Pty {
  Pty() {
    int m, s;
    EXPECT_EQ(openpty(&m, &s, nullptr, nullptr, nullptr), 0);
    master.reset(m);
    slave.reset(s);
  }
  termios attrs() {
    termios t{};
    tcgetattr(slave.get(), &t);
    return t;
  }
  UniqueFd master, slave;
};

TEST(RawTerminal, RawWhileAliveRestoredAfter) {
  Pty pty;
  termios before = pty.attrs();
  ASSERT_TRUE(before.c_lflag & ICANON);
  {
    RawTerminal raw(pty.slave.get());
    EXPECT_TRUE(raw.active());
    termios t = pty.attrs();
    EXPECT_FALSE(t.c_lflag & (ICANON | ECHO | ISIG));
    EXPECT_FALSE(t.c_iflag & ICRNL);
    EXPECT_TRUE(t.c_oflag & OPOST);
    EXPECT_THROW({ RawTerminal second(pty.slave.get()); }, Error);
  }
  termios after = pty.attrs();
  EXPECT_EQ(after.c_lflag, before.c_lflag);
  EXPECT_EQ(after.c_iflag, before.c_iflag);
}

TEST(RawTerminal, RestoredWhenAnExceptionUnwinds) {
  Pty pty;
  termios before = pty.attrs();
  try {
    RawTerminal raw(pty.slave.get());
    throw std::runtime_error("boom");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(pty.attrs().c_lflag, before.c_lflag);
}

TEST(RawTerminal, RestoredWhenTheProcessDiesOfAFatalSignal) {
  Pty pty;
  termios before = pty.attrs();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    RawTerminal raw(pty.slave.get());
    if (!raw.active()) _exit(3);
    abort();  // std::terminate's path
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGABRT);
  EXPECT_EQ(pty.attrs().c_lflag, before.c_lflag);
}

}  // namespace
}  // namespace keel
