// iotpipe dashboard: selection, polling and rendering. Hand-written, no
// dependencies; talks to the JSON API in docs/api.md with relative URLs
// (api/...), so it also works behind a path prefix. Drawing is in chart.js,
// formatting in format.js.
import { drawChart, drawSparkline } from './chart.js';
import { ago, fmtBytes, fmtCount, fmtDuration, fmtMs, fmtNum, fmtTime, hhmmss } from './format.js';

const $ = (id) => document.getElementById(id);
const RANGES = ['15m', '1h', '3d'];
const RANGE_MS = { '15m': 15 * 60e3, '1h': 3600e3, '3d': 3 * 86400e3 };
const TOKEN_KEY = 'iotpipe.token';
const FIELDS_KEY = 'iotpipe.fields';
const PALETTE = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4d7c0f', '#475569'];
// Counters and timestamps are usually not worth a chart; shown on demand.
const HIDDEN_BY_DEFAULT = /^(ts|time|timestamp|epoch|seq)$|seq$/i;

const state = {
  tenant: null, project: null, device: null, range: '15m',
  tenants: null, projects: null, devices: null,
  // Tenants asked for: one page of the API, grown by "Show more" up to its
  // largest page (the API pages every list: docs/api.md).
  tenantLimit: 200,
  fields: [], // field names of the last series response
  rate: [], // recent {t, v} samples of the message rate
  health: null,
};
const charts = new Map(); // field -> chart object (see makeChart)

// ---------- small helpers ----------

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c != null) el.append(c);
  return el;
}
const enc = encodeURIComponent;

function colorFor(name) {
  let x = 0;
  for (const ch of name) x = (x * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[x % PALETTE.length];
}
function showError(id, err) {
  // "Cannot reach iotpipe" is said once, by the health panel, not by every panel.
  if (err && err.status === 0 && id !== 'health-error') err = null;
  const el = $(id);
  el.hidden = !err;
  el.textContent = err ? (err.message || String(err)) : '';
}
function banner(msg) {
  const el = $('banner');
  el.hidden = !msg;
  el.textContent = msg || '';
}

// ---------- API access and the bearer token ----------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
let tokenWait = null; // one shared promise while the token form is shown
let tokenDone = null;

function askToken(message) {
  if (!tokenWait) {
    tokenWait = new Promise((resolve) => { tokenDone = resolve; });
    $('auth').hidden = false;
    $('auth-token').value = '';
    $('auth-token').focus();
    $('auth-msg').textContent = '';
  }
  if (message) $('auth-msg').textContent = message;
  return tokenWait;
}
$('auth').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const token = $('auth-token').value.trim().replace(/^Bearer\s+/i, '');
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('auth').hidden = true;
  const done = tokenDone;
  tokenWait = tokenDone = null;
  done();
});

async function api(path) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    let res;
    try {
      res = await fetch('api/' + path, { headers, cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, 'Cannot reach iotpipe: ' + (e.message || e));
    }
    if (res.status === 401) {
      // Another request may have brought a new token meanwhile: retry with it.
      if (sessionStorage.getItem(TOKEN_KEY) !== token) continue;
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(token ? 'That token was rejected; try again.' : '');
      continue;
    }
    const text = await res.text();
    let body;
    try { body = text ? JSON.parse(text) : null; } catch (e) { body = undefined; }
    if (!res.ok) {
      const why = (body && body.error) || text.slice(0, 200) || res.statusText;
      throw new ApiError(res.status, `${why} (HTTP ${res.status})`);
    }
    if (body === undefined) throw new ApiError(res.status, `api/${path}: the response is not JSON`);
    return body;
  }
}

