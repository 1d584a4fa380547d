// The LuCI stand-in's HTTP server (Node, no framework), for browser tests of
// luci-app-dcol only. It serves the app's htdocs and the stand-in runtime,
// and plays rpcd and uhttpd's ubus endpoint:
//
//   POST /ubus {object, method, params}     -> {result: [ubus code, data]}
//       checked against the app's rpcd ACL (root/usr/share/rpcd/acl.d), as for
//       a user holding exactly the app's ACL groups; `luci.dcol` runs the app's
//       real exec plugin (root/usr/libexec/rpcd/luci.dcol list / call), which
//       runs the real `dcol status --json` with DCOL_SOCKET set to the socket
//       the test names, and `dcol member ...` with DCOL_CONFIG set to the
//       configuration file it names (and DCOL_DIR to the directory the
//       membership files must be in, for /etc/dcol); `log read` returns the
//       daemon's log file as syslog.
//   GET  /stand-in/uci/<config>             -> the UCI file <uciDir>/<config>, parsed
//   POST /stand-in/uci/<config> {changes}   -> applied and written to that file
//
// Run alone: node server.mjs --uci-dir DIR --socket PATH [--config FILE] [--port N] [--log FILE]

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as uci from './uci.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
export const APP = path.join(ROOT, 'luci-app-dcol');
const STAND_IN = path.join(HERE, 'stand-in');

const TYPES = { '.js': 'text/javascript', '.html': 'text/html', '.css': 'text/css', '.json': 'application/json' };

/** What the app's ACL groups grant: { read: {ubus, uci}, write: {ubus, uci} }. */
export function loadAcl(appDir = APP) {
  const dir = path.join(appDir, 'root/usr/share/rpcd/acl.d');
  const acl = { read: { ubus: {}, uci: new Set() }, write: { ubus: {}, uci: new Set() } };
  for (const f of fs.readdirSync(dir)) {
    const groups = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
    for (const g of Object.values(groups)) {
      for (const mode of ['read', 'write']) {
        const m = g[mode] || {};
        for (const [obj, methods] of Object.entries(m.ubus || {}))
          acl[mode].ubus[obj] = (acl[mode].ubus[obj] || []).concat(methods);
        for (const c of m.uci || []) acl[mode].uci.add(c);
        for (const k of Object.keys(m))
          if (k !== 'ubus' && k !== 'uci') throw new Error(`ACL ${f}: the stand-in does not model '${k}' grants`);
      }
    }
  }
  return acl;
}

function run(cmd, args, { input = '', env = {} } = {}) {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { env: { ...process.env, ...env } });
    let out = '', err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => resolve({ code, out, err }));
    p.stdin.on('error', () => {}); // the plugin may exit without reading
    p.stdin.end(input);
  });
}

