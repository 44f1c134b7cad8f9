// The call table: history from GET /calls, then the live stream (GET
// /stream) for the live DB; paging through a snapshot's DB otherwise.
import * as api from './api.js';
import { el, $, fmtDuration, fmtTime, endName, endTitle } from './util.js';
import { summary } from './query.js';

export const MAX_ROWS = 5000;
const HISTORY = 500;  // calls read first when the view opens or the filter changes

export class CallTable {
  constructor(state, { onSelect, onStatus }) {
    this.state = state;
    this.onSelect = onSelect;
    this.onStatus = onStatus;
    this.tbody = $('#calls tbody');
    this.rows = [];  // newest first: {call, tr}
    this.ids = new Set();
    this.total = 0;
    this.perProto = {};
    this.paused = false;
    this.pending = [];  // received while paused, newest last
    this.stream = null;
    this.generation = 0;
    this.cursor = null;
    this.tbody.addEventListener('click', (e) => {
      const tr = e.target.closest('tr[data-id]');
      if (tr) this.onSelect(tr.dataset.id);
    });
    $('#pause').addEventListener('click', () => this.setPaused(!this.paused));
    $('#more').addEventListener('click', () => this.loadMore());
  }

  setPaused(p) {
    this.paused = p;
    $('#pause').textContent = p ? 'Resume' : 'Pause';
    $('#pause').classList.toggle('on', p);
    if (!p && this.pending.length) {
      const items = this.pending;
      this.pending = [];
      this.prepend(items);
    }
    this.renderCounts();
  }

  clear() {
    this.rows = [];
    this.ids.clear();
    this.pending = [];
    this.total = 0;
    this.perProto = {};
    this.tbody.replaceChildren();
    this.cursor = null;
  }

  // (Re)loads for the state's filter and db: the stream first (buffered), the
  // history next, so that nothing written in between is missed.
  async reload() {
    const gen = ++this.generation;
    if (this.stream) { this.stream.stop(); this.stream = null; }
    this.clear();
    this.setLive('');
    const { filter, db } = this.state;
    const live = db === 'live';
    const early = [];
    let historyDone = false;
    if (live) {
      this.stream = api.openStream('/stream', { filter }, {
        onEvent: (type, data) => {
          if (gen !== this.generation) return;
          if (type === 'call') {
            let c;
            try { c = JSON.parse(data); } catch (_) { return; }
            if (historyDone) this.receive([c]); else early.push(c);
          } else if (type === 'dropped') {
            this.onStatus('the stream fell behind and was cut: reconnecting');
          } else if (type === 'error') {
            this.onStatus('stream: ' + data);
          }
        },
        onState: (s, err) => {
          if (gen !== this.generation) return;
          if (s === 'open') this.setLive('live');
          else if (s === 'retry') this.setLive('reconnecting', err && err.message);
          else if (s === 'error') { this.setLive('stopped', err.message); this.showError(err); }
        },
      });
    } else {
      this.setLive('snapshot DB: no live stream');
    }
    try {
      const j = await api.get('/calls', { filter, db, limit: live ? HISTORY : 1000 });
      if (gen !== this.generation) return;
      this.showError(null);
      this.cursor = j.next_cursor;
      // Oldest first into the table, so that the newest ends on top.
      this.receive(j.calls.slice().reverse(), true);
      historyDone = true;
      this.receive(early);
      if (!live) while (this.cursor && this.rows.length < MAX_ROWS && gen === this.generation) await this.loadMore();
    } catch (e) {
      if (gen !== this.generation) return;
      historyDone = true;
      if (this.stream) { this.stream.stop(); this.stream = null; }
      this.setLive('stopped');
      this.showError(e);
    }
    $('#more').hidden = !this.cursor;
    this.renderCounts();
  }

  async loadMore() {
    if (!this.cursor) return;
    const gen = this.generation;
    const j = await api.get('/calls', { filter: this.state.filter, db: this.state.db, limit: 1000, cursor: this.cursor });
    if (gen !== this.generation) return;
    this.cursor = j.next_cursor;
    this.append(j.calls);
    $('#more').hidden = !this.cursor;
    this.renderCounts();
  }

