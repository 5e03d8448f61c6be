// Management pages: notification history, device profiles, device groups, API keys,
// the audit log, and the users section of the administration page. Each list pages
// through the API (`page`, `page_size`, `total`); errors show next to what failed.

import { api, get, qs } from './api.js';
import { h, clear, fmtTime, fmtValue, badge, errorSlot, showError, field, table, onSubmit, announce, pager } from './ui.js';

const PAGE_SIZE = 20;
const pageOf = query => Math.max(1, Number(query.get('page')) || 1);
const errorBox = e => h('div', { class: 'error', role: 'alert' }, e.message);
/** Optional whole seconds from a form field: '' is null. */
function secondsOf(text, name) {
  const t = (text || '').trim();
  if (!t) return null;
  const n = Number(t);
  if (!Number.isInteger(n) || n < 1) {
    const err = new Error(`${name}: a whole number of seconds, at least 1`);
    err.field = name;
    throw err;
  }
  return n;
}
const del = (label, what, slot, action) => h('button', {
  type: 'button', class: 'danger', 'data-action': 'delete', 'aria-label': `Delete ${label}`,
  onclick: async () => {
    if (!window.confirm(what)) return;
    showError(slot, null);
    try { await action(); } catch (e) { showError(slot, e); }
  },
}, 'Delete');

/** `#/rules/notifications`: what was sent to which channel, and how it went. */
export async function notificationsPage({ main, query, signal, navigate }) {
  const page = pageOf(query);
  const [list, channels] = await Promise.all([
    get(`/notifications${qs({ page, page_size: PAGE_SIZE })}`, { signal }),
    get('/notification-channels?page_size=200', { signal }).catch(() => ({ items: [] })),
  ]);
  const names = new Map(channels.items.map(c => [c.id, c.name]));
  clear(main, h('h1', {}, 'Notification history'),
    h('p', {}, h('a', { href: '#/rules' }, '← Rules & scenes'), ' · ', h('a', { href: '#/rules/channels' }, 'Channels')),
    h('section', { class: 'panel', id: 'notification-list' },
      table('Notifications (newest first)', [
        ['Created', n => fmtTime(n.created_at)],
        ['Channel', n => names.get(n.channel_id) || h('code', {}, n.channel_id)],
        ['Subject', n => n.subject],
        ['Status', n => badge(n.status)],
        ['Attempts', n => String(n.attempts)],
        ['Detail', n => n.detail || '—'],
        ['Alarm', n => (n.alarm_id ? h('code', {}, n.alarm_id.slice(0, 8)) : '—')],
        ['Updated', n => fmtTime(n.updated_at)],
      ], list.items, 'Nothing has been sent yet.'),
      pager(page, PAGE_SIZE, list.total, p => navigate('/rules/notifications', { page: p }))));
}

