// Real-browser check of the admin live page.
//
//   node tests/browser/live_page.mjs ADMIN_URL SCREENSHOT_PATH
//
// Opens ADMIN_URL + "/" in Debian's Chromium (/usr/bin/chromium) through playwright-core,
// waits until the page shows state counts, at least one mark in the closes chart and at
// least one row in the connection table, checks that no error banner shows, clicks an
// open connection (if there is one) and then a closed one, waits for the closed one's
// timeline (at least two events, one of them `closed`), and saves a full-page screenshot.
// An uncaught error in the page fails the check too. Exit status 0 when every check
// passed, 1 otherwise (with the reason on stderr); the browser is closed in every case.
//
// Environment:
//   LIVE_PAGE_TIMEOUT_MS  how long each wait may take (default 20000)
//   LIVE_PAGE_HOLD_MS     keep the page polling this long before the screenshot (default 0),
//                         so that the chart has some history in a picture meant for people
//   LIVE_PAGE_PREFER      a close reason: click a closed connection with this reason if the
//                         table has one (default: the closed connection with the most events)

import { chromium } from 'playwright-core';
import { mkdirSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const TIMEOUT = Number(process.env.LIVE_PAGE_TIMEOUT_MS || 20000);
const HOLD = Number(process.env.LIVE_PAGE_HOLD_MS || 0);
const PREFER = process.env.LIVE_PAGE_PREFER || '';

const [adminArg, shotArg] = process.argv.slice(2);
if (!adminArg || !shotArg) {
  console.error('usage: node live_page.mjs ADMIN_URL SCREENSHOT_PATH');
  process.exit(1);
}
const url = adminArg.replace(/\/+$/, '') + '/';
const shot = resolve(shotArg);

class CheckFailed extends Error {}
const ok = msg => console.log(`ok    ${msg}`);

// Waits until fn (run in the page) returns a truthy value; fails with `what` on timeout.
async function waitFor(page, what, fn, arg) {
  try {
    const h = await page.waitForFunction(fn, arg, { timeout: TIMEOUT, polling: 200 });
    return await h.jsonValue();
  } catch (e) {
    const banner = await page.locator('#banner:not([hidden])').textContent({ timeout: 1000 }).catch(() => null);
    throw new CheckFailed(`timed out after ${TIMEOUT} ms waiting for ${what}` +
      (banner ? `; the page's error banner says: ${banner.trim()}` : '') +
      (e instanceof Error && !/Timeout/.test(e.message) ? ` (${e.message})` : ''));
  }
}

let browser;
const pageErrors = [];
// A hard stop in case the browser itself hangs: the browser is closed and the exit is 1.
const watchdog = setTimeout(async () => {
  console.error('FAIL  the whole check took too long; giving up');
  try { await browser?.close(); } catch { /* already gone */ }
  process.exit(1);
}, 8 * TIMEOUT + HOLD + 60000);

let code = 0;
try {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, timeout: 60000 });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.on('pageerror', e => pageErrors.push(e.message));
  page.on('console', m => { if (m.type() === 'error') console.log(`page console error: ${m.text()}`); });

  const resp = await page.goto(url, { waitUntil: 'load', timeout: TIMEOUT }).catch(e => {
    throw new CheckFailed(`cannot load ${url}: ${e.message.split('\n')[0]}`);
  });
  if (!resp || !resp.ok()) throw new CheckFailed(`GET ${url} answered ${resp ? resp.status() : 'nothing'}`);
  const ctype = resp.headers()['content-type'] || '';
  if (!ctype.startsWith('text/html')) throw new CheckFailed(`GET ${url}: content-type is ${JSON.stringify(ctype)}, not text/html`);
  ok(`loaded ${url} (${resp.status()}, ${ctype})`);

  const states = await waitFor(page, 'the state counts (#state-counts) to show open connections', () => {
    const el = document.querySelector('#state-counts[data-loaded="1"]');
    if (!el) return null;
    const cells = [...el.querySelectorAll('[data-side][data-state]')];
    const total = cells.reduce((a, c) => a + Number(c.dataset.count || 0), 0);
    if (!cells.length || total === 0) return null;
    return cells.filter(c => Number(c.dataset.count)).map(c => `${c.dataset.side}.${c.dataset.state}=${c.dataset.count}`).join(' ');
  });
  ok(`state counts: ${states}`);

  const marks = await waitFor(page, 'a mark in the closes chart (#closes-chart [data-reason])', () => {
    const m = [...document.querySelectorAll('#closes-chart [data-reason]')];
    return m.length ? { n: m.length, reasons: [...new Set(m.map(x => x.getAttribute('data-reason')))] } : null;
  });
  ok(`closes chart: ${marks.n} mark(s), reasons ${marks.reasons.join(', ')}`);

  const rows = await waitFor(page, 'a row in the connection table (#conn-table tbody tr)', () => {
    const r = document.querySelectorAll('#conn-table tbody tr');
    return r.length ? { n: r.length, closed: document.querySelectorAll('#conn-table tbody tr[data-state="closed"]').length } : null;
  });
  ok(`connection table: ${rows.n} row(s), ${rows.closed} closed`);

  if (!(await page.locator('#banner').isHidden())) {
    throw new CheckFailed(`the error banner shows while the admin listener answers: ${await page.locator('#banner').textContent()}`);
  }
  ok('no error banner');

  // An open connection first, if there is one: its journal is drawn up to now.
  const open = await page.evaluate(() => {
    const tr = document.querySelector('#conn-table tbody tr:not([data-state="closed"])');
    return tr ? tr.dataset.connId : null;
  });
  if (open) {
    await page.locator(`#conn-table tbody tr[data-conn-id="${open.replace(/["\\]/g, '\\$&')}"]`).click({ timeout: TIMEOUT });
    const n = await waitFor(page, `the timeline of open connection ${open}`, id => {
      const sub = document.querySelector('#detail-sub');
      const k = document.querySelectorAll('#timeline [data-kind]').length;
      return sub && sub.textContent.startsWith(id + ' ') && k ? k : null;
    }, open);
    ok(`clicked open connection ${open}: timeline with ${n} marker(s)`);
  } else {
    ok('no open connection in the table to click (skipped that check)');
  }

  // The closed connection with the richest journal (of those closed for PREFER's reason,
  // if any), so that the timeline has something to show.
  const pickClosed = prefer => {
    let r = [...document.querySelectorAll('#conn-table tbody tr[data-state="closed"]')];
    if (!r.length) return null;
    const preferred = r.filter(tr => tr.lastElementChild && tr.lastElementChild.textContent.trim() === prefer);
    if (preferred.length) r = preferred;
    r.sort((a, b) => Number(b.dataset.events || 0) - Number(a.dataset.events || 0));
    return { id: r[0].dataset.connId, events: Number(r[0].dataset.events || 0) };
  };
  let pick = await waitFor(page, 'a closed connection in the table (tr[data-state="closed"])', pickClosed, PREFER);
  await page.locator(`#conn-table tbody tr[data-conn-id="${pick.id.replace(/["\\]/g, '\\$&')}"]`).click({ timeout: TIMEOUT });
  ok(`clicked closed connection ${pick.id} (${pick.events} journal events)`);

  const tl = await waitFor(page, `the timeline of ${pick.id} (#timeline: 2+ [data-kind] markers, one of them closed)`, id => {
    const sub = document.querySelector('#detail-sub');
    if (!sub || !sub.textContent.startsWith(id + ' ')) return null;
    const k = [...document.querySelectorAll('#timeline [data-kind]')].map(m => m.getAttribute('data-kind'));
    if (k.length < 2 || !k.includes('closed')) return null;
    const who = document.querySelector('#detail-body .who .big');
    return { n: k.length, kinds: [...new Set(k)], who: who ? who.textContent : '' };
  }, pick.id);
  ok(`timeline: ${tl.n} markers (${tl.kinds.join(', ')})`);
  ok(`who closed: ${tl.who}`);

  if (HOLD > 0) {
    console.log(`hold  ${HOLD} ms before the screenshot (LIVE_PAGE_HOLD_MS)`);
    await page.waitForTimeout(HOLD);
    // Pick again from what the table shows now, and wait for that timeline.
    pick = await page.evaluate(pickClosed, PREFER);
    await page.locator(`#conn-table tbody tr[data-conn-id="${pick.id.replace(/["\\]/g, '\\$&')}"]`).click({ timeout: TIMEOUT });
    await waitFor(page, `the timeline of ${pick.id}`, id => (document.querySelector('#detail-sub') || {}).textContent?.startsWith(id + ' ') &&
      !!document.querySelector('#timeline [data-kind="closed"]'), pick.id);
    ok(`after the hold: clicked ${pick.id} (${pick.events} journal events)`);
  }

  if (pageErrors.length) throw new CheckFailed(`the page threw: ${pageErrors.join(' | ')}`);
  // From the top, so that the sticky header is drawn where it belongs.
  await page.evaluate(() => window.scrollTo(0, 0));
  mkdirSync(dirname(shot), { recursive: true });
  await page.screenshot({ path: shot, fullPage: true, timeout: TIMEOUT });
  const size = statSync(shot).size;
  if (!size) throw new CheckFailed(`the screenshot ${shot} is empty`);
  ok(`screenshot ${shot} (${size} bytes)`);
  console.log('PASS  live page');
} catch (e) {
  code = 1;
  console.error(`FAIL  ${e instanceof CheckFailed ? e.message : (e && e.stack) || e}`);
  if (pageErrors.length) console.error(`      the page threw: ${pageErrors.join(' | ')}`);
} finally {
  try { await browser?.close(); } catch (e) { console.error(`closing the browser failed: ${e.message}`); code = 1; }
  clearTimeout(watchdog);
}
process.exit(code);
