// The default Linux guest (Debian's kernel, busybox initramfs, an ext4 data disk, user networking)
// driven from the web console in headless chromium on emu: a click starts it, the console shows
// it booting, a command typed into the terminal runs in the guest's shell (it reads its disk past
// the page cache and pings the gateway), the VM's disk and network graphs move, and the shutdown
// button powers it off through the guest's acpid. Skips, with
// the reason, when the default guest is not built (KEEL_DEFAULT_GUEST_DIR) or KEEL_LINUX_TESTS=off.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { Daemon, launchBrowser, screenshot, until } from './daemon.mjs';

const guest = process.env.KEEL_DEFAULT_GUEST_DIR;
const missing = process.env.KEEL_LINUX_TESTS === 'off' ? 'KEEL_LINUX_TESTS=off'
  : !guest || !existsSync(join(guest, 'vmlinuz')) ? `no default guest in '${guest}' (scripts/build.sh builds it)`
  : null;

let daemon;
let browser;

before(async () => {
  if (missing) return;
  daemon = await Daemon.start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await daemon?.stop();
});

const terminalText = (page) => page.$eval('#terminal .xterm-rows', (el) =>
  [...el.children].map((row) => row.textContent.trimEnd()).join('\n')).catch(() => '');
const peak = (page, chart) => page.$eval(chart, (el) => Number(el.dataset.peak ?? 0));

test('the Linux guest from the browser: boot, a command in its shell, disk and network graphs',
     { skip: missing ?? false }, async () => {
  const disk = join(daemon.dir, 'data.ext4');
  copyFileSync(join(guest, 'disk.ext4'), disk);
  await daemon.api('POST', '/v1/vms', {
    name: 'lin', vcpus: 1, memory_mib: 256, accel: 'emu',
    kernel: join(guest, 'vmlinuz'), initrd: join(guest, 'initramfs.cpio.gz'),
    disks: [{ path: disk }], nets: [{ type: 'user' }],
  });
  const page = await browser.newPage();
  await page.goto(daemon.loginUrl);
  await page.waitForSelector('tr[data-vm="lin"]');
  await page.click('tr[data-vm="lin"] a.vm-link');
  // The view opens on the hash change, after the click returns.
  await (await page.waitForSelector('#vm-actions button[data-action="start"]')).click();
  await until('the guest to boot to its shell', async () =>
    (await terminalText(page)).includes('KEEL-GUEST-READY'), 300000);

  // One short command at a time (busybox's line editor assumes 80 columns).
  await page.click('#terminal');
  await page.keyboard.type('echo 3 >/proc/sys/vm/drop_caches; echo dropped-$((6*7))\r');
  await until('the page cache dropped', async () => (await terminalText(page)).includes('dropped-42'));
  await page.keyboard.type('dd if=/dev/vda of=/dev/null bs=64k count=256\r');
  await until('dd to read 16 MiB', async () => (await terminalText(page)).includes('256+0 records in'),
              120000);
  await page.keyboard.type('ping -c 3 10.0.2.2 >/dev/null && echo pinged-$((6*7))\r');
  await until('the gateway to answer', async () => (await terminalText(page)).includes('pinged-42'),
              60000);
  await until('the disk graph to show the reads', async () => (await peak(page, '#chart-disk')) > 0);
  await until('the network graph to show the pings', async () => (await peak(page, '#chart-net')) > 0);
  await screenshot(page, 'linux');
  const stats = await daemon.api('GET', '/v1/vms/lin/stats');
  assert.ok(stats.disks[0].read_bytes >= 16 << 20, JSON.stringify(stats.disks));

  // Shutdown presses the ACPI power button: the guest powers itself off.
  await page.click('#vm-actions button[data-action="shutdown"]');
  await until('the guest to power off', async () =>
    (await page.$eval('#vm-state .state', (el) => el.textContent).catch(() => '')) === 'shut off(shutdown)',
    120000);
  await page.close();
});
