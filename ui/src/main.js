// The tapwire dashboard (docs/DASHBOARD.md): the state lives in the URL
// (?q=FILTER&db=DB&view=VIEW&level=LEVEL) so that a link shows the same.
import './app.css';
import * as api from './api.js';
import { $ } from './util.js';
import { addCondition } from './query.js';
import { CallTable } from './calls.js';
import { Detail } from './detail.js';
import { MapView } from './map.js';
import { Snapshots } from './snapshots.js';

const VIEWS = ['calls', 'map', 'snapshots'];
const LEVELS = ['namespace', 'workload', 'pod'];

const p = new URLSearchParams(location.search);
const state = {
  filter: p.get('q') || '',
  db: p.get('db') || 'live',
  view: VIEWS.includes(p.get('view')) ? p.get('view') : 'calls',
  level: LEVELS.includes(p.get('level')) ? p.get('level') : 'workload',
  save() {
    const q = new URLSearchParams();
    if (this.filter) q.set('q', this.filter);
    if (this.db !== 'live') q.set('db', this.db);
    if (this.view !== 'calls') q.set('view', this.view);
    if (this.level !== 'workload') q.set('level', this.level);
    const s = q.toString();
    history.replaceState(null, '', location.pathname + (s ? '?' + s : ''));
  },
};

let statusTimer = null;
function status(msg) {
  const f = $('#status');
  f.textContent = msg;
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => { f.textContent = ''; }, 8000);
}

api.initToken();
$('#token').value = '';
$('#token').placeholder = sessionStorageToken() ? 'token (set)' : 'token';
$('#token').addEventListener('change', (e) => {
  api.setToken(e.target.value);
  e.target.value = '';
  e.target.placeholder = sessionStorageToken() ? 'token (set)' : 'token';
  refreshAll();
});
function sessionStorageToken() {
  try { return sessionStorage.getItem('tapwire-token'); } catch (_) { return null; }
}

const table = new CallTable(state, { onSelect: (id) => openCall(id), onStatus: status });
const detail = new Detail($('#detail'), state, {
  onFilter: (cond, replace) => applyFilter(replace ? cond : addCondition(state.filter, cond)),
  onClose: () => { detail.close(); table.select(null); },
});
const map = new MapView(state, { onStatus: status });
const snaps = new Snapshots(state, { onView: (db) => setDb(db), onStatus: status });

function openCall(id) {
  table.select(id);
  detail.open(id);
}

function applyFilter(f) {
  state.filter = f.trim();
  $('#filter').value = state.filter;
  state.save();
  table.reload();
}

function setDb(db) {
  state.db = db || 'live';
  state.save();
  renderDb();
  detail.close();
  showView('calls');
  table.reload();
}

function renderDb() {
  $('#db-label').textContent = state.db;
  $('#db-live').hidden = state.db === 'live';
  $('#pause').disabled = state.db !== 'live';
  document.body.classList.toggle('snapshot-db', state.db !== 'live');
}

function showView(v) {
  state.view = v;
  state.save();
  for (const name of VIEWS) $('#view-' + name).hidden = name !== v;
  for (const b of document.querySelectorAll('#tabs .tab')) b.classList.toggle('active', b.dataset.view === v);
  if (v === 'map') map.load();
  if (v === 'snapshots') snaps.load();
}

// ---- the dissection switch ----------------------------------------------------
let dissEnabled = null;
let dissTimer = null;
async function loadDissection() {
  clearTimeout(dissTimer);
  const s = $('#diss-state'), b = $('#diss-toggle');
  try {
    const j = await api.get('/dissection');
    const d = j.dissection || {};
    dissEnabled = !!d.enabled;
    let text = d.enabled ? (d.running ? 'on' : 'on (starting)') : 'off';
    if (d.enabled && d.stop_after_s > 0) {
      const left = Math.max(0, d.stop_after_s - (d.idle_s || 0));
      text += ` · idle stop in ${Math.round(left)} s`;
    }
    s.textContent = text;
    s.className = d.enabled ? 'on' : 'off';
    s.title = JSON.stringify(d);
    b.textContent = d.enabled ? 'Turn off' : 'Turn on';
    b.disabled = false;
    if (j.node) $('#node-label').textContent = 'node ' + j.node;
  } catch (e) {
    s.textContent = 'unknown';
    s.className = '';
    s.title = e.message;
    b.disabled = true;
  }
  dissTimer = setTimeout(loadDissection, 5000);
}
$('#diss-toggle').addEventListener('click', async () => {
  $('#diss-toggle').disabled = true;
  try {
    await api.post(dissEnabled ? '/dissection/disable' : '/dissection/enable');
  } catch (e) {
    status('dissection: ' + e.message);
  }
  loadDissection();
});

// ---- wiring ----------------------------------------------------------------------
$('#filter').value = state.filter;
$('#filter-form').addEventListener('submit', (e) => { e.preventDefault(); applyFilter($('#filter').value); });
$('#filter-clear').addEventListener('click', () => applyFilter(''));
$('#db-live').addEventListener('click', () => setDb('live'));
for (const b of document.querySelectorAll('#tabs .tab')) b.addEventListener('click', () => showView(b.dataset.view));
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && !$('#detail').hidden) { detail.close(); table.select(null); }
});

function refreshAll() {
  table.reload();
  loadDissection();
  if (state.view === 'map') map.load();
  if (state.view === 'snapshots') snaps.load();
}

renderDb();
showView(state.view);
table.reload();
loadDissection();
window.__tapwire = { state, table, detail, map, snaps };
