// Drives the console of a running `flashgate serve` in Debian's Chromium
// (playwright-core, no test runner); tests/console.rs starts the station and
// runs this script. Progress goes to stderr; the last line on stdout is a JSON
// report that the Rust test checks against the API.
//
// Environment: CONSOLE_URL, OPERATOR_CERT / OPERATOR_KEY, AUDITOR_CERT /
// AUDITOR_KEY (PEM files), FIXTURES (a sim fixture set), JOB, UNITS,
// CHANNELS (default 8), OUT_DIR (screenshots), CHROMIUM (default
// /usr/bin/chromium).

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const started = Date.now();
const log = (...a) => console.error(`[${((Date.now() - started) / 1000).toFixed(1)} s]`, ...a);

function env(name, fallback) {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') throw new Error(`${name} is not set`);
  return v;
}

const url = env('CONSOLE_URL');
const origin = new URL(url).origin;
const outDir = env('OUT_DIR');
const channels = Number(env('CHANNELS', '8'));
fs.mkdirSync(outDir, { recursive: true });

// The whole script has a bound of its own.
setTimeout(() => {
  log('console.mjs: timed out');
  process.exit(3);
}, 200_000).unref();

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

// Records every value a tile's data-state takes, so that a state shown for
// a moment between two events is not missed.
function watchTiles() {
  window.__seen = {};
  new MutationObserver((records) => {
    for (const r of records) {
      const el = r.target;
      if (el.dataset && el.dataset.testid === 'tile') {
        (window.__seen[el.dataset.channel] ||= []).push(el.dataset.state);
      }
    }
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ['data-state'] });
}

async function open(browser, role) {
  const R = role.toUpperCase();
  const context = await browser.newContext({
    ignoreHTTPSErrors: true, // the server's trust is tested elsewhere (curl, reqwest)
    clientCertificates: [{ origin, certPath: env(`${R}_CERT`), keyPath: env(`${R}_KEY`) }],
    viewport: { width: 1280, height: 1000 },
    acceptDownloads: true,
  });
  const page = await context.newPage();
  const problems = [];
  const refused = []; // responses >= 400, checked against what the test provoked
  page.on('pageerror', (e) => problems.push(`page error: ${e}`));
  page.on('console', (m) => {
    // A refused request is logged by Chromium too; those are in `refused`.
    if (m.text().startsWith('Failed to load resource')) return;
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) refused.push(`${r.request().method()} ${new URL(r.url()).pathname} ${r.status()}`);
  });
  await page.addInitScript(watchTiles);
  // Bytes of the first load: every response body finished until the page
  // says it is ready (the event stream, still open, is not counted).
  const load = { bytes: 0, responses: 0, urls: [] };
  const pending = [];
  let counting = true;
  page.on('requestfinished', (req) => {
    if (!counting) return;
    pending.push(req.sizes().then((s) => {
      load.bytes += s.responseBodySize;
      load.responses += 1;
      load.urls.push(new URL(req.url()).pathname);
    }));
  });
  const t0 = Date.now();
  const response = await page.goto(url, { waitUntil: 'load' });
  check(response && response.status() === 200, `${role}: the console loads (${response && response.status()})`);
  const csp = response.headers()['content-security-policy'] || '';
  check(csp.includes("script-src 'self'"), `${role}: the page has its CSP`);
  await page.waitForSelector('html[data-ready="true"]', { timeout: 30_000 });
  await Promise.all(pending);
  counting = false;
  load.ready_ms = Date.now() - t0;
  log(`${role}: loaded, ${load.bytes} bytes in ${load.responses} responses (${load.urls.join(' ')})`);
  const shownRole = await page.textContent('[data-testid=who-role]');
  check(shownRole === role, `${role}: the page says who is signed in (${shownRole})`);
  return { context, page, problems, refused, load };
}

const mark = (page, name) => page.evaluate((n) => {
  const e = performance.getEntriesByName(n)[0];
  return e ? e.startTime : null;
}, name);

async function pageTotals(page) {
  return page.$eval('#totals', (el) => ({ passed: Number(el.dataset.passed), failed: Number(el.dataset.failed) }));
}