  showError(e) {
    const box = $('#filter-error');
    if (!e) { box.hidden = true; box.textContent = ''; this.errorHasColumn = false; return; }
    // The history request and the stream report a bad filter each, in either
    // order: the answer that names the column stays, whichever came first.
    if (!e.column && this.errorHasColumn && !box.hidden) return;
    this.errorHasColumn = !!e.column;
    let text = e.message;
    if (e.column) {
      const f = this.state.filter;
      text = `${f}\n${' '.repeat(Math.max(0, e.column - 1))}^ column ${e.column}\n${e.message}`;
    }
    box.textContent = text;
    box.hidden = false;
  }

  setLive(s, why) {
    const b = $('#live-state');
    b.textContent = s;
    b.title = why || '';
    b.className = 'live-' + s.split(' ')[0].replace(/[^a-z]/g, '');
  }

  // New calls, oldest first: counted, then shown unless paused.
  receive(calls, history) {
    const fresh = [];
    for (const c of calls) {
      if (!c || !c.id || this.ids.has(c.id)) continue;
      this.ids.add(c.id);
      this.total++;
      this.perProto[c.protocol] = (this.perProto[c.protocol] || 0) + 1;
      fresh.push(c);
    }
    if (!fresh.length) return;
    if (this.paused && !history) {
      this.pending.push(...fresh);
      if (this.pending.length > MAX_ROWS) this.pending.splice(0, this.pending.length - MAX_ROWS);
    } else {
      this.prepend(fresh);
    }
    this.renderCounts();
  }

  prepend(calls) {
    const frag = document.createDocumentFragment();
    const made = [];
    for (let i = calls.length - 1; i >= 0; i--) {
      const tr = row(calls[i]);
      made.push({ call: calls[i], tr });
      frag.append(tr);
    }
    this.tbody.prepend(frag);
    this.rows = made.concat(this.rows);
    this.trim();
  }

  append(calls) {
    const frag = document.createDocumentFragment();
    for (const c of calls) {
      if (this.ids.has(c.id)) continue;
      this.ids.add(c.id);
      this.total++;
      this.perProto[c.protocol] = (this.perProto[c.protocol] || 0) + 1;
      const tr = row(c);
      this.rows.push({ call: c, tr });
      frag.append(tr);
    }
    this.tbody.append(frag);
    this.trim();
  }

  trim() {
    while (this.rows.length > MAX_ROWS) {
      const r = this.rows.pop();
      r.tr.remove();
      this.ids.delete(r.call.id);
    }
  }

  renderCounts() {
    const protos = Object.entries(this.perProto).sort((a, b) => b[1] - a[1])
      .map(([p, n]) => `${p} ${n}`).join(' · ');
    const pend = this.pending.length ? ` · ${this.pending.length} new while paused` : '';
    const c = $('#counts');
    c.textContent = `${this.rows.length} shown · ${this.total} total${protos ? ' · ' + protos : ''}${pend}`;
    c.dataset.shown = this.rows.length;
    c.dataset.total = this.total;
  }

  select(id) {
    for (const r of this.rows) r.tr.classList.toggle('selected', r.call.id === id);
  }
}

function row(c) {
  const s = summary(c);
  const status = s.status === null || s.status === undefined ? '' : String(s.status);
  const bad = c.protocol.startsWith('http') ? Number(s.status) >= 400 : (s.status && s.status !== 0 && s.status !== 'NOERROR');
  return el('tr', { dataset: { id: c.id, protocol: c.protocol }, class: c.flags && c.flags.length ? 'flagged' : '' },
    el('td', { class: 'time', title: c.ts }, fmtTime(c.ts)),
    el('td', { class: 'proto p-' + c.protocol }, c.protocol),
    el('td', { class: 'end', title: endTitle(c.src) }, endName(c.src)),
    el('td', { class: 'arrow' }, '→'),
    el('td', { class: 'end', title: endTitle(c.dst) }, endName(c.dst)),
    el('td', { class: 'method' }, s.method ?? ''),
    el('td', { class: 'path', title: s.path ?? '' }, s.path ?? ''),
    el('td', { class: 'status' + (bad ? ' bad' : '') }, status),
    el('td', { class: 'dur' }, fmtDuration(c.duration_us)));
}
