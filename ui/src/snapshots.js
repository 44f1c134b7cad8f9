// Snapshots (GET/POST /snapshots) and their delayed dissections (POST
// /snapshots/{name}/dissections, polled for progress); "view" switches the
// dashboard's DB to SNAPSHOT/ID.
import * as api from './api.js';
import { el, $, fmtBytes } from './util.js';

export class Snapshots {
  constructor(state, { onView, onStatus }) {
    this.state = state;
    this.onView = onView;
    this.onStatus = onStatus;
    this.timer = null;
    $('#snap-form').addEventListener('submit', (e) => { e.preventDefault(); this.create(); });
  }

  error(e) {
    const b = $('#snap-error');
    b.hidden = !e;
    b.textContent = e ? e.message || String(e) : '';
  }

  async create() {
    const body = {};
    const name = $('#snap-name').value.trim();
    if (name) body.name = name;
    const mode = document.querySelector('input[name=snap-mode]:checked').value;
    if (mode === 'last') {
      const n = Math.max(1, parseInt($('#snap-minutes').value, 10) || 15);
      body.start = `-${n}m`;
    } else {
      const f = $('#snap-from').value, t = $('#snap-to').value;
      if (f) body.start = new Date(f).toISOString();
      if (t) body.end = new Date(t).toISOString();
    }
    try {
      const j = await api.post('/snapshots', body);
      this.error(null);
      this.onStatus(`snapshot ${j.snapshot.name} created`);
      $('#snap-name').value = '';
      await this.load();
    } catch (e) {
      this.error(e);
    }
  }

  async dissect(name) {
    try {
      const j = await api.post(`/snapshots/${encodeURIComponent(name)}/dissections`, {});
      this.error(null);
      this.onStatus(`dissection ${j.dissection.db} started`);
    } catch (e) {
      this.error(e);
    }
    await this.load();
  }

  async load() {
    clearTimeout(this.timer);
    let j;
    try {
      j = await api.get('/snapshots');
    } catch (e) {
      this.error(e);
      return;
    }
    const rows = j.snapshots.map((s) => this.row(s));
    $('#snapshots tbody').replaceChildren(...rows);
    if (!rows.length) $('#snapshots tbody').append(el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'no snapshots yet')));
    // While a dissection runs, its progress is polled.
    const running = j.snapshots.some((s) => (s.dissections || []).some((d) => d.state === 'running' || d.state === 'cancelling'));
    if (running && this.state.view === 'snapshots') this.timer = setTimeout(() => this.load(), 700);
  }

  row(s) {
    const diss = (s.dissections || []).map((d) => {
      const p = d.progress || {};
      const pct = Math.round((p.fraction || 0) * 100);
      return el('div', { class: 'diss', dataset: { db: d.db, state: d.state } },
        el('code', {}, d.id), ' ', el('span', { class: 'state s-' + d.state }, d.state), ' ',
        el('progress', { max: 100, value: pct }), ` ${pct}%`,
        p.calls !== undefined ? ` · ${p.calls} calls` : '',
        d.error ? el('span', { class: 'error' }, ' ' + d.error) : '',
        d.state === 'done' ? el('button', { class: 'view-db', dataset: { db: d.db }, onclick: () => this.onView(d.db) },
          this.state.db === d.db ? 'viewing' : 'view calls') : '');
    });
    return el('tr', { dataset: { name: s.name } },
      el('td', {}, el('b', {}, s.name), s.ok ? '' : el('span', { class: 'error' }, ' ' + (s.error || 'unreadable'))),
      el('td', {}, s.from || ''), el('td', {}, s.to || ''),
      el('td', {}, s.segments ?? ''), el('td', {}, fmtBytes(s.bytes)),
      el('td', {}, diss.length ? diss : el('span', { class: 'muted' }, 'none')),
      el('td', {},
        s.ok ? el('button', { class: 'dissect', dataset: { name: s.name }, onclick: () => this.dissect(s.name) }, 'Dissect') : '',
        ' ',
        s.ok ? el('a', { href: api.url(`/snapshots/${encodeURIComponent(s.name)}/pcap`), onclick: (e) => {
          e.preventDefault();
          api.download(`/snapshots/${encodeURIComponent(s.name)}/pcap`, {}, `${s.name}.pcapng`).catch((err) => this.error(err));
        } }, 'pcapng') : ''));
  }
}
