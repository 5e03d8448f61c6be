// The console's shell: hash routing (deep links survive a reload), the navigation,
// the sign-in guard. Each page gets an AbortSignal that fires when the user leaves
// it, which closes its live streams and timers.

import { session, get, logout, setSignedOutHandler } from './api.js';
import { h, clear } from './ui.js';
import * as pages from './pages.js';
import { devicePage } from './device.js';
import { channelsPage } from './admin.js';
import { notificationsPage, profilesPage, groupsPage, apiKeysPage, auditPage } from './manage.js';
import { otaPage, otaTaskPage } from './ota.js';
import { templatesPage } from './templates.js';
import { scriptsPage } from './scripts.js';
import { dashboardsPage, dashboardViewPage, dashboardEditPage } from './dashboards.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
let me = null;
let current = null;

const ROUTES = [
  [/^\/$/, pages.dashboard, 'Dashboard'],
  [/^\/dashboards$/, dashboardsPage, 'Dashboards'],
  [/^\/dashboards\/([0-9a-fA-F-]{36})$/, dashboardViewPage, 'Dashboard'],
  [/^\/dashboards\/([0-9a-fA-F-]{36})\/edit$/, dashboardEditPage, 'Edit dashboard'],
  [/^\/devices$/, pages.devices, 'Devices'],
  [/^\/devices\/profiles$/, profilesPage, 'Device profiles'],
  [/^\/devices\/groups$/, groupsPage, 'Device groups'],
  [/^\/devices\/templates$/, templatesPage, 'Device templates'],
  [/^\/devices\/scripts$/, scriptsPage, 'Data scripts'],
  [/^\/devices\/([0-9a-fA-F-]{36})$/, devicePage, 'Device'],
  [/^\/alarms$/, pages.alarms, 'Alarms'],
  [/^\/rules$/, pages.rules, 'Rules & scenes'],
  [/^\/rules\/new$/, pages.ruleEditor, 'New rule'],
  [/^\/rules\/channels$/, channelsPage, 'Notification channels'],
  [/^\/rules\/notifications$/, notificationsPage, 'Notification history'],
  [/^\/rules\/scenes\/new$/, pages.sceneEditor, 'New scene'],
  [/^\/rules\/scenes\/([0-9a-fA-F-]{36})$/, pages.sceneEditor, 'Edit scene'],
  [/^\/rules\/([0-9a-fA-F-]{36})$/, pages.ruleEditor, 'Edit rule'],
  [/^\/ota$/, otaPage, 'OTA upgrades'],
  [/^\/ota\/tasks\/([0-9a-fA-F-]{36})$/, otaTaskPage, 'OTA task'],
  [/^\/admin$/, pages.admin, 'Administration'],
  [/^\/admin\/api-keys$/, apiKeysPage, 'API keys'],
  [/^\/admin\/audit$/, auditPage, 'Audit log'],
];

function parseHash() {
  const raw = location.hash.startsWith('#/') ? location.hash.slice(1) : '/';
  const i = raw.indexOf('?');
  return i < 0
    ? { path: raw, query: new URLSearchParams() }
    : { path: raw.slice(0, i), query: new URLSearchParams(raw.slice(i + 1)) };
}

/** Goes to `path` with `query` (empty values dropped). */
export function navigate(path, query = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  const target = `#${path}${s ? `?${s}` : ''}`;
  if (location.hash === target) render(); else location.hash = target;
}

const isAdmin = m => m.role === 'SYS_ADMIN' || m.role === 'TENANT_ADMIN' || m.permissions.includes('user:manage');

function renderNav(path) {
  const links = [['/', 'Home'], ['/devices', 'Devices'], ['/alarms', 'Alarms'], ['/rules', 'Rules & scenes']];
  if (me.permissions.includes('dashboard:read')) links.splice(1, 0, ['/dashboards', 'Dashboards']);
  if (me.permissions.includes('ota:read')) links.push(['/ota', 'OTA']);
  if (isAdmin(me)) links.push(['/admin', 'Admin']);
  clear(nav, links.map(([p, label]) => {
    const active = p === '/' ? path === '/' : path === p || path.startsWith(`${p}/`);
    return h('a', { href: `#${p}`, 'aria-current': active ? 'page' : null }, label);
  }), h('a', { href: '/docs', target: '_blank', rel: 'noopener' }, 'API docs'));
  nav.hidden = false;
  clear(who,
    h('span', {}, `${me.name} (${me.role})`),
    h('button', { type: 'button', onclick: async () => { await logout(); me = null; render(); } }, 'Sign out'));
}

function signedOut() {
  me = null;
  nav.hidden = true;
  clear(who);
}

async function render(focus = true) {
  if (current) current.abort();
  const ctl = new AbortController();
  current = ctl;
  const { path, query } = parseHash();
  if (!session.token) {
    signedOut();
    pages.login({ main, onDone: () => { me = null; render(); } });
    document.title = 'Sign in · ThingsPanel';
    return;
  }
  if (!me) {
    try {
      me = await get('/auth/me');
    } catch (e) {
      if (!session.token) return render();
      clear(main, h('h1', {}, 'Cannot reach the platform'), h('div', { class: 'error', role: 'alert' }, e.message),
        h('button', { type: 'button', onclick: () => render() }, 'Try again'));
      return;
    }
  }
  if (ctl.signal.aborted) return;
  renderNav(path);
  let match = null;
  for (const [re, page, title] of ROUTES) {
    const m = path.match(re);
    if (m) { match = { page, title, params: m.slice(1) }; break; }
  }
  document.title = `${match ? match.title : 'Not found'} · ThingsPanel`;
  if (!match) {
    clear(main, h('h1', {}, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/' }, 'Go to the dashboard')));
  } else {
    clear(main, h('p', { class: 'muted' }, 'Loading…'));
    try {
      await match.page({ main, params: match.params, query, signal: ctl.signal, me, navigate });
    } catch (e) {
      if (!ctl.signal.aborted) {
        clear(main, h('h1', {}, match.title), h('div', { class: 'error', role: 'alert' }, e.message));
      }
    }
  }
  if (focus && !ctl.signal.aborted) main.focus({ preventScroll: true });
}

setSignedOutHandler(() => { signedOut(); render(); });
window.addEventListener('hashchange', () => render());
document.getElementById('skip').addEventListener('click', () => main.focus());
render(false);
