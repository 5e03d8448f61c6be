// A small SVG line chart: numeric series over time, one colour per key, min/max
// labels, a legend, and the latest values in data-latest (for tests and scripts) and
// in a visually hidden summary (for screen readers). Redraws at most once per frame,
// however fast samples arrive.

const NS = 'http://www.w3.org/2000/svg';
const W = 800, H = 260, L = 56, R = 12, T = 12, B = 28;

function svg(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Numbers as they are, booleans as 0/1; anything else is not charted. */
export function numeric(v) {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'boolean') return v ? 1 : 0;
  return null;
}

function label(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
  return String(Math.round(v * 1000) / 1000);
}

function timeLabel(ms, span) {
  const d = new Date(ms);
  return span > 36 * 3600e3
    ? d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' }) + ' ' + d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleTimeString();
}

export class LineChart {
  /** `maxPoints` bounds each series (live charts); `title` names the chart for screen readers. */
  /** `area` fills below each line. */
  constructor({ id, title, maxPoints = Infinity, empty = 'No data yet.', area = false }) {
    this.area = area;
    this.series = new Map();
    this.latest = {};
    this.maxPoints = maxPoints;
    this.empty = empty;
    this.pending = false;
    this.svg = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, preserveAspectRatio: 'none' });
    this.legend = document.createElement('figcaption');
    this.summary = document.createElement('p');
    this.summary.className = 'sr-only';
    this.el = document.createElement('figure');
    this.el.className = 'chart';
    if (id) this.el.id = id;
    this.el.append(this.svg, this.legend, this.summary);
    this.el.dataset.points = '0';
    this.el.dataset.latest = '{}';
    this.draw();
  }

  /** Replaces all data: `rows` are {key, ts, value}. */
  setRows(rows) {
    this.series.clear();
    this.latest = {};
    for (const r of rows) this.add(r.key, r.ts, r.value);
    this.schedule();
  }

  /** Appends one value (kept in time order); non-numeric values only update `latest`. */
  push(key, ts, value) {
    this.add(key, ts, value);
    this.schedule();
  }

  add(key, ts, value) {
    this.latest[key] = value;
    const y = numeric(value);
    if (y === null) return;
    let s = this.series.get(key);
    if (!s) { s = []; this.series.set(key, s); }
    if (s.length && s[s.length - 1][0] > ts) {
      s.push([ts, y]);
      s.sort((a, b) => a[0] - b[0]);
    } else {
      s.push([ts, y]);
    }
    if (s.length > this.maxPoints) s.splice(0, s.length - this.maxPoints);
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  draw() {
    const all = [...this.series.values()].flat();
    this.el.dataset.points = String(all.length);
    this.el.dataset.latest = JSON.stringify(this.latest);
    this.svg.replaceChildren();
    this.legend.replaceChildren();
    if (!all.length) {
      this.svg.append(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, this.empty));
      this.summary.textContent = this.empty;
      return;
    }
    let x0 = Math.min(...all.map(p => p[0])), x1 = Math.max(...all.map(p => p[0]));
    let y0 = Math.min(...all.map(p => p[1])), y1 = Math.max(...all.map(p => p[1]));
    if (x0 === x1) { x0 -= 1000; x1 += 1000; }
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const pad = (y1 - y0) * 0.08;
    y0 -= pad; y1 += pad;
    const sx = t => L + (t - x0) / (x1 - x0) * (W - L - R);
    const sy = v => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);

    for (let i = 0; i <= 4; i++) {
      const v = y0 + (y1 - y0) * i / 4, y = sy(v);
      this.svg.append(svg('line', { class: 'grid-line', x1: L, x2: W - R, y1: y, y2: y }));
      this.svg.append(svg('text', { x: L - 6, y: y + 4, 'text-anchor': 'end' }, label(v)));
    }
    this.svg.append(svg('line', { class: 'axis', x1: L, x2: L, y1: T, y2: H - B }));
    this.svg.append(svg('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }));
    const span = x1 - x0;
    this.svg.append(svg('text', { x: L, y: H - 8 }, timeLabel(x0, span)));
    this.svg.append(svg('text', { x: W - R, y: H - 8, 'text-anchor': 'end' }, timeLabel(x1, span)));

    const parts = [];
    [...this.series.entries()].sort((a, b) => a[0].localeCompare(b[0])).forEach(([key, pts], i) => {
      const cls = `s${i % 6}`;
      const d = pts.map((p, j) => `${j ? 'L' : 'M'}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(' ');
      if (this.area && pts.length > 1) {
        const base = (H - B).toFixed(1);
        const fill = `${d} L${sx(pts[pts.length - 1][0]).toFixed(1)},${base} L${sx(pts[0][0]).toFixed(1)},${base} Z`;
        this.svg.append(svg('path', { class: `area ${cls}`, d: fill }));
      }
      this.svg.append(svg('path', { class: `line ${cls}`, d }));
      const last = pts[pts.length - 1];
      this.svg.append(svg('circle', { class: `dot ${cls}`, cx: sx(last[0]), cy: sy(last[1]), r: 3.5 }));
      const sw = document.createElement('span');
      sw.className = `swatch ${cls}`;
      const item = document.createElement('span');
      item.append(sw, `${key}: ${label(last[1])}`);
      this.legend.append(item);
      parts.push(`${key} ${label(last[1])} (${pts.length} points)`);
    });
    this.summary.textContent = `Latest: ${parts.join(', ')}.`;
  }
}
