// The dashboard in a real Chromium against a real node: `pacer dev` (the built binary) on a
// scratch database, with tokens from `pacer token`. Run with `npm ci && npm test` here, after
// `cargo build -p pacer-server`. Screenshots go to target/browser/; with PACER_UPDATE_DOCS=1 the
// overview is also written to docs/overview.png for the README.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, existsSync, copyFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const axeSource = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const binary = process.env.PACER_BIN || path.join(process.env.CARGO_TARGET_DIR ? path.resolve(root, process.env.CARGO_TARGET_DIR) : path.join(root, 'target'), 'debug', 'pacer');
const browserPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const output = process.env.PACER_BROWSER_OUTPUT || path.join(root, 'target', 'browser');
const serverUrl = process.env.PACER_TEST_POSTGRES || 'postgres://postgres@127.0.0.1:5432';
const database = `pacer_browser_${process.pid}_${Date.now()}`;
const secret = randomBytes(32).toString('hex');

/** The environment every `pacer` command of this test runs with (nothing from outside). */
const env = {
  PATH: process.env.PATH,
  HOME: process.env.HOME || '/tmp',
  PACER_DATABASE_URL: `${serverUrl}/${database}`,
  PACER_LISTEN: '127.0.0.1:0',
  PACER_NODE_ID: 'browser-1',
  PACER_JWT_HS256_SECRET: secret,
  PACER_LOG__FORMAT: 'json',
  PACER_LOG__LEVEL: 'warn',
  // The 500-job overview is set up through the API; the write limit would make that slow.
  PACER_AUTH__RATE_LIMIT_PER_SECOND: '5000',
  PACER_AUTH__RATE_LIMIT_BURST: '5000',
};

let node;
let base;
let browser;
let page;
const tokens = {};
const cspViolations = [];
let screenshotCount = 0;

function mint(role, sub) {
  return execFileSync(binary, ['token', '--role', role, '--sub', sub, '--ttl', '2h'], { env }).toString().trim();
}

async function call(method, pathname, token, body) {
  const res = await fetch(base + pathname, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null, headers: res.headers };
}

async function until(what, check, timeout = 20000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function shot(p, name, fullPage = true) {
  screenshotCount += 1;
  const file = path.join(output, `${String(screenshotCount).padStart(2, '0')}-${name}.png`);
  await p.screenshot({ path: file, fullPage });
  return file;
}

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const p = await context.newPage();
  p.on('console', (msg) => {
    if (/Content Security Policy/i.test(msg.text())) cspViolations.push(msg.text());
  });
  p.on('pageerror', (err) => cspViolations.push(`page error: ${err.message}`));
  return p;
}

