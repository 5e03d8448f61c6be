// The public REST API, with the session kept in sessionStorage (gone when the tab
// closes). Every call of the console goes through here.

const KEY = 'tp.session';

export class ApiError extends Error {
  constructor(status, info) {
    super((info && info.message) || `request failed (HTTP ${status})`);
    this.status = status;
    this.code = info && info.code;
    this.field = info && info.field;
  }
}

export const session = {
  load() {
    try { return JSON.parse(sessionStorage.getItem(KEY)) || null; } catch { return null; }
  },
  save(pair) {
    sessionStorage.setItem(KEY, JSON.stringify({ token: pair.token, refresh_token: pair.refresh_token }));
  },
  clear() { sessionStorage.removeItem(KEY); },
  get token() { const s = this.load(); return s && s.token; },
};

/** Called when the session is gone for good (refresh failed): the app shows the login. */
let onSignedOut = () => {};
export function setSignedOutHandler(fn) { onSignedOut = fn; }

async function send(method, path, body, token, signal) {
  const headers = { accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  return fetch(`/api/v1${path}`, {
    method, headers, signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

async function parse(res) {
  if (res.status === 204) return null;
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!res.ok) throw new ApiError(res.status, json && json.error);
  return json;
}

let refreshing = null;
/** One refresh at a time: parallel 401s share it (refresh tokens are single use). */
async function refresh() {
  const s = session.load();
  if (!s || !s.refresh_token) return false;
  if (!refreshing) {
    refreshing = (async () => {
      const res = await send('POST', '/auth/refresh', { refresh_token: s.refresh_token });
      if (!res.ok) return false;
      session.save(await res.json());
      return true;
    })().finally(() => { refreshing = null; });
  }
  return refreshing;
}

/** Calls the API; throws ApiError with the server's message (and field) on failure. */
export async function api(method, path, body, { signal } = {}) {
  let res = await send(method, path, body, session.token, signal);
  if (res.status === 401 && session.token && await refresh()) {
    res = await send(method, path, body, session.token, signal);
  }
  if (res.status === 401 && !path.startsWith('/auth/login')) {
    session.clear();
    onSignedOut();
  }
  return parse(res);
}

export const get = (path, opts) => api('GET', path, undefined, opts);

export async function login(email, password) {
  const pair = await api('POST', '/auth/login', { email, password });
  session.save(pair);
  return pair;
}

export async function logout() {
  try { await api('POST', '/auth/logout'); } catch { /* the session ends here anyway */ }
  session.clear();
}

/** Query string from an object, skipping empty values. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : '';
}

/**
 * Live telemetry of a device (GET /devices/{id}/telemetry/stream, Server-Sent Events).
 * Read with fetch so the token travels in the Authorization header, not in the URL.
 * Reconnects with a growing delay until `signal` aborts; `onState` gets
 * 'connecting' | 'open' | 'error' (with a message).
 */
export function streamTelemetry(deviceId, { onSample, onLagged, onState, signal }) {
  return streamEvents(`/devices/${deviceId}/telemetry/stream`, {
    onState, signal,
    onEvent: (event, data) => {
      if (event === 'telemetry') onSample(JSON.parse(data));
      else if (event === 'lagged' && onLagged) onLagged(JSON.parse(data));
    },
  });
}

/**
 * Any Server-Sent Events route of the API (`path` under /api/v1): `onEvent(event,
 * data)` per event; reconnects like streamTelemetry.
 */
export async function streamEvents(path, { onEvent, onState, signal }) {
  let delay = 1000;
  while (!signal.aborted) {
    onState('connecting');
    try {
      let res = await send('GET', path, undefined, session.token, signal);
      if (res.status === 401 && await refresh()) {
        res = await send('GET', path, undefined, session.token, signal);
      }
      if (!res.ok) {
        const err = await parse(res).catch(e => e);
        onState('error', err.message);
        if (res.status >= 400 && res.status < 500) return; // will not get better by retrying
      } else {
        onState('open');
        delay = 1000;
        await readEvents(res.body, signal, onEvent);
        // The server ends streams after one token lifetime: reconnect with the current token.
        if (!signal.aborted) onState('connecting');
      }
    } catch (e) {
      if (signal.aborted) return;
      onState('error', `${e.message}; reconnecting`);
    }
    await new Promise(r => setTimeout(r, delay));
    delay = Math.min(delay * 2, 30000);
  }
}

/**
 * Downloads `path` (under /api/v1) as a file named `filename`, with the session's
 * token (a plain link could not send it).
 */
export async function download(path, filename) {
  let res = await send('GET', path, undefined, session.token);
  if (res.status === 401 && await refresh()) res = await send('GET', path, undefined, session.token);
  if (!res.ok) await parse(res);
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return blob.size;
}

async function readEvents(body, signal, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  signal.addEventListener('abort', () => reader.cancel().catch(() => {}), { once: true });
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const field = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
        if (field === 'event') event = val;
        else if (field === 'data') data.push(val);
      }
      if (data.length) {
        try { onEvent(event, data.join('\n')); } catch (e) { console.error(e); }
      }
    }
  }
}
