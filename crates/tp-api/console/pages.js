// Pages other than the device detail: sign-in, dashboard, devices, alarms,
// rules & scenes, administration. All data comes from the public REST API.

import { api, get, login as signIn, qs } from './api.js';
import {
  h, clear, fmtTime, fmtValue, badge, onlineBadge, errorSlot, showError, field, table,
  onSubmit, announce, pager, parseJson,
} from './ui.js';
import { rolesSection, tenantsSection } from './admin.js';
import { usersSection } from './manage.js';
import { homeDashboard } from './dashboards.js';
import { LineChart } from './chart.js';

const PAGE_SIZE = 20;

export function login({ main, onDone }) {
  const slot = errorSlot();
  const email = h('input', { name: 'email', type: 'email', autocomplete: 'username', required: true });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const form = h('form', { class: 'stack', id: 'login-form' },
    field('Email', email), field('Password', password), slot,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  onSubmit(form, slot, async data => {
    await signIn(data.get('email'), data.get('password'));
    onDone();
  });
  clear(main, h('section', { class: 'panel login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Sign in'), form));
  email.focus();
}

/** Sum of a Prometheus counter over all its label sets, or null when absent. */
function counter(text, name) {
  let sum = null;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || (line[name.length] !== ' ' && line[name.length] !== '{')) continue;
    const v = Number(line.trim().split(/\s+/).pop());
    if (Number.isFinite(v)) sum = (sum || 0) + v;
  }
  return sum;
}

async function ingestCount(signal) {
  const res = await fetch('/metrics', { signal });
  if (!res.ok) return null;
  return counter(await res.text(), 'tp_ingest_messages_total');
}

function card(label, value, extra, id) {
  return h('div', { class: 'card', id },
    h('div', { class: 'label' }, label), h('div', { class: 'big' }, value), extra ? h('div', { class: 'muted' }, extra) : null);
}

export async function dashboard({ main, signal, me }) {
  // Counts come from the list totals (page_size=1 with the online filter), so they
  // are exact however many devices the tenant has.
  const [devices, onlineDevices, counts, alarms] = await Promise.all([
    get('/devices?page_size=1', { signal }),
    get('/devices?page_size=1&online=true', { signal }),
    get('/alarms/counts', { signal }).catch(e => e),
    get('/alarms?status=active,acknowledged&page_size=5', { signal }).catch(e => e),
  ]);
  const online = onlineDevices.total;
  const seen = devices.total;
  const ratio = seen ? Math.round(online / seen * 100) : 0;
  const rate = h('div', { class: 'big', id: 'message-rate' }, '…');
  const rateNote = h('div', { class: 'muted' }, 'measuring (whole node)');
  const activeAlarms = counts instanceof Error ? '—' : String(counts.active);
  clear(main,
    h('h1', {}, 'Dashboard'),
    h('div', { class: 'cards' },
      card('Devices', String(devices.total), null, 'card-devices'),
      card('Online', `${online}`, `${ratio}% of ${seen}`, 'card-online'),
      card('Active alarms', activeAlarms,
        counts instanceof Error ? counts.message : `${counts.acknowledged} acknowledged`, 'card-alarms'),
      h('div', { class: 'card', id: 'card-rate' }, h('div', { class: 'label' }, 'Messages / s'), rate, rateNote)),
    h('section', { class: 'panel', 'aria-labelledby': 'open-alarms' },
      h('h2', { id: 'open-alarms' }, 'Open alarms'),
      alarms instanceof Error
        ? h('div', { class: 'error', role: 'alert' }, alarms.message)
        : table('Latest open alarms', [
          ['Severity', a => badge(a.severity)],
          ['Title', a => a.title],
          ['Status', a => badge(a.status)],
          ['Raised', a => fmtTime(a.created_at)],
        ], alarms.items, 'No open alarms.'),
      h('p', {}, h('a', { href: '#/alarms' }, 'All alarms'))));
  // Trends of the tenant (not the node): four aggregate requests.
  const trends = h('section', { class: 'trends', id: 'trends', 'aria-label': 'Trends of the last 24 hours' });
  main.append(trends);
  homeTrends(trends, signal).catch(e => { clear(trends, h('div', { class: 'error', role: 'alert' }, e.message)); });
  // The tenant's home dashboard below the figures, if it has one.
  const home = h('div', { id: 'home-dashboard' });
  main.append(home);
  homeDashboard(home, { signal, me }).catch(e => { clear(home, h('div', { class: 'error', role: 'alert' }, e.message)); });

  // Message rate from the ingest counter of /metrics: one request every 10 s.
  let prev = await ingestCount(signal).catch(() => null);
  if (prev === null) { rate.textContent = 'n/a'; rateNote.textContent = 'metrics are not enabled on this node'; return; }
  let prevAt = performance.now();
  let timer = null;
  const sample = async () => {
    const now = await ingestCount(signal).catch(() => null);
    if (signal.aborted) return;
    if (now !== null) {
      const at = performance.now();
      const secs = (at - prevAt) / 1000;
      rate.textContent = ((now - prev) / secs).toFixed(1);
      rateNote.textContent = `last ${Math.round(secs)} s, whole node`;
      prev = now; prevAt = at;
    }
    timer = setTimeout(sample, 10000);
  };
  // A first figure after 3 s, then one request every 10 s.
  timer = setTimeout(sample, 3000);
  signal.addEventListener('abort', () => clearTimeout(timer), { once: true });
}

