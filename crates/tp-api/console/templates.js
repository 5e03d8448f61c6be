// Device templates (the thing model): the list, the editor of a template's
// telemetry, attribute, event and command definitions, and the device page's
// thing-model panel (typed latest values with units, command forms built from the
// command's parameter definitions).

import { api, get, qs } from './api.js';
import {
  h, clear, fmtTime, fmtValue, errorSlot, showError, field, table, onSubmit, announce, pager,
} from './ui.js';

const PAGE_SIZE = 20;
const DATA_TYPES = ['bool', 'int', 'float', 'string', 'enum', 'json'];
const MODES = [['off', 'off: no check'], ['record', 'record: store, and record each violation'], ['reject', 'reject: store nothing of a bad message']];
const pageOf = query => Math.max(1, Number(query.get('page')) || 1);

/** `42 °C`: a value with its definition's unit. */
export function withUnit(value, def) {
  const text = fmtValue(value);
  return def && def.unit && value !== null && value !== undefined ? `${text} ${def.unit}` : text;
}

/** `-40 … 125`, `auto | off` or an empty string: what a definition allows. */
function allowed(def) {
  if (def.data_type === 'enum') return (def.enum_values || []).map(e => e.value).join(' | ');
  if (def.min !== undefined || def.max !== undefined) return `${def.min ?? '−∞'} … ${def.max ?? '∞'}`;
  return '';
}

// ---- the editor -------------------------------------------------------------

/** `auto=Automatic, off` <-> [{value, description}]. */
const enumText = values => (values || []).map(e => (e.description ? `${e.value}=${e.description}` : e.value)).join(', ');
function parseEnum(text) {
  return text.split(',').map(s => s.trim()).filter(Boolean).map(s => {
    const i = s.indexOf('=');
    return i < 0 ? { value: s } : { value: s.slice(0, i).trim(), description: s.slice(i + 1).trim() };
  });
}
const num = text => {
  const t = String(text ?? '').trim();
  return t === '' ? undefined : Number(t);
};

/**
 * An editable list of typed definitions (telemetry, attributes or parameters).
 * Returns { el, read() } where read() yields the definitions.
 */
function propertyRows(kind, items, { access }) {
  const body = h('tbody');
  const addRow = def => {
    const d = def || { data_type: 'float' };
    const type = h('select', { 'aria-label': `${kind} data type` }, DATA_TYPES.map(t => h('option', { value: t, selected: t === d.data_type }, t)));
    const cells = {
      identifier: h('input', { 'aria-label': `${kind} identifier`, value: d.identifier || '', size: 10, required: true }),
      name: h('input', { 'aria-label': `${kind} name`, value: d.name || '', size: 12, required: true }),
      type,
      unit: h('input', { 'aria-label': `${kind} unit`, value: d.unit || '', size: 4 }),
      min: h('input', { 'aria-label': `${kind} min`, type: 'number', step: 'any', value: d.min ?? '', size: 5 }),
      max: h('input', { 'aria-label': `${kind} max`, type: 'number', step: 'any', value: d.max ?? '', size: 5 }),
      step: h('input', { 'aria-label': `${kind} step`, type: 'number', step: 'any', value: d.step ?? '', size: 4 }),
      enums: h('input', { 'aria-label': `${kind} enum values`, value: enumText(d.enum_values), size: 14, placeholder: 'auto=Automatic, off' }),
      access: access ? h('select', { 'aria-label': `${kind} access` },
        [['read', 'read'], ['read_write', 'read/write']].map(([v, l]) => h('option', { value: v, selected: v === (d.access || 'read') }, l))) : null,
    };
    const tr = h('tr', { class: 'definition', dataset: { kind } },
      Object.values(cells).filter(Boolean).map(c => h('td', {}, c)),
      h('td', {}, h('button', { type: 'button', 'aria-label': `Remove ${kind} row`, onclick: () => tr.remove() }, '✕')));
    tr.read = () => {
      const out = { identifier: cells.identifier.value.trim(), name: cells.name.value.trim(), data_type: cells.type.value };
      if (cells.unit.value.trim()) out.unit = cells.unit.value.trim();
      for (const k of ['min', 'max', 'step']) { const v = num(cells[k].value); if (v !== undefined) out[k] = v; }
      if (out.data_type === 'enum') out.enum_values = parseEnum(cells.enums.value);
      if (cells.access) out.access = cells.access.value;
      return out;
    };
    body.append(tr);
  };
  (items || []).forEach(addRow);
  const headers = ['Identifier', 'Name', 'Type', 'Unit', 'Min', 'Max', 'Step', 'Enum values'];
  if (access) headers.push('Access');
  headers.push('');
  const el = h('div', { class: 'definitions', id: `defs-${kind}` },
    h('table', {}, h('thead', {}, h('tr', {}, headers.map(t => h('th', { scope: 'col' }, t)))), body),
    h('button', { type: 'button', onclick: () => addRow(null), 'data-add': kind }, `Add ${kind}`));
  return { el, read: () => [...body.children].map(tr => tr.read()) };
}

