// The dashboard in a real browser (headless Chromium through playwright-core,
// Debian's /usr/bin/chromium, no browser download), against a running
// `tapwire serve` over a lab with live traffic. Run by
// tests/integration/test_dashboard.py, which sets up the lab and gives the
// configuration as JSON in argv[2]:
//   {base, token, cliNs, serverUrl, body, artifacts, result, chromium}
// Writes what it saw to `result` (JSON) and a screenshot per step to
// `artifacts`; exits 1 with the reason when a check fails.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { writeFileSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

const cfg = JSON.parse(process.argv[2]);
mkdirSync(cfg.artifacts, { recursive: true });
const result = { steps: {} };
const log = (m) => console.error(`[dashboard ${new Date().toISOString().slice(11, 23)}] ${m}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function check(cond, what) {
  if (!cond) throw new Error('check failed: ' + what);
}

async function apiGet(p, params) {
  const u = new URL(cfg.base + '/api/v1' + p);
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined) u.searchParams.set(k, v);
  const r = await fetch(u, { headers: { Authorization: 'Bearer ' + cfg.token } });
  const j = await r.json();
  if (!r.ok) throw new Error(`GET ${u}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}

async function allIds(filter, db) {
  const ids = [];
  let cursor;
  for (;;) {
    const j = await apiGet('/calls', { filter, db, limit: 1000, cursor });
    ids.push(...j.calls.map((c) => c.id));
    cursor = j.next_cursor;
    if (!cursor) return ids;
  }
}

function curl(pathAndQuery, extra = []) {
  return execFileSync('ip', ['netns', 'exec', cfg.cliNs, 'curl', '-sS', '-m', '10', ...extra, cfg.serverUrl + pathAndQuery],
    { encoding: 'utf8', timeout: 20000 });
}

