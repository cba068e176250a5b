// The web console in a real browser (Debian's chromium, headless, over the DevTools protocol with
// puppeteer-core), against a real daemon and VMM: login with and without the token, the VM list,
// start by a click, the serial console over its WebSocket (the guest's output, typed input
// echoed by tests/guests/serial_irq_echo.asm on emu, colours, two viewers at once), suspend and resume,
// live load and graphs, a bad definition's field error, destroy behind its confirmation.
// Screenshots of the main views go to $KEEL_WEB_ARTIFACTS. Run by CTest (web_console_browser).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { Daemon, launchBrowser, screenshot, until, guestDir } from './daemon.mjs';

let daemon;
let browser;
const pageErrors = [];

before(async () => {
  daemon = await Daemon.start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await daemon?.stop();
});

async function newPage() {
  const page = await browser.newPage();
  page.on('pageerror', (e) => pageErrors.push(e.message));
  return page;
}

// A logged-in page (the token by address, as the daemon prints it).
async function loggedIn() {
  const page = await newPage();
  await page.goto(daemon.loginUrl);
  await page.waitForSelector('#vms');
  return page;
}

const stateOf = (page, vm) => page.$eval(`tr[data-vm="${vm}"] .state`, (el) => el.dataset.state)
  .catch(() => null);

async function waitState(page, vm, state) {
  await until(`${vm} to show '${state}'`, async () => (await stateOf(page, vm)) === state);
}

// What the terminal shows (xterm.js's DOM renderer: one element per row); "" before it exists.
const terminalText = (page) => page.$eval('#terminal .xterm-rows', (el) =>
  [...el.children].map((row) => row.textContent.trimEnd()).join('\n')).catch(() => '');

