// Dashboards: the list, the viewer (read-only: what users without dashboard:write
// get, and the link to share) and the editor (add, move, resize and configure
// widgets; device and key pickers fed by the API). Widgets sit on a 12-column grid
// that collapses to one column on a phone. Live values arrive over one stream per
// dashboard (GET /dashboards/{id}/stream), never one per widget; charts are our own
// SVG (chart.js), nothing comes from a CDN.

import { api, get, qs, streamEvents } from './api.js';
import {
  h, clear, fmtTime, fmtValue, badge, onlineBadge, errorSlot, field, table, onSubmit, showError, announce,
} from './ui.js';
import { LineChart, numeric } from './chart.js';

const NS = 'http://www.w3.org/2000/svg';
const TYPES = [
  ['chart', 'Time-series chart', 8, 4],
  ['value', 'Latest value card', 3, 2],
  ['gauge', 'Gauge', 3, 3],
  ['switch', 'On/off switch', 3, 2],
  ['button', 'Button', 3, 2],
  ['alarms', 'Alarm list', 6, 4],
  ['device_status', 'Device status table', 6, 4],
  ['map', 'Map of device locations', 6, 5],
  ['markdown', 'Text (markdown)', 4, 3],
];
const RANGES = [['15 min', 900], ['1 h', 3600], ['6 h', 21600], ['24 h', 86400], ['7 d', 604800], ['30 d', 2592000]];
/** Buckets of an aggregated chart. */
const BUCKETS = 120;
const canWrite = me => me.permissions.includes('dashboard:write');
const canCommand = me => me.permissions.includes('device:command');

function svg(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

export async function dashboardsPage({ main, signal, me, navigate }) {
  const list = await get('/dashboards?page_size=200', { signal });
  const slot = errorSlot();
  const form = h('form', { class: 'inline', id: 'create-dashboard-form' },
    field('Name', h('input', { name: 'name', required: true, maxlength: 255 })),
    h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'home' }), 'Home dashboard'),
    h('button', { type: 'submit', class: 'primary' }, 'Create dashboard'));
  onSubmit(form, slot, async data => {
    const d = await api('POST', '/dashboards', { name: data.get('name').trim(), home: data.get('home') === 'on', widgets: [] });
    navigate(`/dashboards/${d.id}/edit`);
  });
  clear(main,
    h('h1', {}, 'Dashboards'),
    canWrite(me) ? h('section', { class: 'panel' }, h('h2', {}, 'New dashboard'), form, slot) : null,
    h('section', { class: 'panel', id: 'dashboard-list' }, table('Dashboards', [
      ['Name', d => h('a', { href: `#/dashboards/${d.id}` }, d.name)],
      ['Home', d => (d.home ? badge('home', 'on') : '')],
      ['Widgets', d => String(d.widgets.length)],
      ['Changed', d => fmtTime(d.updated_at)],
      ['', d => (canWrite(me) ? h('a', { href: `#/dashboards/${d.id}/edit` }, 'Edit') : '')],
    ], list.items, 'No dashboards yet.')));
}

/** The read-only view: `#/dashboards/{id}`. */
export async function dashboardViewPage({ main, params: [id], signal, me }) {
  const d = await get(`/dashboards/${id}`, { signal });
  await renderDashboard(main, d, { signal, me, title: true });
}

/** The tenant's home dashboard inside another page (the home page), if it has one. */
export async function homeDashboard(box, { signal, me }) {
  if (!me.permissions.includes('dashboard:read')) return;
  let d;
  try { d = await get('/dashboards/home', { signal }); } catch { return; }
  await renderDashboard(box, d, { signal, me, title: true });
}