/** Messages per minute, devices online and alarms per hour, the busiest devices. */
async function homeTrends(box, signal) {
  const [messages, online, alarms, top] = await Promise.all([
    get('/stats/messages', { signal }).catch(e => e),
    get('/stats/online', { signal }).catch(e => e),
    get('/stats/alarms', { signal }).catch(e => e),
    get('/stats/top-devices?limit=10', { signal }).catch(e => e),
  ]);
  const panel = (id, title, body) => h('section', { class: 'panel', id, 'aria-labelledby': `${id}-title` },
    h('h2', { id: `${id}-title` }, title), body instanceof Error ? h('div', { class: 'error', role: 'alert' }, body.message) : body);
  const chart = (id, title, rows) => { const c = new LineChart({ id, title, empty: 'Nothing in the last 24 hours.' }); c.setRows(rows); return c.el; };
  clear(box,
    panel('trend-messages', 'Messages per minute (24 h)', messages instanceof Error ? messages
      : chart('messages-chart', 'Messages per minute', messages.counts.map((n, k) => ({ key: 'messages', ts: messages.start + k * messages.bucket_ms, value: n })))),
    panel('trend-online', 'Devices online (24 h)', online instanceof Error ? online
      : chart('online-chart', 'Devices online', online.items.map(p => ({ key: 'online', ts: p.ts, value: p.online })))),
    panel('trend-alarms', 'Alarms per hour (24 h)', alarms instanceof Error ? alarms
      : chart('alarms-chart', 'Alarms raised and cleared per hour', alarms.items.flatMap(p => [
        { key: 'raised', ts: p.ts, value: p.raised }, { key: 'cleared', ts: p.ts, value: p.cleared }]))),
    panel('trend-top', 'Busiest devices (24 h)', top instanceof Error ? top
      : table('Devices by messages', [
        ['Device', d => h('a', { href: `#/devices/${d.device_id}` }, d.name || d.device_id)],
        ['Messages', d => String(d.messages)],
      ], top.items, 'No messages in the last 24 hours.')));
}

export async function devices({ main, query, signal, navigate }) {
  const search = query.get('search') || '';
  const page = Math.max(1, Number(query.get('page')) || 1);
  const [list, profiles] = await Promise.all([
    get(`/devices${qs({ search, page, page_size: PAGE_SIZE })}`, { signal }),
    get('/profiles?page_size=200', { signal }).catch(() => ({ items: [] })),
  ]);

  const searchInput = h('input', { name: 'search', type: 'search', value: search, placeholder: 'name or number' });
  const searchForm = h('form', { class: 'inline', role: 'search' },
    field('Search devices', searchInput),
    h('button', { type: 'submit' }, 'Search'),
    search ? h('button', { type: 'button', onclick: () => navigate('/devices') }, 'Clear') : null);
  searchForm.addEventListener('submit', ev => { ev.preventDefault(); navigate('/devices', { search: searchInput.value.trim() }); });

  const slot = errorSlot();
  const created = h('div', { id: 'created-device', 'aria-live': 'polite' });
  const createForm = h('form', { class: 'stack', id: 'create-device-form' },
    field('Name', h('input', { name: 'name', required: true, maxlength: 255 })),
    field('Device number', h('input', { name: 'device_number', maxlength: 255 }), 'optional; generated when empty'),
    field('Label', h('input', { name: 'label', maxlength: 255 }), 'optional'),
    field('Profile', h('select', { name: 'profile_id' },
      h('option', { value: '' }, '(none)'),
      profiles.items.map(p => h('option', { value: p.id }, `${p.name} (${p.device_type})`))),
    'heartbeat, device type and default voucher type'),
    field('Voucher type', h('select', { name: 'voucher_type' },
      h('option', { value: '' }, 'the profile’s (else BASIC)'),
      h('option', { value: 'BASIC' }, 'BASIC: username and password'),
      h('option', { value: 'ACCESSTOKEN' }, 'ACCESSTOKEN: a token as the username, no password')),
    'how the device logs in over MQTT, HTTP and CoAP'),
    slot,
    h('button', { type: 'submit', class: 'primary' }, 'Create device'));
  onSubmit(createForm, slot, async data => {
    const body = { name: data.get('name') };
    for (const k of ['device_number', 'label', 'profile_id', 'voucher_type']) if (data.get(k).trim()) body[k] = data.get(k).trim();
    const d = await api('POST', '/devices', body);
    createForm.reset();
    const token = d.credentials.voucher_type === 'ACCESSTOKEN';
    clear(created, h('div', { class: 'notice', role: 'status' },
      h('p', {}, h('strong', {}, `Device “${d.name}” created. `),
        token ? 'Copy its access token now: it is shown only once. The device sends it as the MQTT username with an empty password.'
          : 'Copy its MQTT credentials now: the password is shown only once.'),
      h('table', {}, h('tbody', {},
        h('tr', {}, h('th', { scope: 'row' }, 'Device number'), h('td', {}, h('code', {}, d.device_number))),
        h('tr', {}, h('th', { scope: 'row' }, 'Voucher type'), h('td', {}, h('code', { id: 'new-voucher-type' }, d.credentials.voucher_type))),
        h('tr', {}, h('th', { scope: 'row' }, token ? 'Access token (username)' : 'Username'), h('td', {}, h('code', { id: 'new-username' }, d.credentials.username))),
        token ? null : h('tr', {}, h('th', { scope: 'row' }, 'Password'), h('td', {}, h('code', { id: 'new-password' }, d.credentials.password))))),
      h('p', {}, h('a', { href: `#/devices/${d.id}`, id: 'new-device-link' }, `Open ${d.name}`))));
    announce(`Device ${d.name} created`);
    await refreshList();
  });

  const listBox = h('div', { id: 'device-list' });
  async function refreshList() {
    const fresh = await get(`/devices${qs({ search, page, page_size: PAGE_SIZE })}`, { signal });
    renderList(fresh);
  }
  function renderList(l) {
    clear(listBox,
      table(search ? `Devices matching “${search}”` : 'Devices', [
        ['Name', d => h('a', { href: `#/devices/${d.id}` }, d.name)],
        ['Number', d => h('code', {}, d.device_number)],
        ['State', d => onlineBadge(d.online)],
        ['Last seen', d => fmtTime(d.last_seen)],
        ['Enabled', d => (d.enabled ? 'yes' : 'no')],
        ['Label', d => d.label || ''],
      ], l.items, search ? 'No device matches.' : 'No devices yet: create one below.'),
      pager(page, PAGE_SIZE, l.total, p => navigate('/devices', { search, page: p })));
  }
  renderList(list);

  clear(main,
    h('h1', {}, 'Devices'),
    h('p', {}, h('a', { href: '#/devices/profiles', id: 'profiles-link' }, 'Device profiles'), ' · ',
      h('a', { href: '#/devices/groups', id: 'groups-link' }, 'Device groups'), ' · ',
      h('a', { href: '#/devices/templates', id: 'templates-link' }, 'Device templates')),
    h('section', { class: 'panel' }, searchForm, listBox),
    h('section', { class: 'panel', 'aria-labelledby': 'add-device' },
      h('h2', { id: 'add-device' }, 'Add a device'), createForm, created));
}

