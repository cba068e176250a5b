// keel's web console: the VM list with live load, lifecycle actions, a definition form, and per
// VM its serial console and graphs. Everything goes through the daemon's HTTP API, as the CLI's
// verbs do; the page only adds the login cookie (docs/architecture.md, "Web console").
import '@xterm/xterm/css/xterm.css';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { api, followEvents } from './api.js';
import { ConsoleView } from './console.js';
import { VmCharts, bytes, rates } from './charts.js';

const $ = (selector) => document.querySelector(selector);
const kRefreshMs = 2000;

const state = {
  vms: [],
  stats: new Map(),  // name -> the last stats sample
  load: new Map(),   // name -> the last rates
  view: 'list',
  vm: null,          // the VM shown in the VM view
};

// ---- errors, as the API words them

function showError(message) {
  const box = $('#error');
  box.textContent = message;
  box.hidden = !message;
}

// ---- confirmations for what cannot be undone

function confirmAction(text) {
  const dialog = $('#confirm');
  $('#confirm-text').textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
  });
}

// ---- actions

const kActions = {
  running: ['shutdown', 'reboot', 'reset', 'suspend', 'destroy'],
  paused: ['resume', 'destroy'],
  crashed: ['reset', 'destroy'],
  'shut off': ['start', 'undefine'],
};
const kConfirm = {
  reset: (vm) => `Reset ${vm} now? The guest is not asked first.`,
  destroy: (vm) => `Destroy ${vm}? Its VMM is stopped now (SIGTERM, then SIGKILL), as pulling the plug.`,
  undefine: (vm) => `Undefine ${vm}? Its definition is deleted (its disks are kept).`,
};

async function act(name, action) {
  if (kConfirm[action] && !(await confirmAction(kConfirm[action](name)))) return;
  showError('');
  try {
    if (action === 'undefine') {
      await api('DELETE', `/v1/vms/${encodeURIComponent(name)}`);
      if (state.vm === name) go('list');
    } else {
      await api('POST', `/v1/vms/${encodeURIComponent(name)}/${action}`, {});
    }
  } catch (e) {
    showError(`${action} ${name}: ${e.message}`);
  }
  await refresh();
}

function actionButtons(vm) {
  const span = document.createElement('span');
  span.className = 'actions';
  for (const action of kActions[vm.state] ?? []) {
    const b = document.createElement('button');
    b.textContent = action;
    b.dataset.vm = vm.name;
    b.dataset.action = action;
    if (kConfirm[action]) b.className = 'danger';
    b.addEventListener('click', () => act(vm.name, action));
    span.append(b);
  }
  return span;
}

// The buttons of a VM, kept while its state stays the same: the list is redrawn every 2 s, and a
// click must not land on a button that is being replaced.
const listActions = new Map();  // name -> { state, span }
const vmActions = new Map();
function stableActions(cache, vm) {
  const cached = cache.get(vm.name);
  if (cached?.state === vm.state) return cached.span;
  const span = actionButtons(vm);
  cache.set(vm.name, { state: vm.state, span });
  return span;
}

function stateBadge(vm) {
  const s = document.createElement('span');
  s.className = `state ${vm.state.replace(' ', '-')}`;
  s.dataset.state = vm.state;
  s.textContent = vm.state;
  if (vm.reason) {
    const r = document.createElement('span');
    r.className = 'reason';
    r.textContent = `(${vm.reason})`;
    s.append(r);
  }
  return s;
}

function uptime(seconds) {
  if (seconds === undefined) return '-';
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  return `${m}m ${s % 60}s`;
}

function loadCell(name, vcpus) {
  const load = state.load.get(name);
  if (!load) return '-';
  const avg = load.cpu.reduce((a, b) => a + b, 0) / Math.max(load.cpu.length, 1);
  const wrap = document.createElement('span');
  const bar = document.createElement('span');
  bar.className = 'load';
  const fill = document.createElement('span');
  fill.style.width = `${Math.min(100, avg).toFixed(0)}%`;
  bar.append(fill);
  wrap.append(bar, `${avg.toFixed(0)}%`);
  wrap.title = load.cpu.map((c, i) => `vCPU ${i}: ${c.toFixed(1)}%`).join('\n');
  return wrap;
}