async function main() {
  const browser = await chromium.launch({
    executablePath: env('CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const pages = [];
  try {
    // The operator: the start form and the stop button are there.
    const op = await open(browser, 'operator');
    pages.push(['operator', op]);
    const { page } = op;
    for (const id of ['start-form', 'start', 'stop', 'fixtures', 'units']) {
      check(await page.$(`#${id}`), `operator: #${id} exists`);
    }
    check(await page.$eval('#stop', (b) => b.disabled), 'operator: stop is disabled without a live run');
    await page.selectOption('#fixtures', env('FIXTURES'));
    await page.selectOption('#job-fields select', env('JOB'));
    await page.fill('#units', env('UNITS'));
    // By keyboard: from the units field, Tab reaches the start button, with
    // a visible focus ring, and Enter starts the run.
    await page.focus('#units');
    await page.keyboard.press('Tab');
    const focus = await page.evaluate(() => {
      const el = document.activeElement;
      const s = getComputedStyle(el);
      return { id: el.id, outline: s.outlineStyle, width: parseFloat(s.outlineWidth) };
    });
    check(focus.id === 'start' && focus.outline !== 'none' && focus.width >= 2,
      `operator: Tab reaches a visibly focused start button (${JSON.stringify(focus)})`);
    await page.keyboard.press('Enter');
    await page.waitForSelector('#run-state[data-state="live"]', { timeout: 30_000 });
    const runId = await page.$eval('#run-state', (el) => el.textContent.split(' ')[1]);
    log(`operator: run ${runId} started`);

    // A second start of the same job is refused; the page shows the API's sentence.
    await page.click('#start');
    await page.waitForSelector('#start-error:not([hidden])', { timeout: 15_000 });
    const startError = await page.textContent('#start-error');
    check(startError.length > 10 && !/HTTP \d+/.test(startError), `operator: the API's error sentence is shown (${startError})`);
    log(`operator: second start refused: ${startError}`);

    // Every channel's tile has shown a unit passed and a unit in flight, the
    // tiles' counts add up to the totals, and the totals reach the channels.
    await page.waitForFunction((n) => {
      const tiles = [...document.querySelectorAll('[data-testid=tile]')];
      if (tiles.length !== n) return false;
      const sum = tiles.reduce((a, t) => a + Number(t.dataset.passed), 0);
      const total = Number(document.getElementById('totals').dataset.passed);
      return tiles.every((t) => {
        const seen = window.__seen[t.dataset.channel] || [];
        return Number(t.dataset.passed) >= 1 && seen.includes('busy') && seen.includes('passed');
      }) && total >= n && sum >= total;
    }, channels, { timeout: 120_000, polling: 100 });
    const startToTile = (await mark(page, 'fg-first-tile')) - (await mark(page, 'fg-start'));
    log(`operator: every tile passed a unit; start to first tile update ${startToTile.toFixed(0)} ms`);

    // The auditor opens the console while the run goes on: it follows the
    // same run, with no start form and no stop button, and a bundle link.
    const au = await open(browser, 'auditor');
    pages.push(['auditor', au]);
    for (const id of ['start-form', 'start', 'stop', 'fixtures', 'units']) {
      check(!(await au.page.$(`#${id}`)), `auditor: no #${id} in the DOM`);
    }
    check((await au.page.$$('[data-testid=bundle]')).length >= 1, 'auditor: a bundle download link');
    await au.page.waitForFunction(() => performance.getEntriesByName('fg-first-tile').length > 0, null, { timeout: 30_000 });
    const auditorFirstTile = await mark(au.page, 'fg-first-tile');
    // Where the time to the first tile went: the requests of the first load.
    const auditorTimeline = await au.page.evaluate(() => performance.getEntriesByType('resource')
      .concat(performance.getEntriesByType('navigation'))
      .map((e) => `${new URL(e.name).pathname}${new URL(e.name).search} ${e.startTime.toFixed(0)}-${e.responseStart.toFixed(0)} ms`)
      .join(', '));
    log(`auditor: timeline: ${auditorTimeline}`);
    const auRun = await au.page.$eval('#run-state', (el) => ({ state: el.dataset.state, text: el.textContent }));
    check(auRun.state === 'live' && auRun.text.includes(runId), `auditor: follows the live run (${JSON.stringify(auRun)})`);
    log(`auditor: navigation to first live tile update ${auditorFirstTile.toFixed(0)} ms`);
    await au.page.waitForFunction(() => Number(document.getElementById('totals').dataset.passed) > 0);

    // The auditor's network drops for a moment: the page says so, reconnects
    // with ?after= and goes on (its totals are checked against the summary).
    await au.context.setOffline(true);
    await au.page.waitForSelector('#notice:not([hidden])', { timeout: 20_000 });
    const lost = await au.page.textContent('#notice');
    log(`auditor: offline: ${lost}`);
    await au.context.setOffline(false);
    await au.page.waitForSelector('#notice[hidden]', { state: 'attached', timeout: 20_000 });
    log('auditor: back online');
    // Chromium keeps an open event stream through that; a stream that
    // breaks (here: its error handler called as the browser would) is
    // followed again from the last event seen, with ?after=.
    const resumed = au.page.waitForRequest((r) => /\/events\?after=[1-9]/.test(r.url()), { timeout: 20_000 });
    await au.page.evaluate(() => state.es.dispatchEvent(new Event('error')));
    await au.page.waitForSelector('#notice:not([hidden])', { timeout: 5_000 });
    const again = new URL((await resumed).url());
    await au.page.waitForSelector('#notice[hidden]', { state: 'attached', timeout: 20_000 });
    log(`auditor: the stream was followed again from ${again.pathname}${again.search}`);

    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(outDir, 'console-operator-live.png') });

    // Stop from the operator's page; both pages show the run finished.
    await page.click('#stop');
    await page.waitForSelector('#run-state[data-state="stopping"], #run-state[data-state="finished"]', { timeout: 15_000 });
    log('operator: stop pressed');
    for (const [who, p] of [['operator', page], ['auditor', au.page]]) {
      await p.waitForSelector('#run-state[data-state="finished"]', { timeout: 90_000 });
      await p.waitForFunction(() => [...document.querySelectorAll('[data-testid=tile]')]
        .every((t) => t.dataset.state === 'stopped'), null, { timeout: 15_000 });
      log(`${who}: the run is shown finished`);
    }
    const opTotals = await pageTotals(page);
    const tilesPassedSum = await page.$$eval('[data-testid=tile]', (ts) => ts.reduce((a, t) => a + Number(t.dataset.passed), 0));
    const failuresShown = await page.$$eval('[data-testid=failure]', (l) => l.length);
    const runState = await page.textContent('#run-state');
    const auTotals = await pageTotals(au.page);
    log(`operator: ${JSON.stringify(opTotals)}, tiles ${tilesPassedSum}, ${failuresShown} failures listed; ${runState}`);

    // Let the jobs and the checkpoint refresh after the run, then the pictures.
    await page.waitForFunction(() => !document.getElementById('jobs').textContent.includes('(running)'),
      null, { timeout: 15_000 });
    await page.screenshot({ path: path.join(outDir, 'console-operator.png'), fullPage: true });
    await au.page.screenshot({ path: path.join(outDir, 'console-auditor.png'), fullPage: true });

    // The auditor downloads the job's bundle through the page's link.
    const [download] = await Promise.all([
      au.page.waitForEvent('download', { timeout: 60_000 }),
      au.page.click('[data-testid=bundle]'),
    ]);
    const file = await download.path();
    const bundle = { name: download.suggestedFilename(), bytes: fs.statSync(file).size };
    log(`auditor: downloaded ${bundle.name}, ${bundle.bytes} bytes`);

    for (const [who, p] of pages) {
      check(p.problems.length === 0, `${who}: no script errors or CSP violations: ${p.problems.join(' | ')}`);
    }
    check(op.refused.join() === 'POST /api/v1/runs 409', `operator: only the second start was refused: ${op.refused}`);
    check(au.refused.length === 0, `auditor: nothing refused: ${au.refused}`);
    const report = {
      run_id: runId,
      operator: {
        first_load: op.load,
        start_to_first_tile_ms: Math.round(startToTile),
        totals: opTotals,
        tiles_passed_sum: tilesPassedSum,
        failures_shown: failuresShown,
        run_state: runState,
        start_error: startError,
      },
      auditor: {
        first_load: au.load,
        first_tile_ms: Math.round(auditorFirstTile),
        timeline: auditorTimeline,
        totals: auTotals,
        bundle,
      },
    };
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } catch (e) {
    for (const [who, p] of pages) {
      await p.page.screenshot({ path: path.join(outDir, `console-failed-${who}.png`), fullPage: true }).catch(() => {});
      log(`${who}: problems: ${p.problems.join(' | ') || 'none'}; refused: ${p.refused.join(', ') || 'none'}`);
      const seen = await p.page.evaluate(() => JSON.stringify({
        notice: document.getElementById('notice').textContent,
        run: document.getElementById('run-state').textContent,
        totals: document.getElementById('totals').textContent,
      })).catch((err) => String(err));
      log(`${who}: the page showed ${seen}`);
    }
    throw e;
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(0), (e) => {
  log(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