export async function alarms({ main, query, signal, navigate }) {
  const status = query.get('status') ?? 'active,acknowledged';
  const page = Math.max(1, Number(query.get('page')) || 1);
  const slot = errorSlot();
  const listBox = h('div', { id: 'alarm-list' });

  const select = h('select', { name: 'status' },
    [['active,acknowledged', 'Open (active or acknowledged)'], ['active', 'Active'], ['acknowledged', 'Acknowledged'],
      ['cleared', 'Cleared'], ['all', 'All']].map(([v, l]) => h('option', { value: v, selected: v === status }, l)));
  const filter = h('form', { class: 'inline' }, field('Show', select), h('button', { type: 'submit' }, 'Apply'));
  filter.addEventListener('submit', ev => { ev.preventDefault(); navigate('/alarms', { status: select.value }); });

  async function act(alarm, verb) {
    showError(slot, null);
    try {
      await api('POST', `/alarms/${alarm.id}/${verb}`);
      announce(`Alarm ${alarm.title} ${verb === 'acknowledge' ? 'acknowledged' : 'cleared'}`);
      await load();
    } catch (e) {
      showError(slot, e);
    }
  }

  async function load() {
    const l = await get(`/alarms${qs({ status: status === 'all' ? '' : status, page, page_size: PAGE_SIZE })}`, { signal });
    clear(listBox,
      table('Alarms', [
        ['Severity', a => badge(a.severity)],
        ['Title', a => a.title],
        ['Device', a => (a.device_id ? h('a', { href: `#/devices/${a.device_id}` }, 'device') : '—')],
        ['Status', a => h('span', { class: 'alarm-status' }, badge(a.status))],
        ['Count', a => String(a.occurrences)],
        ['Details', a => h('code', {}, fmtValue(a.details))],
        ['Raised', a => fmtTime(a.created_at)],
        ['Actions', a => h('div', { class: 'actions' },
          a.status === 'active'
            ? h('button', { type: 'button', 'data-action': 'acknowledge', 'data-alarm': a.id, 'aria-label': `Acknowledge ${a.title}`, onclick: () => act(a, 'acknowledge') }, 'Acknowledge')
            : null,
          a.status !== 'cleared'
            ? h('button', { type: 'button', class: 'danger', 'data-action': 'clear', 'data-alarm': a.id, 'aria-label': `Clear ${a.title}`, onclick: () => act(a, 'clear') }, 'Clear')
            : null)],
      ], l.items, 'No alarms.'),
      pager(page, PAGE_SIZE, l.total, p => navigate('/alarms', { status, page: p })));
  }
  await load();
  clear(main, h('h1', {}, 'Alarms'), h('section', { class: 'panel' }, filter, slot, listBox));
}

function summarizeActions(actions) {
  return actions.map(a => a.type + (a.title ? ` “${a.title}”` : '') + (a.method ? ` ${a.method}` : '')).join(', ');
}

function summarizeTriggers(groups) {
  return groups.map(g => g.conditions.map(c => {
    if (c.type === 'device') return `${c.key ?? c.data} ${c.operator ?? ''} ${c.value !== undefined ? JSON.stringify(c.value) : ''}`.trim();
    if (c.type === 'schedule') {
      const k = c.kind || {};
      if (k.type === 'cron') return `cron ${k.expression}`;
      if (k.type === 'periodic') return `every ${k.interval_secs} s`;
      if (k.type === 'once') return `once at ${fmtTime(k.at)}`;
      return 'schedule';
    }
    if (c.type === 'time_range') {
      const off = c.utc_offset_minutes ? ` (UTC${offsetText(c.utc_offset_minutes)})` : ' (UTC)';
      return `between ${hhmm(c.start_minute)} and ${hhmm(c.end_minute)}${off}`;
    }
    return c.type;
  }).join(' and ')).join(' or ');
}

