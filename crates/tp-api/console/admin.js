// Notification channels (`#/rules/channels`) and the custom-role editor of the
// administration page. A webhook's signing secret is write-only: the API only says
// whether one is set, and the form never shows it again after saving.

import { api, get } from './api.js';
import { h, clear, fmtTime, badge, errorSlot, showError, field, table, onSubmit, announce } from './ui.js';

/** Every permission the API accepts (crates/tp-api/src/authz.rs), with what it allows. */
export const PERMISSIONS = [
  ['device:read', 'Read devices and their data'],
  ['device:write', 'Create, change and delete devices'],
  ['device:command', 'Send commands and attribute changes'],
  ['alarm:read', 'Read alarms'],
  ['template:read', 'Read device templates (thing model)'],
  ['template:write', 'Change device templates'],
  ['alarm:ack', 'Acknowledge, clear and comment on alarms'],
  ['rule:read', 'Read rules, scenes and notification channels'],
  ['rule:write', 'Change rules, scenes and channels; run scenes'],
  ['group:write', 'Change device groups'],
  ['profile:write', 'Change device profiles'],
  ['ota:read', 'Read OTA packages, tasks and progress'],
  ['ota:write', 'Upload OTA packages; create, cancel and retry OTA tasks'],
  ['user:manage', 'Manage users'],
  ['role:manage', 'Manage custom roles'],
  ['apikey:manage', 'Manage API keys'],
  ['audit:read', 'Read the audit log'],
  ['script:read', 'Read data scripts'],
  ['script:write', 'Change, enable and test-run data scripts'],
];

/** Recipients typed one per line or separated by commas. */
const recipients = text => text.split(/[\n,;]/).map(s => s.trim()).filter(Boolean);

export async function channelsPage({ main, signal }) {
  const listBox = h('div', { id: 'channel-list' });
  const listSlot = errorSlot();
  const formBox = h('div', { id: 'channel-editor' });

  async function reload() {
    const l = await get('/notification-channels?page_size=200', { signal });
    clear(listBox, table('Notification channels', [
      ['Name', c => c.name],
      ['Type', c => c.type],
      ['Sends to', c => (c.type === 'webhook' ? h('code', {}, c.url) : (c.to || []).join(', '))],
      ['Secret', c => (c.type === 'webhook' ? (c.has_secret ? 'secret set' : 'no secret') : '—')],
      ['State', c => badge(c.enabled ? 'enabled' : 'disabled', c.enabled ? 'on' : 'off')],
      ['Created', c => fmtTime(c.created_at)],
      ['Actions', c => h('div', { class: 'actions' },
        h('button', { type: 'button', 'aria-label': `Edit channel ${c.name}`, onclick: () => edit(c) }, 'Edit'),
        h('button', {
          type: 'button', class: 'danger', 'data-action': 'delete', 'aria-label': `Delete channel ${c.name}`,
          onclick: async () => {
            if (!window.confirm(`Delete channel “${c.name}”? Rules that notify it stop doing so.`)) return;
            showError(listSlot, null);
            try {
              await api('DELETE', `/notification-channels/${c.id}`);
              announce(`Channel ${c.name} deleted`);
              await reload();
              edit(null);
            } catch (e) { showError(listSlot, e); }
          },
        }, 'Delete'))],
    ], l.items, 'No notification channels yet: add one below.'));
  }

  /** The create form (`existing` null) or the edit form of one channel. */
  function edit(existing) {
    const slot = errorSlot();
    let type = existing ? existing.type : 'webhook';
    const typeSelect = h('select', { name: 'type', disabled: !!existing },
      h('option', { value: 'webhook' }, 'Webhook (signed HTTP POST)'), h('option', { value: 'email' }, 'Email'));
    typeSelect.value = type;
    const specific = h('div', { class: 'stack' });
    const renderSpecific = () => {
      if (type === 'webhook') {
        const hasSecret = existing && existing.has_secret;
        clear(specific,
          field('URL', h('input', { name: 'url', type: 'url', required: true, value: existing ? existing.url : '', placeholder: 'https://example.com/hook' })),
          field(hasSecret ? 'Replace secret' : 'Signing secret',
            h('input', { name: 'secret', type: 'password', autocomplete: 'new-password', minlength: 16, required: !existing }),
            hasSecret ? 'A secret is set (never shown). Leave empty to keep it.' : 'At least 16 characters; HMAC-SHA256 signing key. Write-only.'));
      } else {
        clear(specific, field('Recipients', h('textarea', { name: 'to', rows: 3, required: true },
          existing && existing.to ? existing.to.join('\n') : ''), 'One address per line'));
      }
    };
    typeSelect.addEventListener('change', () => { type = typeSelect.value; renderSpecific(); });
    renderSpecific();
    const form = h('form', { class: 'stack', id: 'channel-form', novalidate: true },
      field('Name', h('input', { name: 'name', required: true, maxlength: 255, value: existing ? existing.name : '' })),
      field('Type', typeSelect),
      specific,
      h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'enabled', checked: existing ? existing.enabled : true }), 'Enabled'),
      slot,
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary' }, existing ? 'Save channel' : 'Create channel'),
        existing ? h('button', { type: 'button', onclick: () => edit(null) }, 'Cancel') : null));
    onSubmit(form, slot, async data => {
      const body = { name: data.get('name').trim(), enabled: data.get('enabled') !== null };
      if (type === 'webhook') {
        body.url = data.get('url').trim();
        const secret = data.get('secret');
        if (secret || !existing) body.secret = secret;
      } else {
        body.to = recipients(data.get('to'));
      }
      if (!existing) body.type = type;
      const saved = existing
        ? await api('PUT', `/notification-channels/${existing.id}`, body)
        : await api('POST', '/notification-channels', body);
      // The secret leaves the page with the form.
      form.reset();
      announce(`Channel ${saved.name} saved`);
      await reload();
      edit(null);
    });
    clear(formBox, h('h2', { id: 'channel-form-title' }, existing ? `Edit channel “${existing.name}”` : 'Add a channel'), form);
    if (existing) form.querySelector('[name=name]').focus();
  }

  await reload();
  edit(null);
  clear(main, h('h1', {}, 'Notification channels'),
    h('p', {}, h('a', { href: '#/rules' }, '← Rules & scenes')),
    h('section', { class: 'panel' }, listSlot, listBox),
    h('section', { class: 'panel', 'aria-labelledby': 'channel-form-title' }, formBox));
}