// ---- the list

function renderList() {
  const body = $('#vms tbody');
  body.replaceChildren();
  for (const vm of state.vms) {
    const s = state.stats.get(vm.name) ?? {};
    const row = document.createElement('tr');
    row.dataset.vm = vm.name;
    const cell = (content, cls) => {
      const td = document.createElement('td');
      if (cls) td.className = cls;
      td.append(content ?? '-');
      row.append(td);
    };
    const link = document.createElement('a');
    link.href = `#vm/${encodeURIComponent(vm.name)}`;
    link.className = 'vm-link';
    link.textContent = vm.name;
    cell(link);
    cell(stateBadge(vm));
    cell(s.engine ?? (s.accel ? `(${s.accel})` : '-'));
    cell(String(s.vcpus ?? '-'), 'num');
    cell(s.memory_mib ? bytes(s.memory_mib * 1048576) : '-', 'num');
    cell(vm.state === 'shut off' ? '-' : uptime(s.uptime_seconds), 'num');
    cell(vm.state === 'shut off' ? '-' : loadCell(vm.name, s.vcpus), 'num');
    cell(stableActions(listActions, vm));
    body.append(row);
  }
  $('#empty').hidden = state.vms.length > 0;
}

// ---- the VM view

let consoleView = null;
const charts = new VmCharts({ cpu: $('#chart-cpu'), disk: $('#chart-disk'), net: $('#chart-net') });

function renderVm() {
  const vm = state.vms.find((v) => v.name === state.vm);
  if (!vm) return;
  $('#vm-state').replaceChildren(stateBadge(vm));
  const actions = stableActions(vmActions, vm);
  if ($('#vm-actions').firstChild !== actions) $('#vm-actions').replaceChildren(actions);
}

function openVm(name) {
  state.vm = name;
  $('#vm-title').textContent = name;
  consoleView ??= new ConsoleView($('#terminal'), $('#console-status'), $('#console-reconnect'));
  consoleView.open(name);
  charts.reset();
  renderVm();
}

// ---- refreshing: the list and every VM's stats, every 2 s and after each event

