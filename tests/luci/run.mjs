// Browser test of luci-app-dcol: its real view files, the LuCI stand-in
// (stand-in/, server.mjs) and the real dcol daemon behind the app's real rpcd
// plugin, driven in headless Chromium with playwright-core (no browser
// download: Debian's chromium). Called by tests/netns/luci.rs, which starts
// the daemons; runnable by hand against any running daemon:
//
//   node tests/luci/run.mjs --socket CLIENT.sock --wp-socket WAYPOINT.sock \
//       --uci DIR/dcol --dcol-bin target/debug/dcol --log CLIENT.log --artifacts target/luci-artifacts \
//       [--dcol-dir MEMBER-FILES-DIR]
//
// --uci is a scratch copy of a UCI file named 'dcol' that the pages edit.
// --dcol-dir is where its key, certificate and collective key are (the rpcd
// plugin refuses membership files outside it; /etc/dcol when not given).
// Exits 0 after printing 'luci: N passed, 0 failed', else 1 with the reason.

import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { chromium } from 'playwright-core';

import { extract, render } from './pot.mjs';
import { APP, startServer } from './server.mjs';
import * as uci from './uci.mjs';

const argv = process.argv.slice(2);
const arg = (name, def) => {
  const i = argv.indexOf(name);
  if (i >= 0) return argv[i + 1];
  if (def === undefined) throw new Error(`missing ${name}`);
  return def;
};
const opt = {
  socket: arg('--socket'),
  wpSocket: arg('--wp-socket', null),
  uci: arg('--uci'),
  dcolBin: arg('--dcol-bin'),
  log: arg('--log', null),
  artifacts: arg('--artifacts', 'target/luci-artifacts'),
  chromium: arg('--chromium', process.env.CHROMIUM || '/usr/bin/chromium'),
  dcolDir: arg('--dcol-dir', null),
};
if (path.basename(opt.uci) !== 'dcol') throw new Error('--uci must name a file called dcol');
fs.mkdirSync(opt.artifacts, { recursive: true });

const checks = [];
function check(cond, what) {
  if (!cond) throw new Error(`FAILED: ${what}`);
  checks.push(what);
  console.log(`ok: ${what}`);
}

/** The daemon's own answer, as `dcol status --json` gives it. */
function daemonStatus(socket) {
  return JSON.parse(execFileSync(opt.dcolBin, ['status', '--json', '--socket', socket], { encoding: 'utf8' }));
}

function uciFile() {
  return uci.parse(fs.readFileSync(opt.uci, 'utf8')).sections;
}