async function renderDashboard(box, d, { signal, me, title }) {
  const hub = new LiveHub();
  const grid = h('div', { class: 'dash-grid', id: 'dashboard-grid', 'aria-label': `Dashboard ${d.name}` });
  const streamState = h('p', { class: 'stream-state muted', id: 'dashboard-stream', 'aria-live': 'polite' }, 'Connecting…');
  clear(box,
    title ? h('div', { class: 'dash-head' },
      h('h1', {}, d.name, d.home ? ' ' : null, d.home ? badge('home', 'on') : null),
      h('div', { class: 'actions' },
        canWrite(me) ? h('a', { class: 'button', href: `#/dashboards/${d.id}/edit`, id: 'edit-dashboard' }, 'Edit') : null,
        h('a', { class: 'button', href: `#/dashboards/${d.id}`, title: 'Read-only link to share with the tenant\'s users' }, 'Read-only link'))) : null,
    d.description ? h('p', { class: 'muted' }, d.description) : null,
    streamState, grid);
  if (!d.widgets.length) grid.append(h('p', { class: 'muted' }, 'This dashboard has no widgets yet.'));
  for (const w of sorted(d.widgets)) {
    const cell = widgetFrame(w);
    grid.append(cell);
    renderWidget(cell.querySelector('.widget-body'), w, { signal, me, hub }).catch(e => {
      clear(cell.querySelector('.widget-body'), h('div', { class: 'error', role: 'alert' }, e.message));
    });
  }
  const streamed = d.widgets.some(w => w.config.device_id || (w.config.device_ids && w.config.device_ids.length));
  if (!streamed) { streamState.textContent = ''; return; }
  grid.dataset.stream = 'connecting';
  streamEvents(`/dashboards/${d.id}/stream`, {
    signal,
    onState: (state, message) => {
      grid.dataset.stream = state;
      streamState.textContent = state === 'open' ? 'Live: connected.' : state === 'connecting' ? 'Connecting…' : `Live stream: ${message}`;
    },
    onEvent: (event, data) => { if (event === 'telemetry') hub.publish(JSON.parse(data)); },
  });
}

/** Widgets in reading order (row, then column): the order of the one-column phone layout. */
const sorted = widgets => [...widgets].sort((a, b) => a.y - b.y || a.x - b.x);

function widgetFrame(w) {
  return place(h('section', {
    class: `widget widget-${w.config.type}`, id: `widget-${w.id}`, dataset: { widget: w.id, type: w.config.type },
    'aria-label': w.title || label(w.config.type),
  }, h('h2', { class: 'widget-title' }, w.title || label(w.config.type)), h('div', { class: 'widget-body' })), w);
}

/** Puts a widget's element on its grid cells (through the CSSOM: the console's
 * content security policy refuses style attributes). */
function place(el, w) {
  el.style.gridColumn = `${w.x + 1} / span ${w.w}`;
  el.style.gridRow = `${w.y + 1} / span ${w.h}`;
  return el;
}

const label = type => (TYPES.find(t => t[0] === type) || [type, type])[1];

/** Samples of the dashboard's stream, handed to the widgets of their device. */
class LiveHub {
  constructor() { this.listeners = []; }
  on(device, fn) { this.listeners.push([device, fn]); }
  publish(sample) {
    for (const [device, fn] of this.listeners) if (device === null || device === sample.device_id) fn(sample);
  }
}

function colorOf(thresholds, v) {
  const n = numeric(v);
  if (n === null) return null;
  let color = null;
  for (const t of [...(thresholds || [])].sort((a, b) => a.from - b.from)) if (n >= t.from) color = t.color;
  return color;
}

async function latestOf(device, keys, signal) {
  const r = await get(`/devices/${device}/telemetry/latest${qs({ keys: keys.join(',') })}`, { signal });
  return new Map(r.items.map(i => [i.key, i]));
}

/** Sends `{key: value}` the way the widget says, through the ordinary downlink routes. */
async function sendControl(c, value) {
  const values = { [c.key]: value };
  if (c.target === 'command') return api('POST', `/devices/${c.device_id}/commands`, { method: c.method, params: values });
  if (c.target === 'attribute_set') return api('PUT', `/devices/${c.device_id}/attributes`, { values });
  return api('POST', `/devices/${c.device_id}/telemetry/control`, { values });
}