/** The custom roles of the administration page: list, create, edit, delete. */
export function rolesSection({ signal, initial }) {
  const listBox = h('div', { id: 'role-list' });
  const listSlot = errorSlot();
  const formBox = h('div', { id: 'role-editor' });

  function renderList(roles) {
    if (roles instanceof Error) return clear(listBox, h('div', { class: 'error', role: 'alert' }, roles.message));
    return clear(listBox, table('Custom roles', [
      ['Name', r => r.name],
      ['Permissions', r => r.permissions.join(', ')],
      ['Created', r => fmtTime(r.created_at)],
      ['Actions', r => h('div', { class: 'actions' },
        h('button', { type: 'button', 'aria-label': `Edit role ${r.name}`, onclick: () => edit(r) }, 'Edit'),
        h('button', {
          type: 'button', class: 'danger', 'data-action': 'delete', 'aria-label': `Delete role ${r.name}`,
          onclick: async () => {
            if (!window.confirm(`Delete role “${r.name}”? Its users keep only their built-in role.`)) return;
            showError(listSlot, null);
            try {
              await api('DELETE', `/roles/${r.id}`);
              announce(`Role ${r.name} deleted`);
              await reload();
              edit(null);
            } catch (e) { showError(listSlot, e); }
          },
        }, 'Delete'))],
    ], roles.items, 'No custom roles (built-in: SYS_ADMIN, TENANT_ADMIN, TENANT_USER).'));
  }
  async function reload() { renderList(await get('/roles?page_size=200', { signal })); }

  function edit(existing) {
    const slot = errorSlot();
    const held = new Set(existing ? existing.permissions : []);
    const form = h('form', { class: 'stack', id: 'role-form', novalidate: true },
      field('Role name', h('input', { name: 'name', required: true, maxlength: 255, value: existing ? existing.name : '' })),
      h('fieldset', { class: 'permissions' },
        h('legend', {}, 'Permissions'),
        h('input', { type: 'hidden', name: 'permissions' }),
        PERMISSIONS.map(([p, what]) => h('label', { class: 'check' },
          h('input', { type: 'checkbox', name: 'permission', value: p, checked: held.has(p) }),
          h('code', {}, p), h('span', { class: 'muted' }, what)))),
      slot,
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary' }, existing ? 'Save role' : 'Create role'),
        existing ? h('button', { type: 'button', onclick: () => edit(null) }, 'Cancel') : null));
    onSubmit(form, slot, async data => {
      const body = { name: data.get('name').trim(), permissions: data.getAll('permission') };
      const saved = existing ? await api('PATCH', `/roles/${existing.id}`, body) : await api('POST', '/roles', body);
      announce(`Role ${saved.name} saved`);
      await reload();
      edit(null);
    });
    clear(formBox, h('h3', {}, existing ? `Edit role “${existing.name}”` : 'Add a role'), form);
    if (existing) form.querySelector('[name=name]').focus();
  }

  renderList(initial);
  edit(null);
  return h('section', { class: 'panel', 'aria-labelledby': 'roles' },
    h('h2', { id: 'roles' }, 'Roles'), listSlot, listBox, formBox);
}

/**
 * The tenants of the administration page (SYS_ADMIN only): list, create, rename,
 * delete (after confirmation; never the caller's own tenant), and add a tenant's
 * TENANT_ADMIN. `initial` is the first page of `/tenants`, or the error fetching it.
 */
