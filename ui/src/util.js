// Small DOM and formatting helpers.

export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

export const $ = (sel, root) => (root || document).querySelector(sel);

export function fmtDuration(us) {
  if (us === null || us === undefined) return '';
  if (us < 1000) return us + ' µs';
  if (us < 1e6) return (us / 1000).toFixed(us < 1e4 ? 2 : 1) + ' ms';
  return (us / 1e6).toFixed(2) + ' s';
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '';
  if (n < 1024) return n + ' B';
  if (n < 1 << 20) return (n / 1024).toFixed(1) + ' KiB';
  if (n < 1 << 30) return (n / (1 << 20)).toFixed(1) + ' MiB';
  return (n / (1 << 30)).toFixed(2) + ' GiB';
}

// "2026-11-23T01:52:00.123456789Z" -> "01:52:00.123"
export function fmtTime(ts) {
  if (!ts) return '';
  const m = /T(\d\d:\d\d:\d\d)(\.\d{1,3})?/.exec(ts);
  return m ? m[1] + (m[2] || '') : ts;
}

// An endpoint in brief: namespace/pod, else process, else the address.
export function endName(e) {
  if (!e) return '';
  const addr = (e.ip && e.ip.includes(':') ? `[${e.ip}]` : e.ip || '') + (e.port ? ':' + e.port : '');
  if (e.pod) return `${e.namespace ? e.namespace + '/' : ''}${e.pod}`;
  if (e.process && e.process.name) return `${e.process.name} ${addr}`;
  return addr;
}

export function endTitle(e) {
  if (!e) return '';
  const parts = [`${e.ip}:${e.port}`];
  if (e.process) parts.push(`process ${e.process.name || ''} (${e.process.pid || '?'})`);
  if (e.workload) parts.push(`workload ${e.workload.kind || ''}/${e.workload.name || ''}`);
  if (e.service) parts.push(`service ${e.service}`);
  if (e.node) parts.push(`node ${e.node}`);
  return parts.join('\n');
}
