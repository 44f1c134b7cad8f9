// Conditions of the query language (docs/QUERY.md) made from values the
// dashboard shows, quoted as the language wants them.

const NAME = /^[A-Za-z_][A-Za-z0-9_-]*$/;

// A string literal: "..." with the escapes the language knows (\\ \" \n \r
// \t \uXXXX); null when it cannot be written (a NUL byte).
export function quote(s) {
  s = String(s);
  if (s.includes('\u0000')) return null;
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === '\\') out += '\\\\';
    else if (ch === '"') out += '\\"';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20 || c === 0x7f) out += '\\u' + c.toString(16).padStart(4, '0');
    else out += ch;
  }
  return out + '"';
}

// A value as a literal for a field: numbers bare, booleans, null, else a string.
export function literal(v) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') return Number.isFinite(v) ? String(v) : null;
  return quote(v);
}

// A field path from parts (["request", "headers", "x-test"]): null when a
// part cannot be named.
export function fieldPath(parts) {
  for (const p of parts) if (!NAME.test(p)) return null;
  return parts.join('.');
}

// `field == value` (or `field contains value` for flags); null when it cannot be written.
export function condition(field, value, op = '==') {
  if (!field) return null;
  const lit = literal(value);
  if (lit === null) return null;
  if (lit === 'null' && op !== '==' && op !== '!=') return null;
  return `${field} ${op} ${lit}`;
}

// The filter with one more condition, ANDed.
export function addCondition(filter, cond) {
  const f = (filter || '').trim();
  if (!f) return cond;
  if (f.split(/\s+and\s+/i).map((x) => x.trim()).includes(cond)) return f;
  return /\bor\b/i.test(f) ? `(${f}) and ${cond}` : `${f} and ${cond}`;
}

// method / path / status of a call record, as the DB's summary columns hold
// them (docs/CALL_RECORD.md "Summary"); a compact call has them already.
export function summary(c) {
  if ('method' in c || 'path' in c || 'status' in c) return { method: c.method, path: c.path, status: c.status };
  const q = c.request || {}, r = c.response;
  let method = null, path = null, status = null;
  switch (c.protocol) {
    case 'http': case 'http2':
      method = q.method; path = q.path; status = r ? r.status : null; break;
    case 'grpc':
      method = q.service && q.method ? `${q.service}/${q.method}` : q.method; path = q.path;
      status = r ? r.grpc_status : null; break;
    case 'dns':
      method = q.qtype || (r && r.qtype); path = q.qname || (r && r.qname); status = r ? r.rcode : null; break;
    case 'ws': {
      const m = c.request || c.response || {};
      method = m.opcode; status = m.close_code ?? null; break;
    }
    case 'redis':
      method = q.command; path = q.args && q.args[0]; status = r ? (r.error ? 1 : 0) : null; break;
    case 'postgres':
      method = q.kind === 'startup' ? 'STARTUP' : (q.query || '').trim().split(/\s+/)[0].toUpperCase() || q.kind;
      path = q.statement; status = r ? (r.error ? 1 : 0) : null; break;
    case 'mongodb':
      method = q.command; path = q.collection ? `${q.database}.${q.collection}` : q.database;
      status = r ? (r.error ? r.error.code || 1 : 0) : null; break;
    case 'icmp': {
      const m = c.request || c.response || {};
      method = m.type_name; status = r ? 0 : null; break;
    }
    default:
      method = q.method ?? q.command ?? q.api ?? q.kind ?? null;
      path = q.path ?? q.topic ?? q.queue ?? q.database ?? null;
      status = r ? (r.status ?? r.error_code ?? r.code ?? 0) : null;
  }
  return { method: method ?? null, path: path ?? null, status: status ?? null };
}