async function renderWidget(body, w, { signal, me, hub }) {
  const c = w.config;
  switch (c.type) {
    case 'chart': {
      const chart = new LineChart({ id: `chart-${w.id}`, title: w.title || 'Chart', area: c.style === 'area', maxPoints: 2000, empty: 'No values in this range.' });
      clear(body, chart.el);
      const end = Date.now() + 1;
      const start = end - c.range_secs * 1000;
      const q = { keys: c.keys.join(','), start, end };
      if (c.aggregation) Object.assign(q, { agg: c.aggregation, interval: Math.max(1000, Math.ceil(c.range_secs * 1000 / BUCKETS)) });
      else q.limit = 5000;
      chart.setRows((await get(`/devices/${c.device_id}/telemetry${qs(q)}`, { signal })).items);
      hub.on(c.device_id, s => { for (const i of s.items) if (c.keys.includes(i.key)) chart.push(i.key, i.ts, i.value); });
      return;
    }
    case 'value': case 'gauge': {
      const el = h('div', { class: 'value-card', id: `value-${w.id}`, 'aria-live': 'polite' });
      const at = h('div', { class: 'muted small' });
      const dial = c.type === 'gauge' ? svg('svg', { viewBox: '0 0 200 120', class: 'gauge', role: 'img', 'aria-label': `${c.key} gauge` }) : null;
      clear(body, dial, el, at);
      const show = item => {
        const v = item ? item.value : null;
        el.dataset.value = v === null ? '' : JSON.stringify(v);
        el.textContent = v === null ? '—' : `${fmtValue(v)}${c.unit ? ` ${c.unit}` : ''}`;
        const color = colorOf(c.thresholds, v);
        el.style.color = color || '';
        el.dataset.color = color || '';
        at.textContent = item ? fmtTime(item.ts) : 'No value yet.';
        if (dial) drawGauge(dial, numeric(v), c.min, c.max, color);
      };
      show((await latestOf(c.device_id, [c.key], signal)).get(c.key));
      hub.on(c.device_id, s => { const i = s.items.find(x => x.key === c.key); if (i) show(i); });
      return;
    }
    case 'switch': {
      let state = false;
      const sw = h('button', { type: 'button', role: 'switch', class: 'switch', id: `switch-${w.id}`, 'aria-checked': 'false', disabled: !canCommand(me) }, 'Off');
      const slot = errorSlot();
      const show = v => {
        state = v === true || v === 1 || v === 'on' || v === 'true';
        sw.setAttribute('aria-checked', String(state));
        sw.textContent = state ? 'On' : 'Off';
      };
      sw.addEventListener('click', async () => {
        sw.disabled = true;
        showError(slot, null);
        try {
          await sendControl(c, !state);
          show(!state);
          announce(`${c.key} ${state ? 'on' : 'off'} sent`);
        } catch (e) { showError(slot, e); } finally { sw.disabled = !canCommand(me); }
      });
      clear(body, h('div', { class: 'switch-row' }, h('code', {}, c.key), sw), slot,
        canCommand(me) ? null : h('p', { class: 'muted small' }, 'Sending needs device:command.'));
      const latest = (await latestOf(c.device_id, [c.key], signal)).get(c.key);
      if (latest) show(latest.value);
      hub.on(c.device_id, s => { const i = s.items.find(x => x.key === c.key); if (i) show(i.value); });
      return;
    }
    case 'button': {
      const slot = errorSlot();
      const b = h('button', { type: 'button', class: 'primary', id: `button-${w.id}`, disabled: !canCommand(me) }, c.label);
      b.addEventListener('click', async () => {
        b.disabled = true;
        showError(slot, null);
        try { await sendControl(c, c.value); announce(`${c.label} sent`); } catch (e) { showError(slot, e); } finally { b.disabled = !canCommand(me); }
      });
      clear(body, b, slot);
      return;
    }
    case 'alarms': {
      const box = h('div', { id: `alarms-${w.id}` });
      clear(body, box);
      const load = async () => {
        const r = await get(`/alarms${qs({ status: 'active,acknowledged', page_size: c.limit, device_id: c.device_id })}`, { signal });
        clear(box, table('Open alarms', [
          ['Severity', a => badge(a.severity)], ['Title', a => a.title], ['Status', a => badge(a.status)], ['Raised', a => fmtTime(a.created_at)],
        ], r.items, 'No open alarms.'));
      };
      await load();
      // Alarms change rarely: a light poll instead of another stream.
      const timer = setInterval(() => load().catch(() => {}), 15000);
      signal.addEventListener('abort', () => clearInterval(timer), { once: true });
      return;
    }
    case 'device_status': {
      const devices = await devicesOf(c, signal);
      const box = h('div', { id: `status-${w.id}` });
      const render = () => clear(box, table('Devices', [
        ['Device', d => h('a', { href: `#/devices/${d.id}` }, d.name)],
        ['State', d => onlineBadge(d.online)],
        ['Last seen', d => fmtTime(d.last_seen)],
      ], devices, 'No devices.'));
      render();
      clear(body, box);
      hub.on(null, s => { const d = devices.find(x => x.id === s.device_id); if (d) { d.online = true; d.last_seen = s.received_at; render(); } });
      return;
    }
    case 'map': {
      const devices = await devicesOf(c, signal);
      const points = [];
      await Promise.all(devices.map(async d => {
        const keys = [c.lat_key, c.lon_key];
        const attrs = await get(`/devices/${d.id}/attributes${qs({ keys: keys.join(',') })}`, { signal }).catch(() => ({ items: [] }));
        let m = new Map(attrs.items.map(i => [i.key, i.value]));
        if (numeric(m.get(c.lat_key)) === null || numeric(m.get(c.lon_key)) === null) {
          const latest = await latestOf(d.id, keys, signal).catch(() => new Map());
          m = new Map([...latest].map(([k, i]) => [k, i.value]));
        }
        const lat = numeric(m.get(c.lat_key)), lon = numeric(m.get(c.lon_key));
        if (lat !== null && lon !== null) points.push({ d, lat, lon });
      }));
      clear(body, drawMap(points, w.id));
      return;
    }
    case 'markdown':
      clear(body, markdown(c.text));
      return;
    default:
      clear(body, h('p', { class: 'muted' }, `Unknown widget type ${c.type}`));
  }
}