test('without the token: the login page, and the API answers 401', async () => {
  const page = await newPage();
  const res = await page.goto(`${daemon.origin}/`);
  assert.equal(res.status(), 401);
  assert.ok(await page.$('#token'), 'the login form');
  await screenshot(page, 'login');

  for (const path of ['/v1/vms', '/metrics', '/assets/app.js']) {
    const r = await fetch(daemon.origin + path);
    assert.equal(r.status, 401, path);
  }
  const wrong = await fetch(daemon.origin + '/v1/vms', { headers: { Authorization: 'Bearer nope' } });
  assert.equal(wrong.status, 401);

  // A wrong token in the form: the page says so; the right one logs in.
  await page.type('#token', 'not-the-token');
  await Promise.all([page.waitForNavigation(), page.click('#login')]);
  assert.match(await page.$eval('#error', (el) => el.textContent), /not the daemon's/);
  await page.type('#token', daemon.token);
  await Promise.all([page.waitForNavigation(), page.click('#login')]);
  await page.waitForSelector('#vms');
  assert.ok(!page.url().includes('token='), `the token left the address bar: ${page.url()}`);
  await page.close();
});

test('the page drives VMs: list, start, console, suspend, resume, reset, load, destroy', async () => {
  await daemon.api('POST', '/v1/vms', {
    name: 'echo', vcpus: 1, memory_mib: 16, accel: 'emu',
    test_guest: `${guestDir}/serial_irq_echo.bin`,
  });
  const page = await loggedIn();
  await waitState(page, 'echo', 'shut off');

  await page.click('button[data-vm="echo"][data-action="start"]');
  await waitState(page, 'echo', 'running');
  await page.waitForSelector('#events li[data-event="started"]');
  await screenshot(page, 'list');

  // The console: the guest's output from its first byte, typed input echoed back by the guest.
  await page.click('tr[data-vm="echo"] a.vm-link');
  await until('READY on the console', async () => (await terminalText(page)).includes('READY'));
  await page.click('#terminal');
  await page.keyboard.type('typed in chromium');
  await until('the guest to echo the typed text',
              async () => (await terminalText(page)).includes('typed in chromium'));

  // Colours: an escape sequence typed in comes back from the guest and is drawn, not shown.
  await page.keyboard.press('Escape');
  await page.keyboard.type('[31mred');
  await page.keyboard.press('Escape');
  await page.keyboard.type('[0m');
  await until('red text in the terminal', () => page.$$eval('#terminal .xterm-rows span',
    (spans) => spans.some((s) => s.textContent === 'red' && s.classList.contains('xterm-fg-1'))));
  assert.ok(!(await terminalText(page)).includes('[31m'), 'the escape sequence was drawn as text');

  // A paste of several WebSocket messages arrives whole, in order (under the 64 KiB the VMM
  // holds for a guest that reads slowly).
  let paste = '';
  for (let i = 0; paste.length < 30000; i++) paste += `line ${i} of a paste\r`;
  paste += 'end-of-paste';
  await page.$eval('#terminal textarea', (area, text) => {
    const data = new DataTransfer();
    data.setData('text/plain', text);
    area.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
  }, paste);
  await until('the whole paste to reach the guest', async () => {
    const s = await daemon.api('GET', '/v1/vms/echo/stats');
    return s.console.input_bytes >= paste.length + 'typed in chromium'.length ? s : null;
  });
  await until('the end of the paste echoed', async () => (await terminalText(page)).includes('end-of-paste'));

  // A second viewer sees the same console, and what it types reaches the guest too.
  const second = await loggedIn();
  await second.goto(`${daemon.origin}/#vm/echo`);
  await until('the second viewer to show the history',
              async () => (await terminalText(second)).includes('end-of-paste'));
  await second.click('#terminal');
  await second.keyboard.type(' and in a second tab');
  await until('the second viewer to show its text',
              async () => (await terminalText(second)).includes('and in a second tab'));
  await second.close();
  // (A background tab does not render: the first page shows it once it is in front again.)
  await page.bringToFront();
  await until('the first viewer to show the second tab\'s text',
              async () => (await terminalText(page)).includes('and in a second tab'));

  // Load and graphs come from consecutive stats samples (every 2 s).
  await page.waitForSelector('#chart-cpu canvas', { timeout: 30000 });
  await screenshot(page, 'vm');

  // Suspend and resume from the VM view.
  await page.click('#vm-actions button[data-action="suspend"]');
  await until('paused', async () =>
    (await page.$eval('#vm-state .state', (el) => el.dataset.state)) === 'paused');
  await page.click('#vm-actions button[data-action="resume"]');
  await until('running again', async () =>
    (await page.$eval('#vm-state .state', (el) => el.dataset.state)) === 'running');

  // Reset, behind its confirmation: a fresh VMM, whose output the open console shows on.
  await page.click('#vm-actions button[data-action="reset"]');
  await page.waitForSelector('#confirm[open]');
  await page.click('#confirm-ok');
  await until('the reset guest to say READY again', async () =>
    ((await terminalText(page)).match(/READY/g) ?? []).length >= 2);
  await until('running after the reset', async () =>
    (await page.$eval('#vm-state .state', (el) => el.dataset.state).catch(() => null)) === 'running');

  // Back in the list: the live load column, then destroy behind its confirmation.
  await page.click('#back');
  await until('a load figure', async () =>
    /%$/.test(await page.$eval('tr[data-vm="echo"] td:nth-child(7)', (el) => el.textContent)));
  await page.click('button[data-vm="echo"][data-action="destroy"]');
  await page.waitForSelector('#confirm[open]');
  await page.click('#confirm-cancel');
  assert.equal(await stateOf(page, 'echo'), 'running', 'cancel keeps the VM running');
  await page.click('button[data-vm="echo"][data-action="destroy"]');
  await page.waitForSelector('#confirm[open]');
  await page.click('#confirm-ok');
  await waitState(page, 'echo', 'shut off');
  const vm = await daemon.api('GET', '/v1/vms/echo');
  assert.equal(vm.state, 'shut off');
  await page.close();
});

test('a bad definition shows the API\'s field error beside the field; undefine', async () => {
  const page = await loggedIn();
  await page.click('#show-define');
  await page.waitForSelector('#define-form', { visible: true });
  await page.type('#define-form input[name="name"]', 'bad');
  await page.type('#define-form input[name="kernel"]', '/nonexistent/vmlinuz');
  await page.click('#define-submit');
  const slot = '#define-form .field-error[data-field="kernel"]';
  await until('the kernel field error', async () =>
    (await page.$eval(slot, (el) => el.textContent)).includes('does not exist'));
  assert.match(await page.$eval(slot, (el) => el.textContent), /field 'kernel'.*\/nonexistent\/vmlinuz/);
  assert.ok(await page.$('#define-form input[name="kernel"].invalid'));
  await screenshot(page, 'define-error');

  // A good one defines the VM, and the list shows it.
  await page.$eval('#define-form input[name="kernel"]', (el) => { el.value = ''; });
  await page.$eval('#define-form input[name="name"]', (el) => { el.value = 'good'; });
  await page.click('#define-form details summary');
  await page.type('#define-form input[name="test_guest"]', `${guestDir}/serial_irq_echo.bin`);
  await page.click('#define-submit');
  await page.waitForSelector('#list-view', { visible: true });
  await waitState(page, 'good', 'shut off');

  // Undefine, behind its confirmation: the row goes, and so does the definition.
  await page.click('button[data-vm="good"][data-action="undefine"]');
  await page.waitForSelector('#confirm[open]');
  await screenshot(page, 'confirm');
  await page.click('#confirm-ok');
  await until('the row to go', async () => (await page.$('tr[data-vm="good"]')) === null);
  assert.ok(!(await daemon.api('GET', '/v1/vms')).some((vm) => vm.name === 'good'));
  await page.close();
});

// Requests that ride on the login cookie must come from the page: same origin, CSRF header.
test('cookie requests without the CSRF header or from another origin are refused', async () => {
  const page = await loggedIn();
  const cookies = await page.cookies();
  const cookie = cookies.map((c) => `${c.name}=${c.value}`).join('; ');
  const csrf = cookies.find((c) => c.name === 'keel_csrf')?.value;
  assert.ok(csrf, 'the login set keel_csrf');
  await page.close();

  const post = (headers) => fetch(`${daemon.origin}/v1/vms/echo/start`, {
    method: 'POST', body: '{}', headers: { Cookie: cookie, 'Content-Type': 'application/json', ...headers },
  });
  let r = await post({});
  assert.equal(r.status, 403);
  assert.equal((await r.json()).error.code, 'csrf');
  r = await post({ 'X-Keel-CSRF': 'guess' });
  assert.equal(r.status, 403);
  r = await post({ 'X-Keel-CSRF': csrf, Origin: 'http://evil.example' });
  assert.equal(r.status, 403);
  assert.equal((await r.json()).error.code, 'cross_origin');

  // A WebSocket from another origin is refused before it opens.
  const upgrade = (origin) => new Promise((resolve, reject) => {
    const headers = { Cookie: cookie, Connection: 'Upgrade', Upgrade: 'websocket',
                      'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==' };
    if (origin) headers.Origin = origin;
    const req = request(`${daemon.origin}/v1/vms/echo/console/ws`, { headers });
    req.on('response', (res) => { res.resume(); resolve(res.statusCode); });
    req.on('upgrade', (res, socket) => { socket.destroy(); resolve(101); });
    req.on('error', reject);
    req.end();
  });
  assert.equal(await upgrade('http://evil.example'), 403);
  assert.equal(await upgrade(null), 403);
  assert.equal(await upgrade(daemon.origin), 101);
});

test('no script errors on any page', () => {
  assert.deepEqual(pageErrors, []);
});
