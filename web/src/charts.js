// Per-VM graphs over the last minutes (uPlot): vCPU load, disk and network throughput, computed
// from consecutive samples of GET /v1/vms/NAME/stats.
import uPlot from 'uplot';

const kWindowSeconds = 300;
const kColors = ['#2456c8', '#d1495b', '#1b7f3b', '#a66300', '#7b3fb0', '#00798c'];

// The x axis always spans the last kWindowSeconds (a single first point would otherwise stretch
// it over years); y starts at 0 and ends at `yMax`, or what the data reach above `yMin`.
function chart(element, labels, yFormat, { yMax, yMin = 1 } = {}) {
  const width = Math.max(element.clientWidth, 300);
  return new uPlot({
    width,
    height: 140,
    legend: { live: false },
    cursor: { show: false },
    scales: {
      x: { time: true, range: (u, min, max) => [max - kWindowSeconds, max] },
      y: { range: (u, min, max) => [0, yMax ?? Math.max(max ?? 0, yMin)] },
    },
    axes: [
      { values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })) },
      { size: 70, values: (u, ticks) => ticks.map(yFormat) },
    ],
    series: [{}, ...labels.map((label, i) => ({ label, stroke: kColors[i % kColors.length], width: 1.5 }))],
  }, [[], ...labels.map(() => [])], element);
}

export function bytes(n) {
  if (n === null || n === undefined) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

const sum = (list, key) => (list ?? []).reduce((s, x) => s + (x[key] ?? 0), 0);

// Rates between two stats samples: per-vCPU load in %, disk and network bytes per second.
export function rates(before, after) {
  const dt = after.time - before.time;
  if (!(dt > 0) || !before.cpu || !after.cpu) return null;
  const rate = (key, list) => Math.max(0, (sum(after[list], key) - sum(before[list], key)) / dt);
  return {
    time: after.time,
    cpu: after.cpu.map((c, i) => Math.max(0, (c.cpu_seconds - (before.cpu[i]?.cpu_seconds ?? 0)) / dt * 100)),
    diskRead: rate('read_bytes', 'disks'),
    diskWrite: rate('write_bytes', 'disks'),
    netRx: rate('rx_bytes', 'nets'),
    netTx: rate('tx_bytes', 'nets'),
  };
}

export class VmCharts {
  constructor(elements) {
    this.elements = elements;
    this.points = [];
  }

  reset() {
    this.points = [];
    for (const el of Object.values(this.elements)) delete el.dataset.peak;
    for (const c of [this.cpu, this.disk, this.net]) c?.destroy();
    this.cpu = this.disk = this.net = null;
  }

  add(point) {
    if (!point) return;
    this.points.push(point);
    while (this.points.length && this.points[0].time < point.time - kWindowSeconds) this.points.shift();
    if (!this.cpu) {
      const { cpu, disk, net } = this.elements;
      this.cpu = chart(cpu, point.cpu.map((_, i) => `vCPU ${i}`), (v) => `${v.toFixed(0)}%`,
                       { yMax: 100 });
      this.disk = chart(disk, ['read', 'write'], (v) => `${bytes(v)}/s`, { yMin: 1024 });
      this.net = chart(net, ['received', 'sent'], (v) => `${bytes(v)}/s`, { yMin: 1024 });
    }
    const t = this.points.map((p) => p.time);
    this.cpu.setData([t, ...point.cpu.map((_, i) => this.points.map((p) => p.cpu[i] ?? null))]);
    this.disk.setData([t, this.points.map((p) => p.diskRead), this.points.map((p) => p.diskWrite)]);
    this.net.setData([t, this.points.map((p) => p.netRx), this.points.map((p) => p.netTx)]);
    // The highest rate each graph shows (data-peak), for tests.
    const peak = (...keys) => Math.max(0, ...this.points.flatMap((p) => keys.map((k) => p[k])));
    this.elements.disk.dataset.peak = peak('diskRead', 'diskWrite');
    this.elements.net.dataset.peak = peak('netRx', 'netTx');
    this.elements.cpu.dataset.peak = Math.max(0, ...this.points.flatMap((p) => p.cpu));
  }
}