/** Events or commands: identifier, name and their parameters (typed rows). */
function callRows(kind, items) {
  const box = h('div', { class: 'calls', id: `defs-${kind}` });
  const list = h('div');
  const readers = [];
  const addCall = def => {
    const d = def || {};
    const identifier = h('input', { 'aria-label': `${kind} identifier`, value: d.identifier || '', required: true, size: 12 });
    const name = h('input', { 'aria-label': `${kind} name`, value: d.name || '', required: true, size: 16 });
    const params = propertyRows(`${kind} parameter`, d.params, { access: false });
    const fs = h('fieldset', { class: 'call' },
      h('legend', {}, kind === 'command' ? 'Command' : 'Event'),
      h('div', { class: 'inline' }, field('Identifier', identifier), field('Name', name),
        h('button', { type: 'button', onclick: () => { fs.remove(); readers.splice(readers.indexOf(reader), 1); } }, `Remove ${kind}`)),
      h('p', { class: 'muted' }, kind === 'command' ? 'Input parameters' : 'Output parameters'), params.el);
    const reader = () => ({ identifier: identifier.value.trim(), name: name.value.trim(), params: params.read() });
    readers.push(reader);
    list.append(fs);
  };
  (items || []).forEach(addCall);
  box.append(list, h('button', { type: 'button', onclick: () => addCall(null), 'data-add': kind }, `Add ${kind}`));
  return { el: box, read: () => readers.map(r => r()) };
}

