// flashgate station console. Plain script, no framework: it reads the
// /api/v1 JSON API and a run's Server-Sent Events, and offers only what the
// caller's role may do (GET /api/v1/whoami lists it). Every text that comes
// from the station is inserted as text (textContent / text nodes), never as
// markup; nothing is styled inline (the page's Content-Security-Policy).
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const FAILURES_KEPT = 50;
const EVENT_TYPES = ['unit-started', 'stage-done', 'unit-passed', 'unit-failed', 'channel-stopped'];
const LABELS = {
  idle: '○\u00a0IDLE', busy: '●\u00a0BUSY', passed: '✓\u00a0PASSED', failed: '✗\u00a0FAILED', stopped: '■\u00a0STOPPED',
};

const $ = (id) => document.getElementById(id);

const state = {
  allowed: new Set(), jobs: [], jobsKey: '', fixtures: [], fixturesKey: '',
  run: null, // the RunStatus shown, with `finished` and `because` once it ended
  finished: false, because: '',
  lastId: 0, // the last event id applied
  replayTo: 0, // events up to this id happened before the page attached
  es: null, retry: null,
  counts: { passed: 0, failed: 0 },
  base: { passed: 0, failed: 0 }, // units before the chart's first second
  series: [], // per second since `origin`: [passed, failed]
  origin: 0, tiles: new Map(), firstTile: false, drawPending: false,
};

// ---- helpers -------------------------------------------------------------

// An element with attributes and children; strings become text nodes.
function h(tag, attrs, ...children) {
  const el = tag.startsWith('svg:')
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function field(id, label, control) {
  return h('div', { class: 'field' }, h('label', { for: id }, label), control);
}

const may = (what) => state.allowed.has(what);
function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return {};
  }
}
const pad = (n) => String(n).padStart(2, '0');
const pct = (x) => `${(x * 100).toFixed(1)} %`;
const num = (x) => Number(x.toFixed(1));

const hm = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}`;
const date = (unix, d = new Date(unix * 1000)) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hm(d)}`;
const clock = (d = new Date()) => `${hm(d)}:${pad(d.getSeconds())}`;

function age(s) {
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

// A call to the station's API: the JSON answer, or an Error carrying the
// API's own sentence (`error.message`).
async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new Error('The station cannot be reached; check the network cable and reload the page.');
  }
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new Error(data?.error?.message || `${method} ${path} failed with HTTP ${r.status}.`);
  return data;
}

// A message in a role="alert" element; none hides it.
function say(id, message) {
  const el = $(id);
  el.textContent = message || '';
  el.hidden = !message;
}
const notice = (message) => say('notice', message);
const runError = (message) => say('run-error', message);

// ---- who is signed in, and what the role may do --------------------------

function renderWho(who) {
  $('who').replaceChildren(
    'Signed in as ',
    h('strong', { 'data-testid': 'who-name' }, who.name),
    h('span', { class: 'role', 'data-testid': 'who-role' }, who.role),
  );
}

function buildStartForm() {
  const form = h(
    'form',
    { id: 'start-form', class: 'start', 'data-testid': 'start-form', novalidate: true },
    field('fixtures', 'Fixture set', h('select', { id: 'fixtures', name: 'fixtures', 'data-testid': 'fixtures' })),
    h('div', { id: 'job-fields', class: 'job-fields' }),
    field('units', 'Units (empty: until done)', h('input', {
      id: 'units', name: 'units', type: 'number', min: 1, step: 1, inputmode: 'numeric', 'data-testid': 'units',
    })),
    h('button', { id: 'start', type: 'submit', class: 'primary', 'data-testid': 'start' }, 'Start run'),
    h('p', { id: 'start-error', class: 'error', role: 'alert', 'data-testid': 'start-error', hidden: true }),
  );
  $('start-slot').replaceWith(h(
    'section',
    { id: 'start-section', 'aria-labelledby': 'start-title' },
    h('h2', { id: 'start-title' }, 'Start a run'),
    form,
  ));
  $('fixtures').addEventListener('change', renderJobFields);
  form.addEventListener('submit', startRun);
}

