// The HTTP API (docs/API.md), same origin, with the bearer token when one is
// given (the URL fragment #token=..., or the token field; kept for the tab).

const BASE = '/api/v1';
let token = '';

export function setToken(t) {
  token = (t || '').trim();
  try {
    if (token) sessionStorage.setItem('tapwire-token', token);
    else sessionStorage.removeItem('tapwire-token');
  } catch (_) { /* storage off */ }
}

export function initToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    setToken(decodeURIComponent(m[1]));
    // Out of the address bar: a link copied from it does not carry the token.
    history.replaceState(null, '', location.pathname + location.search);
  } else {
    try { token = sessionStorage.getItem('tapwire-token') || ''; } catch (_) { token = ''; }
  }
  return token;
}

export function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h.Authorization = 'Bearer ' + token;
  return h;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.column = body && body.column;
  }
}

export function url(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return BASE + path + (s ? '?' + s : '');
}

export async function request(method, path, params, body, signal) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(url(path, params), init);
  let j = null;
  if ((r.headers.get('Content-Type') || '').startsWith('application/json')) j = await r.json();
  if (!r.ok) throw new ApiError(r.status, j);
  return j;
}

export const get = (path, params, signal) => request('GET', path, params, undefined, signal);
export const post = (path, body) => request('POST', path, undefined, body === undefined ? {} : body);

// A file from the API (a pcap) saved through a blob: an <a href> could not send the token.
export async function download(path, params, name) {
  const r = await fetch(url(path, params), { headers: headers() });
  if (!r.ok) {
    let j = null;
    try { j = await r.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, j);
  }
  const blob = await r.blob();
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  return blob.size;
}

// Server-Sent Events over fetch (so that the token can be sent): calls
// onEvent(type, data, id) for each event; reconnects with Last-Event-ID
// after an error or the end of the stream, until stop().
export function openStream(path, params, { onEvent, onState }) {
  let stopped = false;
  let controller = null;
  let lastId = '';
  let retryMs = 1000;
  let timer = null;

  async function connect() {
    if (stopped) return;
    controller = new AbortController();
    const h = headers({ Accept: 'text/event-stream' });
    if (lastId) h['Last-Event-ID'] = lastId;
    let r;
    try {
      r = await fetch(url(path, params), { headers: h, signal: controller.signal, cache: 'no-store' });
    } catch (e) {
      return retry(e.message);
    }
    if (!r.ok) {
      let j = null;
      try { j = await r.json(); } catch (_) { /* not JSON, or stopped while reading it */ }
      if (stopped) return;  // stop() aborted the body: the caller has moved on
      const err = new ApiError(r.status, j);
      if (r.status === 400 || r.status === 401) { onState('error', err); return; }
      return retry(err.message);
    }
    onState('open');
    retryMs = 1000;
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    let ev = { type: 'message', data: [], id: '' };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          let line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (ev.data.length) {
              if (ev.id) lastId = ev.id;
              onEvent(ev.type, ev.data.join('\n'), ev.id);
            }
            ev = { type: 'message', data: [], id: '' };
          } else if (line[0] !== ':') {
            const c = line.indexOf(':');
            const field = c < 0 ? line : line.slice(0, c);
            let v = c < 0 ? '' : line.slice(c + 1);
            if (v[0] === ' ') v = v.slice(1);
            if (field === 'event') ev.type = v;
            else if (field === 'data') ev.data.push(v);
            else if (field === 'id') ev.id = v;
          }
        }
      }
    } catch (e) {
      if (stopped) return;
      return retry(e.message);
    }
    retry('the stream ended');
  }

  function retry(why) {
    if (stopped) return;
    onState('retry', new Error(why));
    timer = setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  }

  connect();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      if (controller) controller.abort();
    },
  };
}