/** `#/devices/templates`: the tenant's templates and the editor. */
export async function templatesPage({ main, query, signal, navigate }) {
  const page = pageOf(query);
  const listBox = h('div', { id: 'template-list' });
  const listSlot = errorSlot();
  const formBox = h('div', { id: 'template-editor' });

  async function reload() {
    const l = await get(`/templates${qs({ page, page_size: PAGE_SIZE })}`, { signal });
    clear(listBox, table('Device templates', [
      ['Name', t => t.name],
      ['Validation', t => t.validation],
      ['Telemetry', t => String(t.telemetry.length)],
      ['Attributes', t => String(t.attributes.length)],
      ['Events', t => String(t.events.length)],
      ['Commands', t => String(t.commands.length)],
      ['Updated', t => fmtTime(t.updated_at)],
      ['Actions', t => h('div', { class: 'actions' },
        h('button', { type: 'button', 'aria-label': `Edit template ${t.name}`, onclick: () => edit(t) }, 'Edit'),
        h('button', {
          type: 'button', 'aria-label': `Copy template ${t.name}`,
          onclick: async () => {
            showError(listSlot, null);
            try { const c = await api('POST', `/templates/${t.id}/copy`, {}); announce(`Copied to ${c.name}`); await reload(); } catch (e) { showError(listSlot, e); }
          },
        }, 'Copy'),
        h('button', {
          type: 'button', class: 'danger', 'aria-label': `Delete template ${t.name}`,
          onclick: async () => {
            if (!window.confirm(`Delete template “${t.name}”?`)) return;
            showError(listSlot, null);
            try { await api('DELETE', `/templates/${t.id}`); announce(`Template ${t.name} deleted`); await reload(); edit(null); } catch (e) { showError(listSlot, e); }
          },
        }, 'Delete'))],
    ], l.items, 'No device templates yet: add one below.'),
    pager(page, PAGE_SIZE, l.total, p => navigate('/devices/templates', { page: p })));
  }

  function edit(existing) {
    const t = existing || { name: '', validation: 'off', strict_keys: false, telemetry: [], attributes: [], events: [], commands: [] };
    const slot = errorSlot();
    const mode = h('select', { name: 'validation' }, MODES.map(([v, l]) => h('option', { value: v, selected: v === t.validation }, l)));
    const telemetry = propertyRows('telemetry', t.telemetry, { access: true });
    const attributes = propertyRows('attribute', t.attributes, { access: true });
    const events = callRows('event', t.events);
    const commands = callRows('command', t.commands);
    const form = h('form', { class: 'stack', id: 'template-form', novalidate: true },
      field('Name', h('input', { name: 'name', required: true, maxlength: 255, value: t.name })),
      field('Description', h('input', { name: 'description', maxlength: 1000, value: t.description || '' })),
      field('Validation on ingest', mode, 'What happens to reported values the definitions refuse'),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'strict_keys', checked: t.strict_keys }),
        'Keys without a definition are violations too'),
      h('h3', {}, 'Telemetry'), telemetry.el,
      h('h3', {}, 'Attributes'), attributes.el,
      h('h3', {}, 'Events'), events.el,
      h('h3', {}, 'Commands'), commands.el,
      slot,
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary' }, existing ? 'Save template' : 'Create template'),
        existing ? h('button', { type: 'button', onclick: () => edit(null) }, 'Cancel') : null));
    onSubmit(form, slot, async data => {
      const body = {
        name: data.get('name').trim(),
        validation: data.get('validation'),
        strict_keys: data.get('strict_keys') !== null,
        telemetry: telemetry.read(),
        attributes: attributes.read(),
        events: events.read(),
        commands: commands.read(),
      };
      const description = data.get('description').trim();
      if (description) body.description = description;
      const saved = existing
        ? await api('PUT', `/templates/${existing.id}`, body)
        : await api('POST', '/templates', body);
      announce(`Template ${saved.name} saved`);
      await reload();
      edit(null);
    });
    clear(formBox, h('h2', { id: 'template-form-title' }, existing ? `Edit template “${existing.name}”` : 'Add a template'), form);
    if (existing) form.querySelector('[name=name]').focus();
  }

  await reload();
  edit(null);
  clear(main, h('h1', {}, 'Device templates'),
    h('p', {}, h('a', { href: '#/devices' }, '← Devices'), ' · ', h('a', { href: '#/devices/profiles' }, 'Profiles')),
    h('p', { class: 'muted' }, 'A template is the thing model of the devices whose profile refers to it: typed telemetry, attributes, events and commands.'),
    h('section', { class: 'panel' }, listSlot, listBox),
    h('section', { class: 'panel', 'aria-labelledby': 'template-form-title' }, formBox));
}

// ---- the device page's panel ---------------------------------------------------

