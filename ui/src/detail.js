// One call whole (GET /calls/{id}): headers, bodies, timing, both ends,
// flags. Values with a query-language field are links that add
// `field == value` to the filter.
import * as api from './api.js';
import { el, fmtDuration, fmtBytes } from './util.js';
import { condition, fieldPath, quote } from './query.js';

const SKIP = new Set(['headers', 'trailers', 'body', 'body_encoding', 'messages', 'document', 'params', 'answers', 'args',
  'interim', 'original', 'error']);

export class Detail {
  constructor(box, state, { onFilter, onClose }) {
    this.box = box;
    this.state = state;
    this.onFilter = onFilter;
    this.onClose = onClose;
    this.id = null;
  }

  close() {
    this.id = null;
    this.box.hidden = true;
    this.box.replaceChildren();
    delete this.box.dataset.id;
  }

  async open(id) {
    this.id = id;
    this.box.hidden = false;
    this.box.dataset.loading = '1';
    this.box.replaceChildren(el('p', {}, 'loading ' + id + '…'));
    let j;
    try {
      j = await api.get('/calls/' + id, { db: this.state.db });
    } catch (e) {
      if (this.id === id) this.box.replaceChildren(this.head(id), el('p', { class: 'error' }, e.message));
      return;
    }
    if (this.id !== id) return;
    this.render(j.call);
    delete this.box.dataset.loading;
    this.box.dataset.id = id;
  }

  // A value that adds its condition when clicked (plain text when it cannot be written).
  v(field, value, text) {
    const shown = text !== undefined ? text : (value === null || value === undefined ? 'null' : String(value));
    const cond = condition(field, value);
    if (!cond) return el('span', { class: 'val' }, shown);
    return el('a', { href: '#', class: 'val pick', title: 'filter: ' + cond, dataset: { cond },
      onclick: (e) => { e.preventDefault(); this.onFilter(cond); } }, shown);
  }

  head(id) {
    return el('div', { class: 'detail-head' },
      el('b', {}, 'call ' + id),
      el('button', { class: 'close', title: 'close', onclick: () => this.onClose() }, '×'));
  }

  render(c) {
    const parts = [this.head(c.id)];
    const flags = c.flags || [];
    parts.push(el('table', { class: 'kv' },
      kv('protocol', this.v('protocol', c.protocol)),
      kv('time', el('span', { title: c.ts }, c.ts)),
      kv('duration', c.duration_us === null || c.duration_us === undefined ? 'no response'
        : el('span', {}, fmtDuration(c.duration_us), ' ', this.v('duration_us', c.duration_us, `(${c.duration_us} µs)`))),
      kv('node', this.v('node', c.node)),
      kv('flags', flags.length ? flags.map((f) => [this.flag(f), ' ']) : 'none'),
      c.upgrade_id ? kv('upgrade', this.v('upgrade_id', c.upgrade_id)) : null));
    parts.push(el('div', { class: 'ends' }, this.end('src', 'client', c.src), this.end('dst', 'server', c.dst)));
    parts.push(this.message('request', c.request));
    parts.push(this.message('response', c.response));
    const links = el('div', { class: 'links' });
    parts.push(links);
    parts.push(el('details', { class: 'raw' }, el('summary', {}, 'record (JSON)'), el('pre', {}, JSON.stringify(c, null, 2))));
    this.box.replaceChildren(...parts);
    this.flowLinks(c, links);
  }

  flag(f) {
    const cond = `flags contains ${quote(f)}`;
    return el('a', { href: '#', class: 'val pick flag', dataset: { cond }, title: 'filter: ' + cond,
      onclick: (e) => { e.preventDefault(); this.onFilter(cond); } }, f);
  }

