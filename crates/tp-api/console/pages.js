// Pages other than the device detail: sign-in, dashboard, devices, alarms,
// rules & scenes, administration. All data comes from the public REST API.

import { api, get, login as signIn, qs } from './api.js';
import {
  h, clear, fmtTime, fmtValue, badge, onlineBadge, errorSlot, showError, field, table,
  onSubmit, announce, pager,
} from './ui.js';

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

export async function dashboard({ main, signal }) {
  const [devices, counts, alarms] = await Promise.all([
    get('/devices?page_size=1000', { signal }),
    get('/alarms/counts', { signal }).catch(e => e),
    get('/alarms?status=active,acknowledged&page_size=5', { signal }).catch(e => e),
  ]);
  const online = devices.items.filter(d => d.online).length;
  const seen = devices.items.length;
  const ratio = seen ? Math.round(online / seen * 100) : 0;
  const rate = h('div', { class: 'big', id: 'message-rate' }, '…');
  const rateNote = h('div', { class: 'muted' }, 'measuring (whole node)');
  const activeAlarms = counts instanceof Error ? '—' : String(counts.active);
  clear(main,
    h('h1', {}, 'Dashboard'),
    h('div', { class: 'cards' },
      card('Devices', String(devices.total), null, 'card-devices'),
      card('Online', `${online}`, `${ratio}% of ${seen}${devices.total > seen ? ' (first 1000)' : ''}`, 'card-online'),
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

export async function devices({ main, query, signal, navigate }) {
  const search = query.get('search') || '';
  const page = Math.max(1, Number(query.get('page')) || 1);
  const list = await get(`/devices${qs({ search, page, page_size: PAGE_SIZE })}`, { signal });

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
    slot,
    h('button', { type: 'submit', class: 'primary' }, 'Create device'));
  onSubmit(createForm, slot, async data => {
    const body = { name: data.get('name') };
    for (const k of ['device_number', 'label']) if (data.get(k).trim()) body[k] = data.get(k).trim();
    const d = await api('POST', '/devices', body);
    createForm.reset();
    clear(created, h('div', { class: 'notice', role: 'status' },
      h('p', {}, h('strong', {}, `Device “${d.name}” created. `), 'Copy its MQTT credentials now: the password is shown only once.'),
      h('table', {}, h('tbody', {},
        h('tr', {}, h('th', { scope: 'row' }, 'Device number'), h('td', {}, h('code', {}, d.device_number))),
        h('tr', {}, h('th', { scope: 'row' }, 'Username'), h('td', {}, h('code', { id: 'new-username' }, d.credentials.username))),
        h('tr', {}, h('th', { scope: 'row' }, 'Password'), h('td', {}, h('code', { id: 'new-password' }, d.credentials.password))))),
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
    if (c.type === 'schedule') return `schedule (${c.kind && c.kind.type})`;
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

  function renderRules(l) {
    if (l instanceof Error) return clear(rulesBox, h('div', { class: 'error', role: 'alert' }, l.message));
    clear(rulesBox, table('Rules', [
      ['Name', r => r.name],
      ['When', r => summarizeTriggers(r.trigger_groups)],
      ['Then', r => summarizeActions(r.actions)],
      ['State', r => badge(r.enabled ? 'enabled' : 'disabled', r.enabled ? 'on' : 'off')],
      ['Actions', r => h('button', {
        type: 'button', 'aria-label': `${r.enabled ? 'Disable' : 'Enable'} rule ${r.name}`,
        onclick: async () => {
          showError(slot, null);
          try {
            await api('PUT', `/rules/${r.id}`, { enabled: !r.enabled });
            renderRules(await get('/rules?page_size=200', { signal }));
          } catch (e) { showError(slot, e); }
        },
      }, r.enabled ? 'Disable' : 'Enable')],
    ], l.items, 'No rules yet (create them through the API: POST /api/v1/rules).'));
  }
  function renderScenes(l) {
    if (l instanceof Error) return clear(scenesBox, h('div', { class: 'error', role: 'alert' }, l.message));
    clear(scenesBox, table('Scenes', [
      ['Name', s => s.name],
      ['Description', s => s.description || ''],
      ['Actions', s => summarizeActions(s.actions)],
      ['Run', s => h('button', {
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
      }, 'Run')],
    ], l.items, 'No scenes yet.'));
  }
  renderRules(ruleList);
  renderScenes(sceneList);
  clear(main, h('h1', {}, 'Rules & scenes'), slot,
    h('section', { class: 'panel' }, rulesBox),
    h('section', { class: 'panel' }, scenesBox, outcome));
}

export async function admin({ main, me, signal }) {
  const sections = [];
  const refresh = () => admin({ main, me, signal });
  if (me.role === 'SYS_ADMIN') {
    const tenants = await get('/tenants?page_size=200', { signal }).catch(e => e);
    const slot = errorSlot();
    const form = h('form', { class: 'inline' },
      field('New tenant', h('input', { name: 'name', required: true, maxlength: 255 })),
      h('button', { type: 'submit' }, 'Create tenant'));
    onSubmit(form, slot, async data => { await api('POST', '/tenants', { name: data.get('name') }); await refresh(); });
    sections.push(h('section', { class: 'panel', 'aria-labelledby': 'tenants' },
      h('h2', { id: 'tenants' }, 'Tenants'),
      tenants instanceof Error ? h('div', { class: 'error', role: 'alert' }, tenants.message)
        : table('Tenants', [['Name', t => t.name], ['Id', t => h('code', {}, t.id)], ['Created', t => fmtTime(t.created_at)]], tenants.items),
      form, slot));
  }
  const [users, roles] = await Promise.all([
    get('/users?page_size=200', { signal }).catch(e => e),
    get('/roles?page_size=200', { signal }).catch(e => e),
  ]);
  const roleNames = new Map(roles instanceof Error ? [] : roles.items.map(r => [r.id, r.name]));
  const userSlot = errorSlot();
  const roleSelect = h('select', { name: 'role' },
    h('option', { value: 'TENANT_USER' }, 'Tenant user'), h('option', { value: 'TENANT_ADMIN' }, 'Tenant admin'));
  const userForm = h('form', { class: 'stack' },
    field('Email', h('input', { name: 'email', type: 'email', required: true })),
    field('Name', h('input', { name: 'name', required: true })),
    field('Password', h('input', { name: 'password', type: 'password', required: true, minlength: 8, autocomplete: 'new-password' })),
    field('Role', roleSelect), userSlot,
    h('button', { type: 'submit' }, 'Add user'));
  onSubmit(userForm, userSlot, async data => {
    await api('POST', '/users', { email: data.get('email'), name: data.get('name'), password: data.get('password'), role: data.get('role') });
    await refresh();
  });
  const usersSection = (h('section', { class: 'panel', 'aria-labelledby': 'users' },
    h('h2', { id: 'users' }, 'Users'),
    users instanceof Error ? h('div', { class: 'error', role: 'alert' }, users.message)
      : table('Users of this tenant', [['Name', u => u.name], ['Email', u => u.email], ['Role', u => u.role],
        ['Custom role', u => (u.role_id ? roleNames.get(u.role_id) || u.role_id : '')], ['Created', u => fmtTime(u.created_at)]], users.items),
    h('h3', {}, 'Add a user'), userForm));
  sections.push(h('section', { class: 'panel', 'aria-labelledby': 'roles' },
    h('h2', { id: 'roles' }, 'Roles'),
    roles instanceof Error ? h('div', { class: 'error', role: 'alert' }, roles.message)
      : table('Custom roles', [['Name', r => r.name], ['Permissions', r => r.permissions.join(', ')], ['Created', r => fmtTime(r.created_at)]],
        roles.items, 'No custom roles (built-in: SYS_ADMIN, TENANT_ADMIN, TENANT_USER).')));
  clear(main, h('h1', {}, 'Administration'), usersSection, h('div', { class: 'grid' }, sections));
}