export async function rules({ main, signal }) {
  const slot = errorSlot();
  const [ruleList, sceneList] = await Promise.all([
    get('/rules?page_size=200', { signal }).catch(e => e),
    get('/scenes?page_size=200', { signal }).catch(e => e),
  ]);
  const rulesBox = h('div', { id: 'rule-list' });
  const scenesBox = h('div', { id: 'scene-list' });
  const outcome = h('div', { 'aria-live': 'polite' });

  async function remove(kind, item) {
    if (!window.confirm(`Delete ${kind} “${item.name}”? This cannot be undone.`)) return;
    showError(slot, null);
    try {
      await api('DELETE', `/${kind}s/${item.id}`);
      announce(`${kind === 'rule' ? 'Rule' : 'Scene'} ${item.name} deleted`);
      if (kind === 'rule') renderRules(await get('/rules?page_size=200', { signal }));
      else renderScenes(await get('/scenes?page_size=200', { signal }));
    } catch (e) { showError(slot, e); }
  }

  function renderRules(l) {
    if (l instanceof Error) return clear(rulesBox, h('div', { class: 'error', role: 'alert' }, l.message));
    clear(rulesBox, table('Rules', [
      ['Name', r => r.name],
      ['When', r => summarizeTriggers(r.trigger_groups)],
      ['Then', r => summarizeActions(r.actions)],
      ['State', r => badge(r.enabled ? 'enabled' : 'disabled', r.enabled ? 'on' : 'off')],
      ['Actions', r => h('div', { class: 'actions' },
        h('button', {
          type: 'button', 'aria-label': `${r.enabled ? 'Disable' : 'Enable'} rule ${r.name}`,
          onclick: async () => {
            showError(slot, null);
            try {
              await api('PUT', `/rules/${r.id}`, { enabled: !r.enabled });
              renderRules(await get('/rules?page_size=200', { signal }));
            } catch (e) { showError(slot, e); }
          },
        }, r.enabled ? 'Disable' : 'Enable'),
        h('a', { class: 'button', href: `#/rules/${r.id}`, 'aria-label': `Edit rule ${r.name}` }, 'Edit'),
        h('button', { type: 'button', class: 'danger', 'data-action': 'delete', 'aria-label': `Delete rule ${r.name}`, onclick: () => remove('rule', r) }, 'Delete'))],
    ], l.items, 'No rules yet.'));
  }
  function renderScenes(l) {
    if (l instanceof Error) return clear(scenesBox, h('div', { class: 'error', role: 'alert' }, l.message));
    clear(scenesBox, table('Scenes', [
      ['Name', s => s.name],
      ['Description', s => s.description || ''],
      ['Actions', s => summarizeActions(s.actions)],
      ['Run', s => h('div', { class: 'actions' },
        h('button', {
          type: 'button', 'aria-label': `Run scene ${s.name}`,
          onclick: async () => {
            showError(slot, null);
            try {
              const run = await api('POST', `/scenes/${s.id}/run`);
              clear(outcome, h('div', { class: 'notice', role: 'status' },
                h('p', {}, `Scene “${s.name}” ran:`),
                h('ul', {}, run.outcomes.map(o => h('li', {}, `${o.ok ? '✔' : '✘'} ${o.detail}`)))));
            } catch (e) { showError(slot, e); }
          },
        }, 'Run'),
        h('a', { class: 'button', href: `#/rules/scenes/${s.id}`, 'aria-label': `Edit scene ${s.name}` }, 'Edit'),
        h('button', { type: 'button', class: 'danger', 'data-action': 'delete', 'aria-label': `Delete scene ${s.name}`, onclick: () => remove('scene', s) }, 'Delete'))],
    ], l.items, 'No scenes yet.'));
  }
  renderRules(ruleList);
  renderScenes(sceneList);
  clear(main, h('h1', {}, 'Rules & scenes'), slot,
    h('section', { class: 'panel' }, rulesBox,
      h('p', {}, h('a', { class: 'button primary', href: '#/rules/new', id: 'new-rule' }, 'New rule'))),
    h('section', { class: 'panel' }, scenesBox, outcome,
      h('p', {}, h('a', { class: 'button primary', href: '#/rules/scenes/new', id: 'new-scene' }, 'New scene'))),
    h('p', {}, h('a', { href: '#/rules/channels', id: 'channels-link' }, 'Notification channels'), ' · ',
      h('a', { href: '#/rules/notifications', id: 'notifications-link' }, 'Notification history')));
}

// ---------------------------------------------------------------------------
// Rule and scene editor. The form edits a plain model; structural changes (adding
// or removing a row, changing a type) rebuild the editor from it. Every input is
// named by its JSON path in the request (`trigger_groups[0].conditions[1].value`),
// so a 400 naming a field lands next to that input.

const DATA_KINDS = [['telemetry', 'Telemetry'], ['attribute', 'Attribute'], ['event', 'Event'], ['status', 'Online status']];
const OPERATORS = [['=', '='], ['!=', '≠'], ['>', '>'], ['<', '<'], ['>=', '≥'], ['<=', '≤'], ['between', 'between'], ['in', 'in']];
const SEVERITIES = ['critical', 'major', 'minor', 'warning', 'info'];
const ACTION_TYPES = [
  ['command', 'Send a command'], ['set_attributes', 'Set attributes'], ['raise_alarm', 'Raise an alarm'],
  ['telemetry_control', 'Telemetry control'], ['clear_alarm', 'Clear the alarm'], ['notify', 'Notify a channel'],
  ['run_scene', 'Run a scene'],
];
const VALUE_HINT = {
  between: '[lo, hi], e.g. [20, 30]', in: 'a JSON array, e.g. ["a", "b"]',
  status: '"online" or "offline"', event: 'empty: the event itself triggers',
};

/** Select with options [value, label]; the value is set once the options exist. */
function select(name, options, value, onchange, attrs = {}) {
  const el = h('select', { name, ...attrs, onchange: onchange && (e => onchange(e.target.value)) },
    options.map(([v, label]) => h('option', { value: v }, label)));
  if (value !== undefined && value !== null) el.value = value;
  return el;
}

const jsonText = v => (v === undefined || v === null ? '' : typeof v === 'string' ? v : JSON.stringify(v));

/** A condition value as typed: JSON when it parses (30, true, [20, 30]), else a string. */
function parseValue(text, data) {
  const t = text.trim();
  if (t === '') return data === 'event' ? null : '';
  try { return JSON.parse(t); } catch { return t; }
}

const CONDITION_TYPES = [['device', 'Device data'], ['schedule', 'Schedule'], ['time_range', 'Time of day']];
const SCHEDULE_KINDS = [['cron', 'Cron expression'], ['periodic', 'Every N seconds'], ['once', 'Once, at a time']];
const WEEKDAYS = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'];

