// Browser test of luci-app-dcol on OpenWrt's own web stack (uhttpd, rpcd, the
// ucode dispatcher, luci.js and the bootstrap theme) of a router booted by
// tests/openwrt (procd as PID 1), driven in headless Chromium with
// playwright-core (no browser download: Debian's chromium). Called by
// tests/openwrt/luci.rs from the LAN host's network namespace:
//
//   node run.mjs --url http://ROUTER/ --password PW --router-pid PID \
//       --dcol-bin DCOL --collective-key KEY --collective-pub PUB \
//       --waypoint ADDR:PORT --lan-interface IF --server IP --iperf-port N \
//       --member-netns NS --member-config FILE --member-socket SOCK \
//       --member-iperf-port N --luci-src DIR --artifacts DIR [--chromium PATH]
//
// --router-pid is the host pid of the router's procd: the test reads the
// router's state (uci, ubus, dcol status) with nsenter into it, as the owner
// would on its console. --dcol-bin is the administrator's dcol (host), who
// admits the router with the collective key. The test starts a plain iperf3
// upload to the server from here (the LAN host) once the router's LAN proxy
// is on, and, once its waypoint role is on, another member's dcol (the
// host's dcol with --member-config, in namespace --member-netns) with an
// MPTCP upload whose detour the router serves. Exits 0 after printing 'luci: N passed, 0 failed', else 1 with the
// reason; screenshots (*.png) go to --artifacts.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const APP = path.resolve(HERE, '../../luci-app-dcol');

const argv = process.argv.slice(2);
const arg = (name, def) => {
  const i = argv.indexOf(name);
  if (i >= 0) return argv[i + 1];
  if (def === undefined) throw new Error(`missing ${name}`);
  return def;
};
const opt = {
  url: arg('--url').replace(/\/$/, ''),
  password: arg('--password'),
  routerPid: arg('--router-pid'),
  dcolBin: arg('--dcol-bin'),
  collectiveKey: arg('--collective-key'),
  collectivePub: arg('--collective-pub'),
  waypoint: arg('--waypoint'),
  lanInterface: arg('--lan-interface'),
  server: arg('--server'),
  iperfPort: arg('--iperf-port'),
  memberNetns: arg('--member-netns'),
  memberConfig: arg('--member-config'),
  memberSocket: arg('--member-socket'),
  memberIperfPort: arg('--member-iperf-port'),
  luciSrc: arg('--luci-src'),
  artifacts: arg('--artifacts'),
  chromium: arg('--chromium', process.env.CHROMIUM || '/usr/bin/chromium'),
};
fs.mkdirSync(opt.artifacts, { recursive: true });

const checks = [];
function check(cond, what) {
  if (!cond) throw new Error(`FAILED: ${what}`);
  checks.push(what);
  console.log(`ok: ${what}`);
}