function buildStopButton() {
  const b = h('button', { id: 'stop', type: 'button', class: 'danger', 'data-testid': 'stop', disabled: true }, 'Stop run');
  b.addEventListener('click', stopRun);
  $('run-actions').append(b);
}

// ---- jobs, fixture sets, the start form ----------------------------------

function windowOf(job) {
  const now = Date.now() / 1000;
  if (now < job.not_before) return ['not yet valid', 'bad'];
  if (now > job.not_after) return ['expired', 'bad'];
  return ['valid', 'ok'];
}

async function loadJobs() {
  const jobs = await api('GET', '/api/v1/jobs');
  const key = JSON.stringify(jobs);
  if (key === state.jobsKey) return;
  const idsChanged = jobs.map((j) => j.id).join() !== state.jobs.map((j) => j.id).join();
  state.jobs = jobs;
  state.jobsKey = key;
  renderJobs();
  const box = $('job-fields');
  if (box && (idsChanged || !box.contains(document.activeElement))) renderJobFields();
}

function renderJobs() {
  const bundle = may('GET /api/v1/audit/bundle/{job}');
  const col = $('jobs-bundle-col');
  if (!bundle && col) col.remove();
  const rows = state.jobs.map((j) => {
    const [win, cls] = windowOf(j);
    const quota = h('meter', {
      min: 0, max: Math.max(j.quota, 1), value: j.used, low: j.quota * 0.8, high: j.quota * 0.95, optimum: 0,
      'aria-label': `Quota used of ${j.product}`,
    });
    return h(
      'tr',
      { 'data-testid': 'job', 'data-job': j.id },
      h('td', {}, h('strong', {}, j.product), j.description ? h('span', { class: 'line' }, j.description) : null,
        h('span', { class: 'id' }, j.id)),
      h('td', {}, j.driver, j.running ? h('span', { class: 'line' }, '(running)') : null),
      h('td', { 'data-testid': 'quota' }, quota, `${j.used} / ${j.quota} used, ${j.quota_left} left`),
      h('td', {}, h('span', { class: `window ${cls}`, 'data-testid': 'window' }, win),
        h('span', { class: 'line' }, `${date(j.not_before)} to ${date(j.not_after)}`)),
      bundle
        ? h('td', {}, h('a', {
          href: `/api/v1/audit/bundle/${encodeURIComponent(j.id)}`, download: `bundle-${j.id}.tar`, 'data-testid': 'bundle',
        }, 'Download audit bundle'))
        : null,
    );
  });
  if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: 5 }, 'No jobs are imported on this station.')));
  $('jobs').tBodies[0].replaceChildren(...rows);
}

async function loadFixtures() {
  if (!$('fixtures')) return; // only the start form needs them
  const sets = await api('GET', '/api/v1/fixtures');
  const key = JSON.stringify(sets);
  if (key === state.fixturesKey) return;
  state.fixtures = sets;
  state.fixturesKey = key;
  const select = $('fixtures');
  const chosen = select.value;
  select.replaceChildren(...sets.map((f) => h(
    'option',
    { value: f.name, selected: f.name === chosen },
    `${f.name}: ${f.channels.length} channels (${[...new Set(f.drivers)].join(', ')})`,
  )));
  if (!sets.length) select.append(h('option', { value: '' }, 'no fixture set defined'));
  renderJobFields();
}

// One job select per driver of the chosen fixture set.
function renderJobFields() {
  const box = $('job-fields');
  if (!box) return;
  const set = state.fixtures.find((f) => f.name === $('fixtures').value);
  const drivers = set ? [...new Set(set.drivers)] : [];
  const before = new Map([...box.querySelectorAll('select')].map((s) => [s.dataset.driver, s.value]));
  box.replaceChildren(...drivers.map((driver, i) => {
    const jobs = state.jobs.filter((j) => j.driver === driver);
    const select = h('select', { id: `job-${i}`, name: 'jobs', 'data-driver': driver, 'data-testid': 'job-select' },
      ...jobs.map((j) => h('option', { value: j.id, selected: before.get(driver) === j.id },
        `${j.product} ${j.id.slice(0, 8)}… (${j.quota_left} left, ${windowOf(j)[0]})`)));
    if (!jobs.length) select.append(h('option', { value: '' }, `no job for ${driver}`));
    return field(`job-${i}`, `Job for ${driver}`, select);
  }));
}