async function devicesOf(c, signal) {
  const all = (await get('/devices?page_size=1000', { signal })).items;
  if (c.device_ids && c.device_ids.length) return all.filter(d => c.device_ids.includes(d.id));
  if (c.profile_id) return all.filter(d => d.profile_id === c.profile_id).slice(0, 100);
  return all.slice(0, 100);
}

function drawGauge(el, v, min, max, color) {
  el.replaceChildren();
  const arc = f => {
    const a = Math.PI * (1 - f);
    return [100 + 80 * Math.cos(a), 100 - 80 * Math.sin(a)];
  };
  const [x0, y0] = arc(0), [x1, y1] = arc(1);
  el.append(svg('path', { d: `M${x0},${y0} A80,80 0 0 1 ${x1},${y1}`, class: 'gauge-track' }));
  if (v !== null) {
    const f = Math.min(1, Math.max(0, (v - min) / (max - min)));
    const [x, y] = arc(f);
    const path = svg('path', { d: `M${x0},${y0} A80,80 0 0 1 ${x.toFixed(1)},${y.toFixed(1)}`, class: 'gauge-fill' });
    if (color) path.style.stroke = color;
    el.append(path);
  }
  el.append(svg('text', { x: 20, y: 116, 'text-anchor': 'middle' }, String(min)), svg('text', { x: 180, y: 116, 'text-anchor': 'middle' }, String(max)));
}

/** Devices at their coordinates, fitted to the box (equirectangular; no map tiles, no CDN). */
function drawMap(points, id) {
  const W = 400, H = 240, P = 24;
  const el = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'map', id: `map-${id}`, role: 'img', 'aria-label': `Map of ${points.length} devices` });
  el.append(svg('rect', { x: 0, y: 0, width: W, height: H, class: 'map-bg' }));
  if (!points.length) {
    el.append(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'No device has a location yet.'));
    return el;
  }
  let [la0, la1] = [Math.min(...points.map(p => p.lat)), Math.max(...points.map(p => p.lat))];
  let [lo0, lo1] = [Math.min(...points.map(p => p.lon)), Math.max(...points.map(p => p.lon))];
  if (la1 - la0 < 0.01) { la0 -= 0.01; la1 += 0.01; }
  if (lo1 - lo0 < 0.01) { lo0 -= 0.01; lo1 += 0.01; }
  for (const p of points) {
    const x = P + (p.lon - lo0) / (lo1 - lo0) * (W - 2 * P);
    const y = H - P - (p.lat - la0) / (la1 - la0) * (H - 2 * P);
    const a = svg('a', { href: `#/devices/${p.d.id}` });
    a.append(svg('circle', { cx: x, cy: y, r: 6, class: p.d.online ? 'pin on' : 'pin off' }),
      svg('text', { x: x + 9, y: y + 4 }, p.d.name));
    const t = svg('title', {}, `${p.d.name}: ${p.lat}, ${p.lon}`);
    a.append(t);
    el.append(a);
  }
  return el;
}