// ---------- selection, kept in the URL hash: #/tenant/project/device?range=1h ----------

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query] = raw.split('?');
  const parts = (path || '').split('/').filter(Boolean).map((p) => {
    try { return decodeURIComponent(p); } catch (e) { return p; }
  });
  const range = new URLSearchParams(query || '').get('range');
  return {
    tenant: parts[0] || null,
    project: parts[1] || null,
    device: parts[2] || null,
    range: RANGES.includes(range) ? range : '15m',
  };
}
function hashFor(sel) {
  const parts = [sel.tenant, sel.project, sel.device].filter(Boolean).map(enc);
  return '#/' + parts.join('/') + (sel.range && sel.range !== '15m' ? '?range=' + sel.range : '');
}
function select(change, replace) {
  // From the URL, not `state`: a link click updates it before its hashchange event runs.
  const next = { ...parseHash(), ...change };
  const url = hashFor(next);
  if (url === location.hash) return;
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  applyHash();
}

function applyHash() {
  const sel = parseHash();
  const tChanged = sel.tenant !== state.tenant;
  const pChanged = tChanged || sel.project !== state.project;
  const dChanged = pChanged || sel.device !== state.device;
  const rChanged = sel.range !== state.range;
  Object.assign(state, sel);
  if (tChanged) { state.projects = null; showError('projects-error'); }
  if (pChanged) { state.devices = null; showError('devices-error'); }
  if (dChanged || rChanged) clearDevice();
  renderNav();
  renderHead();
  if (tChanged && state.tenant) loadProjects(true);
  else if (pChanged && state.project) loadDevices(true);
  else if ((dChanged || rChanged) && state.device) loadDevice();
  else if (!state.tenant && state.tenants && state.tenants.length) select({ tenant: state.tenants[0].tenant_id }, true);
}
window.addEventListener('hashchange', applyHash);

// ---------- navigation: tenants -> projects -> devices ----------

async function loadTenants() {
  try {
    state.tenants = await api(`tenants?limit=${state.tenantLimit}`);
    showError('tenants-error');
  } catch (e) {
    showError('tenants-error', e);
    renderNav();
    return;
  }
  renderNav();
  if (!state.tenant && state.tenants.length) select({ tenant: state.tenants[0].tenant_id }, true);
}

async function loadProjects(cascade) {
  const tenant = state.tenant;
  if (!tenant) return;
  let list;
  try {
    list = await api(`tenants/${enc(tenant)}/projects`);
    if (tenant === state.tenant) showError('projects-error');
  } catch (e) {
    if (tenant === state.tenant) { showError('projects-error', e); renderNav(); }
    return;
  }
  if (tenant !== state.tenant) return;
  state.projects = list;
  renderNav();
  if (!state.project) {
    if (list.length) select({ project: list[0].project_id, device: null }, true);
  } else if (cascade) {
    loadDevices(true);
  }
}

async function loadDevices(cascade) {
  const { tenant, project } = state;
  if (!tenant || !project) return;
  const same = () => tenant === state.tenant && project === state.project;
  let list;
  try {
    list = await api(`tenants/${enc(tenant)}/projects/${enc(project)}/devices`);
    if (same()) showError('devices-error');
  } catch (e) {
    if (same()) { showError('devices-error', e); renderNav(); }
    return;
  }
  if (!same()) return;
  state.devices = list;
  renderNav();
  if (!state.device) {
    if (list.length) select({ device: list[0].device_id }, true);
  } else if (cascade) {
    loadDevice();
  }
}

async function refreshNav() {
  await loadTenants();
  if (state.tenant) await loadProjects(false);
  if (state.project) await loadDevices(false);
}

function navItem(attr, id, sel, href, item, extra) {
  const meta = `${fmtCount(item.messages)} msg · ${ago(item.last_seen)}`;
  const title = [id, extra, `${fmtCount(item.messages)} messages`, 'last seen ' + fmtTime(item.last_seen)]
    .filter(Boolean).join('\n');
  return h('li', { [attr]: id },
    h('a', { href, 'aria-current': id === sel ? 'true' : 'false', title },
      h('span', { class: 'name', text: id }), h('span', { class: 'meta', text: meta })));
}

function fillList(ul, items, emptyText, failed) {
  if (items == null) ul.replaceChildren(...(failed ? [] : [h('li', { class: 'muted', text: 'Loading…' })]));
  else if (!items.length) ul.replaceChildren(h('li', { class: 'muted', text: emptyText }));
  else ul.replaceChildren(...items);
}