async function startRun(ev) {
  ev.preventDefault();
  say('start-error', null);
  const body = {
    jobs: [...$('job-fields').querySelectorAll('select')].map((s) => s.value).filter(Boolean),
    fixtures: $('fixtures').value,
  };
  const units = $('units').value.trim();
  if (units !== '') {
    body.units = Number(units);
    if (!Number.isInteger(body.units) || body.units < 1) {
      say('start-error', 'Units must be a whole number from 1, or empty to run until the boards or the quota run out.');
      return;
    }
  }
  const button = $('start');
  button.disabled = true;
  performance.mark('fg-start');
  try {
    attach(await api('POST', '/api/v1/runs', body));
    loadJobs().catch((e) => notice(e.message));
  } catch (e) {
    say('start-error', e.message);
  } finally {
    button.disabled = false;
  }
}

async function stopRun() {
  const run = state.run;
  if (!run) return;
  $('stop').disabled = true;
  runError(null);
  try {
    const s = await api('POST', `/api/v1/runs/${encodeURIComponent(run.id)}/stop`);
    if (state.run === run) run.stop_requested_by = s.stop_requested_by;
  } catch (e) {
    runError(e.message);
  }
  renderRunState();
}

// ---- the current run -----------------------------------------------------

async function pickRun(pending) {
  const runs = await (pending || api('GET', '/api/v1/runs'));
  const live = runs.filter((r) => !r.finished);
  const newest = live[live.length - 1];
  if (newest && (!state.run || (state.finished && newest.id !== state.run.id))) {
    attach(newest);
  } else if (!state.run && runs.length) {
    attach(runs[runs.length - 1]);
  } else if (state.run && !state.finished) {
    const mine = runs.find((r) => r.id === state.run.id);
    if (mine) state.run.stop_requested_by = mine.stop_requested_by;
    renderRunState();
  }
}

function attach(status) {
  closeStream();
  Object.assign(state, {
    run: status, finished: false, because: '', lastId: 0, replayTo: status.last_event_id,
    counts: { passed: 0, failed: 0 }, base: { passed: 0, failed: 0 }, series: [], origin: Date.now(),
  });
  state.tiles.clear();
  $('tiles').replaceChildren();
  $('failures').replaceChildren();
  $('failures-empty').hidden = false;
  runError(null);
  for (const c of status.channels) applyStatus(c);
  render();
  // From the run's first event: the counts, the tiles and the failures are
  // the events' own (events before the page opened count, not chart).
  connect();
}

function connect() {
  const run = state.run;
  const es = new EventSource(`/api/v1/runs/${encodeURIComponent(run.id)}/events?after=${state.lastId}`);
  state.es = es;
  for (const type of EVENT_TYPES) es.addEventListener(type, (m) => onEvent(type, m));
  es.addEventListener('run-finished', onFinished);
  es.addEventListener('lagged', () => { closeStream(); resync(true); });
  es.onopen = () => state.es === es && notice(null);
  es.onerror = () => {
    if (state.es !== es) return;
    closeStream();
    notice('The live events from the station stopped; reconnecting…');
    state.retry = setTimeout(() => resync(false), 2000);
  };
}

function closeStream() {
  if (state.es) state.es.close();
  state.es = null;
  clearTimeout(state.retry);
  state.retry = null;
}

