// Extracts the _('...') strings of luci-app-dcol's views into
// po/templates/dcol.pot (what LuCI's build/i18n-scan.pl does for LuCI itself).
//   node pot.mjs          check that the .pot is up to date (exit 1 if not)
//   node pot.mjs --write  regenerate it
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const APP = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../luci-app-dcol');

const VIEWS = path.join(APP, 'htdocs/luci-static/resources/view/dcol');
const POT = path.join(APP, 'po/templates/dcol.pot');

export function extract() {
  const seen = new Map();
  for (const f of fs.readdirSync(VIEWS).sort()) {
    const src = fs.readFileSync(path.join(VIEWS, f), 'utf8');
    const re = /\b_\('((?:[^'\\]|\\.)*)'\)/g;
    let m;
    while ((m = re.exec(src)) != null) {
      const s = m[1].replace(/\\(.)/g, '$1');
      const line = src.slice(0, m.index).split('\n').length;
      if (!seen.has(s)) seen.set(s, []);
      seen.get(s).push(`htdocs/luci-static/resources/view/dcol/${f}:${line}`);
    }
  }
  const menu = JSON.parse(fs.readFileSync(path.join(APP, 'root/usr/share/luci/menu.d/luci-app-dcol.json'), 'utf8'));
  for (const e of Object.values(menu)) {
    if (!seen.has(e.title)) seen.set(e.title, []);
    seen.get(e.title).push('root/usr/share/luci/menu.d/luci-app-dcol.json');
  }
  return seen;
}

export function render(seen) {
  const q = (s) => '"' + s.replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
  let out = 'msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8"\n';
  for (const s of [...seen.keys()].sort()) {
    out += `\n#: ${seen.get(s).join('\n#: ')}\nmsgid ${q(s)}\nmsgstr ""\n`;
  }
  return out;
}

if (process.argv[1] === new URL(import.meta.url).pathname) {
  const text = render(extract());
  if (process.argv.includes('--write')) {
    fs.mkdirSync(path.dirname(POT), { recursive: true });
    fs.writeFileSync(POT, text);
  } else if (!fs.existsSync(POT) || fs.readFileSync(POT, 'utf8') !== text) {
    console.error('po/templates/dcol.pot is out of date: run node tests/luci/pot.mjs --write');
    process.exit(1);
  }
}