/** Runs ARGS in the router's namespaces and root (nsenter into its procd). */
function inRouter(args) {
  return spawnSync('nsenter', ['-t', opt.routerPid, '-m', '-p', '-n', '-r', '-w',
    '/usr/bin/env', '-i', 'PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'HOME=/root', ...args], { encoding: 'utf8' });
}

/** Runs a shell command on the router, as on its console; its stdout. */
function router(cmd, { allowFail = false } = {}) {
  const r = inRouter(['/bin/sh', '-c', cmd]);
  if (r.status !== 0 && !allowFail) throw new Error(`router: '${cmd}' failed (${r.status}): ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** `dcol status --json` on the router, or null when the daemon does not answer. */
function daemonStatus() {
  try {
    return JSON.parse(router('dcol status --json', { allowFail: true }));
  } catch {
    return null;
  }
}

/** The pids of dcol's running instances, as procd reports them over ubus. */
function dcolPids() {
  let v;
  try {
    v = JSON.parse(router('ubus call service list \'{"name":"dcol"}\'', { allowFail: true }) || '{}');
  } catch {
    return [];
  }
  const inst = (v.dcol && v.dcol.instances) || {};
  return Object.values(inst).filter((i) => i.running).map((i) => i.pid);
}

function uciGet(key) {
  return router(`uci -q get ${key}`, { allowFail: true }).trim();
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

const browser = await chromium.launch({ executablePath: opt.chromium, args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
// Every uncaught exception and console error, with the page it happened on;
// checked after each page.
const problems = [];
let where = 'start';
page.on('pageerror', (e) => problems.push(`${where}: uncaught ${e.message}`));
page.on('console', (m) => {
  if (m.type() === 'error') problems.push(`${where}: console error: ${m.text()}`);
});
// Which request a "Failed to load resource" console error was about. One is
// this userland's, not the app's: Save & Apply asks /usr/libexec/luci-peeraddr
// through cgi-io's /cgi-bin/cgi-exec, which a real image has (luci-base
// depends on cgi-io) but the shared sources lack; LuCI ignores the failure.
let cgiExec404 = 0;
page.on('response', (r) => {
  if (r.status() === 404 && new URL(r.url()).pathname === '/cgi-bin/cgi-exec') {
    cgiExec404++;
    return;
  }
  if (r.status() >= 400) problems.push(`${where}: HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
});


// Every request with its timing, for the artifacts (a hung request shows here).
const trace = fs.createWriteStream(path.join(opt.artifacts, 'requests.log'));
const t0 = Date.now();
page.on('request', (r) => trace.write(`${Date.now() - t0} > ${r.method()} ${r.url()}\n`));
page.on('requestfinished', (r) => trace.write(`${Date.now() - t0} < ${r.method()} ${r.url()}\n`));
page.on('requestfailed', (r) => trace.write(`${Date.now() - t0} ! ${r.method()} ${r.url()} ${r.failure() && r.failure().errorText}\n`));

async function shot(name) {
  const f = path.join(opt.artifacts, `${name}.png`);
  await page.screenshot({ path: f, fullPage: true });
  console.log(`screenshot: ${f}`);
}

/** Waits until LuCI has rendered the view (its spinner gone). */
async function viewReady() {
  await page.waitForFunction(() => {
    const v = document.querySelector('#view');
    return v && v.children.length > 0 && !v.querySelector('.spinning');
  }, null, { timeout: 20000 });
}

/**
 * Opens admin/services/dcol/VIEW and waits until it has rendered. A page
 * request that uhttpd leaves unanswered for 15 s (seen now and then right
 * after an earlier page's dispatcher request was cut off by the navigation;
 * LuCI's, not the app's) is retried once, and recorded in stalls.log.
 */
const stalls = [];
async function open(view) {
  where = view;
  const url = `${opt.url}/cgi-bin/luci/admin/services/dcol/${view}`;
  try {
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 15000 });
  } catch (e) {
    if (!/Timeout/.test(e.message)) throw e;
    stalls.push(`${new Date().toISOString()} ${url}: no answer in 15 s, retried`);
    fs.writeFileSync(path.join(opt.artifacts, 'stalls.log'), stalls.join('\n') + '\n');
    console.log(`note: ${url} stalled 15 s; retrying`);
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 30000 });
  }
  await viewReady();
}

/**
 * Clicks Save & Apply. Normally waits for LuCI's "Configuration changes
 * applied." (rpcd applied the changes with rollback, the browser confirmed)
 * and the page reload after it; with `refused`, waits for the form's "Save
 * error" dialog instead and dismisses it.
 */
async function saveApply({ refused = false } = {}) {
  await page.locator('.cbi-page-actions .cbi-button-apply').click({ position: { x: 12, y: 12 } });
  if (refused) {
    await page.waitForSelector('text=An error occurred while saving the form', { timeout: 10000 });
    await page.click('#modal_overlay .modal button:has-text("Dismiss")');
    return;
  }
  await page.waitForSelector('text=Configuration changes applied.', { timeout: 60000 });
  await page.waitForEvent('load', { timeout: 20000 });
  await viewReady();
}

/** Checks (and forgets) the problems so far. */
function noProblems(what) {
  // The console's line for each cgi-exec 404 (it names no URL) is LuCI's too.
  const seen = problems.filter((p) => {
    if (cgiExec404 > 0 && p.endsWith('console error: Failed to load resource: the server responded with a status of 404 (Not Found)')) {
      cgiExec404--;
      return false;
    }
    return true;
  });
  cgiExec404 = 0;
  problems.length = 0;
  check(seen.length === 0, `${what}: no uncaught errors and no console errors (${seen.join('; ')})`);
}