// Reads the run's status again, then follows its events after the last one
// applied; after `lagged` (events this page missed are no longer kept), the
// status is the truth and the events follow from its last event id.
async function resync(lagged) {
  state.retry = null;
  const run = state.run;
  let s;
  try {
    s = await api('GET', `/api/v1/runs/${encodeURIComponent(run.id)}`);
  } catch (e) {
    notice(e.message);
    if (state.run === run) state.retry = setTimeout(() => resync(lagged), 5000);
    return;
  }
  if (state.run !== run) return;
  s.stop_requested_by = s.stop_requested_by || run.stop_requested_by;
  state.run = s;
  if (lagged) {
    const counts = { passed: s.passed, failed: s.failed };
    Object.assign(state, {
      counts, base: { ...counts }, series: [], origin: Date.now(), lastId: s.last_event_id, replayTo: s.last_event_id,
      finished: s.finished,
    });
    for (const c of s.channels) applyStatus(c);
  }
  render();
  if (!state.finished) connect();
}

function tile(channel) {
  let t = state.tiles.get(channel);
  if (t) return t;
  t = {
    channel, board: null, stage: null, result: null, stopped: null, busy: false, passed: 0, failed: 0,
    el: h('li', { class: 'tile idle', 'data-testid': 'tile', 'data-channel': channel }),
  };
  state.tiles.set(channel, t);
  const next = [...state.tiles.values()].filter((o) => o.channel > channel).sort((a, b) => a.channel - b.channel)[0];
  $('tiles').insertBefore(t.el, next ? next.el : null);
  renderTile(t);
  return t;
}

function applyStatus(c) {
  const t = tile(c.channel);
  Object.assign(t, {
    board: c.board, busy: c.board !== null && c.board !== undefined && !c.stopped,
    stage: c.stage, result: c.last_result, stopped: c.stopped,
  });
  renderTile(t);
}

function tileState(t) {
  if (t.stopped) return 'stopped';
  if (t.busy) return 'busy';
  if (!t.result) return 'idle';
  return t.result === 'passed' ? 'passed' : 'failed';
}

function renderTile(t) {
  const s = tileState(t);
  t.el.className = `tile ${s}`;
  Object.assign(t.el.dataset, { state: s, passed: t.passed, failed: t.failed });
  let doing = t.stage ? `stage: ${t.stage}` : 'stage: —';
  if (s === 'stopped') doing = t.stopped === 'stopped' ? 'by the operator' : t.stopped;
  else if (t.busy && !t.stage) doing = 'stage: starting';
  t.el.replaceChildren(
    h('span', { class: 'ch' }, `Channel ${t.channel}`),
    h('span', { class: 'state', 'data-testid': 'tile-state' }, LABELS[s]),
    h('span', { class: 'line' }, doing),
    h('span', { class: 'line' }, t.board === null || t.board === undefined ? 'board: —' : `board: ${t.board}`),
    h('span', { class: 'line', 'data-testid': 'tile-last' }, `last: ${t.result || '—'}`),
    h('span', { class: 'line' }, `${t.passed} passed · ${t.failed} failed`),
  );
}

function onEvent(type, m) {
  const id = Number(m.lastEventId);
  if (id && id <= state.lastId) return; // seen before a reconnect
  if (id) state.lastId = id;
  const e = parse(m.data);
  if (typeof e.channel !== 'number') return;
  const t = tile(e.channel);
  const live = id > state.replayTo;
  if (type === 'unit-started') Object.assign(t, { board: e.board, stage: null, busy: true });
  else if (type === 'stage-done') Object.assign(t, { board: e.board, stage: e.stage, busy: true });
  else if (type === 'unit-passed') {
    Object.assign(t, { busy: false, result: 'passed', passed: t.passed + 1 });
    count('passed', live);
  } else if (type === 'unit-failed') {
    const stage = (e.unit && e.unit.stage) || 'unknown stage';
    Object.assign(t, { busy: false, result: `failed at ${stage}`, failed: t.failed + 1 });
    count('failed', live);
    addFailure(e, live);
  } else if (type === 'channel-stopped') Object.assign(t, { busy: false, stopped: e.reason || 'stopped' });
  renderTile(t);
  if (!state.firstTile) {
    state.firstTile = true;
    performance.mark('fg-first-tile');
  }
}

function count(kind, live) {
  state.counts[kind] += 1;
  if (live) {
    const second = Math.max(0, Math.floor((Date.now() - state.origin) / 1000));
    while (state.series.length <= second) state.series.push([0, 0]);
    state.series[second][kind === 'passed' ? 0 : 1] += 1;
  } else {
    state.base[kind] += 1;
  }
  scheduleRender();
}