let refreshing = null;
async function refresh() {
  refreshing ??= (async () => {
    try {
      state.vms = await api('GET', '/v1/vms');
      for (const cache of [listActions, vmActions, state.stats, state.load])
        for (const name of cache.keys()) if (!state.vms.some((vm) => vm.name === name)) cache.delete(name);
      const all = await Promise.all(state.vms.map((vm) =>
        api('GET', `/v1/vms/${encodeURIComponent(vm.name)}/stats`).catch(() => null)));
      state.vms.forEach((vm, i) => {
        const now = all[i];
        if (!now) return;
        const before = state.stats.get(vm.name);
        const r = before && before.state !== 'shut off' ? rates(before, now) : null;
        if (r) state.load.set(vm.name, r);
        if (vm.state === 'shut off') state.load.delete(vm.name);
        state.stats.set(vm.name, now);
        if (vm.name === state.vm && state.view === 'vm') charts.add(r);
      });
      renderList();
      renderVm();
    } catch (e) {
      if (e.status !== 401) showError(`cannot reach the daemon: ${e.message}`);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

// ---- events

function addEvent(e) {
  const li = document.createElement('li');
  const time = document.createElement('time');
  const seconds = e.timestamp?.seconds;
  time.textContent = seconds ? new Date(seconds * 1000).toLocaleTimeString() : '';
  li.append(time, `${e.vm}: ${e.event} (${e.state}${e.reason ? `, ${e.reason}` : ''})` +
                  (e.detail ? ` - ${e.detail}` : ''));
  li.dataset.vm = e.vm;
  li.dataset.event = e.event;
  const list = $('#events');
  list.prepend(li);
  while (list.children.length > 100) list.lastChild.remove();
  refresh();
}

// ---- the define form

function lines(text) {
  return text.split('\n').map((l) => l.trim()).filter(Boolean);
}

function definitionFromForm(form) {
  const f = new FormData(form);
  const def = { name: f.get('name').trim(), accel: f.get('accel') };
  for (const key of ['vcpus', 'memory_mib']) {
    const v = f.get(key).trim();
    if (v !== '') def[key] = Number(v);
  }
  for (const key of ['kernel', 'initrd', 'cmdline', 'test_guest']) {
    const v = f.get(key).trim();
    if (v) def[key] = v;
  }
  const disks = lines(f.get('disks')).map((l) => {
    const [path, ...flags] = l.split(',');
    return flags.includes('readonly') ? { path, readonly: true } : { path };
  });
  if (disks.length) def.disks = disks;
  const nets = lines(f.get('nets')).map((l) => {
    if (l.startsWith('tap:')) return { type: 'tap', ifname: l.slice(4) };
    const [type, ...opts] = l.split(',');
    const net = { type };
    const hostfwd = opts.filter((o) => o.startsWith('hostfwd=')).map((o) => o.slice(8));
    if (hostfwd.length) net.hostfwd = hostfwd;
    return net;
  });
  if (nets.length) def.nets = nets;
  return def;
}

// The API names the field in its message ("field 'disks[0].path': ..."): shown beside it.
function showFieldError(form, message) {
  const m = /field '([^'.[]*)/.exec(message);
  const field = m ? m[1] : '';
  const slot = form.querySelector(`.field-error[data-field="${field}"]`) ??
               form.querySelector('.field-error[data-field=""]');
  slot.textContent = message;
  form.querySelector(`[name="${field}"]`)?.classList.add('invalid');
}

function setUpDefineForm() {
  const form = $('#define-form');
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    form.querySelectorAll('.field-error').forEach((el) => { el.textContent = ''; });
    form.querySelectorAll('.invalid').forEach((el) => el.classList.remove('invalid'));
    try {
      const def = definitionFromForm(form);
      await api('POST', '/v1/vms', def);
      form.reset();
      location.hash = '';
      await refresh();
    } catch (err) {
      showFieldError(form, err.message);
    }
  });
}

// ---- views (#, #vm/NAME, #define)

function go(view) {
  if (view === 'list') location.hash = '';
  else location.hash = view;
}

function route() {
  const hash = decodeURIComponent(location.hash.slice(1));
  const [view, name] = hash.startsWith('vm/') ? ['vm', hash.slice(3)] : [hash || 'list', null];
  state.view = view === 'define' ? 'define' : view === 'vm' ? 'vm' : 'list';
  $('#list-view').hidden = state.view !== 'list';
  $('#vm-view').hidden = state.view !== 'vm';
  $('#define-view').hidden = state.view !== 'define';
  $('#show-list').classList.toggle('active', state.view !== 'define');
  $('#show-define').classList.toggle('active', state.view === 'define');
  if (state.view === 'vm') {
    if (name !== state.vm || !consoleView?.socket) openVm(name);
  } else {
    consoleView?.close();
    state.vm = null;
  }
}

// ---- start

$('#show-list').addEventListener('click', () => go('list'));
$('#show-define').addEventListener('click', () => go('define'));
$('#empty-define').addEventListener('click', (e) => {
  e.preventDefault();
  go('define');
});
$('#back').addEventListener('click', () => go('list'));
window.addEventListener('hashchange', route);
setUpDefineForm();
route();
refresh();
setInterval(refresh, kRefreshMs);
followEvents(addEvent, (open) => {
  $('#live').textContent = open ? 'live' : 'reconnecting…';
  $('#live').classList.toggle('on', open);
});
