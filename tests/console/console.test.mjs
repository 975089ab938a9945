// Drives the operator console in headless Chromium: creates an endpoint through the form
// (after seeing the validation error for a bad name), then waits for the traffic the Rust side
// sends to show in the traffic view and the chart. Run by tests/tests/console_browser.rs:
//
//   node tests/console/console.test.mjs <ops url> [--screenshot file.png]
//
// Prints progress; exits 0 when every check passed, 1 with the reason otherwise. Every wait
// is bounded.
import { chromium } from 'playwright-core';

const [base, ...rest] = process.argv.slice(2);
const screenshot = rest[0] === '--screenshot' ? rest[1] : null;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = 30_000;

if (!base) {
  console.error('usage: node console.test.mjs <ops url> [--screenshot file.png]');
  process.exit(2);
}
// The whole run is bounded even if a browser call hangs.
setTimeout(() => {
  console.error('FAIL: the console test did not finish within 120 s');
  process.exit(1);
}, 120_000).unref();

const step = (text) => console.log(`console test: ${text}`);
const problems = [];
const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.setDefaultTimeout(WAIT);
  // A script error or a Content-Security-Policy violation fails the test.
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  // Failed loads are checked by their responses below, where the expected one is known.
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  let expectRefusal = false;
  page.on('response', (response) => {
    const request = response.request();
    const what = `${request.method()} ${new URL(response.url()).pathname}`;
    if (response.status() < 400) return;
    if (expectRefusal && response.status() === 400 && what === 'POST /console/api/endpoints') {
      expectRefusal = false;
      return;
    }
    problems.push(`${what} answered ${response.status()}`);
  });

  await page.goto(`${base}/console/`);
  await page.locator('#mode', { hasText: 'read-write' }).waitFor();
  step('page loaded, read-write');

  await page.click('#new-endpoint');
  await page.fill('input[name="name"]', '1-bad');
  await page.fill('input[name="namespace"]', 'billing');
  await page.fill('input[name="taskQueue"]', 'charges');
  await page.fill('input[name="callers"]', 'orders');
  await page.fill('textarea[name="description"]', 'Charges cards for orders');
  expectRefusal = true;
  await page.click('#save-endpoint');
  const formError = page.locator('#form-error');
  await formError.waitFor({ state: 'visible' });
  const message = await formError.textContent();
  if (!message.includes('1-bad')) throw new Error(`the validation error does not name the input: ${message}`);
  step(`bad name refused: ${message}`);

  await page.fill('input[name="name"]', 'payments');
  await page.click('#save-endpoint');
  await page.locator('#endpoint-detail #detail-name', { hasText: 'payments' }).waitFor();
  await page.locator('#endpoint-table tr[data-endpoint="payments"]').waitFor();
  step('endpoint payments created');

  await page.fill('#search', 'zzz');
  await page.locator('#endpoint-empty').waitFor({ state: 'visible' });
  await page.fill('#search', 'bill');
  await page.locator('#endpoint-table tr[data-endpoint="payments"]').waitFor();
  step('search finds it by its target');

  await page.click('nav a[data-view="traffic"]');
  const row = page.locator('#traffic-table tr[data-caller="orders"][data-endpoint="payments"][data-target="billing"]');
  await row.waitFor({ timeout: 60_000 });
  await page.waitForFunction(() => {
    const cell = document.querySelector('#traffic-table tr[data-caller="orders"][data-endpoint="payments"] td.rate');
    return cell && Number(cell.dataset.rate) > 0;
  }, null, { timeout: WAIT });
  step(`traffic row: ${(await row.innerText()).replace(/\s+/g, ' ')}`);

  await page.locator('#chart rect[data-caller="orders"]').first().waitFor();
  const actions = await page.$$eval('#chart rect[data-caller="orders"]', (bars) => bars.reduce((sum, bar) => sum + Number(bar.dataset.actions), 0));
  if (!(actions > 0)) throw new Error(`the chart shows no actions for orders: ${actions}`);
  await page.locator('#chart .legend li[data-caller="orders"]').waitFor();
  step(`chart: ${actions} actions for orders`);
  if (screenshot) {
    await page.screenshot({ path: screenshot, fullPage: true });
    step(`screenshot written to ${screenshot}`);
  }

  await page.click('nav a[data-view="destinations"]');
  await page.locator('#lane-table tbody tr').first().waitFor();
  await page.locator('#completion-counts', { hasText: 'pending' }).waitFor();
  step(`destinations: ${(await page.locator('#lane-table tbody tr').first().innerText()).replace(/\s+/g, ' ')}`);

  if (problems.length) throw new Error(problems.join('\n'));
  step('PASS');
} catch (error) {
  console.error(`FAIL: ${error.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