function addFailure(e, live) {
  const u = e.unit || {};
  const list = $('failures');
  list.prepend(h(
    'li',
    { 'data-testid': 'failure' },
    live ? `${clock()} ` : null,
    h('span', { class: 'stage' }, u.stage || 'unknown stage'),
    ` · channel ${e.channel}, board ${e.board}`,
    u.serial ? `, ${u.serial}` : null,
    `: ${u.reason || u.kind || 'no reason given'}`,
  ));
  while (list.children.length > FAILURES_KEPT) list.lastElementChild.remove();
  $('failures-empty').hidden = true;
}

function onFinished(m) {
  const data = parse(m.data);
  closeStream();
  const sums = (data.summaries || []).map((j) => j.summary || {});
  const passed = sums.reduce((n, s) => n + (s.passed || 0), 0);
  const failed = sums.reduce((n, s) => n + Object.values(s.failed_by_stage || {}).reduce((a, b) => a + b, 0), 0);
  // The summaries are the record; the counts agree unless events were missed.
  if (sums.length && (passed !== state.counts.passed || failed !== state.counts.failed)) {
    state.counts = { passed, failed };
  }
  state.because = [...new Set(sums.map((s) => s.stopped_because).filter(Boolean))].join('; ');
  state.finished = true;
  state.run.finished = true;
  render();
  Promise.all([loadJobs(), loadCheckpoint()]).catch((e) => notice(e.message));
}

function renderRunState() {
  const r = state.run;
  const el = $('run-state');
  let s = 'none';
  let text = 'No run yet';
  if (r && state.finished) {
    s = 'finished';
    text = `Run ${r.id} on ${r.fixtures}: finished${state.because ? ` (${state.because})` : ''}`;
  } else if (r && r.stop_requested_by) {
    s = 'stopping';
    text = `Run ${r.id} on ${r.fixtures}: stopping, the units in flight finish`;
  } else if (r) {
    s = 'live';
    text = `Run ${r.id} on ${r.fixtures}: running`;
  }
  el.dataset.state = s;
  el.textContent = text;
  $('run-by').textContent = r ? `Started ${date(r.started_at)} by ${r.started_by}` : '';
  const stop = $('stop');
  if (stop) stop.disabled = s !== 'live';
}

function renderTotals() {
  const { passed, failed } = state.counts;
  const el = $('totals');
  Object.assign(el.dataset, { passed, failed });
  const n = passed + failed;
  el.replaceChildren(
    h('span', { class: 'n-passed', 'data-testid': 'total-passed' }, `${passed} passed`),
    ' · ',
    h('span', { class: 'n-failed', 'data-testid': 'total-failed' }, `${failed} failed`),
    ' · ',
    n ? `yield ${pct(passed / n)}` : 'no units yet',
  );
}

function render() {
  state.drawPending = false;
  renderRunState();
  renderTotals();
  drawChart();
}

// Totals and chart at most once a second (the totals are a live region).
function scheduleRender() {
  if (state.drawPending) return;
  state.drawPending = true;
  setTimeout(() => {
    if (state.drawPending) render();
  }, 1000);
}

