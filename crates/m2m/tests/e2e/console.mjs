// The console end to end, in headless Chromium: log in, find a device, chart its values,
// quarantine and release it, write a rule and see it fire, and take a screenshot of every page.
//
// Run by crates/m2m/tests/console.rs (and scripts/screenshots.sh) against a running node:
//   M2M_URL        the node's HTTP address, e.g. http://127.0.0.1:8080
//   M2M_USER       the console user (default admin)
//   M2M_PASSWORD   its password (empty: the node has no logins and shows no login form)
//   M2M_DEVICE     the id of a device publishing {"temp": ...} on factory/<id>/temp
//   SCREENSHOT_DIR where the screenshots go
//   M2M_SYNC=1     at each checkpoint print `step: <name>` and wait for a line on standard input
//                  (the caller checks the device's side, then answers `ok`, or anything else to stop)
//   CHROMIUM       the browser (default /usr/bin/chromium)

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const URL_BASE = (process.env.M2M_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const USER = process.env.M2M_USER || 'admin';
const PASSWORD = process.env.M2M_PASSWORD || '';
const DEVICE = process.env.M2M_DEVICE || 'press-7';
const SHOTS = process.env.SCREENSHOT_DIR || 'target/e2e-artifacts';
const SYNC = process.env.M2M_SYNC === '1';
const STEP_MS = 20_000;

mkdirSync(SHOTS, { recursive: true });

const lines = SYNC ? createInterface({ input: process.stdin })[Symbol.asyncIterator]() : null;

/** Tells the caller a checkpoint is reached and waits for its `ok`. */
async function checkpoint(name) {
  if (!SYNC) return;
  console.log(`step: ${name}`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== 'ok') throw new Error(`the test stopped at ${name}: ${done ? 'no answer' : value}`);
}

function log(msg) {
  console.error(`[console e2e] ${msg}`);
}

const problems = [];
const userData = mkdtempSync(join(tmpdir(), 'm2m-console-e2e-'));
const context = await chromium.launchPersistentContext(userData, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1360, height: 900 },
  colorScheme: 'light',
  locale: 'en-GB',
  timezoneId: 'UTC',
});

function watch(page) {
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // A refused request is logged as an error by the browser; the console shows it itself.
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  page.on('dialog', (d) => d.accept());
}

const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(STEP_MS);
watch(page);
const byId = (id) => page.locator(`[data-testid="${id}"]`);

async function shot(name, target = page) {
  await target.waitForTimeout(400); // let charts and lists settle
  await target.screenshot({ path: join(SHOTS, `${name}.png`) });
  log(`screenshot ${name}.png`);
}

async function go(hash) {
  await page.goto(`${URL_BASE}/console/${hash}`);
  await byId('nav').waitFor({ state: 'visible' });
}

/** Waits until `fn` (run in the page) returns a truthy value. */
async function until(what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: STEP_MS, polling: 250 });
  } catch (e) {
    throw new Error(`${what}: not within ${STEP_MS / 1000} s (${e.message.split('\n')[0]})`);
  }
}

