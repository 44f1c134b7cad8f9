// The service map (GET /map?level=...) drawn with cytoscape: workloads,
// namespaces or pods as nodes, external endpoints dashed, edges labelled
// with their protocols and counts.
import cytoscape from 'cytoscape';
import * as api from './api.js';
import { $ } from './util.js';

const KIND_COLOR = { namespace: '#3b6ea8', workload: '#2f8f5b', pod: '#7a5bb5', node: '#9a6b1f', external: '#ffffff' };

export class MapView {
  constructor(state, { onStatus }) {
    this.state = state;
    this.onStatus = onStatus;
    this.cy = null;
    this.data = null;
    $('#map-refresh').addEventListener('click', () => this.load());
    $('#map-level').addEventListener('change', (e) => { this.state.level = e.target.value; this.state.save(); this.load(); });
    $('#map-window').addEventListener('change', () => this.load());
  }

  async load() {
    $('#map-level').value = this.state.level;
    const info = $('#map-info');
    info.textContent = 'loading…';
    const snap = this.state.db === 'live' ? '' : this.state.db.split('/')[0];
    const params = { level: this.state.level, start: snap ? undefined : $('#map-window').value };
    // A snapshot's dissection DB: its calls and flows (the API takes db or snapshot, not both).
    if (snap) params.db = this.state.db;
    let m;
    try {
      m = await api.get('/map', params);
    } catch (e) {
      info.textContent = e.message;
      return;
    }
    this.data = m;
    this.draw(m);
    info.textContent = `${m.nodes.length} nodes, ${m.edges.length} edges` + (snap ? ` (snapshot ${snap})` : '');
    $('#cy').dataset.nodes = m.nodes.length;
    $('#cy').dataset.edges = m.edges.length;
  }

  draw(m) {
    const elements = [];
    for (const n of m.nodes) {
      elements.push({ group: 'nodes', data: { id: n.id, label: n.label, kind: n.kind, external: n.external ? 1 : 0,
        color: KIND_COLOR[n.kind] || '#666' } });
    }
    m.edges.forEach((e, i) => {
      const count = e.calls ? `${e.calls} call${e.calls === 1 ? '' : 's'}` : `${e.flows} flow${e.flows === 1 ? '' : 's'}`;
      const errs = e.errors ? `, ${e.errors} err` : '';
      elements.push({ group: 'edges', data: { id: 'e' + i, source: e.source, target: e.target,
        label: `${e.protocols.join(', ')} · ${count}${errs}`, protocols: e.protocols.join(','), errors: e.errors } });
    });
    if (this.cy) this.cy.destroy();
    this.cy = cytoscape({
      container: $('#cy'),
      elements,
      wheelSensitivity: 0.3,
      maxZoom: 2.5,
      minZoom: 0.1,
      style: [
        { selector: 'node', style: { label: 'data(label)', 'background-color': 'data(color)', 'font-size': 11,
          'text-valign': 'bottom', 'text-margin-y': 4, color: '#222', width: 28, height: 28, 'border-width': 1, 'border-color': '#333' } },
        { selector: 'node[external = 1]', style: { shape: 'round-rectangle', 'border-style': 'dashed', 'border-width': 2,
          'background-color': '#fff', 'border-color': '#888', color: '#555' } },
        { selector: 'edge', style: { label: 'data(label)', 'font-size': 10, 'curve-style': 'bezier', 'target-arrow-shape': 'triangle',
          width: 2, 'line-color': '#8aa', 'target-arrow-color': '#8aa', 'text-background-color': '#fff',
          'text-background-opacity': 0.8, 'text-background-padding': 2, 'text-rotation': 'autorotate' } },
        { selector: 'edge[errors > 0]', style: { 'line-color': '#c44', 'target-arrow-color': '#c44' } },
        { selector: 'edge:loop', style: { 'control-point-step-size': 60 } },
      ],
      layout: { name: elements.length > 60 ? 'grid' : 'cose', animate: false, padding: 40, nodeRepulsion: () => 400000, idealEdgeLength: () => 150 },
    });
    if (this.cy.zoom() > 1.2) { this.cy.zoom(1.2); this.cy.center(); }
    window.__tapwireMap = this.cy;  // for the browser test and the console
  }
}