export async function startServer(opts) {
  const o = { port: 0, appDir: APP, log: null, dcolBin: null, ...opts };
  let socket = o.socket;
  let config = o.config;
  let dcolDir = o.dcolDir || null;
  const acl = loadAcl(o.appDir);
  const uciFile = (c) => {
    if (!/^[a-z0-9_-]+$/.test(c)) throw new Error('bad config name');
    return path.join(o.uciDir, c);
  };
  const plugin = path.join(o.appDir, 'root/usr/libexec/rpcd/luci.dcol');
  const pluginEnv = () => ({
    DCOL_SOCKET: socket,
    ...(config ? { DCOL_CONFIG: config } : {}),
    ...(dcolDir ? { DCOL_DIR: dcolDir } : {}),
    PATH: (o.dcolBin ? path.dirname(o.dcolBin) + ':' : '') + process.env.PATH,
  });
  const calls = [];

  const allowed = (obj, method) =>
    ['read', 'write'].some((m) => (acl[m].ubus[obj] || []).some((x) => x === method || x === '*'));

  async function ubus(obj, method, params) {
    calls.push(`${obj}.${method}`);
    if (!allowed(obj, method)) return [6];
    if (obj === 'luci.dcol') {
      const list = await run('sh', [plugin, 'list'], { env: pluginEnv() });
      let methods;
      try {
        methods = JSON.parse(list.out);
      } catch {
        return [5];
      }
      if (!(method in methods)) return [3];
      const r = await run('sh', [plugin, 'call', method], { input: JSON.stringify(params || {}), env: pluginEnv() });
      try {
        return [0, JSON.parse(r.out)];
      } catch {
        return [5];
      }
    }
    if (obj === 'log' && method === 'read') {
      const text = o.log && fs.existsSync(o.log) ? fs.readFileSync(o.log, 'utf8') : '';
      const now = Date.now();
      const lines = text.split('\n').filter((l) => l.trim() !== '');
      return [0, { log: lines.slice(-(params.lines || 1000)).map((l) => ({ msg: 'dcol[1]: ' + l, time: now, priority: 30 })) }];
    }
    return [4];
  }

  function reply(res, code, body, type = 'application/json') {
    res.writeHead(code, { 'Content-Type': type, 'Cache-Control': 'no-store' });
    res.end(type === 'application/json' ? JSON.stringify(body) : body);
  }

  function serveFile(res, file) {
    fs.readFile(file, (err, data) => {
      if (err) return reply(res, 404, { error: 'not found' });
      reply(res, 200, data, TYPES[path.extname(file)] || 'application/octet-stream');
    });
  }

  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', async () => {
      try {
        const url = new URL(req.url, 'http://x');
        const p = decodeURIComponent(url.pathname);
        if (p.includes('..')) return reply(res, 400, { error: 'bad path' });
        if (req.method === 'GET' && (p === '/' || p === '/index.html'))
          return serveFile(res, path.join(STAND_IN, 'index.html'));
        if (p === '/favicon.ico') return reply(res, 204, '', 'image/x-icon');
        if (req.method === 'GET' && p === '/stand-in/style.css') return serveFile(res, path.join(STAND_IN, 'style.css'));
        if (req.method === 'GET' && p.startsWith('/luci-static/resources/')) {
          // The app's own files first, then the stand-in runtime.
          const app = path.join(o.appDir, 'htdocs', p);
          return serveFile(res, fs.existsSync(app) ? app : path.join(STAND_IN, p));
        }
        if (req.method === 'POST' && p === '/ubus') {
          const { object, method, params } = JSON.parse(body);
          return reply(res, 200, { result: await ubus(object, method, params || {}) });
        }
        const m = /^\/stand-in\/uci\/([^/]+)$/.exec(p);
        if (m && req.method === 'GET') {
          if (!acl.read.uci.has(m[1]) && !acl.write.uci.has(m[1]))
            return reply(res, 403, { error: `ACL: no read access to uci ${m[1]}` });
          return reply(res, 200, uci.parse(fs.readFileSync(uciFile(m[1]), 'utf8')));
        }
        if (m && req.method === 'POST') {
          if (!acl.write.uci.has(m[1])) return reply(res, 403, { error: `ACL: no write access to uci ${m[1]}` });
          const f = uciFile(m[1]);
          const state = uci.apply(uci.parse(fs.readFileSync(f, 'utf8')), JSON.parse(body).changes);
          fs.writeFileSync(f + '.tmp', uci.serialize(state));
          fs.renameSync(f + '.tmp', f);
          return reply(res, 200, { ok: true });
        }
        if (req.method === 'POST' && p === '/stand-in/apply') return reply(res, 200, { ok: true });
        return reply(res, 404, { error: 'not found' });
      } catch (e) {
        return reply(res, 500, { error: String(e.message || e) });
      }
    });
  });
  await new Promise((r) => server.listen(o.port, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    setSocket: (s) => (socket = s),
    setConfig: (c) => (config = c),
    setDcolDir: (d) => (dcolDir = d),
    calls,
    close: () => new Promise((r) => server.close(r)),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const a = process.argv.slice(2);
  const arg = (n, d) => (a.indexOf(n) >= 0 ? a[a.indexOf(n) + 1] : d);
  const s = await startServer({
    port: +arg('--port', 0),
    uciDir: arg('--uci-dir'),
    socket: arg('--socket', '/var/run/dcol.sock'),
    config: arg('--config', null),
    log: arg('--log', null),
    dcolBin: arg('--dcol-bin', null),
  });
  console.log(`stand-in LuCI at ${s.url}?view=dcol/overview`);
}