/** An option's input: text fields and selects have the widget id, checkboxes carry it as data. */
const widget = (cbid) => page.locator(`[id="widget.cbid.${cbid}"], [data-widget-id="widget.cbid.${cbid}"]`);

let failed = null;
let iperf = null;
const member = [];
try {
  aclIsMinimal();
  // LuCI's own string extraction (build/i18n-scan.pl, xgettext), as LuCI's
  // i18n-sync.sh runs it, from the repository's root.
  const scan = spawnSync('perl', [path.join(opt.luciSrc, 'build/i18n-scan.pl'), 'luci-app-dcol'],
    { cwd: path.dirname(APP), encoding: 'utf8' });
  const pot = fs.readFileSync(path.join(APP, 'po/templates/dcol.pot'), 'utf8');
  check(scan.status === 0 && pot === scan.stdout,
    `po/templates/dcol.pot is what LuCI's i18n-scan.pl extracts (${(pot.match(/^msgid /gm) || []).length - 1} strings; ` +
    `regenerate: perl LUCI/build/i18n-scan.pl luci-app-dcol > luci-app-dcol/po/templates/dcol.pot)${scan.stderr}`);

  // ---- log in ----
  where = 'login';
  await page.goto(`${opt.url}/cgi-bin/luci/`);
  await page.waitForSelector('input[name="luci_password"]');
  await shot('login');
  await page.fill('input[name="luci_username"]', 'root');
  await page.fill('input[name="luci_password"]', opt.password);
  await Promise.all([page.waitForNavigation(), page.press('input[name="luci_password"]', 'Enter')]);
  // The index renders the first menu entry, the app's overview: let it
  // finish loading before navigating (see open()).
  await viewReady();
  await page.waitForLoadState('networkidle');
  check((await page.title()).endsWith('Overview') && (await page.locator('#dcol-join').count()) === 1,
    `after login LuCI shows the app's overview (${await page.title()})`);
  check((await page.context().cookies()).some((c) => c.name.startsWith('sysauth')), 'logged in through the login form (sysauth cookie)');
  // LuCI's own login page is served with 403 and its menu script's uci
  // call is refused before login: not the app's. Kept for the record.
  fs.writeFileSync(path.join(opt.artifacts, 'login.console.txt'), problems.join('\n') + '\n');
  problems.length = 0;

  // ---- not a member: the page says why dcol does not run, offers to join ----
  await open('overview');
  const down = inRouter(['/usr/sbin/dcol', 'status', '--json']);
  const errText = down.stderr.trim();
  check(down.status !== 0 && errText.includes('/var/run/dcol.sock'), `the daemon does not run yet ("${errText}")`);
  check((await page.textContent('#dcol-error .dcol-error-text')) === errText, "the overview shows the daemon's own error, as text");
  check((await page.getAttribute('#dcol-join', 'data-ready')) === '0', 'a router without a member key: the overview offers to join');
  check(!(await widget('dcol.main.client_enabled').isVisible()), 'membership off: the role switches are hidden');
  await shot('overview-not-member');
  noProblems('overview (not a member)');

  // ---- joining from the page: key, join request, certificate ----
  const admin = fs.mkdtempSync('/tmp/dcol-luci-admin-');
  const dcol = (...args) => {
    const r = spawnSync(opt.dcolBin, args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`dcol ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const admit = (request, name) => {
    fs.writeFileSync(path.join(admin, `${name}.request`), request);
    dcol('collective', 'admit', '--collective-key', opt.collectiveKey, '--member-pub', path.join(admin, `${name}.request`),
      '--name', name, '--roles', 'client,waypoint', '--days', '30', '--out', path.join(admin, `${name}.cert`));
    return fs.readFileSync(path.join(admin, `${name}.cert`), 'utf8');
  };
  const certInstalled = () => router('test -e /etc/dcol/member.cert && echo yes', { allowFail: true }).trim() === 'yes';
  const collective = fs.readFileSync(opt.collectivePub, 'utf8');
  await page.click('#dcol-create-key');
  const request = await until('the join request', async () => {
    const t = await page.inputValue('#dcol-join-request');
    return t.startsWith('dcol-public-v1 ') ? t : false;
  });
  check(router('stat -c %a /etc/dcol/member.key').trim() === '600', 'Create wrote /etc/dcol/member.key on the router, mode 0600');
  check(request === JSON.parse(router('dcol member show --json')).key.request,
    "the page shows the join request the router's dcol prints (public key and WireGuard key)");
  await shot('join-key');
  noProblems('join: key');

  const note = async (want) => until(`the note "${want}"`, async () => {
    const t = await page.textContent('#dcol-join-note').catch(() => '');
    return t.includes(want) ? t : false;
  });
  const cert = admit(request, 'homerouter');
  await page.fill('#dcol-cert-text', cert);
  await page.click('#dcol-install');
  await note("paste the collective's public key too");
  check(!certInstalled() && (await page.inputValue('#dcol-cert-text')) === cert,
    'without the collective key the certificate is refused, nothing written, the pasted text kept');
  dcol('key', 'generate', '--out', path.join(admin, 'other.key'));
  const other = admit(fs.readFileSync(path.join(admin, 'other.key.pub'), 'utf8'), 'other');
  await page.fill('#dcol-cert-text', other);
  await page.fill('#dcol-collective-text', collective);
  await page.click('#dcol-install');
  const refused = await note("not for this router's key");
  check(!certInstalled(), `another member's certificate is refused ("${refused}")`);
  await page.fill('#dcol-cert-text', '<b>hello</b>');
  await page.click('#dcol-install');
  await note("expected 'dcol-cert-v1 <hex>'");
  check((await page.locator('#dcol-join-note b').count()) === 0,
    'a garbage certificate is refused; the error is shown as text, markup and all');
  await shot('join-refused');
  await page.fill('#dcol-cert-text', cert);
  await page.click('#dcol-install');
  await page.waitForSelector('#dcol-join[data-ready="1"]');
  const ok = await note("Installed: member 'homerouter'");
  const m = JSON.parse(router('dcol member show --json'));
  check(m.ready && m.cert.name === 'homerouter' && m.collective.id === collective.trim().split(' ')[1],
    `the certificate and collective key are installed on the router and its dcol accepts them ("${ok}")`);
  await shot('join-installed');
  noProblems('join: installed');

  // ---- settings: a waypoint, the LAN proxy, a donation cap; Save & Apply ----
  await open('settings');
  // A peer through the grid's "Add" dialog: a bad address is refused there.
  await page.click('#cbi-dcol-peer .cbi-section-create .cbi-button-add');
  const modal = page.locator('#modal_overlay .modal');
  await modal.locator('[data-name="name"] input').fill('alice');
  await modal.locator('[data-name="address"] input').fill('not an address');
  await modal.locator('.cbi-button-positive').click();
  await new Promise((r) => setTimeout(r, 1000));
  check(await modal.isVisible() &&
    (await modal.locator('[data-name="address"] input').getAttribute('class')).includes('cbi-input-invalid') &&
    (await page.locator('#cbi-dcol-peer tr.cbi-section-table-row:not(.placeholder)').count()) === 0,
  'an invalid waypoint address is refused: the dialog stays open, the field marked, no row added');
  await shot('settings-invalid');
  problems.length = 0; // the refused save's rejection, if LuCI reports one
  await modal.locator('[data-name="address"] input').fill(opt.waypoint);
  await modal.locator('.cbi-button-positive').click();
  await until('the new row in the waypoint grid', async () =>
    (await page.locator('#cbi-dcol-peer tr.cbi-section-table-row:not(.placeholder)').count()) === 1);
  await widget('dcol.client.lan_proxy').check();
  await widget('dcol.client.lan_interface').fill(opt.lanInterface);
  await page.locator('[id="cbid.dcol.client.lan_interface"] .cbi-button-add').click();
  await widget('dcol.client.detour_policy').selectOption('all');
  await widget('dcol.waypoint.upnp').uncheck();
  // Values the page refuses: an https directory URL stops Save & Apply; a
  // STUN server without a port does not even enter the list.
  await widget('dcol.main.directory').fill('https://dir.example.org/snapshot');
  await saveApply({ refused: true });
  check(!router('uci show dcol').includes('directory='), 'an https:// directory URL is refused (the router has no TLS)');
  await widget('dcol.main.directory').fill('');
  const stun = widget('dcol.waypoint.stun_server');
  const stunItems = page.locator('[id="cbid.dcol.waypoint.stun_server"] .item');
  await stun.fill('stun.example.org');
  await page.locator('[id="cbid.dcol.waypoint.stun_server"] .cbi-button-add').click();
  check((await stunItems.count()) === 0 && (await stun.getAttribute('class')).includes('cbi-input-invalid'),
    'a STUN server without a port is refused: not added, the field marked invalid');
  await stun.fill('stun.example.org:3478');
  await page.locator('[id="cbid.dcol.waypoint.stun_server"] .cbi-button-add').click();
  check((await stunItems.count()) === 1, 'a STUN server with its port is added to the list');
  problems.length = 0;
  // A donation cap: "lots" is refused, nothing is saved.
  await widget('dcol.waypoint.donate_monthly_gb').fill('lots');
  await saveApply({ refused: true });
  const committed = router('uci show dcol');
  check(!committed.includes('donate_monthly_gb') && !committed.includes('=peer') && uciGet('dcol.client.lan_proxy') !== '1',
    'a monthly cap of "lots" is refused by the page: Save & Apply commits nothing');
  problems.length = 0;
  await widget('dcol.waypoint.donate_monthly_gb').fill('0.5');
  await widget('dcol.waypoint.donate_kbit').fill('8000');
  await shot('settings');
  await saveApply();
  check(uciGet('dcol.waypoint.donate_monthly_gb') === '0.5' && uciGet('dcol.waypoint.donate_kbit') === '8000',
    'Save & Apply wrote the donation caps to the router (uci): 0.5 GB a month, 8000 kbit/s');
  const peers = router("uci show dcol | grep '=peer$' | cut -d= -f1").trim().split('\n').filter(Boolean);
  check(peers.length === 1 && uciGet(`${peers[0]}.name`) === 'alice' && uciGet(`${peers[0]}.address`) === opt.waypoint &&
    uciGet(`${peers[0]}.tunnel`) === 'nat', `the waypoint from the grid is saved (${opt.waypoint}, nat)`);
  check(uciGet('dcol.client.lan_proxy') === '1' && uciGet('dcol.client.lan_interface') === opt.lanInterface &&
    uciGet('dcol.client.detour_policy') === 'all' && uciGet('dcol.waypoint.upnp') === '0',
    'the LAN proxy, its interface, the detour policy and UPnP off are saved');
  check(uciGet('dcol.waypoint.stun_server') === 'stun.example.org:3478', 'the STUN server is saved');
  const cc = inRouter(['/usr/sbin/dcol', 'config', 'check']);
  check(cc.status === 0, `the router's dcol config check accepts the file LuCI wrote (${(cc.stderr || cc.stdout).trim()})`);
  check(dcolPids().length === 0, 'membership still off: no daemon');
  noProblems('settings');

  // ---- membership on: Save & Apply starts the daemon ----
  await open('overview');
  await widget('dcol.main.enabled').check();
  check(await widget('dcol.main.client_enabled').isVisible() && await widget('dcol.main.waypoint_enabled').isVisible(),
    'membership on: the client and waypoint role switches show');
  check(await widget('dcol.main.client_enabled').isChecked(), 'the client role is on as shipped');
  await widget('dcol.main.waypoint_enabled').check();
  await saveApply();
  const pid = await until('procd to run dcol', () => dcolPids()[0], 20000);
  check(uciGet('dcol.main.enabled') === '1' && uciGet('dcol.waypoint.enabled') === '1',
    `Save & Apply turned membership and the waypoint role on, and procd started dcol (pid ${pid})`);
  const st = await until('dcol status', () => daemonStatus());
  await until('the overview to show the running daemon', async () =>
    (await page.textContent('#dcol-member-name').catch(() => '')) === 'homerouter');
  check((await page.textContent('#dcol-member-id')) === st.member.id, `overview shows the live member id ${st.member.id}`);
  check((await page.textContent('#dcol-cert')).includes('valid until'), 'overview shows the certificate validity');
  const donated = await page.textContent('#dcol-donated');
  check(st.waypoint.donate_monthly_bytes === 500000000 && donated.includes(' of 500.0 MB') && donated.includes('at most 8.0 Mbit/s'),
    `the donation caps are in force in the daemon and on the overview (${donated})`);
  const reach = await until('the NAT traversal result on the overview', async () => {
    const tr = (daemonStatus() || {}).traversal;
    const text = await page.textContent('#dcol-reach');
    return tr && tr.last_pass && text.includes(tr.public || tr.note) ? { tr, text } : false;
  }, 40000);
  check(reach.tr.public == null, `overview says why other members cannot reach this router ("${reach.text}")`);
  check((await page.textContent('#dcol-directory')).includes('not configured'), 'overview: no membership directory configured');

  // ---- another member's router asks this one for detours ----
  const memberLog = fs.openSync(path.join(opt.artifacts, 'member-bob.log'), 'w');
  member.push(spawn('ip', ['netns', 'exec', opt.memberNetns, opt.dcolBin, 'run', '--config', opt.memberConfig],
    { stdio: ['ignore', memberLog, memberLog] }));
  await until("bob's daemon", () => spawnSync(opt.dcolBin, ['status', '--json', '--socket', opt.memberSocket]).status === 0);
  member.push(spawn('ip', ['netns', 'exec', opt.memberNetns, 'mptcpize', 'run', 'iperf3', '-c', opt.server,
    '-p', opt.memberIperfPort, '-t', '120'], { stdio: 'ignore' }));

  // ---- live data: a LAN host's upload, detoured through alice ----
  iperf = spawn('iperf3', ['-c', opt.server, '-p', opt.iperfPort, '-t', '120'], { stdio: 'ignore' });
  await until('the live graph to get 3 samples', async () =>
    +(await page.getAttribute('#dcol-graph', 'data-points').catch(() => 0)) >= 3, 30000);
  const rate = await page.textContent('#dcol-rate');
  check(/bit\/s$/.test(rate), `overview shows the LAN traffic's live rate (${rate})`);
  await shot('overview-running');
  noProblems('overview (running)');

  await open('detours');
  const shown = await until('the detour rows the daemon reports', async () => {
    const s = daemonStatus();
    const want = ((s && s.client && s.client.connections) || []).filter((c) =>
      c.subflows.some((f) => f.path === 'detour' && f.waypoint === 'alice' && f.state === 'established'));
    if (!want.length) return false;
    for (const c of want) {
      const row = page.locator(`tr[data-token="${c.token}"][data-path="detour"][data-waypoint="alice"]`);
      if ((await row.count()) < 1) return false;
      if (!(await row.first().textContent()).includes('via alice (nat tunnel)')) return false;
    }
    return want;
  }, 40000);
  check(shown.length >= 1,
    `detours table shows token(s) ${shown.map((c) => c.token).join(', ')} with a detour via alice (nat), as the daemon reports`);
  await shot('detours');
  const served = await until('the grants the router serves', async () => {
    const s = daemonStatus();
    const g = (s && s.waypoint && s.waypoint.grants) || [];
    const rows = await page.locator('#dcol-grants tr.dcol-grant').allTextContents();
    const holders = await page.locator('#dcol-grants tr.dcol-grant').evaluateAll(
      (trs) => trs.map((tr) => Number(tr.getAttribute('data-holders'))));
    const total = (xs) => xs.reduce((a, b) => a + b, 0);
    return g.length && rows.length && total(holders) === total(g.map((x) => x.holders)) &&
      g.every((x) => rows.some((r) => r.includes(x.member) && r.includes(x.destination))) ? { g, rows, holders } : false;
  }, 40000);
  check(served.rows.every((r) => r.includes('bob')) && served.g.every((x) => x.destination === `${opt.server}:${opt.memberIperfPort}`),
    `the detours the router serves, as its daemon reports them: ${served.rows.length} grant(s) to member bob, held by ${served.holders.join('+')} connection(s) (through fw4)`);
  await page.locator('#dcol-grants').scrollIntoViewIfNeeded();
  await shot('detours-served');
  noProblems('detours');

  await open('log');
  const log = await until('dcol lines in the log page', async () => {
    const t = await page.inputValue('#syslog');
    return t.includes(`dcol[${pid}]`) && t.includes("running as 'homerouter'") ? t : false;
  });
  check(log.split('\n').every((l) => l === '' || l.includes('dcol')), "the log page shows logd's lines of dcol only");
  await shot('log');
  noProblems('log');
  iperf.kill();
  iperf = null;

  // ---- a config broken by hand: an error on the page, not a blank one ----
  router("cp /etc/config/dcol /root/dcol.good && sed -i \"s/option max_detours '2'/option max_detours '2/\" /etc/config/dcol");
  const uciErr = inRouter(['uci', 'show', 'dcol']).stderr.trim();
  check(uciErr !== '', `the hand-broken file is one uci cannot parse ("${uciErr}")`);
  const badLine = router("grep -n \"max_detours '2$\" /etc/config/dcol | cut -d: -f1").trim();
  const want = `/etc/config/dcol:${badLine}: unterminated single quote`;
  for (const view of ['overview', 'settings']) {
    await open(view);
    const text = await page.textContent('#dcol-config-error .dcol-config-error-text').catch(() => '');
    check(text.includes(want), `${view} with a hand-broken /etc/config/dcol shows the line and the reason ("${text}")`);
    await shot(`broken-config-${view}`);
    noProblems(`${view} (broken config)`);
  }
  await open('detours');
  const detoursErr = await until('the detours page to show the error', async () =>
    page.textContent('#dcol-error .dcol-error-text').catch(() => ''));
  check(detoursErr.includes(want), `detours with a hand-broken /etc/config/dcol shows the line and the reason ("${detoursErr}")`);
  noProblems('detours (broken config)');
  fs.copyFileSync(path.join(opt.artifacts, 'broken-config-settings.png'), path.join(opt.artifacts, 'broken-config.png'));
  check(dcolPids()[0] === pid, 'the running daemon is left as it was');
  router('cp /root/dcol.good /etc/config/dcol');

  // ---- membership off: Save & Apply stops the daemon ----
  await open('overview');
  await widget('dcol.main.enabled').uncheck();
  check(!(await widget('dcol.main.client_enabled').isVisible()), 'membership off: the role switches hide');
  await saveApply();
  await until('procd to stop dcol', () => dcolPids().length === 0, 20000);
  check(uciGet('dcol.main.enabled') === '0' && uciGet('dcol.client.enabled') === '1',
    'Save & Apply turned membership off (the roles kept their values) and dcol stopped');
  await until('the overview to say the daemon does not answer', async () =>
    (await page.textContent('#dcol-error .dcol-error-text').catch(() => '')).includes('dcol.sock'));
  await shot('overview-membership-off');
  noProblems('overview (membership off)');

  // ---- daemon text is shown as text: a control socket named with markup ----
  router("uci set dcol.main.control_socket='/var/run/<b>gone</b>.sock' && uci commit dcol");
  for (const view of ['overview', 'detours']) {
    await open(view);
    const t = await until(`${view}: the daemon error`, async () =>
      page.textContent('#dcol-error .dcol-error-text').catch(() => ''));
    check(t.includes('/var/run/<b>gone</b>.sock') && (await page.locator('#dcol-error b').count()) === 0,
      `${view}: the daemon's error is shown as text, its markup not rendered ("${t}")`);
  }
  await shot('error-markup');
  noProblems('error pages');
} catch (e) {
  failed = e;
  await shot('failure').catch(() => {});
}
if (iperf) iperf.kill();
for (const p of member) p.kill();
await browser.close();
if (failed) {
  console.log(`luci: ${checks.length} passed, 1 failed`);
  console.error(failed.stack || failed);
  process.exit(1);
}
console.log(`luci: ${checks.length} passed, 0 failed`);