  end(side, role, e) {
    e = e || {};
    const rows = [
      kv('address', this.v(`${side}.ip`, e.ip), ' port ', this.v(`${side}.port`, e.port)),
    ];
    if (e.process) {
      rows.push(kv('process', this.v(`${side}.process`, e.process.name), ' pid ', this.v(`${side}.pid`, e.process.pid)));
      if (e.process.exe) rows.push(kv('exe', this.v(`${side}.exe`, e.process.exe)));
    }
    if (e.pod) rows.push(kv('pod', this.v(`${side}.pod`, e.pod)));
    if (e.namespace) rows.push(kv('namespace', this.v(`${side}.namespace`, e.namespace)));
    if (e.container) rows.push(kv('container', this.v(`${side}.container`, e.container)));
    if (e.workload) rows.push(kv('workload', this.v(`${side}.workload.kind`, e.workload.kind), ' ', this.v(`${side}.workload`, e.workload.name)));
    if (e.service) rows.push(kv('service', this.v(`${side}.service`, e.service)));
    if (e.node) rows.push(kv('node', this.v(`${side}.node`, e.node)));
    return el('div', { class: 'end-box' }, el('h4', {}, `${role} (${side})`), el('table', { class: 'kv' }, rows));
  }

  message(name, m) {
    const box = el('div', { class: 'msg', dataset: { side: name } }, el('h3', {}, name));
    if (!m) { box.append(el('p', { class: 'muted' }, name === 'response' ? 'no response' : 'no request')); return box; }
    const rows = [];
    for (const [k, val] of Object.entries(m)) {
      if (SKIP.has(k)) continue;
      if (val !== null && typeof val === 'object') {
        rows.push(kv(k, el('code', {}, JSON.stringify(val))));
      } else {
        const f = fieldPath([name, k]);
        rows.push(kv(k, f ? this.v(f, val) : String(val)));
      }
    }
    if (m.error !== undefined) rows.push(kv('error', el('code', {}, JSON.stringify(m.error))));
    box.append(el('table', { class: 'kv' }, rows));
    for (const hk of ['headers', 'trailers']) {
      if (!m[hk] || typeof m[hk] !== 'object') continue;
      const hrows = Object.entries(m[hk]).map(([h, hv]) =>
        el('tr', {}, el('th', {}, h), el('td', {}, (() => {
          const f = fieldPath([name, hk, h]);
          return f ? this.v(f, hv) : String(hv);
        })())));
      box.append(el('h4', {}, hk), el('table', { class: 'kv headers', dataset: { kind: hk } }, hrows));
    }
    for (const lk of ['answers', 'args', 'params']) {
      if (Array.isArray(m[lk])) box.append(el('h4', {}, lk), el('pre', { class: 'list' }, m[lk].map((x) => typeof x === 'string' ? x : JSON.stringify(x)).join('\n')));
    }
    for (const ok of ['document', 'messages', 'original', 'interim']) {
      if (m[ok] !== undefined) box.append(el('h4', {}, ok), el('pre', { class: 'body' }, JSON.stringify(m[ok], null, 2)));
    }
    if (m.body !== undefined) box.append(el('h4', {}, 'body'), renderBody(m));
    return box;
  }