/** Minutes after midnight as `HH:MM`. */
const hhmm = m => `${String(Math.floor(m / 60)).padStart(2, '0')}:${String(m % 60).padStart(2, '0')}`;
/** An offset in minutes as `+HH:MM` / `-HH:MM`. */
const offsetText = m => `${m < 0 ? '-' : '+'}${hhmm(Math.abs(m))}`;
/** Milliseconds as the value of a `datetime-local` input (the browser's time zone). */
function localInput(ms) {
  if (ms === null || ms === undefined) return '';
  const d = new Date(ms);
  return new Date(ms - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

/** An error the editor shows next to the input named `field`. */
function fieldError(fieldPath, message) {
  const err = new Error(`invalid ${fieldPath}: ${message}`);
  err.field = fieldPath;
  return err;
}

/** `HH:MM` as minutes after midnight. */
function minutesOf(text, fieldPath) {
  const m = String(text).match(/^(\d{1,2}):(\d{2})$/);
  if (!m || Number(m[1]) > 23 || Number(m[2]) > 59) throw fieldError(fieldPath, 'needs a time HH:MM');
  return Number(m[1]) * 60 + Number(m[2]);
}

/** A `datetime-local` value as milliseconds; empty is null unless required. */
function msOf(text, fieldPath, required) {
  if (!text) {
    if (required) throw fieldError(fieldPath, 'needs a date and time');
    return null;
  }
  const ms = new Date(text).getTime();
  if (!Number.isFinite(ms)) throw fieldError(fieldPath, 'needs a date and time');
  return ms;
}

/** A fresh condition of `type` (the editor's model). */
function newConditionOf(type, firstDevice) {
  if (type === 'schedule') return { type, kindType: 'cron', expression: '', interval: '', at: '', notBefore: '', notAfter: '' };
  if (type === 'time_range') {
    return { type, start: '08:00', end: '18:00', weekdays: [], offset: String(-new Date().getTimezoneOffset()) };
  }
  return {
    type: 'device', sourceKind: 'device', sourceId: firstDevice || '',
    data: 'telemetry', key: '', operator: '>', valueText: '', duration: '',
  };
}

function conditionModel(c) {
  if (c.type === 'schedule') {
    const k = c.kind || {};
    return {
      type: 'schedule', kindType: k.type, expression: k.expression || '',
      interval: k.interval_secs ?? '', at: localInput(k.at),
      notBefore: localInput(c.not_before), notAfter: localInput(c.not_after),
    };
  }
  if (c.type === 'time_range') {
    return {
      type: 'time_range', start: hhmm(c.start_minute), end: hhmm(c.end_minute),
      weekdays: c.weekdays || [], offset: String(c.utc_offset_minutes || 0),
    };
  }
  if (c.type !== 'device') return { type: 'other', raw: c };
  return {
    type: 'device', sourceKind: c.source.kind, sourceId: c.source.id, data: c.data, key: c.key || '',
    operator: c.operator, valueText: jsonText(c.value), duration: c.duration_secs ?? '',
  };
}

function conditionOf(m, p) {
  if (m.type === 'other') return m.raw;
  if (m.type === 'schedule') {
    let kind;
    if (m.kindType === 'cron') kind = { type: 'cron', expression: m.expression.trim() };
    else if (m.kindType === 'periodic') {
      const n = Number(m.interval);
      if (String(m.interval).trim() === '' || !Number.isInteger(n) || n < 1) throw fieldError(`${p}.kind.interval_secs`, 'needs a whole number of seconds, at least 1');
      kind = { type: 'periodic', interval_secs: n };
    } else kind = { type: 'once', at: msOf(m.at, `${p}.kind.at`, true) };
    return {
      type: 'schedule', kind,
      not_before: msOf(m.notBefore, `${p}.not_before`, false),
      not_after: msOf(m.notAfter, `${p}.not_after`, false),
    };
  }
  if (m.type === 'time_range') {
    const offset = Number(m.offset || 0);
    if (!Number.isInteger(offset)) throw fieldError(`${p}.utc_offset_minutes`, 'needs whole minutes, e.g. 60 or -300');
    return {
      type: 'time_range', start_minute: minutesOf(m.start, `${p}.start_minute`), end_minute: minutesOf(m.end, `${p}.end_minute`),
      weekdays: [...m.weekdays].sort((a, b) => a - b), utc_offset_minutes: offset,
    };
  }
  const c = {
    type: 'device', source: { kind: m.sourceKind, id: m.sourceId }, data: m.data, key: m.key.trim(),
    operator: m.operator, value: parseValue(m.valueText, m.data),
  };
  if (String(m.duration).trim() !== '') c.duration_secs = Number(m.duration);
  return c;
}

function actionModel(a) {
  return {
    type: a.type,
    targetId: a.target && a.target.kind === 'device' ? a.target.id : '',
    method: a.method || '', paramsText: a.params === undefined || a.params === null ? '' : JSON.stringify(a.params),
    valuesText: a.values ? JSON.stringify(a.values) : '',
    severity: a.severity || 'major', title: a.title || '', description: a.description || '', channels: a.channels || [],
    channel: a.channel || '', subject: a.subject || '', body: a.body || '', scene: a.scene || '',
  };
}

function actionOf(m, i) {
  const target = m.targetId ? { kind: 'device', id: m.targetId } : { kind: 'triggering_device' };
  const path = `actions[${i}]`;
  switch (m.type) {
    case 'command': return { type: 'command', target, method: m.method.trim(), params: m.paramsText.trim() ? parseJson(m.paramsText, `${path}.params`) : null };
    case 'set_attributes':
    case 'telemetry_control': return { type: m.type, target, values: parseJson(m.valuesText, `${path}.values`) };
    case 'raise_alarm': {
      const a = { type: 'raise_alarm', severity: m.severity, title: m.title, channels: m.channels };
      if (m.description.trim()) a.description = m.description.trim();
      return a;
    }
    case 'clear_alarm': return { type: 'clear_alarm' };
    case 'notify': return { type: 'notify', channel: m.channel, subject: m.subject, body: m.body };
    case 'run_scene': return { type: 'run_scene', scene: m.scene };
    default: throw new Error(`unknown action type ${m.type}`);
  }
}

/** `trigger_groups[0].conditions[1].value` → `condition 2 of group 1: value`. */
function humanField(path) {
  const m = path.match(/^trigger_groups\[(\d+)\](?:\.conditions(?:\[(\d+)\])?)?\.?(.*)$/);
  if (m) {
    const where = m[2] !== undefined ? `Condition ${Number(m[2]) + 1} of group ${Number(m[1]) + 1}` : `Group ${Number(m[1]) + 1}`;
    return m[3] ? `${where}, ${m[3].replace(/_/g, ' ')}` : where;
  }
  const a = path.match(/^actions\[(\d+)\]\.?(.*)$/);
  if (a) return a[2] ? `Action ${Number(a[1]) + 1}, ${a[2].replace(/_/g, ' ')}` : `Action ${Number(a[1]) + 1}`;
  const plain = path.replace(/_/g, ' ');
  return plain.charAt(0).toUpperCase() + plain.slice(1);
}

/** Marks the input named by `path` (or the closest enclosing one) and puts the message next to it. */
function showFieldError(form, err) {
  for (const el of form.querySelectorAll('.field-error')) el.remove();
  for (const el of form.querySelectorAll('[aria-invalid]')) { el.removeAttribute('aria-invalid'); el.removeAttribute('aria-describedby'); }
  if (!err || !err.field) return;
  let path = err.field;
  let el = null;
  while (path && !(el = form.querySelector(`[name="${CSS.escape(path)}"], [data-path="${CSS.escape(path)}"]`))) {
    const cut = Math.max(path.lastIndexOf('.'), path.lastIndexOf('['));
    path = cut > 0 ? path.slice(0, cut) : '';
  }
  if (!el) return;
  const reason = err.message.replace(/^invalid [^:]+: /, '');
  const msg = h('p', { class: 'field-error', id: `err-${Math.random().toString(36).slice(2)}` }, reason);
  el.setAttribute('aria-invalid', 'true');
  el.setAttribute('aria-describedby', msg.id);
  (el.closest('label') || el).append(msg);
  if (el.focus) el.focus();
}

/** The editor of a list of actions (rules and scenes share it). */
function actionEditor(actions, ctx, rerender) {
  const devices = [['', ctx.forScene ? 'The triggering device (does nothing in a scene)' : 'The device that triggered the rule'],
    ...ctx.devices.map(d => [d.id, `${d.name}${d.device_number ? ` (${d.device_number})` : ''}`])];
  const rows = actions.map((m, i) => {
    const p = `actions[${i}]`;
    const set = k => e => { m[k] = e.target.value; };
    const fields = [];
    const valued = m.type === 'set_attributes' || m.type === 'telemetry_control';
    if (m.type === 'command' || valued) {
      fields.push(field('Device', select(`${p}.target`, devices, m.targetId, v => { m.targetId = v; })));
    }
    if (m.type === 'command') {
      fields.push(field('Method', h('input', { name: `${p}.method`, value: m.method, required: true, oninput: set('method') })));
      fields.push(field('Params (JSON)', h('textarea', { name: `${p}.params`, rows: 2, placeholder: '{"delay": 5}', oninput: set('paramsText') }, m.paramsText)));
    } else if (valued) {
      fields.push(field('Values (JSON object)', h('textarea', { name: `${p}.values`, rows: 2, placeholder: '{"interval": 15}', oninput: set('valuesText') }, m.valuesText)));
    } else if (m.type === 'raise_alarm') {
      fields.push(field('Severity', select(`${p}.severity`, SEVERITIES.map(s => [s, s]), m.severity, v => { m.severity = v; })));
      fields.push(field('Title', h('input', { name: `${p}.title`, value: m.title, required: true, oninput: set('title') })));
      fields.push(field('Description', h('input', { name: `${p}.description`, value: m.description, oninput: set('description') })));
      fields.push(h('fieldset', { class: 'channels', 'data-path': `${p}.channels` },
        h('legend', {}, 'Notify channels'),
        ctx.channels.length
          ? ctx.channels.map((c, ci) => h('label', { class: 'check' },
            h('input', {
              type: 'checkbox', name: `${p}.channel-option`, value: c.id, checked: m.channels.includes(c.id),
              onchange: e => { m.channels = e.target.checked ? [...m.channels, c.id] : m.channels.filter(x => x !== c.id); },
            }), `${c.name} (${c.type})`))
          : h('span', { class: 'muted' }, 'No notification channels.')));
    } else if (m.type === 'notify') {
      fields.push(field('Channel', select(`${p}.channel`, [['', '— pick a channel —'], ...ctx.channels.map(c => [c.id, `${c.name} (${c.type})`])], m.channel, v => { m.channel = v; })));
      fields.push(field('Subject', h('input', { name: `${p}.subject`, value: m.subject, required: true, oninput: set('subject') })));
      fields.push(field('Body', h('textarea', { name: `${p}.body`, rows: 2, oninput: set('body') }, m.body)));
    } else if (m.type === 'run_scene') {
      const scenes = ctx.scenes.filter(s => s.id !== ctx.selfScene);
      fields.push(field('Scene', select(`${p}.scene`, [['', '— pick a scene —'], ...scenes.map(s => [s.id, s.name])], m.scene, v => { m.scene = v; })));
    } else if (m.type === 'clear_alarm') {
      fields.push(h('p', { class: 'muted' }, ctx.forScene ? 'Does nothing in a scene.' : 'Clears the open alarm this rule raised for the device.'));
    }
    return h('fieldset', { class: 'row', 'data-path': p },
      h('legend', {}, `Action ${i + 1}`),
      h('div', { class: 'row-fields' },
        field('Type', select(`${p}.type`, ACTION_TYPES, m.type, v => { m.type = v; rerender(`[name="${p}.type"]`); })),
        fields),
      h('button', {
        type: 'button', class: 'danger', 'aria-label': `Remove action ${i + 1}`,
        onclick: () => { actions.splice(i, 1); rerender('#add-action'); },
      }, 'Remove'));
  });
  return h('div', { 'data-path': 'actions' }, rows,
    h('button', {
      type: 'button', id: 'add-action',
      onclick: () => { actions.push(actionModel({ type: ctx.forScene ? 'command' : 'raise_alarm' })); rerender(`[name="actions[${actions.length - 1}].type"]`); },
    }, '+ Add action'));
}

function triggerEditor(groups, ctx, rerender) {
  const sources = {
    device: ctx.devices.map(d => [d.id, `${d.name}${d.device_number ? ` (${d.device_number})` : ''}`]),
    profile: ctx.profiles.map(p => [p.id, p.name]),
  };
  const firstDevice = sources.device[0] ? sources.device[0][0] : '';
  const newCondition = () => newConditionOf('device', firstDevice);
  return h('div', { 'data-path': 'trigger_groups' },
    groups.map((g, gi) => h('fieldset', { class: 'group', 'data-path': `trigger_groups[${gi}].conditions` },
      h('legend', {}, gi === 0 ? 'When all of these hold' : 'Or when all of these hold'),
      g.conditions.map((m, ci) => {
        const p = `trigger_groups[${gi}].conditions[${ci}]`;
        const remove = h('button', {
          type: 'button', class: 'danger', 'aria-label': `Remove condition ${ci + 1} of group ${gi + 1}`,
          onclick: () => {
            g.conditions.splice(ci, 1);
            if (!g.conditions.length && groups.length > 1) groups.splice(gi, 1);
            rerender('#add-group');
          },
        }, 'Remove');
        if (m.type === 'other') {
          return h('div', { class: 'row', 'data-path': p },
            h('p', {}, `${m.raw.type.replace('_', ' ')} condition (kept as is; change it through the API): `,
              h('code', {}, JSON.stringify(m.raw))), remove);
        }
        const typeField = field('Condition', select(`${p}.type`, CONDITION_TYPES, m.type, v => {
          g.conditions[ci] = newConditionOf(v, firstDevice);
          rerender(`[name="${p}.type"]`);
        }));
        const set = k => e => { m[k] = e.target.value; };
        if (m.type === 'schedule') {
          const kindFields = m.kindType === 'cron'
            ? field('Cron expression', h('input', { name: `${p}.kind.expression`, value: m.expression, size: 22, placeholder: '0 0 3 * * *', oninput: set('expression') }),
              'sec min hour day month weekday, UTC')
            : m.kindType === 'periodic'
              ? field('Every (s)', h('input', { name: `${p}.kind.interval_secs`, type: 'number', min: 1, step: 1, value: m.interval, size: 8, oninput: set('interval') }))
              : field('At', h('input', { name: `${p}.kind.at`, type: 'datetime-local', value: m.at, oninput: set('at') }));
          return h('div', { class: 'row', 'data-path': p },
            h('div', { class: 'row-fields' }, typeField,
              field('Fires', select(`${p}.kind.type`, SCHEDULE_KINDS, m.kindType, v => { m.kindType = v; rerender(`[name="${p}.kind.type"]`); })),
              kindFields,
              field('Not before', h('input', { name: `${p}.not_before`, type: 'datetime-local', value: m.notBefore, oninput: set('notBefore') }), 'optional'),
              field('Not after', h('input', { name: `${p}.not_after`, type: 'datetime-local', value: m.notAfter, oninput: set('notAfter') }), 'optional')),
            remove);
        }
        if (m.type === 'time_range') {
          return h('div', { class: 'row', 'data-path': p },
            h('div', { class: 'row-fields' }, typeField,
              field('From', h('input', { name: `${p}.start_minute`, type: 'time', value: m.start, oninput: set('start') })),
              field('Until', h('input', { name: `${p}.end_minute`, type: 'time', value: m.end, oninput: set('end') }), 'may cross midnight'),
              field('UTC offset (min)', h('input', { name: `${p}.utc_offset_minutes`, type: 'number', min: -840, max: 840, step: 1, value: m.offset, size: 6, oninput: set('offset') }),
                'e.g. 60 for UTC+01:00'),
              h('fieldset', { class: 'channels', 'data-path': `${p}.weekdays` },
                h('legend', {}, 'Days (none = every day)'),
                WEEKDAYS.map((d, i) => h('label', { class: 'check' },
                  h('input', {
                    type: 'checkbox', name: `${p}.weekday`, value: i + 1, checked: m.weekdays.includes(i + 1),
                    onchange: e => { m.weekdays = e.target.checked ? [...m.weekdays, i + 1] : m.weekdays.filter(x => x !== i + 1); },
                  }), d)))),
            remove);
        }
        let options = sources[m.sourceKind];
        if (m.sourceId && !options.some(([id]) => id === m.sourceId)) options = [[m.sourceId, m.sourceId], ...options];
        if (!options.length) options = [['', `— no ${m.sourceKind}s —`]];
        const hint = VALUE_HINT[m.operator] || VALUE_HINT[m.data] || 'a number, text, true or false';
        return h('div', { class: 'row', 'data-path': p },
          h('div', { class: 'row-fields' }, typeField,
            field('Source', select(`${p}.source.kind`, [['device', 'Device'], ['profile', 'Profile (each device)']], m.sourceKind,
              v => { m.sourceKind = v; m.sourceId = sources[v][0] ? sources[v][0][0] : ''; rerender(`[name="${p}.source"]`); })),
            field(m.sourceKind === 'device' ? 'Device' : 'Profile', select(`${p}.source`, options, m.sourceId, v => { m.sourceId = v; })),
            field('Data', select(`${p}.data`, DATA_KINDS, m.data, v => { m.data = v; rerender(`[name="${p}.data"]`); })),
            m.data === 'status' ? null
              : field(m.data === 'event' ? 'Event method' : 'Key', h('input', { name: `${p}.key`, value: m.key, size: 12, list: 'template-keys', oninput: set('key') })),
            field('Operator', select(`${p}.operator`, OPERATORS, m.operator, v => { m.operator = v; rerender(`[name="${p}.operator"]`); })),
            field('Value', h('input', { name: `${p}.value`, value: m.valueText, size: 14, placeholder: hint, title: hint, oninput: set('valueText') })),
            field('For (s)', h('input', { name: `${p}.duration_secs`, type: 'number', min: 0, step: 1, value: m.duration, size: 6, placeholder: 'at once', oninput: set('duration') }))),
          remove);
      }),
      h('button', { type: 'button', class: 'add-condition', onclick: () => { g.conditions.push(newCondition()); rerender(`[name="trigger_groups[${gi}].conditions[${g.conditions.length - 1}].key"]`); } }, '+ Add condition'))),
    h('button', { type: 'button', id: 'add-group', onclick: () => { groups.push({ conditions: [newCondition()] }); rerender(`[name="trigger_groups[${groups.length - 1}].conditions[0].key"]`); } }, '+ Add “or” group'),
    // The keys the tenant's device templates define, offered in every key field.
    h('datalist', { id: 'template-keys' }, (ctx.templateKeys || []).map(k => h('option', { value: k }))));
}

async function editorContext(signal, forScene) {
  const empty = { items: [] };
  const [devices, profiles, channels, scenes, templates] = await Promise.all([
    get('/devices?page_size=1000', { signal }),
    forScene ? empty : get('/profiles?page_size=200', { signal }).catch(() => empty),
    get('/notification-channels?page_size=200', { signal }).catch(() => empty),
    get('/scenes?page_size=200', { signal }).catch(() => empty),
    forScene ? empty : get('/templates?page_size=200', { signal }).catch(() => empty),
  ]);
  const templateKeys = [...new Set(templates.items.flatMap(t => [...t.telemetry, ...t.attributes, ...t.events].map(d => d.identifier)))].sort();
  return { devices: devices.items, profiles: profiles.items, channels: channels.items, scenes: scenes.items, templateKeys, forScene };
}

/** `#/rules/new`, `#/rules/{id}`, `#/rules/scenes/new`, `#/rules/scenes/{id}`. */
async function editor({ main, params, signal, navigate }, kind) {
  const id = params[0];
  const forScene = kind === 'scene';
  const [ctx, existing] = await Promise.all([
    editorContext(signal, forScene),
    id ? get(`/${kind}s/${id}`, { signal }) : null,
  ]);
  ctx.selfScene = forScene ? id : null;
  const model = {
    name: existing ? existing.name : '',
    description: existing && existing.description ? existing.description : '',
    enabled: existing ? existing.enabled : true,
    groups: existing && existing.trigger_groups
      ? existing.trigger_groups.map(g => ({ conditions: g.conditions.map(conditionModel) }))
      : [{ conditions: [] }],
    actions: existing ? existing.actions.map(actionModel) : [actionModel({ type: forScene ? 'command' : 'raise_alarm' })],
  };
  if (!forScene && !existing) {
    model.groups[0].conditions.push({
      type: 'device', sourceKind: 'device', sourceId: ctx.devices[0] ? ctx.devices[0].id : '',
      data: 'telemetry', key: '', operator: '>', valueText: '', duration: '',
    });
  }
  const label = forScene ? 'scene' : 'rule';
  const title = existing ? `Edit ${label} “${existing.name}”` : `New ${label}`;
  const slot = errorSlot();
  const triggersBox = h('div', { id: 'rule-triggers' });
  const actionsBox = h('div', { id: `${label}-actions` });
  const rerender = focus => {
    if (!forScene) clear(triggersBox, triggerEditor(model.groups, ctx, rerender));
    clear(actionsBox, actionEditor(model.actions, ctx, rerender));
    if (focus) { const el = form.querySelector(focus); if (el) el.focus(); }
  };
  const form = h('form', { class: 'editor', id: `${label}-form`, novalidate: true },
    h('div', { class: 'row-fields' },
      field('Name', h('input', { name: 'name', value: model.name, required: true, maxlength: 255, oninput: e => { model.name = e.target.value; } })),
      forScene ? null : h('label', { class: 'check' },
        h('input', { type: 'checkbox', name: 'enabled', checked: model.enabled, onchange: e => { model.enabled = e.target.checked; } }), 'Enabled')),
    field('Description', h('input', { name: 'description', value: model.description, oninput: e => { model.description = e.target.value; } })),
    forScene ? null : h('section', { 'aria-labelledby': 'triggers-title' }, h('h2', { id: 'triggers-title' }, 'When'), triggersBox),
    h('section', { 'aria-labelledby': 'actions-title' }, h('h2', { id: 'actions-title' }, 'Then'), actionsBox),
    slot,
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'primary' }, existing ? 'Save' : `Create ${label}`),
      h('a', { class: 'button', href: '#/rules' }, 'Cancel'),
      existing ? h('button', {
        type: 'button', class: 'danger', id: `delete-${label}`,
        onclick: async () => {
          if (!window.confirm(`Delete ${label} “${existing.name}”? This cannot be undone.`)) return;
          try {
            await api('DELETE', `/${kind}s/${id}`);
            announce(`${forScene ? 'Scene' : 'Rule'} ${existing.name} deleted`);
            navigate('/rules');
          } catch (e) { showError(slot, e); }
        },
      }, `Delete ${label}`) : null));
  rerender();
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    const buttons = form.querySelectorAll('button');
    showError(slot, null);
    showFieldError(form, null);
    buttons.forEach(b => { b.disabled = true; });
    try {
      const body = {
        name: model.name, description: model.description,
        actions: model.actions.map(actionOf),
      };
      if (!forScene) {
        body.enabled = model.enabled;
        body.trigger_groups = model.groups.map((g, gi) => ({
          conditions: g.conditions.map((c, ci) => conditionOf(c, `trigger_groups[${gi}].conditions[${ci}]`)),
        }));
      }
      const saved = existing ? await api('PUT', `/${kind}s/${id}`, body) : await api('POST', `/${kind}s`, body);
      announce(`${forScene ? 'Scene' : 'Rule'} ${saved.name} saved`);
      navigate('/rules');
    } catch (e) {
      showError(slot, e);
      if (e.field && e.message.startsWith(`invalid ${e.field}: `)) {
        slot.textContent = `${humanField(e.field)}: ${e.message.slice(`invalid ${e.field}: `.length)}`;
      }
      showFieldError(form, e);
    } finally {
      buttons.forEach(b => { b.disabled = false; });
    }
  });
  clear(main, h('h1', {}, title), h('p', {}, h('a', { href: '#/rules' }, '← Rules & scenes')),
    h('section', { class: 'panel' }, form));
}