async function until(what, fn, ms = 20000) {
  const t0 = Date.now();
  let last;
  while (Date.now() - t0 < ms) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last && last.message ? last.message : JSON.stringify(last)})`);
}

function aclIsMinimal() {
  const groups = JSON.parse(fs.readFileSync(path.join(APP, 'root/usr/share/rpcd/acl.d/luci-app-dcol.json'), 'utf8'));
  const g = groups['luci-app-dcol'];
  check(
    JSON.stringify(g.read) === JSON.stringify({ ubus: { 'luci.dcol': ['status', 'membership'] }, uci: ['dcol'] }) &&
      JSON.stringify(g.write) === JSON.stringify({ ubus: { 'luci.dcol': ['create_key', 'install'] }, uci: ['dcol'] }),
    'ACL luci-app-dcol: read = luci.dcol status, membership + uci dcol; write = luci.dcol create_key, install + uci dcol; nothing else',
  );
  const log = groups['luci-app-dcol-log'];
  check(
    !log.write && JSON.stringify(log.read) === JSON.stringify({ ubus: { log: ['read'] }, uci: ['system'] }),
    'ACL luci-app-dcol-log (log page only): read log + uci system, no write',
  );
}

const server = await startServer({
  uciDir: path.dirname(opt.uci),
  socket: opt.socket,
  config: opt.uci,
  dcolBin: opt.dcolBin,
  log: opt.log,
  dcolDir: opt.dcolDir,
});
const browser = await chromium.launch({ executablePath: opt.chromium, args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));

async function open(view) {
  await page.goto(`${server.url}?view=dcol/${view}&poll=1`);
  await page.waitForSelector('body[data-view-ready]');
  const state = await page.getAttribute('body', 'data-view-ready');
  if (state !== '1') throw new Error(`view ${view} failed: ${await page.textContent('#view')}`);
}

async function shot(name) {
  const f = path.join(opt.artifacts, `${name}.png`);
  await page.screenshot({ path: f, fullPage: true });
  console.log(`screenshot: ${f}`);
}

/** No daemon text was ever handed to innerHTML (LuCI's bare-string trap). */
async function noDaemonTextAsHtml(strings) {
  const writes = await page.evaluate(() => window.__standInHtmlWrites);
  const bad = writes.filter((w) => strings.some((s) => s && w.includes(s)));
  check(bad.length === 0, `no daemon text went through innerHTML (${writes.length} markup writes checked)`);
}

let failed = null;
try {
  aclIsMinimal();
  const pot = fs.readFileSync(path.join(APP, 'po/templates/dcol.pot'), 'utf8');
  check(pot === render(extract()), `po/templates/dcol.pot holds every _() string of the views (${extract().size})`);

  // ---- Overview: identity from the daemon, membership switch -> UCI ----
  const st = daemonStatus(opt.socket);
  await open('overview');
  check((await page.textContent('#dcol-member-name')) === st.member.name, `overview shows member name '${st.member.name}'`);
  check((await page.textContent('#dcol-member-id')) === st.member.id, `overview shows member id ${st.member.id}`);
  check((await page.textContent('#dcol-cert')).includes('valid until'), 'overview shows the certificate validity');
  check((await page.getAttribute('#dcol-join', 'data-ready')) === '1' &&
    (await page.textContent('#dcol-join summary')).includes(`Member '${st.member.name}'`),
    'a member router: the joining panel is folded away, naming the member');
  if (st.client && st.client.lan_proxy) {
    await until('the live graph to get 3 samples', async () =>
      +(await page.getAttribute('#dcol-graph', 'data-points')) >= 3);
    const rate = await page.textContent('#dcol-rate');
    check(/bit\/s$/.test(rate), `overview shows a live rate (${rate})`);
  }
  const before = uciFile();
  const box = page.locator('[id="cbid.dcol.main.enabled"]');
  check((await box.isChecked()) === (before.main.enabled === '1'), 'membership switch shows dcol.main.enabled');
  await shot('overview');
  if (before.main.enabled !== '1') throw new Error('the test expects a UCI file with main.enabled 1');
  await box.uncheck();
  check(!(await page.locator('[id="cbid.dcol.main.client_enabled"]').isVisible()), 'role switches hide when membership is off');
  await page.click('#btn-save');
  await until('dcol.main.enabled = 0 in the UCI file', () => uciFile().main.enabled === '0');
  const after = uciFile();
  check(after.main.enabled === '0', "Save wrote option enabled '0' to section main of the UCI file");
  check(after.client.enabled === before.client.enabled, 'the client role kept its value (retain)');
  await shot('overview-membership-off');

  // ---- Detours: the table shows what the daemon reports ----
  await open('detours');
  const shown = await until('the detour rows the daemon reports', async () => {
    const s = daemonStatus(opt.socket);
    const want = (s.client.connections || []).filter((c) =>
      c.subflows.some((f) => f.path === 'detour' && f.waypoint === 'alice' && f.state === 'established'));
    if (!want.length) return false;
    for (const c of want) {
      const row = page.locator(`tr[data-token="${c.token}"][data-path="detour"][data-waypoint="alice"]`);
      if ((await row.count()) < 1) return false;
      if (!(await row.first().textContent()).includes('via alice (nat tunnel)')) return false;
      const first = page.locator(`tr.dcol-conn-first[data-token="${c.token}"]`);
      if (!(await first.textContent()).includes(c.token)) return false;
    }
    return want;
  });
  check(shown.length >= 1, `detours table shows token(s) ${shown.map((c) => c.token).join(', ')} with a detour via alice (nat)`);
  await shot('detours');
  await noDaemonTextAsHtml(shown.flatMap((c) => [c.token, c.remote, ...c.subflows.map((f) => f.remote)]));

  // ---- Waypoint: grants ----
  if (opt.wpSocket) {
    server.setSocket(opt.wpSocket);
    await open('detours');
    const grants = await until('grant rows', async () => {
      const g = daemonStatus(opt.wpSocket).waypoint.grants;
      const rows = await page.locator('#dcol-grants tr.dcol-grant').allTextContents();
      return g.length && rows.length && g.some((x) => rows.some((r) => r.includes(x.member) && r.includes(x.destination)))
        ? { g, rows } : false;
    });
    check(grants.rows.every((r) => r.includes('bob')), `waypoint grants table shows member bob (${grants.rows.length} row(s))`);
    await shot('detours-waypoint');
    await open('overview');
    const wst = daemonStatus(opt.wpSocket).waypoint;
    const donated = await page.textContent('#dcol-donated');
    check(wst.donate_monthly_bytes > 0 && donated.includes(' of 5.0 GB') && donated.includes('at most 20.0 Mbit/s'),
      `waypoint overview shows this month's donation against its caps (${donated})`);
    // NAT traversal: no gateway or STUN server in this lab, and the page says so.
    const reach = await until('the traversal result on the overview', async () => {
      const tr = daemonStatus(opt.wpSocket).traversal;
      const text = await page.textContent('#dcol-reach');
      return tr && tr.last_pass && text.includes(tr.public || tr.note) ? { tr, text } : false;
    });
    check(reach.tr.public === null && reach.text.includes('no UPnP gateway'),
      `waypoint overview says why it is not reachable from outside ("${reach.text}")`);
    check((await page.textContent('#dcol-directory')).includes('not configured'), 'overview: no membership directory configured');
    server.setSocket(opt.socket);
  }

  // ---- Settings: GridSection add, validation, save ----
  await open('settings');
  // Save, and wait until the page has re-rendered after it (editing the old
  // form meanwhile would be lost).
  const saveOk = async () => {
    const before = await page.getAttribute('body', 'data-saved');
    await page.click('#btn-save');
    await until('the save to finish', async () => (await page.getAttribute('body', 'data-saved')) !== before);
  };
  const rowsBefore = await page.locator('#cbi-dcol-peer tr.cbi-section-table-row').count();
  await page.click('#cbi-dcol-peer .cbi-button-add');
  const newRow = page.locator('#cbi-dcol-peer tr.cbi-section-table-row').nth(rowsBefore);
  await newRow.locator('td[data-option="name"] input').fill('carol');
  await newRow.locator('td[data-option="address"] input').fill('not an address');
  await page.click('#btn-save');
  await page.waitForSelector('.alert-message.error');
  check(!fs.readFileSync(opt.uci, 'utf8').includes('carol'), 'an invalid peer address is refused, nothing written');
  await shot('settings-invalid');
  await newRow.locator('td[data-option="address"] input').fill('192.0.2.7:7447');
  await saveOk();
  await until('peer carol in the UCI file', () => Object.values(uciFile()).some((s) => s['.type'] === 'peer' && s.name === 'carol'));
  const carol = Object.values(uciFile()).find((s) => s.name === 'carol');
  check(carol.address === '192.0.2.7:7447' && carol.tunnel === 'nat', 'a peer added in the grid is saved with address and tunnel');
  // Donation caps: a bad number is refused in the page, a good one saved.
  const gb = page.locator('[id="cbid.dcol.waypoint.donate_monthly_gb"]');
  await gb.fill('lots');
  await page.click('#btn-save');
  await page.waitForSelector('.alert-message.error');
  check(uciFile().waypoint.donate_monthly_gb === undefined, 'a monthly cap of "lots" is refused, nothing written');
  await gb.fill('0.5');
  await page.locator('[id="cbid.dcol.waypoint.donate_kbit"]').fill('8000');
  await saveOk();
  await until('donation caps in the UCI file', () => uciFile().waypoint.donate_monthly_gb === '0.5');
  check(uciFile().waypoint.donate_kbit === '8000', 'donation caps saved: 8000 kbit/s, 0.5 GB a month');
  // Directory and NAT traversal settings: bad values refused, good ones saved.
  const dirUrl = page.locator('[id="cbid.dcol.main.directory"]');
  // Errors pile up: wait for a new one.
  const saveRefused = async (what) => {
    const n = await page.locator('.alert-message.error').count();
    await page.click('#btn-save');
    await until(what, async () => (await page.locator('.alert-message.error').count()) > n);
  };
  await dirUrl.fill('https://dir.example.org/snapshot');
  await saveRefused('the https:// URL refused');
  check(uciFile().main.directory === undefined, 'an https:// directory URL is refused (the router has no TLS), nothing written');
  await dirUrl.fill('http://10.0.7.2:7450/snapshot');
  const stun = page.locator('#cbi-dcol-waypoint-stun_server input[type="text"]').first();
  await stun.fill('stun.example.org');
  await saveRefused('the STUN server without a port refused');
  check(uciFile().main.directory === undefined, 'a STUN server without a port is refused, nothing written');
  await stun.fill('stun.example.org:3478');
  await page.locator('[id="cbid.dcol.waypoint.upnp"]').uncheck();
  await saveOk();
  await until('directory and traversal settings in the UCI file', () => uciFile().main.directory === 'http://10.0.7.2:7450/snapshot');
  const w = uciFile().waypoint;
  check(w.upnp === '0' && JSON.stringify(w.stun_server) === '["stun.example.org:3478"]',
    `UPnP off and a STUN server saved (${w.upnp}, ${JSON.stringify(w.stun_server)})`);
  const cc = spawnSync(opt.dcolBin, ['config', 'check', '--config', opt.uci], { encoding: 'utf8' });
  check(cc.status === 0, `dcol config check accepts the file LuCI wrote (${(cc.stderr || cc.stdout).trim()})`);
  await shot('settings');

  // ---- Log ----
  if (opt.log) {
    await open('log');
    await until('log lines', async () => (await page.inputValue('#syslog')).includes('dcol'));
    check(true, 'log page shows the daemon log');
    await shot('log');
  }

  // ---- Joining from nothing: key, join request, certificate ----
  {
    const dir = fs.mkdtempSync(path.join(path.dirname(opt.uci), 'join-'));
    const conf = path.join(dir, 'dcol.conf');
    const key = path.join(dir, 'etc/member.key');
    const certPath = path.join(dir, 'etc/member.cert');
    fs.writeFileSync(conf, `config dcol 'main'\n\toption key '${key}'\n\toption cert '${certPath}'\n` +
      `\toption collective '${path.join(dir, 'etc/collective.pub')}'\n`);
    const dcol = (...args) => {
      const r = spawnSync(opt.dcolBin, args, { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`dcol ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    // The administrator's side.
    const admin = path.join(dir, 'admin');
    dcol('collective', 'init', '--out-dir', admin);
    const admit = (request, name) => {
      fs.writeFileSync(path.join(admin, `${name}.request`), request);
      dcol('collective', 'admit', '--collective-key', path.join(admin, 'collective.key'), '--member-pub',
        path.join(admin, `${name}.request`), '--name', name, '--days', '30', '--out', path.join(admin, `${name}.cert`));
      return fs.readFileSync(path.join(admin, `${name}.cert`), 'utf8');
    };
    const collective = fs.readFileSync(path.join(admin, 'collective.pub'), 'utf8');

    server.setConfig(conf);
    server.setDcolDir(path.join(dir, 'etc'));
    await open('overview');
    check((await page.getAttribute('#dcol-join', 'data-ready')) === '0' && !fs.existsSync(key),
      'a router without a member key: the overview offers to join');
    await page.click('#dcol-create-key');
    const request = await until('the join request', async () => {
      const t = await page.inputValue('#dcol-join-request');
      return t.startsWith('dcol-public-v1 ') ? t : false;
    });
    check((fs.statSync(key).mode & 0o777) === 0o600, 'Create wrote the member key, mode 0600');
    check(request === JSON.parse(dcol('member', 'show', '--json', '--config', conf)).key.request,
      'the page shows the join request dcol prints (public key and WireGuard key)');
    await shot('join-key');

    const note = async (want) => until(`the note "${want}"`, async () => {
      const t = await page.textContent('#dcol-join-note').catch(() => '');
      return t.includes(want) ? t : false;
    });
    const cert = admit(request, 'newbie');
    // Without the collective key: refused, the pasted text kept.
    await page.fill('#dcol-cert-text', cert);
    await page.click('#dcol-install');
    await note("paste the collective's public key too");
    check(!fs.existsSync(certPath) && (await page.inputValue('#dcol-cert-text')) === cert,
      'without the collective key the certificate is refused, nothing written, the pasted text kept');
    // Another member's certificate: refused.
    dcol('key', 'generate', '--out', path.join(admin, 'other.key'));
    const other = admit(fs.readFileSync(path.join(admin, 'other.key.pub'), 'utf8'), 'other');
    await page.fill('#dcol-cert-text', other);
    await page.fill('#dcol-collective-text', collective);
    await page.click('#dcol-install');
    const refused = await note("not for this router's key");
    check(!fs.existsSync(certPath), `another member's certificate is refused ("${refused}")`);
    // Garbage: the error names the format, as text.
    await page.fill('#dcol-cert-text', '<b>hello</b>');
    await page.click('#dcol-install');
    await note("expected 'dcol-cert-v1 <hex>'");
    check((await page.locator('#dcol-join-note b, #dcol-join-note hex').count()) === 0,
      'a garbage certificate is refused; the error is shown as text, markup and all');
    await shot('join-refused');
    // A delegated user pointed the certificate outside the membership
    // directory (UCI dcol is theirs to write): the plugin refuses, writes nothing.
    const confText = fs.readFileSync(conf, 'utf8');
    const outside = path.join(dir, 'outside.cert');
    fs.writeFileSync(conf, confText.replace(certPath, outside));
    await page.fill('#dcol-cert-text', cert);
    await page.click('#dcol-install');
    const confined = await note('is outside');
    check(!fs.existsSync(outside) && !fs.existsSync(certPath) && confined.includes('membership files only under'),
      `a certificate path outside the membership directory is refused ("${confined}")`);
    fs.writeFileSync(conf, confText);
    // The right one.
    await page.fill('#dcol-cert-text', cert);
    await page.click('#dcol-install');
    await page.waitForSelector('#dcol-join[data-ready="1"]');
    const ok = await note("Installed: member 'newbie'");
    const m = JSON.parse(dcol('member', 'show', '--json', '--config', conf));
    check(m.ready && m.cert.name === 'newbie' && m.collective.id === collective.trim().split(' ')[1],
      `the certificate and collective key are installed and dcol accepts them ("${ok}")`);
    check((await page.textContent('#dcol-join summary')).includes("Member 'newbie'"), 'the panel folds away, naming the new member');
    await shot('join-installed');
    server.setConfig(opt.uci);
    server.setDcolDir(opt.dcolDir);
  }

  // ---- An error from the daemon is shown, not swallowed ----
  const bad = path.join(path.dirname(opt.uci), 'gone-<b>daemon</b>.sock');
  const expected = spawnSync(opt.dcolBin, ['status', '--json', '--socket', bad], { encoding: 'utf8' });
  check(expected.status !== 0 && expected.stderr.includes('gone-<b>daemon</b>.sock'), 'dcol status fails on a missing socket');
  const errText = expected.stderr.trim();
  await open('detours');
  await page.waitForSelector('tr.dcol-subflow');
  server.setSocket(bad);
  await page.waitForSelector('#dcol-error', { timeout: 15000 });
  const shownErr = await page.textContent('#dcol-error .dcol-error-text');
  check(shownErr === errText, `detours page shows the daemon's error live: "${shownErr}"`);
  check((await page.locator('#dcol-error b').count()) === 0, 'the error text is shown as text, its markup is not rendered');
  check((await page.locator('tr.dcol-subflow').count()) === 0, 'no stale detour rows stay next to the error');
  await shot('error-detours');
  await open('overview');
  check((await page.textContent('#dcol-error .dcol-error-text')) === errText, 'overview shows the daemon error too');
  await noDaemonTextAsHtml([errText, 'gone-<b>']);
  await shot('error-overview');
  server.setSocket(opt.socket);

  check(pageErrors.length === 0, `no uncaught page errors (${pageErrors.join('; ')})`);
} catch (e) {
  failed = e;
  await shot('failure').catch(() => {});
}
await browser.close();
await server.close();
if (failed) {
  console.log(`luci: ${checks.length} passed, 1 failed`);
  console.error(failed.stack || failed);
  process.exit(1);
}
console.log(`luci: ${checks.length} passed, 0 failed`);
