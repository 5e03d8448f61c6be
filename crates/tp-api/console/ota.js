// OTA upgrades (`#/ota`): packages (create, upload the file, checksums), tasks
// (for devices or a profile) and one task's devices with their progress
// (`#/ota/tasks/<id>`, refreshed while any device is under way).

import { api, get, session, ApiError } from './api.js';
import { h, clear, fmtTime, badge, errorSlot, showError, field, table, onSubmit, announce, parseJson } from './ui.js';

const STATE_KIND = {
  pending: 'pending', notified: 'off', downloading: 'on', upgrading: 'on',
  succeeded: 'on', failed: 'critical', cancelled: 'off',
  in_progress: 'on', completed: 'on',
};
const stateBadge = s => badge(s, STATE_KIND[s] || '');

/** Uploads `file` as the package's content (raw body, streamed by the browser). */
async function uploadFile(packageId, file) {
  const res = await fetch(`/api/v1/ota/packages/${packageId}/file?file_name=${encodeURIComponent(file.name)}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${session.token}`, 'content-type': 'application/octet-stream', accept: 'application/json' },
    body: file,
  });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!res.ok) throw new ApiError(res.status, json && json.error);
  return json;
}

const size = n => (n === null || n === undefined ? '—'
  : n >= 1048576 ? `${(n / 1048576).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);
const short = hex => (hex ? h('code', { title: hex }, `${hex.slice(0, 12)}…`) : '—');

function progressCell(d) {
  if (d.progress === null || d.progress === undefined) return '—';
  return h('span', {}, h('progress', { max: 100, value: d.progress, 'aria-label': `${d.progress} percent` }), ` ${d.progress}%`);
}

/** `#/ota`: packages and tasks. */
export async function otaPage({ main, signal, navigate }) {
  const [packages, tasks, profiles, devices] = await Promise.all([
    get('/ota/packages?page_size=100', { signal }),
    get('/ota/tasks?page_size=100', { signal }),
    get('/profiles?page_size=100', { signal }).catch(() => ({ items: [] })),
    get('/devices?page_size=1000', { signal }).catch(() => ({ items: [] })),
  ]);
  const byId = new Map(packages.items.map(p => [p.id, p]));

  // New package: metadata, then the file (or an external URL).
  const pkgSlot = errorSlot();
  const pkgForm = h('form', { id: 'ota-package-form', class: 'stack', 'aria-label': 'New package' },
    field('Name', h('input', { name: 'name', required: true, maxlength: 255 })),
    field('Version', h('input', { name: 'version', required: true, maxlength: 64, placeholder: '1.2.0' })),
    field('Module', h('input', { name: 'module', maxlength: 64, placeholder: 'default' }), 'ThingsPanel\'s module, e.g. MCU'),
    field('File', h('input', { name: 'file', type: 'file' }), 'Stored here; size, SHA-256 and MD5 are computed on upload'),
    field('Or external URL', h('input', { name: 'url', type: 'url', placeholder: 'https://cdn.example.com/fw.bin' })),
    field('Extra data (JSON, sent as extData)', h('textarea', { name: 'ext_data', rows: 2 })),
    field('Description', h('input', { name: 'description', maxlength: 1000 })),
    h('button', { type: 'submit', class: 'primary' }, 'Create package'),
    pkgSlot);
  onSubmit(pkgForm, pkgSlot, async fd => {
    const file = fd.get('file');
    const body = { name: fd.get('name'), version: fd.get('version') };
    if (fd.get('module')) body.module = fd.get('module');
    if (fd.get('url')) body.url = fd.get('url');
    if (fd.get('description')) body.description = fd.get('description');
    if (fd.get('ext_data').trim()) body.ext_data = parseJson(fd.get('ext_data'), 'ext_data');
    if (!body.url && !(file && file.size)) {
      const err = new Error('Choose a file or give an external URL.');
      err.field = 'file';
      throw err;
    }
    const created = await api('POST', '/ota/packages', body);
    if (!body.url) await uploadFile(created.id, file);
    announce(`Package ${body.name} ${body.version} created`);
    navigate('/ota');
  });

  // New task: a package, and devices or a profile.
  const ready = packages.items.filter(p => p.ready);
  const taskSlot = errorSlot();
  const targetDevices = h('select', { name: 'device_ids', multiple: true, size: 5 },
    devices.items.map(d => h('option', { value: d.id }, `${d.name} (${d.device_number})`)));
  const targetProfile = h('select', { name: 'profile_id' },
    h('option', { value: '' }, '— or every device of a profile —'),
    profiles.items.map(p => h('option', { value: p.id }, p.name)));
  const taskForm = h('form', { id: 'ota-task-form', class: 'stack', 'aria-label': 'New task' },
    field('Package', h('select', { name: 'package_id', required: true },
      ready.map(p => h('option', { value: p.id }, `${p.name} ${p.version}`)))),
    field('Name', h('input', { name: 'name', maxlength: 255, placeholder: 'default: package name and version' })),
    field('Devices', targetDevices, 'Ctrl/Cmd-click to pick several'),
    field('Profile', targetProfile),
    h('button', { type: 'submit', class: 'primary', disabled: !ready.length }, 'Start upgrade'),
    taskSlot);
  onSubmit(taskForm, taskSlot, async fd => {
    const body = { package_id: fd.get('package_id') };
    if (fd.get('name')) body.name = fd.get('name');
    const ids = fd.getAll('device_ids');
    if (fd.get('profile_id')) body.profile_id = fd.get('profile_id');
    if (ids.length) body.device_ids = ids;
    const task = await api('POST', '/ota/tasks', body);
    announce(`Task ${task.name} started`);
    navigate(`/ota/tasks/${task.id}`);
  });

  const deletePackage = async (p, slot) => {
    if (!confirm(`Delete package ${p.name} ${p.version}?`)) return;
    try {
      await api('DELETE', `/ota/packages/${p.id}`);
      navigate('/ota');
    } catch (e) { showError(slot, e); }
  };
  const listSlot = errorSlot();
  clear(main,
    h('h1', {}, 'OTA upgrades'),
    h('p', { class: 'muted' }, 'Devices are told on ota/devices/inform/{device_number}, download the package with their own credentials and report on ota/devices/progress.'),
    listSlot,
    h('div', { id: 'ota-packages' }, table('Packages', [
      ['Name', p => p.name],
      ['Version', p => p.version],
      ['Module', p => p.module],
      ['Source', p => (p.url ? h('a', { href: p.url, rel: 'noopener' }, 'external URL') : p.stored ? `stored (${p.file_name || 'file'})` : badge('no file', 'off'))],
      ['Size', p => size(p.size)],
      ['SHA-256', p => short(p.sha256)],
      ['MD5', p => short(p.md5)],
      ['Created', p => fmtTime(p.created_at)],
      ['', p => h('button', { type: 'button', class: 'danger', onclick: () => deletePackage(p, listSlot) }, 'Delete')],
    ], packages.items, 'No packages yet.')),
    h('div', { id: 'ota-tasks' }, table('Tasks', [
      ['Name', t => h('a', { href: `#/ota/tasks/${t.id}` }, t.name)],
      ['Package', t => { const p = byId.get(t.package_id); return p ? `${p.name} ${p.version}` : t.package_id; }],
      ['Status', t => stateBadge(t.status)],
      ['Devices', t => `${t.counts.succeeded}/${t.counts.total} succeeded, ${t.counts.failed} failed`],
      ['Created', t => fmtTime(t.created_at)],
    ], tasks.items, 'No tasks yet.')),
    h('div', { class: 'grid' },
      h('section', { class: 'panel' }, h('h2', {}, 'New package'), pkgForm),
      h('section', { class: 'panel' }, h('h2', {}, 'New task'), ready.length ? taskForm : h('p', { class: 'muted' }, 'Create a package with a file first.'))));
}

/** `#/ota/tasks/<id>`: one task's devices and their progress. */
export async function otaTaskPage({ main, params, signal, navigate }) {
  const [id] = params;
  const slot = errorSlot();
  const body = h('div', {});
  const act = async (method, path) => {
    try {
      await api(method, path);
      await load();
    } catch (e) { showError(slot, e); }
  };
  const devices = await get('/devices?page_size=1000', { signal }).catch(() => ({ items: [] }));
  const names = new Map(devices.items.map(d => [d.id, `${d.name} (${d.device_number})`]));
  async function load() {
    const [task, details] = await Promise.all([
      get(`/ota/tasks/${id}`, { signal }),
      get(`/ota/tasks/${id}/devices?page_size=1000`, { signal }),
    ]);
    clear(body,
      h('p', {}, 'Status ', stateBadge(task.status), ` · ${task.counts.total} ${task.counts.total === 1 ? 'device' : 'devices'}: `,
        Object.entries(task.counts).filter(([k, n]) => k !== 'total' && n > 0).map(([k, n]) => `${n} ${k}`).join(', ') || 'none'),
      h('div', { class: 'actions' },
        h('button', { type: 'button', id: 'ota-cancel-all', onclick: () => act('POST', `/ota/tasks/${id}/cancel`) }, 'Cancel all under way'),
        h('button', { type: 'button', onclick: () => act('POST', `/ota/tasks/${id}/retry`) }, 'Retry failed and cancelled'),
        h('button', { type: 'button', class: 'danger', onclick: async () => { if (confirm('Delete this task?')) { await act('DELETE', `/ota/tasks/${id}`); navigate('/ota'); } } }, 'Delete task')),
      h('div', { id: 'ota-devices' }, table('Devices', [
        ['Device', d => h('a', { href: `#/devices/${d.device_id}` }, names.get(d.device_id) || d.device_id)],
        ['State', d => stateBadge(d.state)],
        ['Progress', progressCell],
        ['Code', d => (d.code === null || d.code === undefined ? '—' : String(d.code))],
        ['Description', d => d.description || '—'],
        ['Updated', d => fmtTime(d.updated_at)],
        ['', d => (['pending', 'notified', 'downloading', 'upgrading'].includes(d.state)
          ? h('button', { type: 'button', class: 'ota-cancel', onclick: () => act('POST', `/ota/tasks/${id}/devices/${d.device_id}/cancel`) }, 'Cancel')
          : ['failed', 'cancelled'].includes(d.state)
            ? h('button', { type: 'button', class: 'ota-retry', onclick: () => act('POST', `/ota/tasks/${id}/devices/${d.device_id}/retry`) }, 'Retry')
            : null)],
      ], details.items)));
    return task;
  }
  const task = await load();
  clear(main, h('p', {}, h('a', { href: '#/ota' }, '← OTA upgrades')), h('h1', {}, `Task ${task.name}`), slot, body);
  // Progress arrives from devices: refresh every 2 s while the page is open.
  const timer = setInterval(() => { load().catch(e => { if (!signal.aborted) showError(slot, e); }); }, 2000);
  signal.addEventListener('abort', () => clearInterval(timer));
}
