// UCI text files for the LuCI stand-in server: parse into sections (with the
// ids LuCI's uci.js sees: the name, or `cfgNNxxxx` for anonymous sections),
// apply the change list uci.save() sends, and write the file back in the
// canonical form `uci commit` writes (comments are not kept, as with uci).

function words(line) {
  const out = [];
  let i = 0;
  while (i < line.length) {
    while (i < line.length && /\s/.test(line[i])) i++;
    if (i >= line.length || line[i] === '#') break;
    let w = '';
    while (i < line.length && !/\s/.test(line[i])) {
      const c = line[i++];
      if (c === "'") {
        const j = line.indexOf("'", i);
        if (j < 0) throw new Error('unterminated single quote');
        w += line.slice(i, j);
        i = j + 1;
      } else if (c === '"') {
        while (i < line.length && line[i] !== '"') {
          if (line[i] === '\\' && i + 1 < line.length) i++;
          w += line[i++];
        }
        if (line[i] !== '"') throw new Error('unterminated double quote');
        i++;
      } else if (c === '\\' && i < line.length) {
        w += line[i++];
      } else {
        w += c;
      }
    }
    out.push(w);
  }
  return out;
}

function anonId(index, type) {
  let h = 0;
  for (const c of type) h = (h * 31 + c.charCodeAt(0)) & 0xffff;
  return 'cfg' + index.toString(16).padStart(2, '0') + h.toString(16).padStart(4, '0');
}

/** Parses UCI text into { sections: {id: {...}}, order: [id] }. */
export function parse(text) {
  const sections = {};
  const order = [];
  let cur = null;
  text.split('\n').forEach((raw, n) => {
    let w;
    try {
      w = words(raw);
    } catch (e) {
      throw new Error(`line ${n + 1}: ${e.message}`);
    }
    if (!w.length || w[0] === 'package') return;
    if (w[0] === 'config') {
      const type = w[1];
      const index = order.length;
      const id = w[2] || anonId(index, type);
      cur = { '.name': id, '.type': type, '.anonymous': !w[2], '.index': index };
      sections[id] = cur;
      order.push(id);
    } else if ((w[0] === 'option' || w[0] === 'list') && cur && w.length >= 3) {
      if (w[0] === 'list') {
        const prev = cur[w[1]];
        cur[w[1]] = (Array.isArray(prev) ? prev : []).concat([w[2]]);
      } else {
        cur[w[1]] = w[2];
      }
    } else {
      throw new Error(`line ${n + 1}: cannot parse '${raw}'`);
    }
  });
  return { sections, order };
}

const q = (v) => "'" + String(v).replace(/'/g, "'\\''") + "'";

/** Writes sections back as UCI text. */
export function serialize(state) {
  let out = '';
  for (const id of state.order) {
    const s = state.sections[id];
    out += `config ${s['.type']}${s['.anonymous'] ? '' : ' ' + q(id)}\n`;
    for (const [k, v] of Object.entries(s)) {
      if (k.startsWith('.')) continue;
      if (Array.isArray(v)) for (const x of v) out += `\tlist ${k} ${q(x)}\n`;
      else out += `\toption ${k} ${q(v)}\n`;
    }
    out += '\n';
  }
  return out;
}

/** Applies uci.js changes ([op, ...]) to a parsed state; throws on a bad one. */
export function apply(state, changes) {
  const created = {};
  const sid = (id) => created[id] || id;
  for (const c of changes) {
    const [op, id] = c;
    if (op === 'add') {
      const [, , type, anonymous] = c;
      const real = anonymous ? 'new' + Object.keys(created).length + 'x' + Date.now() : id;
      state.sections[real] = { '.name': real, '.type': type, '.anonymous': !!anonymous };
      state.order.push(real);
      created[id] = real;
    } else if (op === 'set' || op === 'unset') {
      const s = state.sections[sid(id)];
      if (!s) throw new Error(`${op}: no section '${id}'`);
      if (op === 'set') s[c[2]] = c[3];
      else delete s[c[2]];
    } else if (op === 'remove') {
      if (!state.sections[sid(id)]) throw new Error(`remove: no section '${id}'`);
      delete state.sections[sid(id)];
      state.order = state.order.filter((x) => x !== sid(id));
    } else {
      throw new Error(`unknown change '${op}'`);
    }
  }
  return state;
}