const MAX_TENANT_LIMIT = 1000;

// The "more" line under a full page of tenants.
function moreTenants() {
  if (!state.tenants || state.tenants.length < state.tenantLimit) return [];
  if (state.tenantLimit >= MAX_TENANT_LIMIT) {
    return [h('li', { class: 'muted', text: `The first ${fmtCount(MAX_TENANT_LIMIT)} tenants by name.` })];
  }
  const button = h('button', { type: 'button', class: 'more', text: 'Show more tenants' });
  button.addEventListener('click', () => {
    state.tenantLimit = Math.min(state.tenantLimit * 2, MAX_TENANT_LIMIT);
    loadTenants();
  });
  return [h('li', { class: 'more' }, button)];
}

function renderNav() {
  const { tenant, project } = state;
  fillList($('tenants'), state.tenants && state.tenants.map((t) =>
    navItem('data-tenant-id', t.tenant_id, tenant, hashFor({ tenant: t.tenant_id, range: state.range }), t,
      `${t.projects} projects, ${t.devices} devices`)).concat(moreTenants()), 'No tenants yet: nothing stored.',
  !$('tenants-error').hidden);

  $('projects-box').hidden = !tenant;
  fillList($('projects'), state.projects && state.projects.map((p) =>
    navItem('data-project-id', p.project_id, project,
      hashFor({ tenant, project: p.project_id, range: state.range }), p, `${p.devices} devices`)), 'No projects.',
  !$('projects-error').hidden);

  $('devices-box').hidden = !project;
  const filter = $('device-filter').value.trim().toLowerCase();
  const devices = state.devices && state.devices.filter((d) => !filter || d.device_id.toLowerCase().includes(filter));
  $('devices-count').textContent = state.devices ? `(${state.devices.length})` : '';
  fillList($('devices'), devices && devices.map((d) =>
    navItem('data-device-id', d.device_id, state.device,
      hashFor({ tenant, project, device: d.device_id, range: state.range }), d)),
  filter ? 'No device matches.' : 'No devices.', !$('devices-error').hidden);
}
$('device-filter').addEventListener('input', renderNav);

function renderHead() {
  const crumbs = [state.tenant, state.project, state.device].filter(Boolean);
  $('crumbs').replaceChildren(...(crumbs.length
    ? crumbs.map((c) => h('li', { text: c, title: c }))
    : [h('li', { class: 'muted', text: 'Nothing selected' })]));
  for (const b of document.querySelectorAll('.ranges button')) {
    b.setAttribute('aria-pressed', String(b.dataset.range === state.range));
  }
}
for (const b of document.querySelectorAll('.ranges button')) {
  b.addEventListener('click', () => select({ range: b.dataset.range }));
}

// ---------- the selected device: series and latest message ----------

function clearDevice() {
  charts.clear();
  state.fields = [];
  $('fields').replaceChildren();
  $('charts').replaceChildren(h('p', { class: 'muted', text: state.device ? 'Loading…' : 'Select a device to see its data.' }));
  $('latest').textContent = '–';
  $('latest-meta').textContent = '';
  showError('series-error');
  showError('latest-error');
}

async function loadDevice() {
  const { tenant, project, device, range } = state;
  if (!device) return;
  const base = `tenants/${enc(tenant)}/projects/${enc(project)}/devices/${enc(device)}`;
  const [series, latest] = await Promise.allSettled([api(`${base}/series?range=${range}`), api(`${base}/latest`)]);
  if (tenant !== state.tenant || project !== state.project || device !== state.device || range !== state.range) return;
  if (series.status === 'fulfilled') {
    showError('series-error');
    renderSeries(series.value);
  } else {
    showError('series-error', series.reason);
    if (!charts.size) $('charts').replaceChildren();
  }
  if (latest.status === 'fulfilled') {
    showError('latest-error');
    renderLatest(latest.value);
  } else if (latest.reason.status === 404) {
    showError('latest-error');
    $('latest').textContent = 'Nothing to show: ' + latest.reason.message;
    $('latest-meta').textContent = '';
  } else {
    showError('latest-error', latest.reason);
  }
}