/** An input for one parameter definition, named after it. */
function paramInput(p) {
  const label = `${p.name}${p.unit ? ` (${p.unit})` : ''}`;
  let input;
  if (p.data_type === 'bool') {
    input = h('select', { name: p.identifier }, h('option', { value: 'true' }, 'true'), h('option', { value: 'false' }, 'false'));
  } else if (p.data_type === 'enum') {
    input = h('select', { name: p.identifier }, (p.enum_values || []).map(e => h('option', { value: e.value }, e.description ? `${e.value} — ${e.description}` : e.value)));
  } else if (p.data_type === 'int' || p.data_type === 'float') {
    input = h('input', {
      name: p.identifier, type: 'number', min: p.min, max: p.max,
      step: p.step ?? (p.data_type === 'int' ? 1 : 'any'),
    });
  } else if (p.data_type === 'json') {
    input = h('textarea', { name: p.identifier, rows: 2 }, 'null');
  } else {
    input = h('input', { name: p.identifier });
  }
  return field(label, input, allowed(p) || null);
}

/** The typed value of a parameter input. */
function paramValue(p, text) {
  if (p.data_type === 'bool') return text === 'true';
  if (p.data_type === 'int' || p.data_type === 'float') return text === '' ? undefined : Number(text);
  if (p.data_type === 'json') return JSON.parse(text || 'null');
  if (p.data_type === 'enum') { const n = Number(text); return text !== '' && String(n) === text ? n : text; }
  return text;
}

/**
 * The device's thing model: its typed latest values with units and a form per
 * command, or null when the device's profile has no template. `onSent` runs after a
 * command went out (the page reloads its downlink log).
 */
export async function thingModelPanel(id, signal, onSent) {
  let model;
  try {
    model = await get(`/devices/${id}/thing-model`, { signal });
  } catch {
    return { model: null, el: null };
  }
  if (!model.template_id) return { model, el: null };
  const values = (kind, items) => table(kind, [
    ['Name', v => (v.definition ? v.definition.name : h('code', {}, v.key))],
    ['Key', v => h('code', {}, v.key)],
    ['Value', v => h('span', { class: 'typed-value', dataset: { key: v.key } }, withUnit(v.value, v.definition))],
    ['Type', v => (v.definition ? v.definition.data_type : '—')],
    ['Allowed', v => (v.definition ? allowed(v.definition) || '—' : 'not defined')],
    ['Time', v => fmtTime(v.ts)],
    ['Check', v => (v.violation ? h('span', { class: 'error' }, v.violation) : '✓')],
  ], items, 'Nothing defined or reported.');

  const forms = model.commands.map(c => {
    const slot = errorSlot();
    const form = h('form', { class: 'stack model-command', dataset: { command: c.identifier } },
      h('h3', {}, c.name, ' ', h('code', {}, c.identifier)),
      c.params.map(paramInput),
      slot,
      h('button', { type: 'submit', class: 'primary' }, `Send ${c.name}`));
    onSubmit(form, slot, async data => {
      const params = {};
      for (const p of c.params) {
        let v;
        try { v = paramValue(p, String(data.get(p.identifier) ?? '')); } catch (e) {
          const err = new Error(`${p.name}: ${e.message}`); err.field = p.identifier; throw err;
        }
        if (v !== undefined) params[p.identifier] = v;
      }
      const row = await api('POST', `/devices/${id}/commands`, { method: c.identifier, params });
      announce(`Command ${c.identifier} ${row.status}`);
      if (onSent) await onSent();
    });
    return form;
  });

  const el = h('section', { class: 'panel', id: 'thing-model', 'aria-labelledby': 'thing-model-title' },
    h('h2', { id: 'thing-model-title' }, 'Thing model: ', model.template_name, ' ',
      h('span', { class: 'badge' }, `validation ${model.validation}`)),
    h('div', { id: 'typed-values' }, values('Telemetry', model.telemetry), values('Attributes', model.attributes)),
    model.commands.length
      ? h('div', { id: 'model-commands' }, h('h3', {}, 'Commands'), forms)
      : null,
    model.events.length
      ? h('p', { class: 'muted' }, 'Events: ', model.events.map(e => e.name).join(', '))
      : null);
  return { model, el };
}
