// tests/peers/cocoon_browser.mjs: drives the self-service portal (Cocoon)
// in a real headless Chromium the way a device's user would, for the
// end-to-end test. Each check prints one JSON line to stdout:
//   {"check":"…","ok":true,…}   or, then exit 1,   {"check":"…","ok":false,"detail":"…"}
//
// Environment:
//   COCOON_LINK            a fresh http://…/start?token=mpl_… link
//   COCOON_EXPIRED_LINK    a link whose token has expired
//   COCOON_HOSTNAME        the hostname the status page must show
//   COCOON_FAILING_POLICY  a policy name that must be listed as Failing
//   COCOON_RESOLUTION      a substring of that policy's resolution text
//   COCOON_SOFTWARE        the self-service title to install
//   COCOON_BRAND_NAME      optional: the branded name the header must show, with its logo
//   COCOON_SCREENSHOTS     directory for the PNGs (created if missing)
//   CHROMIUM               browser binary (default /usr/bin/chromium)
//   COCOON_INSTALL_TIMEOUT_MS  how long the install may take (default 120000)

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

let current = 'setup';
let browser;

function report(line) {
  process.stdout.write(JSON.stringify(line) + '\n');
}

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

async function check(name, body) {
  current = name;
  const extra = (await body()) ?? {};
  report({ check: name, ok: true, ...extra });
}

function assert(condition, detail) {
  if (!condition) throw new Error(detail);
}

const STEP_MS = 15_000;