function fieldPrefs() {
  try { return JSON.parse(localStorage.getItem(FIELDS_KEY)) || {}; } catch (e) { return {}; }
}
function isShown(field) {
  const pref = fieldPrefs()[field];
  return pref == null ? !HIDDEN_BY_DEFAULT.test(field) : pref;
}
function toggleField(field) {
  const prefs = fieldPrefs();
  prefs[field] = !isShown(field);
  try { localStorage.setItem(FIELDS_KEY, JSON.stringify(prefs)); } catch (e) { /* private mode */ }
  renderCharts();
}

function renderSeries(s) {
  const fields = s && typeof s.fields === 'object' && s.fields ? s.fields : {};
  const to = Number.isFinite(s && s.to) ? s.to : Date.now();
  const from = Number.isFinite(s && s.from) ? s.from : to - RANGE_MS[state.range];
  state.fields = Object.keys(fields);
  for (const name of state.fields) {
    const pts = (Array.isArray(fields[name]) ? fields[name] : [])
      .filter((p) => Array.isArray(p) && Number.isFinite(p[0]) && Number.isFinite(p[1]))
      .sort((a, b) => a[0] - b[0]);
    const c = charts.get(name) || makeChart(name);
    const range = RANGE_MS[s.range] ? s.range : state.range;
    Object.assign(c, { pts, from, to, bucket: RANGE_MS[range] / 300 });
    charts.set(name, c);
  }
  for (const name of [...charts.keys()]) if (!(name in fields)) charts.delete(name);
  renderCharts();
}

function renderCharts() {
  $('fields').replaceChildren(...state.fields.map((f) => {
    const on = isShown(f);
    const sw = h('span', { class: 'sw' });
    if (on) sw.style.background = colorFor(f);
    const b = h('button', { type: 'button', 'aria-pressed': String(on), title: on ? 'Hide chart' : 'Show chart' }, sw, f);
    b.addEventListener('click', () => toggleField(f));
    return b;
  }));
  const shown = state.fields.filter(isShown);
  if (!shown.length) {
    const why = state.fields.length ? 'All fields are hidden; pick one above.' : 'No numeric fields in this range.';
    $('charts').replaceChildren(h('p', { class: 'muted', text: why }));
    return;
  }
  $('charts').replaceChildren(...shown.map((f) => charts.get(f).fig));
  for (const f of shown) paint(charts.get(f));
}

function renderLatest(m) {
  const payload = m && 'payload' in m ? m.payload : m;
  const pre = $('latest');
  if (typeof payload === 'string') pre.textContent = payload;
  else pre.replaceChildren(...highlightJson(JSON.stringify(payload, null, 2)));
  const bits = [];
  if (m && Number.isFinite(m.time)) bits.push(`${fmtTime(m.time)} (${ago(m.time)})`);
  if (m && m.mqtt_topic) bits.push(m.mqtt_topic);
  $('latest-meta').textContent = bits.length ? '· ' + bits.join(' · ') : '';
  $('latest-meta').title = m && m.id ? `id ${m.id}\nreceived ${fmtTime(m.received_at)}` : '';
}

function highlightJson(text) {
  const out = [];
  const re = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
  let last = 0;
  for (let m; (m = re.exec(text));) {
    if (m.index > last) out.push(text.slice(last, m.index));
    const cls = m[1] ? (m[2] ? 'k' : 's') : m[3] ? 'b' : 'n';
    out.push(h('span', { class: 'j' + cls, text: m[1] || m[0] }));
    if (m[2]) out.push(m[2]);
    last = re.lastIndex;
  }
  out.push(text.slice(last));
  return out;
}

// ---------- charts on <canvas> ----------