// Bars: units passed (below) and failed (above) per interval, at most 60
// intervals; the line: cumulative yield, 0 to 100 %.
function drawChart() {
  const [W, H, L, R, T, B] = [640, 180, 44, 48, 26, 24]; // the box, its margins
  const ph = H - T - B;
  const per = Math.max(1, Math.ceil(state.series.length / 60));
  const bars = [];
  for (let i = 0; i < state.series.length; i += per) {
    const slice = state.series.slice(i, i + per);
    bars.push([slice.reduce((n, s) => n + s[0], 0), slice.reduce((n, s) => n + s[1], 0)]);
  }
  const max = Math.max(1, ...bars.map(([p, f]) => p + f));
  const bw = (W - L - R) / Math.max(bars.length, 20);
  const text = (x, y, t, anchor) => h('svg:text', { class: 'chart-text', x, y, 'text-anchor': anchor }, t);
  const line = (cls, x1, y1, x2, y2) => h('svg:line', { class: cls, x1, y1, x2, y2 });
  const kids = [
    line('axis', L, H - B, W - R, H - B), line('axis', L, T, L, H - B), line('axis', W - R, T, W - R, H - B),
    text(L - 6, H - B, '0', 'end'), text(L - 6, T + 10, String(max), 'end'),
    text(W - R + 6, T + 10, '100 %'), text(W - R + 6, H - B, '0 %'), text(L, H - 6, `units per ${per} s`),
    h('svg:rect', { class: 'bar-passed', x: L, y: 6, width: 12, height: 12 }), text(L + 16, 17, 'passed'),
    h('svg:rect', { class: 'bar-failed', x: L + 80, y: 6, width: 12, height: 12 }), text(L + 96, 17, 'failed'),
    line('yield-line', L + 150, 12, L + 170, 12), text(L + 176, 17, 'yield (cumulative)'),
  ];
  let cp = state.base.passed;
  let cf = state.base.failed;
  const points = [];
  bars.forEach(([p, f], i) => {
    const x = L + i * bw;
    const hp = (p / max) * ph;
    const hf = (f / max) * ph;
    if (p) kids.push(h('svg:rect', { class: 'bar-passed', x: num(x), y: num(H - B - hp), width: num(bw * 0.8), height: num(hp) }));
    if (f) kids.push(h('svg:rect', { class: 'bar-failed', x: num(x), y: num(H - B - hp - hf), width: num(bw * 0.8), height: num(hf) }));
    cp += p;
    cf += f;
    if (cp + cf) points.push(`${num(x + bw * 0.4)},${num(T + (1 - cp / (cp + cf)) * ph)}`);
  });
  if (points.length) kids.push(h('svg:polyline', { class: 'yield-line', points: points.join(' ') }));
  const { passed, failed } = state.counts;
  const n = passed + failed;
  const title = n ? `${passed} passed, ${failed} failed, yield ${pct(passed / n)}` : 'No units yet';
  $('chart').replaceChildren(h('svg:title', {}, `Yield over time: ${title}`), ...kids);
}

// ---- the audit log -------------------------------------------------------

async function loadCheckpoint() {
  const c = await api('GET', '/api/v1/audit/checkpoints');
  const rows = [['Records', `${c.size} (${c.unprotected} after the last checkpoint)`]];
  if (c.latest) {
    rows.push(
      ['Last checkpoint', `covers ${c.latest.size} records`],
      ['Root', h('code', { 'data-testid': 'checkpoint-root' }, c.latest.root)],
      ['Signed', c.latest.age_seconds === null ? 'age unknown' : age(c.latest.age_seconds)],
    );
  } else {
    rows.push(['Last checkpoint', 'none signed yet']);
  }
  rows.push(['Read at', clock()]);
  $('checkpoint').replaceChildren(...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

// ---- start-up and refresh ------------------------------------------------

async function refresh(tick) {
  try {
    await pickRun();
    if (tick % 2 === 0) await Promise.all([loadJobs(), loadCheckpoint()]);
    if (tick % 6 === 0) await loadFixtures();
    if (!state.retry) notice(null);
  } catch (e) {
    notice(e.message);
  }
}

async function init() {
  // The runs are asked for at once: the tiles need them, not the role.
  const runs = api('GET', '/api/v1/runs');
  runs.catch(() => {}); // reported by pickRun below
  try {
    const who = await api('GET', '/api/v1/whoami');
    state.allowed = new Set(who.allowed);
    renderWho(who);
    if (may('POST /api/v1/runs')) buildStartForm();
    if (may('POST /api/v1/runs/{id}/stop')) buildStopButton();
    await Promise.all([loadJobs(), loadFixtures(), loadCheckpoint(), pickRun(runs)]);
  } catch (e) {
    notice(e.message);
  }
  render();
  document.documentElement.dataset.ready = 'true';
  let tick = 0;
  setInterval(() => refresh(++tick), 5000);
}

init();