/** `#/devices/profiles`: device profiles with heartbeat, online timeout and auto-registration. */
export async function profilesPage({ main, query, signal, navigate }) {
  const page = pageOf(query);
  const templates = (await get('/templates?page_size=200', { signal }).catch(() => ({ items: [] }))).items;
  const listBox = h('div', { id: 'profile-list' });
  const listSlot = errorSlot();
  const formBox = h('div', { id: 'profile-editor' });
  const secretBox = h('div', { id: 'profile-secret', 'aria-live': 'polite' });

  async function reload() {
    const l = await get(`/profiles${qs({ page, page_size: PAGE_SIZE })}`, { signal });
    clear(listBox, table('Device profiles', [
      ['Name', p => p.name],
      ['Type', p => p.device_type],
      ['Heartbeat', p => (p.heartbeat_secs ? `${p.heartbeat_secs} s` : '—')],
      ['Online timeout', p => (p.online_timeout_secs ? `${p.online_timeout_secs} s` : '—')],
      ['Auto-register', p => (p.auto_register ? 'yes' : 'no')],
      ['Secret', p => (p.has_provision_secret ? 'set' : '—')],
      ['Created', p => fmtTime(p.created_at)],
      ['Actions', p => h('div', { class: 'actions' },
        h('button', { type: 'button', 'aria-label': `Edit profile ${p.name}`, onclick: () => edit(p) }, 'Edit'),
        del(`profile ${p.name}`, `Delete profile “${p.name}”?`, listSlot, async () => {
          await api('DELETE', `/profiles/${p.id}`);
          announce(`Profile ${p.name} deleted`);
          await reload();
          edit(null);
        }))],
    ], l.items, 'No device profiles yet: add one below.'),
    pager(page, PAGE_SIZE, l.total, p => navigate('/devices/profiles', { page: p })));
  }

  function showSecret(p) {
    if (!p.provision_secret) return clear(secretBox);
    return clear(secretBox, h('div', { class: 'notice', role: 'status' },
      h('p', {}, h('strong', {}, `Provisioning secret of “${p.name}”. `), 'Copy it now: it is shown only once.'),
      h('code', { id: 'new-provision-secret' }, p.provision_secret)));
  }

  function edit(existing) {
    const slot = errorSlot();
    const type = h('select', { name: 'device_type', disabled: !!existing },
      ['direct', 'gateway', 'sub_device'].map(t => h('option', { value: t }, t)));
    if (existing) type.value = existing.device_type;
    const voucher = h('select', { name: 'voucher_type' },
      [['BASIC', 'BASIC: username and password'], ['ACCESSTOKEN', 'ACCESSTOKEN: a token as the username']]
        .map(([v, label]) => h('option', { value: v }, label)));
    if (existing) voucher.value = existing.voucher_type;
    // The current template stays selectable when the caller cannot list templates.
    const choices = existing && existing.template_id && !templates.some(t => t.id === existing.template_id)
      ? [...templates, { id: existing.template_id, name: 'current template' }] : templates;
    const template = h('select', { name: 'template_id' }, h('option', { value: '' }, '— none —'),
      choices.map(t => h('option', { value: t.id, selected: existing && existing.template_id === t.id }, t.name)));
    const form = h('form', { class: 'stack', id: 'profile-form', novalidate: true },
      field('Name', h('input', { name: 'name', required: true, maxlength: 255, value: existing ? existing.name : '' })),
      field('Device type', type),
      field('Heartbeat (seconds)', h('input', { name: 'heartbeat_secs', type: 'number', min: 1, step: 1, value: existing && existing.heartbeat_secs ? existing.heartbeat_secs : '' }),
        'Offline after this long without any message; empty for none'),
      field('Online timeout (seconds)', h('input', { name: 'online_timeout_secs', type: 'number', min: 1, step: 1, value: existing && existing.online_timeout_secs ? existing.online_timeout_secs : '' }),
        'Connection state honoured, plus offline after this silence; empty for none'),
      field('Voucher type', voucher, 'How devices created in this profile log in unless told otherwise'),
      field('Device template', template, 'The thing model that types (and may validate) the devices’ data'),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'auto_register', checked: existing ? existing.auto_register : false }),
        'Devices may register themselves with the provisioning secret'),
      existing ? h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'rotate_provision_secret' }), 'Generate a new provisioning secret') : null,
      slot,
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary' }, existing ? 'Save profile' : 'Create profile'),
        existing ? h('button', { type: 'button', onclick: () => edit(null) }, 'Cancel') : null));
    onSubmit(form, slot, async data => {
      const body = {
        name: data.get('name').trim(),
        heartbeat_secs: secondsOf(data.get('heartbeat_secs'), 'heartbeat_secs'),
        online_timeout_secs: secondsOf(data.get('online_timeout_secs'), 'online_timeout_secs'),
        auto_register: data.get('auto_register') !== null,
        voucher_type: data.get('voucher_type'),
      };
      const chosen = data.get('template_id') || null;
      if (existing ? chosen !== (existing.template_id || null) : chosen) body.template_id = chosen;
      let saved;
      if (existing) {
        if (data.get('rotate_provision_secret') !== null) body.rotate_provision_secret = true;
        saved = await api('PATCH', `/profiles/${existing.id}`, body);
      } else {
        body.device_type = data.get('device_type');
        saved = await api('POST', '/profiles', body);
      }
      announce(`Profile ${saved.name} saved`);
      showSecret(saved);
      await reload();
      edit(null);
    });
    clear(formBox, h('h2', { id: 'profile-form-title' }, existing ? `Edit profile “${existing.name}”` : 'Add a profile'), form);
    if (existing) form.querySelector('[name=name]').focus();
  }

  await reload();
  edit(null);
  clear(main, h('h1', {}, 'Device profiles'),
    h('p', {}, h('a', { href: '#/devices' }, '← Devices'), ' · ', h('a', { href: '#/devices/groups' }, 'Groups'),
      ' · ', h('a', { href: '#/devices/scripts' }, 'Data scripts')),
    h('section', { class: 'panel' }, listSlot, listBox),
    h('section', { class: 'panel', 'aria-labelledby': 'profile-form-title' }, formBox, secretBox));
}