function makeChart(field) {
  const color = colorFor(field);
  const canvas = h('canvas', { role: 'img', 'aria-label': `${field} over time` });
  const stats = h('span', { class: 'stats' });
  const fig = h('figure', { class: 'chart', 'data-testid': 'chart', 'data-field': field, 'data-points': '0' },
    h('figcaption', {}, h('span', { class: 'fname', text: field, title: field }), stats), canvas);
  const c = { field, color, fig, canvas, stats, pts: [], from: 0, to: 0, bucket: 3000, hover: null };
  canvas.addEventListener('mousemove', (ev) => {
    const r = canvas.getBoundingClientRect();
    c.hover = ev.clientX - r.left;
    paint(c);
  });
  canvas.addEventListener('mouseleave', () => { c.hover = null; paint(c); });
  if (window.ResizeObserver) new ResizeObserver(() => scheduleRedraw()).observe(canvas);
  return c;
}

/** Draw a chart and put what was drawn into its caption and data-points. */
function paint(c) {
  const r = drawChart(c);
  if (!r) return;
  c.fig.dataset.points = String(r.points);
  if (!r.points) c.stats.textContent = 'no data';
  else c.stats.replaceChildren(h('b', { text: fmtNum(r.last) }), `  min ${fmtNum(r.min)} · max ${fmtNum(r.max)}`);
}

let redrawQueued = false;
function scheduleRedraw() {
  if (redrawQueued) return;
  redrawQueued = true;
  requestAnimationFrame(() => {
    redrawQueued = false;
    for (const c of charts.values()) if (c.fig.isConnected) paint(c);
    paintSparkline();
  });
}
window.addEventListener('resize', scheduleRedraw); // also fires when devicePixelRatio changes (zoom)

// ---------- pipeline health ----------

const CARDS = [
  ['status', 'Status'], ['rate', 'Message rate', 'wide'], ['received', 'Received'], ['stored', 'Stored'],
  ['dead', 'Dead-lettered'], ['inflight', 'In flight'], ['journal', 'Journal'], ['latency', 'Latency p50'],
  ['mqtt', 'MQTT'], ['uptime', 'Uptime'],
];
const card = {};
function buildCards() {
  $('health-cards').replaceChildren(...CARDS.map(([key, label, wide]) => {
    const el = h('div', { class: 'card' + (wide ? ' wide' : ''), 'data-metric': key },
      h('div', { class: 'k', text: label }), h('div', { class: 'v', text: '–' }), h('div', { class: 's' }));
    card[key] = { el, wide, v: el.children[1], s: el.children[2] };
    if (key === 'rate') { card.spark = h('canvas', { 'aria-hidden': 'true' }); el.append(card.spark); }
    return el;
  }));
}
function setCard(key, value, sub, tone, title) {
  const c = card[key];
  c.v.textContent = value;
  c.s.textContent = sub || '';
  c.el.className = 'card' + (c.wide ? ' wide' : '') + (tone ? ' ' + tone : '');
  c.el.title = title || '';
}

