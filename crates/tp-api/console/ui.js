// DOM helpers. Text always goes in as text nodes (never innerHTML), so data from
// devices cannot inject markup.

/** h('button', {class: 'primary', onclick: fn}, 'Save') */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function fmtTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
}

export function fmtValue(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

export const badge = (text, kind) => h('span', { class: `badge ${kind || text}` }, text);
export const onlineBadge = online => badge(online ? 'online' : 'offline', online ? 'on' : 'off');

/** An error slot next to a form: role=alert, so screen readers hear it when it appears. */
export function errorSlot() {
  return h('div', { class: 'error', role: 'alert' });
}

/** Shows an API error in its slot and marks the offending field, if the server named one. */
export function showError(slot, err, form) {
  slot.textContent = err ? (err.message || String(err)) : '';
  if (form) {
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    if (err && err.field) {
      const field = form.querySelector(`[name="${CSS.escape(err.field.split(/[.[]/)[0])}"]`);
      if (field) { field.setAttribute('aria-invalid', 'true'); field.focus(); }
    }
  }
}

export function field(label, input, hint) {
  return h('label', {}, label, input, hint ? h('span', { class: 'muted' }, hint) : null);
}

/** A table with a caption; `cols` are [header, row => cell]. */
export function table(caption, cols, rows, empty = 'Nothing here yet.') {
  if (!rows.length) {
    return h('div', {}, h('h3', {}, caption), h('p', { class: 'muted' }, empty));
  }
  return h('table', {},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, cols.map(([title]) => h('th', { scope: 'col' }, title)))),
    h('tbody', {}, rows.map(r => h('tr', {}, cols.map(([, cell]) => h('td', {}, cell(r)))))));
}

/** Runs an async form action with the submit button disabled and errors shown in place. */
export function onSubmit(form, slot, action) {
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    const buttons = form.querySelectorAll('button');
    buttons.forEach(b => { b.disabled = true; });
    showError(slot, null, form);
    try {
      await action(new FormData(form));
    } catch (err) {
      showError(slot, err, form);
    } finally {
      buttons.forEach(b => { b.disabled = false; });
    }
  });
}

/** Parses a JSON textarea, naming it in the error. */
export function parseJson(text, name) {
  try {
    return text.trim() ? JSON.parse(text) : {};
  } catch (e) {
    const err = new Error(`${name}: not valid JSON (${e.message})`);
    err.field = name;
    throw err;
  }
}

export function announce(text) {
  const el = document.getElementById('announce');
  if (el) { el.textContent = ''; setTimeout(() => { el.textContent = text; }, 50); }
}

/** A paging bar: Previous / "page x of y" / Next. */
export function pager(page, pageSize, total, go) {
  const pages = Math.max(1, Math.ceil(total / pageSize));
  return h('nav', { class: 'pager', 'aria-label': 'Pages' },
    h('button', { type: 'button', disabled: page <= 1, onclick: () => go(page - 1) }, '← Previous'),
    h('span', {}, `Page ${page} of ${pages} (${total} total)`),
    h('button', { type: 'button', disabled: page >= pages, onclick: () => go(page + 1) }, 'Next →'));
}