export function tenantsSection({ me, signal, initial }) {
  const listBox = h('div', { id: 'tenant-list' });
  const listSlot = errorSlot();
  const formBox = h('div', { id: 'tenant-editor' });
  const adminBox = h('div', { id: 'tenant-admin-editor' });
  let tenants = [];

  function renderList(list) {
    if (list instanceof Error) return clear(listBox, h('div', { class: 'error', role: 'alert' }, list.message));
    tenants = list.items;
    return clear(listBox, table('Tenants', [
      ['Name', t => t.name],
      ['Id', t => h('code', {}, t.id)],
      ['Created', t => fmtTime(t.created_at)],
      ['Actions', t => h('div', { class: 'actions' },
        h('button', { type: 'button', 'aria-label': `Rename tenant ${t.name}`, onclick: () => edit(t) }, 'Rename'),
        h('button', { type: 'button', 'aria-label': `Add an admin to tenant ${t.name}`, onclick: () => addAdmin(t.id, true) }, 'Add admin'),
        t.id === me.tenant_id ? null : h('button', {
          type: 'button', class: 'danger', 'data-action': 'delete', 'aria-label': `Delete tenant ${t.name}`,
          onclick: async () => {
            if (!window.confirm(`Delete tenant “${t.name}” with all its users, devices, data and rules? This cannot be undone.`)) return;
            showError(listSlot, null);
            try {
              await api('DELETE', `/tenants/${t.id}`);
              announce(`Tenant ${t.name} deleted`);
              await reload();
              edit(null);
            } catch (e) { showError(listSlot, e); }
          },
        }, 'Delete'))],
    ], list.items, 'No tenants.'));
  }
  async function reload() {
    renderList(await get('/tenants?page_size=200', { signal }));
    addAdmin(adminBox.querySelector('[name=tenant]')?.value);
  }

  /** The create form (`existing` null) or the rename form of one tenant. */
  function edit(existing) {
    const slot = errorSlot();
    const form = h('form', { class: 'inline', id: 'tenant-form', novalidate: true },
      field(existing ? 'New name' : 'New tenant', h('input', { name: 'name', required: true, maxlength: 255, value: existing ? existing.name : '' })),
      h('button', { type: 'submit', class: 'primary' }, existing ? 'Rename tenant' : 'Create tenant'),
      existing ? h('button', { type: 'button', onclick: () => edit(null) }, 'Cancel') : null);
    onSubmit(form, slot, async data => {
      const body = { name: data.get('name').trim() };
      const saved = existing ? await api('PATCH', `/tenants/${existing.id}`, body) : await api('POST', '/tenants', body);
      announce(`Tenant ${saved.name} saved`);
      await reload();
      edit(null);
    });
    clear(formBox, h('h3', { id: 'tenant-form-title' }, existing ? `Rename tenant “${existing.name}”` : 'Add a tenant'), form, slot);
    if (existing) form.querySelector('[name=name]').focus();
  }

  /** The form adding a TENANT_ADMIN to the chosen tenant. */
  function addAdmin(tenantId, focus) {
    if (!tenants.length) return clear(adminBox);
    const slot = errorSlot();
    const select = h('select', { name: 'tenant', required: true },
      tenants.map(t => h('option', { value: t.id }, t.name)));
    if (tenantId && tenants.some(t => t.id === tenantId)) select.value = tenantId;
    const form = h('form', { class: 'stack', id: 'tenant-admin-form', novalidate: true },
      field('Tenant', select),
      field('Email', h('input', { name: 'email', type: 'email', required: true, autocomplete: 'off' })),
      field('Name', h('input', { name: 'name', required: true, maxlength: 255 })),
      field('Password', h('input', { name: 'password', type: 'password', required: true, minlength: 8, autocomplete: 'new-password' }), 'At least 8 characters'),
      slot,
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create tenant admin')));
    onSubmit(form, slot, async data => {
      const tenant = tenants.find(t => t.id === data.get('tenant'));
      const user = await api('POST', `/tenants/${data.get('tenant')}/admins`, {
        email: data.get('email').trim(), name: data.get('name').trim(), password: data.get('password'),
      });
      form.reset();
      addAdmin(tenant && tenant.id);
      announce(`${user.email} is now an admin of ${tenant ? tenant.name : 'the tenant'}`);
      adminBox.querySelector('#tenant-admin-done').textContent = `Created ${user.email} (TENANT_ADMIN of ${tenant ? tenant.name : data.get('tenant')}).`;
    });
    clear(adminBox, h('h3', { id: 'tenant-admin-title' }, 'Add a tenant admin'), form,
      h('p', { id: 'tenant-admin-done', class: 'muted', role: 'status' }));
    if (focus) form.querySelector('[name=email]').focus();
  }

  renderList(initial);
  edit(null);
  addAdmin(null);
  return h('section', { class: 'panel', 'aria-labelledby': 'tenants' },
    h('h2', { id: 'tenants' }, 'Tenants'), listSlot, listBox, formBox, adminBox);
}