/** `#/devices/groups`: the group tree; create, rename, delete; add and remove devices. */
export async function groupsPage({ main, query, signal, navigate }) {
  const selected = query.get('group') || '';
  const page = pageOf(query);
  const [tree, flat] = await Promise.all([
    get('/groups/tree', { signal }),
    get('/groups', { signal }),
  ]);
  const byId = new Map(flat.items.map(g => [g.id, g]));
  const treeSlot = errorSlot();

  const node = g => h('li', {},
    h('a', { href: `#/devices/groups?group=${g.id}`, 'aria-current': g.id === selected ? 'page' : null }, g.name),
    g.description ? h('span', { class: 'muted' }, ` — ${g.description}`) : null,
    g.children.length ? h('ul', {}, g.children.map(node)) : null);
  const treeBox = h('div', { id: 'group-tree' },
    tree.items.length ? h('ul', { class: 'tree' }, tree.items.map(node)) : h('p', { class: 'muted' }, 'No groups yet: add one below.'));

  const parentOptions = (except) => [h('option', { value: '' }, '(top level)'),
    flat.items.filter(g => g.id !== except).map(g => h('option', { value: g.id }, g.name))];
  const createSlot = errorSlot();
  const createForm = h('form', { class: 'stack', id: 'group-form', novalidate: true },
    field('Name', h('input', { name: 'name', required: true, maxlength: 255 })),
    field('Parent', h('select', { name: 'parent_id' }, parentOptions(null))),
    field('Description', h('input', { name: 'description', maxlength: 1000 }), 'optional'),
    createSlot, h('button', { type: 'submit', class: 'primary' }, 'Create group'));
  if (selected) createForm.querySelector('[name=parent_id]').value = selected;
  onSubmit(createForm, createSlot, async data => {
    const body = { name: data.get('name').trim() };
    if (data.get('parent_id')) body.parent_id = data.get('parent_id');
    if (data.get('description').trim()) body.description = data.get('description').trim();
    const g = await api('POST', '/groups', body);
    announce(`Group ${g.name} created`);
    navigate('/devices/groups', { group: g.id });
  });

  const detail = h('section', { class: 'panel', id: 'group-detail', 'aria-labelledby': 'group-title' });
  const group = selected ? byId.get(selected) : null;
  if (selected && !group) {
    clear(detail, h('h2', { id: 'group-title' }, 'Group'), errorBox(new Error('No such group.')));
  } else if (group) {
    const members = await get(`/groups/${group.id}/devices${qs({ page, page_size: PAGE_SIZE })}`, { signal }).catch(e => e);
    const memberSlot = errorSlot();
    const reload = () => navigate('/devices/groups', { group: group.id, page });
    const editSlot = errorSlot();
    const editForm = h('form', { class: 'stack', id: 'group-edit-form', novalidate: true },
      field('Name', h('input', { name: 'name', required: true, maxlength: 255, value: group.name })),
      field('Parent', h('select', { name: 'parent_id' }, parentOptions(group.id))),
      field('Description', h('input', { name: 'description', maxlength: 1000, value: group.description || '' })),
      editSlot,
      h('div', { class: 'actions' },
        h('button', { type: 'submit' }, 'Save group'),
        del(`group ${group.name}`, `Delete group “${group.name}”?`, editSlot, async () => {
          await api('DELETE', `/groups/${group.id}`);
          announce(`Group ${group.name} deleted`);
          navigate('/devices/groups');
        })));
    editForm.querySelector('[name=parent_id]').value = group.parent_id || '';
    onSubmit(editForm, editSlot, async data => {
      await api('PATCH', `/groups/${group.id}`, {
        name: data.get('name').trim(),
        parent_id: data.get('parent_id') || null,
        description: data.get('description').trim() || null,
      });
      announce('Group saved');
      navigate('/devices/groups', { group: group.id });
    });
    const addSlot = errorSlot();
    const addForm = h('form', { class: 'inline', id: 'group-add-device' },
      field('Add device (name or number)', h('input', { name: 'device', required: true, type: 'search' })),
      h('button', { type: 'submit' }, 'Add'));
    onSubmit(addForm, addSlot, async data => {
      const term = data.get('device').trim();
      const found = await get(`/devices${qs({ search: term, page_size: 50 })}`, { signal });
      const d = found.items.find(x => x.device_number === term || x.name === term) || (found.items.length === 1 ? found.items[0] : null);
      if (!d) {
        const err = new Error(found.items.length ? `“${term}” matches ${found.items.length} devices: give the exact name or number` : `No device matches “${term}”`);
        err.field = 'device';
        throw err;
      }
      await api('PUT', `/groups/${group.id}/devices/${d.id}`);
      announce(`${d.name} added to ${group.name}`);
      reload();
    });
    clear(detail, h('h2', { id: 'group-title' }, `Group “${group.name}”`),
      members instanceof Error ? errorBox(members) : h('div', { id: 'group-devices' },
        table('Devices in this group', [
          ['Name', d => h('a', { href: `#/devices/${d.id}` }, d.name)],
          ['Number', d => h('code', {}, d.device_number)],
          ['Actions', d => h('button', {
            type: 'button', 'aria-label': `Remove ${d.name} from the group`,
            onclick: async () => {
              showError(memberSlot, null);
              try {
                await api('DELETE', `/groups/${group.id}/devices/${d.id}`);
                announce(`${d.name} removed`);
                reload();
              } catch (e) { showError(memberSlot, e); }
            },
          }, 'Remove')],
        ], members.items, 'No devices in this group.'),
        pager(page, PAGE_SIZE, members.total, p => navigate('/devices/groups', { group: group.id, page: p }))),
      memberSlot, addForm, addSlot,
      h('h3', {}, 'Edit group'), editForm);
  } else {
    clear(detail, h('h2', { id: 'group-title' }, 'Group'), h('p', { class: 'muted' }, 'Pick a group in the tree to see and change its devices.'));
  }

  clear(main, h('h1', {}, 'Device groups'),
    h('p', {}, h('a', { href: '#/devices' }, '← Devices'), ' · ', h('a', { href: '#/devices/profiles' }, 'Profiles')),
    h('div', { class: 'grid' },
      h('section', { class: 'panel', 'aria-labelledby': 'tree-title' }, h('h2', { id: 'tree-title' }, 'Groups'), treeSlot, treeBox,
        h('h3', {}, 'Add a group'), createForm),
      detail));
}

