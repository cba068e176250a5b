// Test helpers for the browser tests: a keel daemon with the web console on a free loopback port
// in a temporary directory, the API over TCP with the token, and headless chromium.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';

export const keelBinary = process.env.KEEL_BINARY;
export const guestDir = process.env.KEEL_TEST_GUEST_DIR;
export const artifacts = process.env.KEEL_WEB_ARTIFACTS ?? join(tmpdir(), 'keel-web-artifacts');
if (!keelBinary || !guestDir) throw new Error('set KEEL_BINARY and KEEL_TEST_GUEST_DIR (CTest does)');

// Polls `check` (async, returns a truthy value when done) every 50 ms until it holds or
// `timeoutMs` passes; throws `what` with the last value seen.
export async function until(what, check, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export class Daemon {
  static async start(extraArgs = []) {
    const d = new Daemon();
    d.dir = mkdtempSync(join(tmpdir(), 'keel-web-'));
    d.log = '';
    d.process = spawn(keelBinary, ['daemon', '--state-dir', join(d.dir, 'state'), '--socket',
                                   join(d.dir, 'api.sock'), '--http', '127.0.0.1:0', ...extraArgs],
                      { stdio: ['ignore', 'pipe', 'pipe'] });
    const collect = (chunk) => { d.log += chunk.toString(); };
    d.process.stdout.on('data', collect);
    d.process.stderr.on('data', collect);
    const url = await until('the daemon to print the web console address', async () => {
      if (d.process.exitCode !== null) throw new Error(`the daemon exited: ${d.log}`);
      return /web console at (http:\/\/\S+)/.exec(d.log)?.[1];
    }, 20000);
    d.loginUrl = url;
    d.origin = new URL(url).origin;
    d.token = new URL(url).searchParams.get('token');
    return d;
  }

  // The API over TCP as a script uses it (Bearer token).
  async api(method, path, body) {
    const res = await fetch(this.origin + path, {
      method,
      headers: { Authorization: `Bearer ${this.token}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  async stop() {
    try {
      for (const vm of await this.api('GET', '/v1/vms')) {
        if (vm.state !== 'shut off') await this.api('POST', `/v1/vms/${vm.name}/destroy`, {}).catch(() => {});
      }
    } catch {
      // the daemon is gone already
    }
    if (this.process.exitCode === null) {
      const exited = new Promise((r) => this.process.once('exit', r));
      this.process.kill('SIGTERM');
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export async function launchBrowser() {
  return puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    // Tests run as root in containers, where chromium's sandbox cannot start.
    args: ['--no-sandbox', '--disable-gpu', '--window-size=1280,900'],
    defaultViewport: { width: 1280, height: 900 },
  });
}

export async function screenshot(page, name) {
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, `${name}.png`) });
}

export function readLog(path) {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}