/** Markdown's common part (headings, paragraphs, lists, **bold**, *italic*, `code`,
 * [links](https://..)) as DOM nodes: never innerHTML, so text cannot inject markup. */
export function markdown(text) {
  const root = h('div', { class: 'markdown' });
  let list = null;
  for (const line of text.split('\n')) {
    const heading = line.match(/^(#{1,3})\s+(.*)$/);
    const item = line.match(/^\s*[-*]\s+(.*)$/);
    if (item) {
      if (!list) { list = h('ul'); root.append(list); }
      list.append(h('li', {}, inline(item[1])));
      continue;
    }
    list = null;
    if (heading) root.append(h(`h${heading[1].length + 2}`, {}, inline(heading[2])));
    else if (line.trim()) root.append(h('p', {}, inline(line)));
  }
  return root;
}

function inline(s) {
  const out = [];
  const re = /(\*\*([^*]+)\*\*|\*([^*]+)\*|`([^`]+)`|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\))/g;
  let last = 0, m;
  while ((m = re.exec(s))) {
    if (m.index > last) out.push(s.slice(last, m.index));
    if (m[2]) out.push(h('strong', {}, m[2]));
    else if (m[3]) out.push(h('em', {}, m[3]));
    else if (m[4]) out.push(h('code', {}, m[4]));
    else out.push(h('a', { href: m[6], target: '_blank', rel: 'noopener noreferrer' }, m[5]));
    last = re.lastIndex;
  }
  if (last < s.length) out.push(s.slice(last));
  return out;
}

// ---- the editor ----

function defaults(type, devices) {
  const device_id = devices.length ? devices[0].id : undefined;
  switch (type) {
    case 'chart': return { type, device_id, keys: [], range_secs: 3600, style: 'line' };
    case 'value': return { type, device_id, key: '', thresholds: [] };
    case 'gauge': return { type, device_id, key: '', min: 0, max: 100, thresholds: [] };
    case 'switch': return { type, device_id, key: 'switch', target: 'telemetry_control' };
    case 'button': return { type, device_id, label: 'Send', key: 'action', value: true, target: 'telemetry_control' };
    case 'alarms': return { type, limit: 10 };
    case 'device_status': return { type, device_ids: [] };
    case 'map': return { type, device_ids: [], lat_key: 'latitude', lon_key: 'longitude' };
    default: return { type: 'markdown', text: '' };
  }
}

/** Pointer dragging on the editor's grid: dragging a widget moves it, dragging its
 * corner handle resizes it, in whole grid cells (the buttons do the same by keyboard). */
function dragToPlace(grid, cell, w, done) {
  cell.addEventListener('pointerdown', ev => {
    if (ev.button !== 0 || ev.target.closest('button, a, input, select, textarea')) return;
    const resizing = ev.target.classList.contains('resize-handle');
    const style = getComputedStyle(grid);
    const gap = parseFloat(style.columnGap) || 0;
    const colW = (grid.clientWidth + gap) / 12;
    const rowH = (parseFloat(style.gridAutoRows) || 64) + (parseFloat(style.rowGap) || 0);
    const start = { x: ev.clientX, y: ev.clientY, w: { ...w } };
    cell.setPointerCapture(ev.pointerId);
    cell.classList.add('dragging');
    const end = up => {
      cell.releasePointerCapture(up.pointerId);
      cell.classList.remove('dragging');
      cell.removeEventListener('pointerup', end);
      const dx = Math.round((up.clientX - start.x) / colW);
      const dy = Math.round((up.clientY - start.y) / rowH);
      if (!dx && !dy) return;
      if (resizing) {
        w.w = Math.min(12 - w.x, Math.max(1, start.w.w + dx));
        w.h = Math.min(24, Math.max(1, start.w.h + dy));
      } else {
        w.x = Math.min(12 - w.w, Math.max(0, start.w.x + dx));
        w.y = Math.min(1000, Math.max(0, start.w.y + dy));
      }
      done();
    };
    cell.addEventListener('pointerup', end);
    ev.preventDefault();
  });
}

/** The editor: `#/dashboards/{id}/edit`. */
export async function dashboardEditPage({ main, params: [id], signal, me, navigate }) {
  const [d, devices] = await Promise.all([
    get(`/dashboards/${id}`, { signal }),
    get('/devices?page_size=1000', { signal }).then(r => r.items),
  ]);
  if (!canWrite(me)) { navigate(`/dashboards/${id}`); return; }
  const widgets = d.widgets.map(w => ({ ...w, config: { ...w.config } }));
  let selected = widgets.length ? widgets[0].id : null;
  const keyCache = new Map();
  const keysOf = async device => {
    if (!device) return [];
    if (!keyCache.has(device)) {
      keyCache.set(device, get(`/devices/${device}/telemetry/latest`, { signal }).then(r => r.items.map(i => i.key)).catch(() => []));
    }
    return keyCache.get(device);
  };

  const grid = h('div', { class: 'dash-grid editing', id: 'editor-grid' });
  const config = h('div', { class: 'panel', id: 'widget-config' });
  const slot = errorSlot();
  const name = h('input', { name: 'name', value: d.name, required: true, maxlength: 255, id: 'dashboard-name' });
  const home = h('input', { type: 'checkbox', name: 'home', id: 'dashboard-home' });
  home.checked = d.home;
  const typeSelect = h('select', { id: 'widget-type', 'aria-label': 'Widget type' }, TYPES.map(([t, l]) => h('option', { value: t }, l)));
  const nextId = () => { let n = widgets.length + 1; while (widgets.some(w => w.id === `w${n}`)) n++; return `w${n}`; };
  const bottom = () => widgets.reduce((m, w) => Math.max(m, w.y + w.h), 0);

  const redraw = () => {
    clear(grid, sorted(widgets).map(w => {
      const cell = h('section', {
        class: `widget${w.id === selected ? ' selected' : ''}`, dataset: { widget: w.id }, id: `edit-${w.id}`,
      },
      h('button', { type: 'button', class: 'widget-pick', 'aria-pressed': String(w.id === selected), onclick: () => { selected = w.id; redraw(); } },
        `${w.title || label(w.config.type)}`),
      h('div', { class: 'muted small' }, `${label(w.config.type)} · ${w.w}×${w.h} at ${w.x},${w.y}`),
      h('div', { class: 'actions move' },
        mv('←', 'Move left', w, () => { w.x = Math.max(0, w.x - 1); }),
        mv('→', 'Move right', w, () => { w.x = Math.min(12 - w.w, w.x + 1); }),
        mv('↑', 'Move up', w, () => { w.y = Math.max(0, w.y - 1); }),
        mv('↓', 'Move down', w, () => { w.y = Math.min(1000, w.y + 1); }),
        mv('−W', 'Narrower', w, () => { w.w = Math.max(1, w.w - 1); }),
        mv('+W', 'Wider', w, () => { w.w = Math.min(12 - w.x, w.w + 1); }),
        mv('−H', 'Shorter', w, () => { w.h = Math.max(1, w.h - 1); }),
        mv('+H', 'Taller', w, () => { w.h = Math.min(24, w.h + 1); })),
      h('span', { class: 'resize-handle', title: 'Drag to resize', 'aria-hidden': 'true' }));
      dragToPlace(grid, cell, w, () => { selected = w.id; redraw(); });
      return place(cell, w);
    }));
    renderConfig();
  };
  const mv = (text, title, w, change) => h('button', {
    type: 'button', title, 'aria-label': `${title}: ${w.title || w.id}`, dataset: { action: title.toLowerCase().replace(/ /g, '-') },
    onclick: () => { change(); selected = w.id; redraw(); },
  }, text);

  // Renders overlap (the key picker waits for the API): only the newest one may
  // draw, or a slow render of the previous widget would replace the current form.
  let renderSeq = 0;
  const renderConfig = async () => {
    const seq = ++renderSeq;
    const w = widgets.find(x => x.id === selected);
    if (!w) { clear(config, h('p', { class: 'muted' }, 'Add a widget, or pick one to configure it.')); return; }
    const c = w.config;
    const set = (k, v) => { c[k] = v; };
    const deviceSelect = (k = 'device_id', optional = false) => h('select', {
      name: k, id: `cfg-${k}`,
      onchange: e => { set(k, e.target.value || undefined); renderConfig(); },
    }, optional ? h('option', { value: '' }, '(any)') : null,
    devices.map(dev => h('option', { value: dev.id, selected: dev.id === c[k] }, `${dev.name} (${dev.device_number})`)));
    const keys = await keysOf(c.device_id);
    if (seq !== renderSeq) return;
    const keyList = h('datalist', { id: 'cfg-keys' }, keys.map(k => h('option', { value: k })));
    const keyInput = (k = 'key') => h('input', { name: k, id: `cfg-${k}`, value: c[k] || '', list: 'cfg-keys', maxlength: 255, oninput: e => set(k, e.target.value.trim()) });
    const text = (k, attrs = {}) => h('input', { name: k, id: `cfg-${k}`, value: c[k] ?? '', maxlength: 255, ...attrs, oninput: e => set(k, e.target.value === '' ? undefined : e.target.value) });
    const num = (k, attrs = {}) => h('input', { type: 'number', step: 'any', name: k, id: `cfg-${k}`, value: c[k] ?? '', ...attrs, oninput: e => set(k, e.target.value === '' ? undefined : Number(e.target.value)) });
    const targetSelect = () => h('select', { name: 'target', id: 'cfg-target', onchange: e => { set('target', e.target.value); renderConfig(); } },
      [['telemetry_control', 'Telemetry control'], ['attribute_set', 'Attribute set'], ['command', 'Command']]
        .map(([v, l]) => h('option', { value: v, selected: c.target === v }, l)));
    const thresholds = () => field('Thresholds (value:#colour, …)', h('input', {
      name: 'thresholds', id: 'cfg-thresholds', placeholder: '30:#f0ad4e, 40:#d9534f',
      value: (c.thresholds || []).map(t => `${t.from}:${t.color}`).join(', '),
      oninput: e => set('thresholds', e.target.value.split(',').map(s => s.trim()).filter(Boolean).map(s => {
        const [from, color] = s.split(':');
        return { from: Number(from), color: (color || '').trim() };
      })),
    }));
    const fields = [];
    switch (c.type) {
      case 'chart':
        fields.push(field('Device', deviceSelect()),
          h('fieldset', { id: 'cfg-keys-set' }, h('legend', {}, 'Keys (up to 8)'),
            keys.length ? keys.map(k => h('label', { class: 'check' }, h('input', {
              type: 'checkbox', value: k, checked: c.keys.includes(k),
              onchange: e => { c.keys = e.target.checked ? [...c.keys, k] : c.keys.filter(x => x !== k); },
            }), k)) : h('p', { class: 'muted' }, 'The device has sent no telemetry yet.')),
          field('Range', h('select', { name: 'range_secs', id: 'cfg-range', onchange: e => set('range_secs', Number(e.target.value)) },
            RANGES.map(([l, s]) => h('option', { value: s, selected: c.range_secs === s }, l)))),
          field('Aggregation', h('select', { name: 'aggregation', id: 'cfg-aggregation', onchange: e => set('aggregation', e.target.value || undefined) },
            [['', 'Raw values'], ['avg', 'Average'], ['min', 'Minimum'], ['max', 'Maximum'], ['sum', 'Sum'], ['count', 'Count']]
              .map(([v, l]) => h('option', { value: v, selected: (c.aggregation || '') === v }, l)))),
          field('Style', h('select', { name: 'style', id: 'cfg-style', onchange: e => set('style', e.target.value) },
            [['line', 'Line'], ['area', 'Area']].map(([v, l]) => h('option', { value: v, selected: c.style === v }, l)))));
        break;
      case 'value': case 'gauge':
        fields.push(field('Device', deviceSelect()), field('Key', keyInput()), field('Unit', text('unit', { maxlength: 32 })));
        if (c.type === 'gauge') fields.push(field('Minimum', num('min')), field('Maximum', num('max')));
        fields.push(thresholds());
        break;
      case 'switch': case 'button':
        fields.push(field('Device', deviceSelect()), field('Key', keyInput()), field('Sent as', targetSelect()));
        if (c.target === 'command') fields.push(field('Command method', text('method')));
        if (c.type === 'button') {
          fields.push(field('Label', text('label')), field('Value (true, false, a number or text)', h('input', {
            name: 'value', id: 'cfg-value', value: JSON.stringify(c.value),
            oninput: e => { try { set('value', JSON.parse(e.target.value)); } catch { set('value', e.target.value); } },
          })));
        }
        break;
      case 'alarms':
        fields.push(field('Device', deviceSelect('device_id', true)), field('Rows', num('limit', { min: 1, max: 100 })));
        break;
      case 'device_status': case 'map':
        fields.push(h('fieldset', {}, h('legend', {}, 'Devices (none: every device)'),
          devices.map(dev => h('label', { class: 'check' }, h('input', {
            type: 'checkbox', value: dev.id, checked: c.device_ids.includes(dev.id),
            onchange: e => { c.device_ids = e.target.checked ? [...c.device_ids, dev.id] : c.device_ids.filter(x => x !== dev.id); },
          }), dev.name))));
        if (c.type === 'map') fields.push(field('Latitude key', text('lat_key')), field('Longitude key', text('lon_key')));
        break;
      default:
        fields.push(field('Text (markdown)', h('textarea', { name: 'text', id: 'cfg-text', rows: 6, maxlength: 10000, oninput: e => set('text', e.target.value) }, c.text)));
    }
    clear(config,
      h('h2', {}, `Widget ${w.id}: ${label(c.type)}`),
      h('div', { class: 'stack' },
        field('Title', h('input', { name: 'title', id: 'cfg-title', value: w.title || '', maxlength: 255, oninput: e => { w.title = e.target.value || undefined; } })),
        keyList, fields,
        h('div', { class: 'actions' },
          h('button', { type: 'button', onclick: redraw }, 'Apply'),
          h('button', { type: 'button', class: 'danger', id: 'remove-widget', onclick: () => { widgets.splice(widgets.indexOf(w), 1); selected = widgets.length ? widgets[0].id : null; redraw(); } }, 'Remove widget'))));
  };

  const addForm = h('form', { class: 'inline', id: 'add-widget-form' }, field('Add a widget', typeSelect), h('button', { type: 'submit' }, 'Add'));
  addForm.addEventListener('submit', ev => {
    ev.preventDefault();
    const [type, , w, hh] = TYPES.find(t => t[0] === typeSelect.value);
    const widget = { id: nextId(), x: 0, y: bottom(), w, h: hh, config: defaults(type, devices) };
    widgets.push(widget);
    selected = widget.id;
    redraw();
    announce(`${label(type)} added`);
  });
  const save = h('form', { class: 'inline', id: 'dashboard-form' },
    field('Name', name), h('label', { class: 'check' }, home, 'Home dashboard'),
    h('button', { type: 'submit', class: 'primary', id: 'save-dashboard' }, 'Save'),
    h('a', { class: 'button', href: `#/dashboards/${id}` }, 'View'),
    h('button', { type: 'button', class: 'danger', id: 'delete-dashboard', onclick: async () => {
      if (!confirm(`Delete dashboard ${d.name}?`)) return;
      try { await api('DELETE', `/dashboards/${id}`); navigate('/dashboards'); } catch (e) { showError(slot, e); }
    } }, 'Delete'));
  onSubmit(save, slot, async () => {
    const clean = widgets.map(w => {
      const config = Object.fromEntries(Object.entries(w.config).filter(([, v]) => v !== undefined));
      return { id: w.id, title: w.title || undefined, x: w.x, y: w.y, w: w.w, h: w.h, config };
    });
    await api('PUT', `/dashboards/${id}`, { name: name.value.trim(), home: home.checked, widgets: clean });
    announce('Dashboard saved');
    navigate(`/dashboards/${id}`);
  });
  clear(main, h('h1', {}, `Edit dashboard ${d.name}`), h('section', { class: 'panel' }, save, slot, addForm),
    h('div', { class: 'editor-layout' }, grid, config));
  redraw();
}
