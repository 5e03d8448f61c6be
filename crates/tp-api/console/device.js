// The device page: identity and state, latest values, the live chart (Server-Sent
// Events, no polling), history with range and aggregation, attributes, events, and
// the command / attribute-set forms with the downlink log.

import { api, get, qs, streamTelemetry, download } from './api.js';
import {
  h, clear, fmtTime, fmtValue, badge, onlineBadge, errorSlot, field, table, onSubmit,
  parseJson, announce,
} from './ui.js';
import { LineChart, numeric } from './chart.js';
import { statusHistory } from './manage.js';
import { thingModelPanel, withUnit } from './templates.js';

const RANGES = [['15m', 15 * 60e3], ['1h', 3600e3], ['6h', 6 * 3600e3], ['24h', 24 * 3600e3], ['7d', 7 * 24 * 3600e3], ['30d', 30 * 24 * 3600e3]];
const AGGS = [['', 'Raw values'], ['avg', 'Average'], ['min', 'Minimum'], ['max', 'Maximum'], ['sum', 'Sum'], ['count', 'Count']];
/** Buckets per history chart when aggregating: enough for a laptop-wide line. */
const BUCKETS = 120;

export async function devicePage({ main, params: [id], signal, navigate }) {
  const [device, latest, attrs] = await Promise.all([
    get(`/devices/${id}`, { signal }),
    get(`/devices/${id}/telemetry/latest`, { signal }),
    get(`/devices/${id}/attributes`, { signal }),
  ]);
  // The thing model of the device's template (units, command forms), if any.
  let loadLogLater = async () => {};
  const thing = await thingModelPanel(id, signal, () => loadLogLater());
  const defs = new Map(((thing.model && thing.model.telemetry) || []).map(v => [v.key, v.definition]));

  // Latest values, kept current by the live stream.
  const latestMap = new Map(latest.items.map(i => [i.key, i]));
  const latestBox = h('div', { id: 'latest-values' });
  const renderLatest = () => clear(latestBox, table('Latest values', [
    ['Key', i => h('code', {}, i.key)], ['Value', i => withUnit(i.value, defs.get(i.key))], ['Time', i => fmtTime(i.ts)],
  ], [...latestMap.values()].sort((a, b) => a.key.localeCompare(b.key)), 'No telemetry yet.'));
  renderLatest();

  // A device that publishes is online: the badge follows the live stream.
  const stateBadge = h('span', { id: 'device-state' }, onlineBadge(device.online));
  const lastSeen = h('span', {}, fmtTime(device.last_seen));

  // Live chart: only what arrives while the page is open (bounded per key).
  const live = new LineChart({ id: 'live-chart', title: `Live telemetry of ${device.name}`, maxPoints: 300, empty: 'Waiting for the device to publish…' });
  const streamState = h('p', { class: 'stream-state muted', id: 'stream-state', 'aria-live': 'polite' }, 'Connecting…');
  live.el.dataset.stream = 'connecting';
  streamTelemetry(id, {
    signal,
    onState: (state, message) => {
      live.el.dataset.stream = state;
      streamState.textContent = state === 'open' ? 'Live: connected.' : state === 'connecting' ? 'Connecting…' : `Live stream: ${message}`;
      streamState.className = `stream-state ${state === 'error' ? 'error' : 'muted'}`;
    },
    onSample: sample => {
      for (const item of sample.items) {
        live.push(item.key, item.ts, item.value);
        latestMap.set(item.key, item);
      }
      renderLatest();
      clear(stateBadge, onlineBadge(true));
      lastSeen.textContent = fmtTime(sample.received_at);
    },
    onLagged: ({ skipped }) => { streamState.textContent = `Live: connected (skipped ${skipped} messages to keep up).`; },
  });

  // History chart with range and aggregation pickers.
  const keys = [...latestMap.values()].filter(i => numeric(i.value) !== null).map(i => i.key).sort();
  const history = new LineChart({ id: 'history-chart', title: `Telemetry history of ${device.name}`, empty: 'No values in this range.' });
  const histSlot = errorSlot();
  const keySelect = h('select', { name: 'keys' }, h('option', { value: '' }, 'All numeric keys'),
    keys.map(k => h('option', { value: k }, k)));
  const rangeSelect = h('select', { name: 'range' }, RANGES.map(([label], i) => h('option', { value: label, selected: i === 1 }, label)));
  const aggSelect = h('select', { name: 'agg' }, AGGS.map(([v, l]) => h('option', { value: v }, l)));
  const histForm = h('form', { class: 'inline', id: 'history-form' },
    field('Keys', keySelect), field('Range', rangeSelect), field('Aggregation', aggSelect),
    h('button', { type: 'submit' }, 'Show'));
  onSubmit(histForm, histSlot, async data => {
    const span = RANGES.find(([l]) => l === data.get('range'))[1];
    const end = Date.now() + 1;
    const start = end - span;
    const agg = data.get('agg');
    // No key chosen: every key (non-numeric ones are not drawn).
    const q = { keys: data.get('keys'), start, end };
    if (agg) Object.assign(q, { agg, interval: Math.max(1000, Math.ceil(span / BUCKETS)) });
    else q.limit = 5000;
    history.setRows((await get(`/devices/${id}/telemetry${qs(q)}`, { signal })).items);
  });

  // Export: the history of chosen keys and range as CSV or JSON lines (streamed by
  // the server, whatever the range).
  const allKeys = [...latestMap.keys()].sort();
  const exportSlot = errorSlot();
  const exportDone = h('p', { class: 'muted', id: 'export-done', 'aria-live': 'polite' });
  const exportForm = h('form', { class: 'inline', id: 'export-form' },
    h('fieldset', {}, h('legend', {}, 'Keys (none: all)'),
      allKeys.length ? allKeys.map(k => h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'keys', value: k }), k))
        : h('span', { class: 'muted' }, 'No telemetry yet.')),
    field('Range', h('select', { name: 'range' }, RANGES.map(([label], i) => h('option', { value: label, selected: i === 3 }, label)))),
    field('Format', h('select', { name: 'format' }, h('option', { value: 'csv' }, 'CSV'), h('option', { value: 'ndjson' }, 'JSON lines'))),
    h('button', { type: 'submit' }, 'Download'));
  onSubmit(exportForm, exportSlot, async data => {
    const span = RANGES.find(([l]) => l === data.get('range'))[1];
    const end = Date.now() + 1;
    const format = data.get('format');
    const q = { keys: data.getAll('keys').join(','), start: end - span, end, format };
    const bytes = await download(`/devices/${id}/telemetry/export${qs(q)}`, `${device.device_number}-${data.get('range')}.${format === 'csv' ? 'csv' : 'ndjson'}`);
    exportDone.textContent = `Downloaded ${bytes} bytes.`;
  });

  // Commands and attribute sets, with the downlink log.
  const logBox = h('div', { id: 'command-log' });
  const loadLog = async () => {
    const log = await get(`/devices/${id}/commands?page_size=20`, { signal });
    clear(logBox, table('Downlink log (newest first)', [
      ['Sent', r => fmtTime(r.created_at)],
      ['Kind', r => r.kind],
      ['Message', r => h('code', {}, r.message_id)],
      ['Payload', r => h('code', { class: 'payload' }, fmtValue(r.payload))],
      ['Status', r => badge(r.status)],
      ['Response', r => (r.response === null ? '—' : h('code', {}, fmtValue(r.response)))],
    ], log.items, 'Nothing sent yet.'));
  };
  loadLogLater = loadLog;
  const cmdSlot = errorSlot();
  const cmdForm = h('form', { class: 'stack', id: 'command-form' },
    field('Method', h('input', { name: 'method', required: true, maxlength: 255, placeholder: 'e.g. reboot' })),
    field('Parameters (JSON object)', h('textarea', { name: 'params', rows: 3 }, '{}')),
    cmdSlot, h('button', { type: 'submit', class: 'primary' }, 'Send command'));
  onSubmit(cmdForm, cmdSlot, async data => {
    const params = parseJson(data.get('params'), 'params');
    const row = await api('POST', `/devices/${id}/commands`, { method: data.get('method').trim(), params });
    announce(`Command ${row.message_id} ${row.status}`);
    await loadLog();
  });
  const attrSlot = errorSlot();
  const attrForm = h('form', { class: 'stack', id: 'attribute-form' },
    field('Attributes to set (JSON object)', h('textarea', { name: 'values', rows: 3 }, '{"interval": 30}')),
    attrSlot, h('button', { type: 'submit' }, 'Set attributes'));
  onSubmit(attrForm, attrSlot, async data => {
    const values = parseJson(data.get('values'), 'values');
    await api('PUT', `/devices/${id}/attributes`, { values });
    announce('Attribute set sent');
    await loadLog();
  });

  // Events of the last 24 hours.
  const events = await get(`/devices/${id}/events${qs({ limit: 20 })}`, { signal }).catch(e => e);

  const deleteSlot = errorSlot();
  const deleteButton = h('button', {
    type: 'button', class: 'danger',
    onclick: async () => {
      if (!window.confirm(`Delete ${device.name}? Its credentials stop working.`)) return;
      try { await api('DELETE', `/devices/${id}`); navigate('/devices'); } catch (e) { deleteSlot.textContent = e.message; }
    },
  }, 'Delete device');

  clear(main,
    h('p', {}, h('a', { href: '#/devices' }, '← Devices')),
    h('h1', {}, device.name, ' ', stateBadge),
    h('section', { class: 'panel' },
      h('dl', { class: 'facts' },
        [['Device number', h('code', {}, device.device_number)], ['Id', h('code', {}, device.id)],
          ['Voucher type', device.credentials ? device.credentials.voucher_type : '—'],
          ['MQTT username', device.credentials && device.credentials.username ? h('code', {}, device.credentials.username) : 'access token (shown only when issued)'],
          ['Profile', device.profile_id ? h('code', { id: 'device-profile' }, device.profile_id) : 'none'],
          ['Label', device.label || '—'], ['Enabled', device.enabled ? 'yes' : 'no'],
          ['Last seen', lastSeen], ['Created', fmtTime(device.created_at)]]
          .map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))))),
    h('div', { class: 'grid' },
      h('section', { class: 'panel', 'aria-labelledby': 'live-title' }, h('h2', { id: 'live-title' }, 'Live telemetry'), live.el, streamState),
      h('section', { class: 'panel' }, latestBox)),
    h('section', { class: 'panel', 'aria-labelledby': 'history-title' },
      h('h2', { id: 'history-title' }, 'History'), histForm, histSlot, history.el),
    h('section', { class: 'panel', 'aria-labelledby': 'export-title' },
      h('h2', { id: 'export-title' }, 'Export history'), exportForm, exportSlot, exportDone),
    thing.el,
    h('div', { class: 'grid' },
      h('section', { class: 'panel', 'aria-labelledby': 'cmd-title' }, h('h2', { id: 'cmd-title' }, 'Send a command'), cmdForm),
      h('section', { class: 'panel', 'aria-labelledby': 'attr-title' }, h('h2', { id: 'attr-title' }, 'Set attributes'), attrForm)),
    h('section', { class: 'panel' }, logBox),
    h('div', { class: 'grid' },
      h('section', { class: 'panel' }, table('Attributes', [
        ['Key', i => h('code', {}, i.key)], ['Value', i => fmtValue(i.value)], ['Reported', i => fmtTime(i.ts)],
      ], attrs.items, 'No attributes reported.')),
      h('section', { class: 'panel' }, events instanceof Error
        ? h('div', { class: 'error', role: 'alert' }, events.message)
        : table('Events (last 24 h)', [
          ['Time', e => fmtTime(e.ts)], ['Method', e => e.method], ['Params', e => h('code', {}, fmtValue(e.params))],
        ], events.items, 'No events in the last 24 hours.'))),
    statusHistory(id, signal),
    h('section', { class: 'panel' }, h('h2', {}, 'Danger zone'), deleteButton, deleteSlot));

  await loadLog();
  histForm.requestSubmit();
}