/** `#/admin/api-keys`: API keys; a new key is shown once. */
export async function apiKeysPage({ main, query, signal, navigate }) {
  const page = pageOf(query);
  const [keys, roles] = await Promise.all([
    get(`/api-keys${qs({ page, page_size: PAGE_SIZE })}`, { signal }),
    get('/roles?page_size=200', { signal }).catch(() => ({ items: [] })),
  ]);
  const roleNames = new Map(roles.items.map(r => [r.id, r.name]));
  const listSlot = errorSlot();
  const listBox = h('div', { id: 'api-key-list' });
  const created = h('div', { id: 'created-key', 'aria-live': 'polite' });
  const render = l => clear(listBox, table('API keys', [
    ['Name', k => k.name],
    ['Role', k => k.role],
    ['Custom role', k => (k.role_id ? roleNames.get(k.role_id) || k.role_id : '—')],
    ['Created', k => fmtTime(k.created_at)],
    ['Expires', k => (k.expires_at ? fmtTime(k.expires_at) : 'never')],
    ['Actions', k => del(`API key ${k.name}`, `Delete API key “${k.name}”? Clients using it are refused from now on.`, listSlot, async () => {
      await api('DELETE', `/api-keys/${k.id}`);
      announce(`API key ${k.name} deleted`);
      clear(created);
      render(await get(`/api-keys${qs({ page, page_size: PAGE_SIZE })}`, { signal }));
    })],
  ], l.items, 'No API keys yet.'),
  l.total === undefined ? null : pager(page, PAGE_SIZE, l.total, p => navigate('/admin/api-keys', { page: p })));
  render(keys);

  const slot = errorSlot();
  const form = h('form', { class: 'stack', id: 'api-key-form', novalidate: true },
    field('Name', h('input', { name: 'name', required: true, maxlength: 255 })),
    field('Role', h('select', { name: 'role' }, h('option', { value: 'TENANT_USER' }, 'Tenant user'), h('option', { value: 'TENANT_ADMIN' }, 'Tenant admin'))),
    field('Custom role', h('select', { name: 'role_id' }, h('option', { value: '' }, '(none)'), roles.items.map(r => h('option', { value: r.id }, r.name)))),
    field('Expires', h('input', { name: 'expires_at', type: 'datetime-local' }), 'optional; local time'),
    slot, h('button', { type: 'submit', class: 'primary' }, 'Create API key'));
  onSubmit(form, slot, async data => {
    const body = { name: data.get('name').trim(), role: data.get('role') };
    if (data.get('role_id')) body.role_id = data.get('role_id');
    if (data.get('expires_at')) {
      const t = new Date(data.get('expires_at')).getTime();
      if (!Number.isFinite(t)) { const e = new Error('Expires: not a date'); e.field = 'expires_at'; throw e; }
      body.expires_at = t;
    }
    const k = await api('POST', '/api-keys', body);
    form.reset();
    clear(created, h('div', { class: 'notice', role: 'status' },
      h('p', {}, h('strong', {}, `API key “${k.name}” created. `), 'Copy it now: it is shown only once. Send it as the X-API-Key header.'),
      h('code', { id: 'new-api-key' }, k.key)));
    announce(`API key ${k.name} created`);
    render(await get(`/api-keys${qs({ page, page_size: PAGE_SIZE })}`, { signal }));
  });

  clear(main, h('h1', {}, 'API keys'),
    h('p', {}, h('a', { href: '#/admin' }, '← Administration')),
    h('section', { class: 'panel' }, listSlot, listBox),
    h('section', { class: 'panel', 'aria-labelledby': 'add-key' }, h('h2', { id: 'add-key' }, 'Create an API key'), form, created));
}