async function loadHealth() {
  let hl;
  try {
    hl = await api('health');
  } catch (e) {
    showError('health-error', e.status ? e : new ApiError(0, e.message + '. Showing the last data received; retrying.'));
    document.body.classList.toggle('offline', !e.status);
    $('conn').className = 'conn bad';
    $('conn').textContent = e.status ? 'API error' : 'offline, retrying';
    return;
  }
  showError('health-error');
  document.body.classList.remove('offline');
  $('conn').className = 'conn ok';
  $('conn').textContent = 'live · ' + hhmmss(new Date());
  const prev = state.health;
  state.health = hl;
  const now = Date.now();
  let rate = hl.rate_per_s;
  if (!Number.isFinite(rate) && prev && Number.isFinite(hl.received) && Number.isFinite(prev.received)) {
    rate = (hl.received - prev.received) / Math.max(0.001, (now - prev.at) / 1000);
  }
  hl.at = now;
  if (Number.isFinite(rate)) {
    state.rate.push({ t: now, v: rate });
    if (state.rate.length > 90) state.rate.shift();
  }
  const degraded = hl.status && hl.status !== 'ok';
  const reasons = Array.isArray(hl.reasons) ? hl.reasons.join('; ') : '';
  setCard('status', hl.status || '–', reasons, degraded ? 'warn' : 'ok', reasons);
  const peak = Math.max(0, ...state.rate.map((r) => r.v));
  setCard('rate', Number.isFinite(rate) ? fmtNum(rate) + ' /s' : '–', `peak ${fmtNum(peak)} /s, last 3 min`);
  setCard('received', fmtCount(hl.received), '', '', String(hl.received));
  setCard('stored', fmtCount(hl.stored), '', '', String(hl.stored));
  const share = hl.received > 0 && Number.isFinite(hl.dead_lettered) ? (100 * hl.dead_lettered) / hl.received : null;
  setCard('dead', fmtCount(hl.dead_lettered), share == null ? '' : share.toFixed(share < 10 ? 2 : 1) + ' %',
    hl.dead_lettered > 0 ? 'warn' : '', String(hl.dead_lettered));
  setCard('inflight', fmtCount(hl.in_flight));
  setCard('journal', fmtCount(hl.journal_depth), fmtBytes(hl.journal_bytes), '', 'journal_depth · journal_bytes');
  setCard('latency', fmtMs(hl.latency_p50_ms), 'p99 ' + fmtMs(hl.latency_p99_ms));
  const mqtt = hl.mqtt_connected;
  setCard('mqtt', mqtt == null ? '–' : mqtt ? 'connected' : 'disconnected', '', mqtt == null ? '' : mqtt ? 'ok' : 'bad');
  setCard('uptime', fmtDuration(hl.uptime_s));
  paintSparkline();
}

function paintSparkline() {
  if (card.spark) drawSparkline(card.spark, state.rate);
}

// ---------- dead letters ----------

async function loadDeadLetters() {
  let rows;
  try {
    rows = await api('dead-letters?limit=50');
    showError('dl-error');
  } catch (e) {
    showError('dl-error', e);
    if ($('dl-body').querySelector('td.muted')) $('dl-body').replaceChildren(); // drop "Loading…"
    return;
  }
  rows = (Array.isArray(rows) ? rows : []).slice().sort((a, b) => (b.received_at || 0) - (a.received_at || 0));
  $('dl-count').textContent = rows.length ? `(${rows.length} newest)` : '(none)';
  const body = $('dl-body');
  if (!rows.length) {
    body.replaceChildren(h('tr', {}, h('td', { colspan: 5, class: 'muted', text: 'No dead letters.' })));
    return;
  }
  body.replaceChildren(...rows.map((d) => {
    const preview = d.payload_preview == null ? '' : String(d.payload_preview);
    return h('tr', {},
      h('td', { class: 't', text: fmtTime(d.received_at), title: new Date(d.received_at).toISOString() }),
      h('td', {}, h('span', { class: 'reason', text: d.reason || '?' })),
      h('td', { class: 'topic', text: d.mqtt_topic || '', title: d.source ? 'source: ' + d.source : null }),
      h('td', { class: 'err', text: d.error || '' }),
      h('td', { class: 'pl', text: preview.length > 160 ? preview.slice(0, 160) + '…' : preview, title: preview }));
  }));
}

// ---------- start ----------

function every(ms, fn) {
  let busy = false;
  const tick = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try { await fn(); } catch (e) { banner('Dashboard error: ' + (e.message || e)); } finally { busy = false; }
  };
  setInterval(tick, ms);
  tick();
  return tick;
}

window.addEventListener('error', (ev) => banner('Dashboard error: ' + ev.message));
window.addEventListener('unhandledrejection', (ev) => banner('Dashboard error: ' + ((ev.reason && ev.reason.message) || ev.reason)));

buildCards();
applyHash();
const ticks = [every(2000, loadHealth), every(10000, refreshNav), every(5000, loadDevice), every(5000, loadDeadLetters)];
document.addEventListener('visibilitychange', () => { if (!document.hidden) ticks.forEach((t) => t()); });