export const ruleEditor = opts => editor(opts, 'rule');
export const sceneEditor = opts => editor(opts, 'scene');

export async function admin({ main, me, query, signal, navigate }) {
  const sections = [];
  if (me.role === 'SYS_ADMIN') {
    const tenants = await get('/tenants?page_size=200', { signal }).catch(e => e);
    sections.push(tenantsSection({ me, signal, initial: tenants }));
  }
  const page = Math.max(1, Number(query.get('page')) || 1);
  const [users, roles] = await Promise.all([
    get(`/users${qs({ page, page_size: 20 })}`, { signal }).catch(e => e),
    get('/roles?page_size=200', { signal }).catch(e => e),
  ]);
  const usersBox = usersSection({ me, query, signal, navigate, users, roles });
  sections.push(rolesSection({ signal, initial: roles }));
  clear(main, h('h1', {}, 'Administration'),
    h('p', {}, h('a', { href: '#/admin/api-keys', id: 'api-keys-link' }, 'API keys'), ' · ',
      h('a', { href: '#/admin/audit', id: 'audit-link' }, 'Audit log'), ' · ',
      h('a', { href: '#/devices/profiles' }, 'Device profiles'), ' · ',
      h('a', { href: '#/devices/groups' }, 'Device groups')),
    usersBox, h('div', { class: 'grid' }, sections));
}