async function main() {
  const link = need('COCOON_LINK');
  const expiredLink = need('COCOON_EXPIRED_LINK');
  const hostname = need('COCOON_HOSTNAME');
  const failingPolicy = need('COCOON_FAILING_POLICY');
  const resolution = need('COCOON_RESOLUTION');
  const software = need('COCOON_SOFTWARE');
  const shots = need('COCOON_SCREENSHOTS');
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const installTimeout = Number(process.env.COCOON_INSTALL_TIMEOUT_MS || 120_000);
  mkdirSync(shots, { recursive: true });
  const shot = (page, file) => page.screenshot({ path: join(shots, file), fullPage: true });

  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  // A new context is a fresh profile: no cookies from an earlier run.
  const context = await browser.newContext({ viewport: { width: 1024, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  // Script errors and CSP violations show here; reported with the last check.
  const consoleErrors = [];
  page.on('console', (message) => {
    if (message.type() === 'error') consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => consoleErrors.push(String(error)));
  const origin = new URL(link).origin;

  await check('open-link', async () => {
    await page.goto(link);
    await page.waitForURL((url) => url.pathname === '/');
    const url = new URL(page.url());
    assert(!url.search.includes('token') && !page.url().includes('mpl_'), `the token stayed in the address bar: ${page.url()}`);
    return { url: page.url() };
  });

  await check('status', async () => {
    await page.getByRole('heading', { level: 1, name: hostname, exact: true }).waitFor();
    await page.getByText('Online', { exact: true }).waitFor();
    // White-labeling, when the test set it: the tenant's name and a logo
    // that really loaded (decoded, not a broken image).
    const brand = process.env.COCOON_BRAND_NAME;
    let logo = null;
    if (brand) {
      await page.locator('header').getByText(brand, { exact: true }).waitFor();
      logo = await page.getByRole('img', { name: brand }).evaluate((img) => img.complete && img.naturalWidth);
      assert(logo > 0, `the logo of "${brand}" did not load`);
    }
    await shot(page, 'status.png');
    return { hostname, brand: brand ?? null, logo_width: logo };
  });

  await check('policies', async () => {
    await page.getByRole('navigation').getByRole('link', { name: 'Policies', exact: true }).click();
    await page.waitForURL((url) => url.pathname === '/policies');
    const card = page
      .locator('li.policy')
      .filter({ has: page.getByRole('heading', { level: 2, name: failingPolicy, exact: true }) });
    await card.waitFor();
    const text = await card.innerText();
    assert(/\bFailing\b/.test(text), `"${failingPolicy}" is not shown as Failing: ${text}`);
    assert(text.includes(resolution), `"${failingPolicy}" does not show its resolution "${resolution}": ${text}`);
    // Failing policies come first.
    const statuses = await page.locator('li.policy').evaluateAll((cards) => cards.map((c) => c.dataset.status));
    const firstOther = statuses.findIndex((s) => s !== 'Failing');
    assert(firstOther === -1 || statuses.slice(firstOther).every((s) => s !== 'Failing'), `failing policies are not listed first: ${statuses}`);
    await shot(page, 'policies.png');
    return { policy: failingPolicy, order: statuses };
  });

  await check('install', async () => {
    await page.getByRole('navigation').getByRole('link', { name: 'Software', exact: true }).click();
    await page.waitForURL((url) => url.pathname === '/software');
    const row = page
      .locator('li.title')
      .filter({ has: page.getByRole('heading', { level: 2, name: software, exact: true }) });
    await row.waitFor();
    // Record every status text the row shows, and mark the document so a
    // reload (the no-script fallback) is noticed.
    await row.locator('.status-text').evaluate((el) => {
      window.__cocoonNoReload = true;
      window.__cocoonSeen = [el.textContent.trim()];
      const note = () => {
        const text = el.textContent.trim();
        if (window.__cocoonSeen[window.__cocoonSeen.length - 1] !== text) window.__cocoonSeen.push(text);
      };
      new MutationObserver(note).observe(el, { childList: true, characterData: true, subtree: true, attributes: true });
    });
    await row.getByRole('button', { name: `Install ${software}`, exact: true }).click();
    return { software };
  });

  await check('progress', async () => {
    const row = page
      .locator('li.title')
      .filter({ has: page.getByRole('heading', { level: 2, name: software, exact: true }) });
    const status = row.locator('.status-text');
    try {
      await page.waitForFunction(
        (el) => ['INSTALLED', 'FAILED'].includes(el.getAttribute('data-status')),
        await status.elementHandle(),
        { timeout: installTimeout, polling: 100 },
      );
    } catch (error) {
      const seen = await page.evaluate(() => window.__cocoonSeen).catch(() => null);
      throw new Error(`no final status within ${installTimeout} ms; seen ${JSON.stringify(seen)}: ${error.message}`);
    }
    const state = await page.evaluate(() => ({ live: window.__cocoonNoReload === true, seen: window.__cocoonSeen }));
    assert(state.live, 'the page reloaded: progress was not shown live');
    const final = (await status.innerText()).trim();
    assert(final === 'Installed', `the install ended as "${final}"; seen ${JSON.stringify(state.seen)}`);
    await row.getByRole('button', { name: `Uninstall ${software}`, exact: true }).waitFor().catch(() => {});
    await shot(page, 'software.png');
    return { seen: state.seen };
  });

  await check('activity', async () => {
    await page.getByRole('navigation').getByRole('link', { name: 'Activity', exact: true }).click();
    await page.waitForURL((url) => url.pathname === '/activity');
    await page.getByRole('heading', { level: 1, name: 'Activity', exact: true }).waitFor();
    const events = await page.locator('ol.activity li').allInnerTexts();
    await shot(page, 'activity.png');
    return { events: events.length, latest: events[0] ?? null };
  });

  await check('phone-width', async () => {
    await page.setViewportSize({ width: 375, height: 740 });
    const widths = {};
    for (const path of ['/policies', '/software', '/activity', '/']) {
      await page.goto(origin + path);
      await page.getByRole('heading', { level: 1 }).waitFor();
      widths[path] = await page.evaluate(() => document.documentElement.scrollWidth);
    }
    assert(widths['/'] <= 375, `the status page scrolls sideways at 375 px: scrollWidth ${widths['/']}`);
    await shot(page, 'status-phone.png');
    return { scroll_widths: widths };
  });

  await check('keyboard', async () => {
    await page.setViewportSize({ width: 1024, height: 800 });
    await page.goto(origin + '/');
    await page.keyboard.press('Tab');
    const first = await page.evaluate(() => ({
      text: document.activeElement?.textContent?.trim(),
      href: document.activeElement?.getAttribute('href'),
    }));
    assert(first.href === '#main', `Tab from the top reached ${JSON.stringify(first)}, not the skip link`);
    await page.keyboard.press('Enter');
    const landed = await page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName);
    return { first_tab: first.text, after_enter: landed };
  });

  await check('console', async () => {
    assert(consoleErrors.length === 0, `the pages logged errors: ${JSON.stringify(consoleErrors)}`);
    return {};
  });

  await check('expired', async () => {
    // A fresh context: no session cookie from the steps above.
    const fresh = await browser.newContext({ viewport: { width: 1024, height: 800 } });
    const expired = await fresh.newPage();
    expired.setDefaultTimeout(STEP_MS);
    const response = await expired.goto(expiredLink);
    await expired.getByRole('heading', { level: 1, name: 'This portal link has expired' }).waitFor();
    const text = await expired.locator('main').innerText();
    assert(text.includes('mobius-agent portal'), `the expired page does not say what to do: ${text}`);
    await shot(expired, 'expired.png');
    await fresh.close();
    return { status: response?.status() ?? null };
  });

  await browser.close();
}

main().catch(async (error) => {
  report({ check: current, ok: false, detail: String(error?.message ?? error) });
  await browser?.close().catch(() => {});
  process.exit(1);
});