  // The flow of the call (GET /flows by its addresses) and its packets as pcapng.
  async flowLinks(c, box) {
    const snap = this.state.db === 'live' ? '' : this.state.db.split('/')[0];
    if (!c.src || !c.dst || !c.src.port) return;
    const flowFilter = `client.ip == ${quote(c.src.ip)} and client.port == ${c.src.port} and server.ip == ${quote(c.dst.ip)} and server.port == ${c.dst.port}`;
    const conn = `src.ip == ${quote(c.src.ip)} and src.port == ${c.src.port} and dst.ip == ${quote(c.dst.ip)} and dst.port == ${c.dst.port}`;
    box.append(el('a', { href: '#', class: 'pick', dataset: { cond: conn }, onclick: (e) => { e.preventDefault(); this.onFilter(conn, true); } },
      'calls on this connection'));
    const id = c.id;
    try {
      // The snapshot's flow stream: the ids its pcap knows.
      const params = { filter: flowFilter, limit: 5, snapshot: snap || undefined };
      const j = await api.get('/flows', params);
      if (this.id !== id) return;
      if (!j.flows.length) { box.append(' · ', el('span', { class: 'muted' }, 'flow not found (no packets to fetch)')); return; }
      const f = j.flows[j.flows.length - 1];
      const path = snap ? `/snapshots/${encodeURIComponent(snap)}/pcap` : '/pcap';
      const status = el('span', { class: 'muted' });
      box.append(' · flow ', el('code', {}, f.id), ` (${f.state || ''}, ${fmtBytes(bytesOf(f))}) · `,
        el('a', { href: api.url(path, { flow: f.id }), class: 'pcap', dataset: { flow: f.id },
          onclick: async (e) => {
            e.preventDefault();
            status.textContent = ' downloading…';
            try {
              const n = await api.download(path, { flow: f.id }, `flow-${f.id}.pcapng`);
              status.textContent = ` ${fmtBytes(n)}`;
            } catch (err) { status.textContent = ' ' + err.message; }
          } }, 'packets (pcapng)'), status);
    } catch (e) {
      if (this.id === id) box.append(' · ', el('span', { class: 'muted' }, 'flows: ' + e.message));
    }
  }
}

function bytesOf(f) {
  const a = f.client_to_server || {}, b = f.server_to_client || {};
  return (a.bytes || 0) + (b.bytes || 0);
}

function kv(k, ...v) {
  return el('tr', {}, el('th', {}, k), el('td', {}, ...v));
}

function contentType(m) {
  const h = m.headers || {};
  return String(h['content-type'] || '').toLowerCase();
}

// The body as its content type wants it: JSON indented, text as text,
// base64 decoded when it is text, else its size and the first bytes in hex.
export function renderBody(m) {
  const ctype = contentType(m);
  const note = [];
  if (m.body_size !== undefined) note.push(`${fmtBytes(m.body_size)} as sent`);
  if (m.content_encoding) note.push(`${m.content_encoding} decoded to ${fmtBytes(m.body_decoded_size)}`);
  let text = m.body;
  let binary = null;
  if (m.body_encoding === 'base64') {
    let bytes;
    try { bytes = Uint8Array.from(atob(m.body), (ch) => ch.charCodeAt(0)); } catch (_) { bytes = new Uint8Array(); }
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
      if (/[\u0000-\u0008\u000e-\u001f]/.test(text)) throw new Error('control characters');
      note.push('base64 in the record, shown as text');
    } catch (_) {
      text = null;
      binary = bytes;
    }
  }
  const box = el('div', { class: 'body-box' });
  if (binary) {
    note.push(`binary, ${fmtBytes(binary.length)} kept`);
    box.append(el('pre', { class: 'body hex' }, hexdump(binary.subarray(0, 512)) + (binary.length > 512 ? '\n…' : '')));
  } else {
    let shown = text;
    if (ctype.includes('json') || /^\s*[[{]/.test(text)) {
      try { shown = JSON.stringify(JSON.parse(text), null, 2); note.push('JSON'); } catch (_) { /* as text */ }
    }
    box.append(el('pre', { class: 'body' }, shown));
  }
  box.prepend(el('div', { class: 'muted' }, [ctype || 'no content type', ...note].join(' · ')));
  return box;
}

function hexdump(b) {
  const lines = [];
  for (let i = 0; i < b.length; i += 16) {
    const row = Array.from(b.subarray(i, i + 16));
    lines.push(i.toString(16).padStart(6, '0') + '  ' + row.map((x) => x.toString(16).padStart(2, '0')).join(' ').padEnd(48) +
      '  ' + row.map((x) => (x >= 32 && x < 127 ? String.fromCharCode(x) : '.')).join(''));
  }
  return lines.join('\n');
}