async function signIn(p, token) {
  await p.goto(`${base}/`);
  await p.waitForURL(/\/ui#?\/?(signin)?$/);
  await p.getByLabel('API token').fill(token);
  await p.getByRole('button', { name: 'Sign in' }).click();
  await p.locator('#who-name').waitFor();
}

before(async () => {
  mkdirSync(output, { recursive: true });
  assert.ok(existsSync(binary), `${binary} is missing: run \`cargo build -p pacer-server\` first`);
  node = spawn(binary, ['dev'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  node.stdout.on('data', (d) => { stdout += d; });
  node.stderr.on('data', (d) => { stderr += d; });
  base = await until('the dev node to print its dashboard URL', () => {
    if (node.exitCode !== null) throw new Error(`pacer dev exited ${node.exitCode}: ${stderr}${stdout}`);
    const first = stdout.trim().split('\n')[0] || '';
    const match = /^Pacer dashboard: (http:\/\/\S+)\/ui\b/.exec(first);
    return match && match[1];
  }, 60000);
  tokens.admin = mint('admin', 'ada');
  tokens.operator = mint('operator', 'olga');
  tokens.upstream = mint('upstream', 'ursula');
  browser = await chromium.launch({ executablePath: browserPath, headless: true, args: ['--no-sandbox'] });
  page = await newPage();
});

after(async () => {
  if (browser) await browser.close();
  if (node && node.exitCode === null) {
    const exited = new Promise((r) => node.once('exit', r));
    node.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    if (node.exitCode === null) node.kill('SIGKILL');
  }
  try {
    execFileSync('psql', [serverUrl + '/postgres', '-q', '-c', `drop database if exists "${database}" with (force)`], { stdio: 'ignore' });
  } catch {
    // A leftover scratch database is harmless.
  }
});

test('/ redirects to the dashboard, which is served with its security headers', async () => {
  const root = await fetch(`${base}/`, { redirect: 'manual' });
  assert.equal(root.headers.get('location'), '/ui');
  const ui = await fetch(`${base}/ui`);
  const csp = ui.headers.get('content-security-policy');
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|https?:/);
  let total = (await ui.arrayBuffer()).byteLength;
  for (const asset of ['app.js', 'app.css', 'icon.svg']) {
    const res = await fetch(`${base}/ui/assets/${asset}`);
    assert.equal(res.status, 200, asset);
    total += (await res.arrayBuffer()).byteLength;
  }
  console.log(`dashboard assets: ${total} bytes in total (${(total / 1024).toFixed(1)} KiB)`);
  assert.ok(total < 300 * 1024, `assets weigh ${total} bytes`);
  await page.goto(`${base}/`);
  await page.getByLabel('API token').waitFor();
  assert.equal(new URL(page.url()).pathname, '/ui');
  await shot(page, 'sign-in');
});

test('an admin signs in and sees the example job', async () => {
  await signIn(page, tokens.admin);
  const row = page.locator('tr[data-job="example"]');
  await row.waitFor();
  assert.match(await row.innerText(), /example/);
  assert.match(await page.locator('#who-name').innerText(), /ada \(admin\)/);
  await page.locator('#leader').waitFor();
  await page.locator('#live[data-state="on"]').waitFor();
  await shot(page, 'signed-in');
});

test('a task created by the API turns completed on its page without a reload', async () => {
  await page.evaluate(() => { window.pacerNoReload = true; });
  const created = await call('POST', '/api/v1/jobs/example/tasks', tokens.upstream, { payload: { name: 'browser' } });
  assert.equal(created.status, 202, JSON.stringify(created.body));
  const id = created.body.id;
  await page.evaluate((taskId) => {
    // Every state the page shows, in order, to see the task move without being reloaded.
    window.pacerSeen = [];
    new MutationObserver(() => {
      const state = document.querySelector('h1[data-state]')?.dataset.state;
      if (state && window.pacerSeen.at(-1) !== state) window.pacerSeen.push(state);
    }).observe(document.getElementById('main'), { subtree: true, childList: true, attributes: true });
    location.hash = `#/tasks/${taskId}`;
  }, id);
  await page.locator('h1[data-state="processing"]').waitFor();
  await page.locator('#progress').waitFor();
  assert.equal(await page.locator('#progress').getAttribute('value'), '1');
  await page.locator('h1[data-state="completed"]').waitFor({ timeout: 15000 });
  const seen = await page.evaluate(() => window.pacerSeen);
  assert.ok(seen.includes('processing') && seen.at(-1) === 'completed', `states seen: ${seen}`);
  assert.equal(await page.evaluate(() => window.pacerNoReload), true, 'the page was reloaded');
  assert.match(await page.locator('#attempts').innerText(), /accepted/);
  assert.match(await page.locator('main').innerText(), /"greeted": "browser"/);
  await shot(page, 'task-completed');
});

test('a lost event stream reconnects where it left off', async () => {
  const created = await call('POST', '/api/v1/jobs/example/tasks', tokens.upstream, { payload: { name: 'offline' } });
  const id = created.body.id;
  await page.evaluate((taskId) => { location.hash = `#/tasks/${taskId}`; }, id);
  await page.locator('h1[data-state="processing"]').waitFor();
  // The browser drops off the network while the task completes: the events it misses come
  // back with the resumed stream, the only thing that makes this page load the task again.
  await page.context().setOffline(true);
  await page.locator('#live[data-state="off"]').waitFor();
  await until('the task completed', async () => (await call('GET', `/api/v1/tasks/${id}`, tokens.operator)).body.state === 'completed');
  assert.equal(await page.locator('h1[data-state="processing"]').count(), 1);
  await page.context().setOffline(false);
  await page.locator('#live[data-state="on"]').waitFor({ timeout: 20000 });
  await page.locator('h1[data-state="completed"]').waitFor({ timeout: 10000 });
  await shot(page, 'reconnected');
});

test('an operator pauses and resumes a job from the UI and the API agrees', async () => {
  await page.evaluate(() => { location.hash = '#/jobs/example'; });
  await page.locator('button[data-action="pause"]').click();
  await page.locator('#confirm[open]').waitFor();
  await shot(page, 'confirm-pause');
  await page.locator('#confirm-yes').click();
  await page.locator('button[data-action="resume"]').waitFor();
  assert.equal((await call('GET', '/api/v1/jobs/example', tokens.operator)).body.paused, true);
  await shot(page, 'job-paused');
  await page.locator('button[data-action="resume"]').click();
  await page.locator('button[data-action="pause"]').waitFor();
  assert.equal((await call('GET', '/api/v1/jobs/example', tokens.operator)).body.paused, false);
});

test('a refused action shows the API problem', async () => {
  // The job is removed behind the page's back: the next action is refused with a 404 problem.
  const put = await call('PUT', '/api/v1/jobs/doomed', tokens.admin, { target: { url: `${base}/demo/downstream` } });
  assert.equal(put.status, 201);
  await page.evaluate(() => { location.hash = '#/jobs/doomed'; });
  await page.locator('button[data-action="run"]').waitFor();
  assert.equal((await call('DELETE', '/api/v1/jobs/doomed', tokens.admin)).status, 200);
  await page.locator('button[data-action="run"]').click();
  const problem = page.locator('#flash .problem');
  await problem.waitFor();
  assert.match(await problem.innerText(), /Not found \(404\)/);
  await shot(page, 'refused');
  await page.locator('#flash .flash-close').click();
});

test('an operator acknowledges an alert', async () => {
  // A job whose downstream answers 404 fails its task at once, which opens a `failed` alert.
  const put = await call('PUT', '/api/v1/jobs/broken', tokens.admin, {
    description: 'Its downstream does not exist', target: { url: `${base}/no/such/downstream` }, labels: { team: 'payments' },
  });
  assert.equal(put.status, 201, JSON.stringify(put.body));
  const created = await call('POST', '/api/v1/jobs/broken/tasks', tokens.upstream, {});
  assert.equal(created.status, 202);
  const alert = await until('a failed alert', async () => {
    const list = await call('GET', '/api/v1/alerts?state=open&job=broken', tokens.operator);
    return list.body.items[0];
  }, 30000);
  await page.evaluate(() => { location.hash = '#/alerts'; });
  const ack = page.locator('button[data-action="ack"]').first();
  await ack.waitFor();
  await shot(page, 'alerts');
  await ack.click();
  await until('the alert acknowledged', async () => (await call('GET', `/api/v1/alerts/${alert.id}`, tokens.operator)).body.state === 'acked');
  assert.equal((await call('GET', `/api/v1/alerts/${alert.id}`, tokens.operator)).body.acked_by, 'ada');
});

test('the overview shows health, alerts and every job with its runs', async () => {
  for (let i = 0; i < 3; i += 1) {
    await call('POST', '/api/v1/jobs/example/tasks', tokens.upstream, { payload: { name: `run-${i}` } });
  }
  await until('the runs to complete', async () => {
    const open = await call('GET', '/api/v1/tasks?job=example&state=pending,processing', tokens.operator);
    return open.body.items.length === 0;
  }, 20000);
  // A paused job, a trigger for a next fire time, and a second failure for an open alert.
  const nightly = await call('PUT', '/api/v1/jobs/nightly-export', tokens.admin, {
    description: 'Export the day’s records', target: { url: `${base}/demo/downstream` }, labels: { team: 'reporting' },
  });
  assert.equal(nightly.status, 201, JSON.stringify(nightly.body));
  assert.equal((await call('POST', '/api/v1/jobs/nightly-export/pause', tokens.operator)).status, 200);
  const trigger = await call('POST', '/api/v1/jobs/example/triggers', tokens.admin, { kind: 'cron', expression: '0 0 3 * * *', timezone: 'Europe/Berlin' });
  assert.equal(trigger.status, 201, JSON.stringify(trigger.body));
  await call('POST', '/api/v1/jobs/broken/tasks', tokens.upstream, {});
  await until('an open alert', async () => (await call('GET', '/api/v1/alerts?state=open', tokens.operator)).body.items.length > 0, 30000);
  await page.evaluate(() => { location.hash = '#/'; });
  await page.locator('tr[data-job="broken"] svg.spark rect').first().waitFor();
  await page.locator('tr[data-job="example"] time').nth(1).waitFor();
  await page.locator('tr[data-job="example"] svg.spark rect').first().waitFor();
  assert.match(await page.locator('#alert-counts').innerText(), /warning|critical/);
  // Filter by label.
  await page.locator('#job-search').fill('team=payments');
  assert.equal(await page.locator('tr[data-job="example"]').isHidden(), true);
  assert.equal(await page.locator('tr[data-job="broken"]').isVisible(), true);
  await page.locator('#job-search').fill('');
  await page.locator('#job-search').blur();
  const file = await shot(page, 'overview');
  if (process.env.PACER_UPDATE_DOCS === '1') {
    mkdirSync(path.join(root, 'docs'), { recursive: true });
    await page.screenshot({ path: path.join(root, 'docs', 'overview.png') });
  }
  assert.ok(existsSync(file));
  // The same page on a phone, and in the dark.
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, 'overview-phone');
  await page.setViewportSize({ width: 1280, height: 860 });
  await page.emulateMedia({ colorScheme: 'dark' });
  await shot(page, 'overview-dark');
  await page.emulateMedia({ colorScheme: 'light' });
  // Keyboard: from the search box, past the two filters, to the first job, and into it.
  await page.locator('#job-search').focus();
  for (let i = 0; i < 3; i += 1) await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'broken');
  await page.keyboard.press('Enter');
  await page.waitForURL(/#\/jobs\/broken$/);
  await page.evaluate(() => { location.hash = '#/cluster'; });
  await page.locator('button[data-action="scheduler-pause"]').waitFor();
  await shot(page, 'cluster');
});

test('the pages pass an accessibility check in light and dark', async () => {
  // axe is injected as a script, which the dashboard's own policy forbids: this page alone
  // runs without it (every other test runs under the policy and fails on a violation).
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, bypassCSP: true });
  const p = await context.newPage();
  await signIn(p, tokens.admin);
  const task = (await call('GET', '/api/v1/tasks?job=example&limit=1', tokens.operator)).body.items[0].id;
  const found = [];
  for (const scheme of ['light', 'dark']) {
    await p.emulateMedia({ colorScheme: scheme });
    for (const [hash, ready] of [['#/', 'tr[data-job="example"] svg.spark'], ['#/jobs/example', '#h-triggers + div table'],
      [`#/tasks/${task}`, '#attempts'], ['#/alerts?state=', 'button[data-action="resolve"]'], ['#/cluster', '#main table'],
      ['#/messages', '#main .pager'], ['#/audit', '#main table']]) {
      await p.evaluate((h) => { location.hash = h; }, hash);
      await p.locator(ready).first().waitFor();
      if (!(await p.evaluate(() => 'axe' in window))) await p.addScriptTag({ path: axeSource });
      const result = await p.evaluate(() => window.axe.run(document, { runOnly: ['wcag2a', 'wcag2aa', 'wcag21aa'] }));
      for (const v of result.violations) {
        if (v.impact === 'serious' || v.impact === 'critical') {
          found.push(`${scheme} ${hash}: ${v.id} (${v.help}) at ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
        }
      }
    }
  }
  await context.close();
  assert.deepEqual(found, []);
});

test('an upstream token sees no button its role would be refused', async () => {
  const upstream = await newPage();
  await signIn(upstream, tokens.upstream);
  await upstream.evaluate(() => { location.hash = '#/jobs/example'; });
  await upstream.locator('details.create-task').waitFor();
  await upstream.locator('.problem').first().waitFor();
  for (const act of ['run', 'pause', 'resume', 'retry-failed']) {
    assert.equal(await upstream.locator(`button[data-action="${act}"]`).count(), 0, `${act} is offered`);
  }
  assert.match(await upstream.locator('main').innerText(), /Forbidden \(403\)/);
  assert.equal(await upstream.locator('#nav-audit').isHidden(), true);
  await shot(upstream, 'upstream');
  await upstream.context().close();
});

test('sign-out forgets the token', async () => {
  await page.locator('#signout').click();
  await page.locator('#farewell').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('pacer.token')), null);
  await page.evaluate(() => { location.hash = '#/alerts'; });
  await page.getByLabel('API token').waitFor();
  assert.equal(await page.locator('#nav').isHidden(), true);
  await shot(page, 'signed-out');
});

test('the overview of 500 jobs renders, and how fast is printed', async () => {
  const names = Array.from({ length: 500 }, (_, i) => `load-${String(i).padStart(3, '0')}`);
  const pending = [...names];
  await Promise.all(Array.from({ length: 8 }, async () => {
    for (let name = pending.shift(); name; name = pending.shift()) {
      const put = await call('PUT', `/api/v1/jobs/${name}`, tokens.admin, { target: { url: `${base}/demo/downstream` }, labels: { batch: name.slice(-1) } });
      assert.equal(put.status, 201, JSON.stringify(put.body));
    }
  }));
  await signIn(page, tokens.operator);
  await page.locator('tr[data-job="load-499"]').waitFor();
  await page.reload();
  const ms = await page.waitForFunction(() => {
    const mark = performance.getEntriesByName('pacer:overview-rendered')[0];
    return mark && mark.startTime;
  });
  const rendered = await ms.jsonValue();
  const rows = await page.locator('#jobs tbody tr').count();
  assert.ok(rows >= 500, `${rows} rows`);
  console.log(`overview with ${rows} jobs rendered ${Math.round(rendered)} ms after navigation start`);
  await shot(page, 'overview-500', false);
  assert.deepEqual(cspViolations, []);
});
