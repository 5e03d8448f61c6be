// `#/devices/scripts`: a profile's data scripts (ThingsPanel's data_script): the list
// per profile, an editor for the Lua source, enable/disable, and a test run on a sample
// (text or hex bytes) that shows what the script returns, or why it failed.

import { api, get, qs } from './api.js';
import { h, clear, fmtTime, badge, errorSlot, showError, field, table, onSubmit, announce } from './ui.js';

const TYPES = [
  ['telemetry_up', 'Telemetry up (A): before decoding what a device reports'],
  ['telemetry_down', 'Telemetry down (B): after encoding telemetry control'],
  ['attribute_up', 'Attributes up (C): before decoding reported attributes'],
  ['attribute_down', 'Attributes down (D): after encoding an attribute set'],
];

const TEMPLATE = `local json = require("json")

-- msg: what the device sent (any bytes, as a string); topic: its topic.
-- Return a string: for uplink, our JSON forms, e.g. {"temperature": 26.1}.
function encodeInp(msg, topic)
  local data = json.decode(msg)
  return json.encode(data)
end
`;

export async function scriptsPage({ main, query, signal, navigate }) {
  const profiles = await get('/profiles?page_size=1000', { signal });
  const profileId = query.get('profile') || (profiles.items[0] && profiles.items[0].id) || '';
  const profileSelect = h('select', { id: 'script-profile', 'aria-label': 'Device profile' },
    profiles.items.map(p => h('option', { value: p.id }, p.name)));
  profileSelect.value = profileId;
  profileSelect.addEventListener('change', () => navigate('/devices/scripts', { profile: profileSelect.value }));

  const listSlot = errorSlot();
  const listBox = h('div', { id: 'script-list' });
  const editorBox = h('div', { id: 'script-editor' });
  const testBox = h('div', { id: 'script-test' });

  async function reload() {
    if (!profileId) {
      clear(listBox, h('p', { class: 'muted' }, 'Create a device profile first: scripts belong to a profile.'));
      return;
    }
    const l = await get(`/scripts${qs({ profile_id: profileId })}`, { signal });
    clear(listBox, table('Scripts of this profile', [
      ['Name', s => s.name],
      ['Type', s => s.script_type],
      ['State', s => badge(s.enabled ? 'enabled' : 'disabled', s.enabled ? 'on' : 'off')],
      ['Updated', s => fmtTime(s.updated_at)],
      ['Actions', s => h('div', { class: 'actions' },
        h('button', { type: 'button', 'aria-label': `Edit script ${s.name}`, onclick: () => edit(s) }, 'Edit'),
        h('button', {
          type: 'button', 'aria-label': `${s.enabled ? 'Disable' : 'Enable'} script ${s.name}`,
          onclick: async () => {
            showError(listSlot, null);
            try {
              await api('PATCH', `/scripts/${s.id}`, { enabled: !s.enabled });
              announce(`Script ${s.name} ${s.enabled ? 'disabled' : 'enabled'}`);
              await reload();
            } catch (e) { showError(listSlot, e); }
          },
        }, s.enabled ? 'Disable' : 'Enable'),
        h('button', {
          type: 'button', class: 'danger', 'aria-label': `Delete script ${s.name}`,
          onclick: async () => {
            if (!window.confirm(`Delete script “${s.name}”?`)) return;
            showError(listSlot, null);
            try {
              await api('DELETE', `/scripts/${s.id}`);
              announce(`Script ${s.name} deleted`);
              await reload();
              edit(null);
            } catch (e) { showError(listSlot, e); }
          },
        }, 'Delete'))],
    ], l.items, 'No scripts on this profile yet: add one below.'));
  }

  function edit(existing) {
    const slot = errorSlot();
    const type = h('select', { name: 'script_type' }, TYPES.map(([v, label]) => h('option', { value: v }, label)));
    if (existing) type.value = existing.script_type;
    const source = h('textarea', {
      name: 'content', id: 'script-content', rows: 16, spellcheck: 'false', class: 'code', required: true,
    });
    source.value = existing ? existing.content : TEMPLATE;
    const form = h('form', { class: 'stack', id: 'script-form', novalidate: true },
      field('Name', h('input', { name: 'name', required: true, maxlength: 255, value: existing ? existing.name : '' })),
      field('Type', type),
      field('Lua source', source, 'Defines encodeInp(msg, topic) and returns a string; require("json") gives json.decode / json.encode'),
      field('Description', h('input', { name: 'description', maxlength: 1000, value: existing && existing.description ? existing.description : '' })),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'enabled', checked: existing ? existing.enabled : false }),
        'Enabled: run it on this profile’s messages (one enabled script per type)'),
      slot,
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary' }, existing ? 'Save script' : 'Create script'),
        existing ? h('button', { type: 'button', onclick: () => edit(null) }, 'Cancel') : null));
    onSubmit(form, slot, async data => {
      const body = {
        name: data.get('name').trim(),
        script_type: data.get('script_type'),
        content: data.get('content'),
        description: data.get('description'),
        enabled: data.get('enabled') !== null,
      };
      let saved;
      if (existing) {
        saved = await api('PATCH', `/scripts/${existing.id}`, body);
      } else {
        body.profile_id = profileId;
        if (!body.description) delete body.description;
        saved = await api('POST', '/scripts', body);
      }
      announce(`Script ${saved.name} saved`);
      await reload();
      edit(saved);
    });
    clear(editorBox, h('h2', { id: 'script-form-title' }, existing ? `Edit script “${existing.name}”` : 'Add a script'), form);
    testPanel(existing, source);
  }

  /** The test run: the editor's current source on a sample, the output below. */
  function testPanel(script, source) {
    if (!script) {
      clear(testBox, h('h2', {}, 'Test run'), h('p', { class: 'muted' }, 'Save the script to test it on a sample.'));
      return;
    }
    const slot = errorSlot();
    const sample = h('textarea', { name: 'sample', id: 'script-sample', rows: 3, class: 'code' });
    sample.value = script.script_type.endsWith('_up') ? '{"temperature": 21.5}' : '{"switch": true}';
    const format = h('select', { name: 'format', id: 'script-sample-format' },
      [['text', 'Text'], ['hex', 'Hex bytes (e.g. 01 05 37 01)']].map(([v, l]) => h('option', { value: v }, l)));
    const result = h('div', { id: 'script-result', 'aria-live': 'polite' });
    const form = h('form', { class: 'stack', id: 'script-test-form', novalidate: true },
      field('Sample payload', sample),
      field('Sample is', format),
      field('Topic', h('input', { name: 'topic', placeholder: 'default: the type’s ThingsPanel topic' })),
      slot,
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Run test')));
    onSubmit(form, slot, async data => {
      const body = { content: source.value };
      if (data.get('format') === 'hex') body.payload_hex = data.get('sample'); else body.payload = data.get('sample');
      if (data.get('topic').trim()) body.topic = data.get('topic').trim();
      const out = await api('POST', `/scripts/${script.id}/test`, body);
      clear(result, out.ok
        ? h('div', { class: 'notice', role: 'status' },
          h('p', {}, h('strong', {}, 'Output'), ` (${out.elapsed_ms} ms)`),
          h('pre', { id: 'script-output' }, out.output !== undefined ? out.output : `hex ${out.output_hex}`))
        : h('div', { class: 'error', role: 'alert', id: 'script-failure' },
          h('p', {}, h('strong', {}, `Failed: ${out.reason}`)), h('pre', {}, out.error)));
      announce(out.ok ? 'Test run succeeded' : `Test run failed: ${out.reason}`);
    });
    clear(testBox, h('h2', {}, `Test “${script.name}”`), form, result);
  }

  await reload();
  edit(null);
  clear(main, h('h1', {}, 'Data scripts'),
    h('p', {}, h('a', { href: '#/devices/profiles' }, '← Device profiles'),
      ' · Lua scripts run on a profile’s messages: uplink before decoding (binary and vendor payloads), downlink after encoding.'),
    h('section', { class: 'panel' }, field('Device profile', profileSelect), listSlot, listBox),
    h('section', { class: 'panel', 'aria-labelledby': 'script-form-title' }, editorBox),
    h('section', { class: 'panel' }, testBox));
}
