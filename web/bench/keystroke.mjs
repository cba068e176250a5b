// Keystroke to echo in the browser console, for keel_bench's "browser console keystroke to echo"
// row (bench/web_console_bench.cc runs it): a daemon with the web console, serial_irq_echo on emu,
// headless chromium typing one key at a time into the terminal; each figure is the time from the
// key press (keydown in the page) to the WebSocket message that carries its echo, in the page's
// own clock. Prints the median in microseconds on the last line: "median_us N".
//   KEEL_BINARY=build/keel KEEL_TEST_GUEST_DIR=build/tests/guests node web/bench/keystroke.mjs [N]
import { Daemon, launchBrowser, until, guestDir } from '../test/daemon.mjs';

const keystrokes = Number(process.argv[2] ?? 50);
const daemon = await Daemon.start();
const browser = await launchBrowser();
try {
  await daemon.api('POST', '/v1/vms', {
    name: 'echo', vcpus: 1, memory_mib: 16, accel: 'emu',
    test_guest: `${guestDir}/serial_irq_echo.bin`,
  });
  await daemon.api('POST', '/v1/vms/echo/start', {});
  const page = await browser.newPage();
  // Timestamps from inside the page: each keydown, and each console message that arrives.
  await page.evaluateOnNewDocument(() => {
    window.keelBench = { keys: [], messages: [] };
    document.addEventListener('keydown', (e) => window.keelBench.keys.push([e.key, performance.now()]), true);
    const Original = window.WebSocket;
    window.WebSocket = class extends Original {
      constructor(...args) {
        super(...args);
        this.addEventListener('message', (e) => {
          const text = new TextDecoder().decode(e.data);
          window.keelBench.messages.push([text, performance.now()]);
        });
      }
    };
  });
  await page.goto(daemon.loginUrl);
  await page.goto(`${daemon.origin}/#vm/echo`);
  await page.waitForSelector('#terminal .xterm-rows');
  await until('READY', () => page.evaluate(() =>
    window.keelBench.messages.some(([t]) => t.includes('READY'))));
  await page.click('#terminal');
  const times = [];
  for (let i = 0; i < keystrokes; i++) {
    const key = 'abcdefghijklmnop'[i % 16];  // never 'q', which ends the guest
    const before = await page.evaluate(() => window.keelBench.messages.length);
    await page.keyboard.press(key);
    const ms = await until(`the echo of '${key}'`, () => page.evaluate((k, from) => {
      const b = window.keelBench;
      const down = b.keys.findLast(([key]) => key === k);
      const echo = b.messages.slice(from).find(([text]) => text.includes(k));
      return down && echo ? echo[1] - down[1] : null;
    }, key, before), 10000);
    times.push(ms * 1000);
  }
  times.sort((a, b) => a - b);
  console.log(`median_us ${times[Math.floor(times.length / 2)].toFixed(1)}`);
} finally {
  await browser.close();
  await daemon.stop();
}