let shot = 0;
async function screenshot(page, name) {
  const file = path.join(cfg.artifacts, `${String(++shot).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: false });
  log('screenshot ' + file);
  return file;
}

const tableIds = (page) => page.$$eval('#calls tbody tr[data-id]', (rows) => rows.map((r) => r.dataset.id));

// Waits (bounded) until fn() is truthy; returns its value.
async function until(fn, timeoutMs, what, stepMs = 100) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(stepMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

const browser = await chromium.launch({
  executablePath: cfg.chromium, headless: true, timeout: 60000,
  args: ['--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1500, height: 900 }, acceptDownloads: true });
  page = await context.newPage();
  page.setDefaultTimeout(15000);
  const consoleErrors = [];
  // The browser reports each answer >= 400 (the bad filter's 400) as an error: those are expected.
  page.on('console', (m) => { if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  // ---- open: the token from the fragment, the live stream connected --------------------
  await page.goto(cfg.base + '/#token=' + encodeURIComponent(cfg.token));
  await page.waitForFunction(() => document.querySelector('#live-state').textContent === 'live');
  check(!page.url().includes('token='), 'the token is removed from the address bar');
  const diss = await page.textContent('#diss-state');
  check(diss.startsWith('on'), `the dissection switch shows on, not "${diss}"`);
  await screenshot(page, 'open');

  // ---- 1: a new call within 2 s of curl ---------------------------------------------------------
  const latencies = [];
  let shown = false;
  for (let attempt = 0; attempt < 3 && !shown; attempt++) {
    const probe = `/hello.json?probe=${attempt}-${Date.now()}`;
    curl(probe, ['-o', '/dev/null']);
    const t0 = Date.now();
    try {
      await page.waitForFunction((p) => [...document.querySelectorAll('#calls td.path')].some((td) => td.textContent === p),
        probe, { timeout: 2000, polling: 50 });
      latencies.push(Date.now() - t0);
      shown = true;
    } catch (_) {
      latencies.push(null);
      log(`attempt ${attempt}: ${probe} not shown within 2 s`);
    }
  }
  result.steps.live = { latencies_ms: latencies };
  await screenshot(page, 'live-call');
  check(shown, `a new call shows within 2 s of curl (latencies ${JSON.stringify(latencies)})`);
  log(`live call shown after ${latencies[latencies.length - 1]} ms`);

  // ---- the traffic the next steps look at ---------------------------------------------------------
  const marker = 'dashboard-' + Date.now();
  const got = curl('/hello.json', ['-H', 'X-Test: ' + marker]);
  check(got === cfg.body, 'curl received the JSON file');
  curl('/no-such-page', ['-o', '/dev/null']);
  curl('/hello.json?second=1', ['-o', '/dev/null']);
  const xtestFilter = `request.headers.x-test == "${marker}"`;
  await until(async () => (await allIds(xtestFilter)).length === 1, 15000, 'the X-Test call in the live DB');
  await until(async () => (await allIds('request.path == "/hello.json?second=1"')).length === 1, 15000, 'the last call in the live DB');

  // ---- 2: a filter narrows the table to exactly what /calls returns -------------------------------
  await page.fill('#filter', 'http and respnse.status >= 500');
  await page.press('#filter', 'Enter');
  await page.waitForSelector('#filter-error:not([hidden])');
  const err = await page.textContent('#filter-error');
  check(err.includes('column 10'), `a bad filter shows its column: ${err}`);
  await screenshot(page, 'filter-error');
  const filter = 'http and request.path startswith "/hello.json"';
  await page.fill('#filter', filter);
  await page.press('#filter', 'Enter');
  await page.waitForSelector('#filter-error', { state: 'hidden' });
  const want = (await allIds(filter)).sort();
  const seen = await until(async () => {
    const ids = (await tableIds(page)).sort();
    return JSON.stringify(ids) === JSON.stringify(want) ? ids : null;
  }, 5000, `the table to hold exactly the ${want.length} calls of GET /calls?filter=`);
  check(new URL(page.url()).searchParams.get('q') === filter, 'the filter is in the URL (?q=)');
  result.steps.filter = { filter, ids: seen, api_ids: want };
  await screenshot(page, 'filtered');
  log(`filter: ${seen.length} calls, the same as the API's`);

  // ---- 3: a call opened: the headers curl sent, the body it received ----------------------------
  const [xid] = await allIds(xtestFilter);
  await page.click(`#calls tbody tr[data-id="${xid}"]`);
  await page.waitForSelector(`#detail[data-id="${xid}"]`);
  const reqHeaders = await page.$$eval('#detail .msg[data-side=request] table.headers[data-kind=headers] tr',
    (rows) => Object.fromEntries(rows.map((r) => [r.querySelector('th').textContent, r.querySelector('td').textContent])));
  check(reqHeaders['x-test'] === marker, `the detail shows X-Test: ${JSON.stringify(reqHeaders)}`);
  check(reqHeaders['user-agent'] && reqHeaders['user-agent'].startsWith('curl/'), 'the detail shows curl\'s User-Agent');
  const bodyText = await page.textContent('#detail .msg[data-side=response] pre.body');
  check(JSON.stringify(JSON.parse(bodyText)) === JSON.stringify(JSON.parse(cfg.body)),
    `the detail shows the response body curl received: ${bodyText}`);
  check(bodyText.includes('\n  '), 'the JSON body is indented');
  const status = await page.textContent('#detail .msg[data-side=response] a[data-cond="response.status == 200"]');
  check(status === '200', 'the status is a filter link');
  await screenshot(page, 'detail');
  // A header value clicked: its condition joins the filter, quoted.
  await page.click(`#detail .msg[data-side=request] table.headers a[data-cond='request.headers.x-test == "${marker}"']`);
  const f2 = `${filter} and request.headers.x-test == "${marker}"`;
  await page.waitForFunction((f) => document.querySelector('#filter').value === f, f2);
  await until(async () => JSON.stringify(await tableIds(page)) === JSON.stringify([xid]), 5000, 'the table narrowed to the X-Test call');
  // The response status clicked too.
  await page.click('#detail .msg[data-side=response] a[data-cond="response.status == 200"]');
  await page.waitForFunction((f) => document.querySelector('#filter').value === f, f2 + ' and response.status == 200');
  check(new URL(page.url()).searchParams.get('q') === f2 + ' and response.status == 200', 'the URL follows the filter');
  await until(async () => JSON.stringify(await tableIds(page)) === JSON.stringify([xid]), 5000, 'the table after the status click');
  // Its flow's packets: the link the detail finds through /flows, downloaded as pcapng.
  let pcapLink = null;
  for (let attempt = 0; attempt < 4 && !pcapLink; attempt++) {
    if (attempt) {  // the flow record may not be published yet: open the call again
      await sleep(2000);
      await page.click(`#calls tbody tr[data-id="${xid}"]`);
      await page.waitForSelector(`#detail[data-id="${xid}"]`);
    }
    pcapLink = await page.waitForSelector('#detail .links a.pcap', { timeout: 3000 }).catch(() => null);
  }
  check(pcapLink, 'the detail links the flow\'s packets: ' + await page.textContent('#detail .links'));
  const [download] = await Promise.all([page.waitForEvent('download', { timeout: 30000 }), pcapLink.click()]);
  const pcapFile = path.join(cfg.artifacts, 'flow.pcapng');
  await download.saveAs(pcapFile);
  const magic = readFileSync(pcapFile).subarray(0, 4).toString('hex');
  check(magic === '0a0d0d0a', `the flow's download is pcapng (${magic})`);
  result.steps.detail = { id: xid, headers: reqHeaders, pcap: pcapFile };
  await screenshot(page, 'click-to-filter');
  await page.click('#filter-clear');

  // ---- 4: the map -------------------------------------------------------------------------------------
  await page.click('#tabs .tab[data-view=map]');
  await page.waitForSelector('#cy[data-nodes]');
  await sleep(500);
  const drawn = await page.evaluate(() => ({
    nodes: window.__tapwireMap.nodes().map((n) => ({ id: n.id(), label: n.data('label'), external: n.data('external') })),
    edges: window.__tapwireMap.edges().map((e) => ({ source: e.data('source'), target: e.data('target'), label: e.data('label') })),
  }));
  const level = await page.inputValue('#map-level');
  const apiMap = await apiGet('/map', { level, start: '-15m' });
  check(JSON.stringify(drawn.nodes.map((n) => n.id).sort()) === JSON.stringify(apiMap.nodes.map((n) => n.id).sort()),
    `the map draws the API's nodes: ${JSON.stringify(drawn.nodes)} vs ${JSON.stringify(apiMap.nodes)}`);
  check(drawn.edges.length === apiMap.edges.length, 'the map draws the API\'s edges');
  check(drawn.edges.some((e) => /\bhttp\b/.test(e.label)), `an http edge: ${JSON.stringify(drawn.edges)}`);
  // The lab: the client's address calls the server's (both outside any pod: external nodes).
  const label = (id) => (drawn.nodes.find((n) => n.id === id) || {}).label || '';
  check(drawn.edges.some((e) => /\bhttp\b/.test(e.label) && label(e.source).includes(cfg.clientIp) &&
    label(e.target).includes(cfg.serverIp)), `an http edge from ${cfg.clientIp} to ${cfg.serverIp}: ${JSON.stringify(drawn)}`);
  result.steps.map = { level, drawn, api: apiMap };
  await screenshot(page, 'map');

  // ---- 5: a snapshot made and dissected from the UI, viewed --------------------------------------
  await page.click('#tabs .tab[data-view=snapshots]');
  const snap = 'dash-' + Date.now().toString(36);
  await page.fill('#snap-name', snap);
  await page.fill('#snap-minutes', '15');
  await page.click('#snap-form button[type=submit]');
  await page.waitForSelector(`#snapshots tr[data-name="${snap}"]`, { timeout: 60000 });
  await page.click(`#snapshots tr[data-name="${snap}"] button.dissect`);
  await page.waitForSelector(`#snapshots tr[data-name="${snap}"] .diss`, { timeout: 30000 });
  await screenshot(page, 'dissection-running');
  await page.waitForSelector(`#snapshots tr[data-name="${snap}"] .diss[data-state=done]`, { timeout: 240000 });
  const db = await page.getAttribute(`#snapshots tr[data-name="${snap}"] .diss[data-state=done]`, 'data-db');
  await screenshot(page, 'dissection-done');
  await page.click(`#snapshots tr[data-name="${snap}"] button.view-db`);
  await page.waitForFunction((d) => document.querySelector('#db-label').textContent === d, db);
  check(await page.isVisible('#view-calls'), 'the calls view shows after "view calls"');
  check(new URL(page.url()).searchParams.get('db') === db, 'the db is in the URL');
  const snapApi = (await allIds(undefined, db)).sort();
  const snapIds = await until(async () => {
    const ids = (await tableIds(page)).sort();
    return ids.length && JSON.stringify(ids) === JSON.stringify(snapApi) ? ids : null;
  }, 10000, `the table to hold the ${snapApi.length} calls of ${db}`);
  check((await page.textContent('#live-state')).includes('no live stream'), 'no live stream on a snapshot DB');
  result.steps.snapshot = { name: snap, db, ids: snapIds };
  await screenshot(page, 'snapshot-calls');
  // The detail of a snapshot call comes from that DB, its packets from the snapshot.
  check(snapIds.includes(xid), 'the X-Test call is in the snapshot');
  await page.click(`#calls tbody tr[data-id="${xid}"]`);
  await page.waitForSelector(`#detail[data-id="${xid}"]`);
  await page.waitForSelector('#detail .links a.pcap', { timeout: 10000 });
  const href = await page.getAttribute('#detail .links a.pcap', 'href');
  check(href.startsWith(`/api/v1/snapshots/${snap}/pcap?flow=`), `the snapshot's pcap: ${href}`);
  await screenshot(page, 'snapshot-detail');
  // The map of the snapshot's DB.
  await page.click('#tabs .tab[data-view=map]');
  await page.waitForFunction(() => /\(snapshot /.test(document.querySelector('#map-info').textContent), null, { timeout: 15000 });
  const snapNodes = await page.evaluate(() => window.__tapwireMap.nodes().length);
  check(snapNodes >= 2, `the snapshot's map has the lab's nodes (${snapNodes})`);
  await screenshot(page, 'snapshot-map');

  result.console_errors = consoleErrors;
  check(consoleErrors.length === 0, 'no errors in the console: ' + consoleErrors.join('; '));
  result.ok = true;
} catch (e) {
  result.ok = false;
  result.error = String(e && e.stack || e);
  log('FAILED: ' + result.error);
  if (page) await screenshot(page, 'failure').catch(() => {});
} finally {
  writeFileSync(cfg.result, JSON.stringify(result, null, 2));
  await browser.close();
}
process.exit(result.ok ? 0 : 1);