/** `#/admin/audit`: the tenant's audit log, newest first. */
export async function auditPage({ main, query, signal, navigate }) {
  const page = pageOf(query);
  const log = await get(`/audit${qs({ page, page_size: PAGE_SIZE })}`, { signal });
  clear(main, h('h1', {}, 'Audit log'),
    h('p', {}, h('a', { href: '#/admin' }, '← Administration')),
    h('section', { class: 'panel', id: 'audit-list' },
      table('Audit log (newest first)', [
        ['When', e => fmtTime(e.at)],
        ['Actor', e => e.actor],
        ['Action', e => h('code', {}, e.action)],
        ['Resource', e => `${e.resource_type} ${e.resource_id}`],
        ['Detail', e => h('code', { class: 'payload' }, fmtValue(e.detail))],
      ], log.items, 'The log is empty.'),
      pager(page, PAGE_SIZE, log.total, p => navigate('/admin/audit', { page: p }))));
}

/** The users of the administration page: paged list, add, edit role / custom role, delete. */
export function usersSection({ me, query, signal, navigate, users, roles }) {
  const page = pageOf(query);
  const roleItems = roles instanceof Error ? [] : roles.items;
  const roleNames = new Map(roleItems.map(r => [r.id, r.name]));
  const listSlot = errorSlot();
  const formBox = h('div', { id: 'user-editor' });
  const refresh = () => navigate('/admin', { page });
  const roleSelect = value => {
    const s = h('select', { name: 'role' }, h('option', { value: 'TENANT_USER' }, 'Tenant user'), h('option', { value: 'TENANT_ADMIN' }, 'Tenant admin'),
      value === 'SYS_ADMIN' ? h('option', { value }, 'System admin') : null);
    s.value = value || 'TENANT_USER';
    return s;
  };
  const customSelect = value => {
    const s = h('select', { name: 'role_id' }, h('option', { value: '' }, '(none)'), roleItems.map(r => h('option', { value: r.id }, r.name)));
    s.value = value || '';
    return s;
  };

  function edit(u) {
    const slot = errorSlot();
    const form = h('form', { class: 'stack', id: u ? 'user-edit-form' : 'user-form', novalidate: true },
      u ? null : field('Email', h('input', { name: 'email', type: 'email', required: true })),
      field('Name', h('input', { name: 'name', required: true, maxlength: 255, value: u ? u.name : '' })),
      field(u ? 'New password' : 'Password', h('input', { name: 'password', type: 'password', required: !u, minlength: 8, autocomplete: 'new-password' }),
        u ? 'leave empty to keep it' : null),
      field('Role', roleSelect(u && u.role)),
      field('Custom role', customSelect(u && u.role_id), 'adds its permissions to the role'),
      slot,
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: u ? 'primary' : null }, u ? 'Save user' : 'Add user'),
        u ? h('button', { type: 'button', onclick: () => edit(null) }, 'Cancel') : null));
    onSubmit(form, slot, async data => {
      if (u) {
        const body = { name: data.get('name').trim(), role_id: data.get('role_id') || null };
        if (data.get('role') !== u.role) body.role = data.get('role');
        if (data.get('password')) body.password = data.get('password');
        await api('PATCH', `/users/${u.id}`, body);
      } else {
        const body = { email: data.get('email'), name: data.get('name'), password: data.get('password'), role: data.get('role') };
        if (data.get('role_id')) body.role_id = data.get('role_id');
        await api('POST', '/users', body);
      }
      refresh();
    });
    clear(formBox, h('h3', {}, u ? `Edit user ${u.email}` : 'Add a user'), form);
    if (u) form.querySelector('[name=name]').focus();
  }
  edit(null);

  return h('section', { class: 'panel', 'aria-labelledby': 'users' },
    h('h2', { id: 'users' }, 'Users'), listSlot,
    users instanceof Error ? errorBox(users) : h('div', { id: 'user-list' },
      table('Users of this tenant', [['Name', u => u.name], ['Email', u => u.email], ['Role', u => u.role],
        ['Custom role', u => (u.role_id ? roleNames.get(u.role_id) || u.role_id : '')], ['Created', u => fmtTime(u.created_at)],
        ['Actions', u => h('div', { class: 'actions' },
          h('button', { type: 'button', 'aria-label': `Edit user ${u.email}`, onclick: () => edit(u) }, 'Edit'),
          u.id === me.id ? null : del(`user ${u.email}`, `Delete user ${u.email}? Their sessions end.`, listSlot, async () => {
            await api('DELETE', `/users/${u.id}`);
            announce(`User ${u.email} deleted`);
            refresh();
          }))]], users.items),
      pager(page, PAGE_SIZE, users.total, p => navigate('/admin', { page: p }))),
    formBox);
}

/** The status history panel of the device page (online/offline transitions, paged). */
export function statusHistory(deviceId, signal) {
  const box = h('section', { class: 'panel', id: 'status-history', 'aria-labelledby': 'status-title' });
  async function load(page) {
    const slot = errorSlot();
    try {
      const l = await get(`/devices/${deviceId}/status-history${qs({ page, page_size: 10 })}`, { signal });
      clear(box, h('h2', { id: 'status-title' }, 'Status history'),
        table('Online / offline transitions (newest first)', [
          ['When', e => fmtTime(e.at)],
          ['State', e => badge(e.online ? 'online' : 'offline', e.online ? 'on' : 'off')],
          ['Reason', e => e.reason.replace(/_/g, ' ')],
        ], l.items, 'No transitions recorded.'),
        pager(page, 10, l.total, load));
    } catch (e) {
      if (signal.aborted) return;
      showError(slot, e);
      clear(box, h('h2', { id: 'status-title' }, 'Status history'), slot);
    }
  }
  load(1);
  return box;
}