let failed = false;
try {
  // ---- Log in
  const response = await page.goto(`${URL_BASE}/`);
  if (!response.url().endsWith('/console/')) throw new Error(`/ led to ${response.url()}, not /console/`);
  const csp = response.headers()['content-security-policy'] || '';
  if (!csp.includes("default-src 'self'")) throw new Error(`the console page has no strict Content-Security-Policy: ${csp}`);
  await page.waitForSelector('[data-testid="login-form"], [data-testid="nav"]:not([hidden])');
  if (await byId('login-form').isVisible()) {
    if (!PASSWORD) throw new Error('the console asks for a login, but no password was given (M2M_PASSWORD)');
    await shot('login');
    await byId('login-user').fill(USER);
    await byId('login-password').fill(`${PASSWORD}-wrong`);
    await byId('login-submit').click();
    await byId('login-error').waitFor({ state: 'visible' });
    log(`a wrong password is refused: ${await byId('login-error').textContent()}`);
    await byId('login-password').fill(PASSWORD);
    await byId('login-submit').click();
  } else {
    log('this node has no logins: the console opens without one');
  }
  await byId('nav').waitFor({ state: 'visible' });
  log(`logged in as ${await byId('session-user').textContent()}`);

  // ---- Overview
  await go('#/overview');
  await byId('alarms').locator('ul, p:not(.muted)').first().waitFor();
  await page.waitForTimeout(2500); // a few live samples
  await shot('overview');

  // ---- Devices: the simulated device appears, and the search finds it
  await go('#/devices');
  const row = page.locator(`[data-testid="device-row"][data-id="${DEVICE}"]`);
  await row.waitFor();
  await byId('device-search').fill(DEVICE);
  await row.waitFor();
  if ((await page.locator('[data-testid="device-row"]').count()) < 1) throw new Error('the search hid the device');
  await byId('device-search').fill('');
  await shot('devices');

  // ---- Device detail: last values and the chart of a field
  await row.locator('a').first().click();
  await page.waitForURL(`**/console/#/devices/${encodeURIComponent(DEVICE)}`);
  const topic = `factory/${DEVICE}/temp`;
  await page.locator('[data-testid="latest-row"]', { hasText: topic }).waitFor();
  await page.locator('[data-testid="history-field"] option[value="payload.temp"]').waitFor({ state: 'attached' });
  await byId('history-field').selectOption('payload.temp');
  await until('the history chart shows the temperature',
    () => /values of payload\.temp/.test(document.querySelector('[data-testid="history-summary"]')?.textContent || ''));
  const summary = await byId('history-summary').textContent();
  if (/^0 values/.test(summary)) throw new Error(`the chart is empty: ${summary}`);
  log(`chart: ${summary}`);
  await shot('device');

  // ---- Quarantine it; the caller checks that the device was cut off and is refused
  await byId('quarantine-button').click();
  await byId('quarantine-reason').fill('firmware sends garbage; sent for repair');
  await byId('quarantine-submit').click();
  await page.locator('[data-testid="device-state"]', { hasText: 'quarantined' }).first().waitFor();
  await byId('release-button').waitFor({ state: 'visible' });
  await shot('device-quarantined');
  await checkpoint('quarantined');

  // The quarantine list and the audit log show it.
  await go('#/quarantine');
  await page.locator('[data-testid="quarantine-row"]', { hasText: DEVICE }).waitFor();
  await shot('quarantine');
  await go('#/audit');
  await page.locator('[data-testid="audit-row"]', { hasText: 'quarantine.add' }).first().waitFor();
  await shot('audit');
  await go('#/overview');
  await page.locator('[data-testid="alarm"]', { hasText: DEVICE }).waitFor();
  await shot('overview-alarm');

  // ---- Release it; the caller checks that it is back
  await go(`#/devices/${encodeURIComponent(DEVICE)}`);
  await byId('release-button').waitFor({ state: 'visible' });
  await byId('release-button').click();
  await until('the device is no longer shown as quarantined',
    () => !/quarantined/.test(document.querySelector('[data-testid="device-state"]')?.textContent || 'quarantined'));
  await checkpoint('released');

  // ---- Topics
  await go(`#/topics/${encodeURIComponent(topic)}`);
  await byId('topic-name').waitFor();
  await page.locator(`[data-testid="topic-link"][data-topic="${topic}"]`).waitFor();
  await until('the topic shows a value', () => document.querySelectorAll('[data-testid="topic-live"] li').length > 0);
  await page.waitForTimeout(1500);
  await shot('topics');

  // ---- Rules: an invalid query shows the node's message; a good one is tested, saved and fires
  const ruleId = `hot-${DEVICE}`.replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 64);
  await go('#/rules');
  await byId('rule-new').click();
  await byId('rule-form').waitFor();
  await byId('rule-id').fill(ruleId);
  await byId('rule-description').fill('Machines running warm');
  await byId('rule-sql').fill('SELECT FROM WHERE');
  await byId('rule-save').click();
  await byId('rule-error').locator('.notice').waitFor();
  log(`a bad rule is refused: ${await byId('rule-error').textContent()}`);
  await byId('rule-sql').fill('SELECT payload.temp AS t, clientid FROM "factory/+/temp" WHERE payload.temp > 20');
  await byId('rule-actions').fill('[\n  {"type": "republish", "topic": "alerts/${clientid}/temp", "qos": 1}\n]');
  await byId('sample-topic').fill(topic);
  await byId('sample-payload').fill('{"temp": 21.5}');
  await byId('sample-client').fill(DEVICE);
  await byId('rule-test').click();
  await until('the rule test shows its output', () => /"t": 21\.5/.test(document.querySelector('[data-testid="rule-test-output"]')?.textContent || ''));
  await shot('rule-editor');
  await byId('rule-save').click();
  await page.waitForURL(`**/console/#/rules/${ruleId}`);
  await until('the rule matched messages',
    () => Number((document.querySelector('[data-testid="metric-matched"]')?.textContent || '0').replace(/\D/g, '')) > 0);
  await until('the rule ran its action',
    () => Number((document.querySelector('[data-testid="metric-actions-ok"]')?.textContent || '0').replace(/\D/g, '')) > 0);
  log(`rule ${ruleId} matched ${await byId('metric-matched').textContent()} messages`);
  await shot('rule');
  await go('#/rules');
  const ruleRow = page.locator(`[data-testid="rule-row"][data-id="${ruleId}"]`);
  await ruleRow.waitFor();
  await until('the rule list shows the rule firing',
    (id) => Number((document.querySelector(`[data-testid="rule-row"][data-id="${id}"] [data-testid="rule-matched"]`)?.textContent || '0').replace(/\D/g, '')) > 0, ruleId);
  await shot('rules');

  // ---- Mesh and users
  await go('#/mesh');
  await byId('mesh-topology').locator('svg').waitFor();
  await shot('mesh');
  await go('#/users');
  await page.locator('[data-testid="users-table"], [data-testid="not-available"], .notice').first().waitFor();
  await shot('users');

  // ---- A phone
  const phone = await context.newPage();
  watch(phone);
  phone.setDefaultTimeout(STEP_MS);
  await phone.setViewportSize({ width: 390, height: 844 });
  await phone.goto(`${URL_BASE}/console/#/overview`);
  await phone.locator('[data-testid="nav-toggle"]').waitFor({ state: 'visible' });
  await phone.locator('[data-testid="alarms"] ul, [data-testid="alarms"] p:not(.muted)').first().waitFor();
  await phone.waitForTimeout(1500);
  await shot('phone-overview', phone);
  await phone.locator('[data-testid="nav-toggle"]').click();
  await phone.locator('#nav a[data-page="devices"]').click();
  await phone.locator(`[data-testid="device-row"][data-id="${DEVICE}"]`).waitFor();
  await shot('phone-devices', phone);
  await phone.close();

  if (problems.length) throw new Error(`the pages reported errors:\n  ${problems.join('\n  ')}`);
  log('all steps passed');
} catch (e) {
  failed = true;
  console.error(`[console e2e] FAILED: ${e.message}`);
  if (problems.length) console.error(`[console e2e] page errors:\n  ${problems.join('\n  ')}`);
  try {
    await page.screenshot({ path: join(SHOTS, 'failure.png'), fullPage: true });
    console.error(`[console e2e] the page at the failure: ${join(SHOTS, 'failure.png')}`);
  } catch {
    // The browser is gone.
  }
} finally {
  await context.close();
  rmSync(userData, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
