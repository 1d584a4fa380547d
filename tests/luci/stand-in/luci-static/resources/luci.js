/*
 * A STAND-IN for LuCI's client-side runtime (luci.js, form.js, uci.js, rpc.js,
 * ui.js), for browser tests of luci-app-dcol only. It is not LuCI and ships in
 * no package. LuCI's JavaScript is in no registry reachable from the test
 * machines, so this file implements the part of the API the app's views use,
 * with LuCI's semantics where they matter to the tests:
 *
 *  - view loading: a view file is fetched as text, its 'require x.y as z'
 *    lines name the modules handed to it, and its body runs as a function
 *    returning a view class (LuCI's L.require does the same);
 *  - E()/dom.append: array children become text nodes, a bare string child
 *    becomes innerHTML (LuCI's behaviour; every innerHTML write is recorded in
 *    window.__standInHtmlWrites so tests can check no daemon text went there);
 *  - form: Map/NamedSection/TypedSection/GridSection with Flag, Value,
 *    ListValue, DynamicList; depends(), retain, rmempty, ucisection/ucioption,
 *    datatype validation for the datatypes the views use (unknown datatypes
 *    throw, so a view cannot rely on a check the stand-in would skip);
 *  - uci: load/get/set/unset/add/remove/sections/save; save() sends the
 *    changes to the stand-in server, which writes the real UCI file at once
 *    (LuCI stages them until "Save & Apply"; the stand-in commits on save);
 *  - rpc.declare: ubus calls through the stand-in server, which enforces the
 *    app's rpcd ACL and runs the app's real rpcd plugin;
 *  - poll.add: functions run every L.env.pollinterval seconds, one at a time.
 *
 * Not here: tabs, modals (GridSection rows are edited inline), translations
 * (_() returns its argument), themes, sessions, apply/rollback.
 */
'use strict';

(function() {
	var htmlWrites = window.__standInHtmlWrites = [];

	/* ---- String.prototype.format: the LuCI subset the views use ---- */
	String.prototype.format = function() {
		var args = arguments, n = 0;
		return this.replace(/%(\d+)?(?:\.(\d+))?([sdfhqxm%])/g, function(all, width, prec, conv) {
			if (conv == '%')
				return '%';
			var v = args[n++];
			switch (conv) {
			case 's': return (v == null) ? '' : String(v);
			case 'd': return String(Math.trunc(+v || 0));
			case 'x': return (Math.trunc(+v || 0)).toString(16);
			case 'f': return (+v || 0).toFixed(prec != null ? +prec : 6);
			case 'h':
			case 'q':
				return String(v == null ? '' : v).replace(/[&<>"']/g, function(c) {
					return '&#' + c.charCodeAt(0) + ';';
				});
			case 'm':
				var base = width ? +width : 1000, p = (prec != null) ? +prec : 2;
				var units = [ '', 'K', 'M', 'G', 'T', 'P', 'E' ], i = 0;
				v = +v || 0;
				while (Math.abs(v) >= base && i < units.length - 1) { v /= base; i++; }
				return v.toFixed(p) + ' ' + units[i];
			}
		});
	};

	/* ---- classes ---- */
	function extend(Parent, props) {
		var Child = function() {
			if (typeof(this.__init__) == 'function')
				return this.__init__.apply(this, arguments);
		};
		Child.prototype = Object.create(Parent.prototype);
		Child.prototype.constructor = Child;
		for (var k in props)
			Child.prototype[k] = props[k];
		Child.extend = function(p) { return extend(Child, p); };
		Child.instantiate = function(args) {
			var o = Object.create(Child.prototype);
			var r = Child.apply(o, args || []);
			return (r && typeof(r) == 'object' && !(r instanceof Promise)) ? r : o;
		};
		return Child;
	}
	var BaseClass = function() {};
	BaseClass.extend = function(p) { return extend(BaseClass, p); };

	/* ---- dom and E ---- */
	function isElem(e) {
		return e != null && typeof(e) == 'object' && 'nodeType' in e;
	}

	var dom = {
		elem: isElem,
		append: function(node, children) {
			if (!isElem(node))
				return null;
			if (Array.isArray(children)) {
				for (var i = 0; i < children.length; i++)
					if (isElem(children[i]))
						node.appendChild(children[i]);
					else if (children[i] != null)
						node.appendChild(document.createTextNode('' + children[i]));
				return node.lastChild;
			}
			if (typeof(children) == 'function')
				return dom.append(node, children(node));
			if (isElem(children))
				return node.appendChild(children);
			if (children != null) {
				/* LuCI parses a bare string child as markup. */
				htmlWrites.push('' + children);
				node.innerHTML = '' + children;
				return node.lastChild;
			}
			return null;
		},
		content: function(node, children) {
			if (!isElem(node))
				return null;
			while (node.firstChild)
				node.removeChild(node.firstChild);
			return dom.append(node, children);
		},
		attr: function(node, key, val) {
			var attrs = (typeof(key) == 'object') ? key : { [key]: val };
			for (var k in attrs) {
				var v = attrs[k];
				if (v == null)
					continue;
				if (typeof(v) == 'function')
					node.addEventListener(k, v);
				else if (typeof(v) == 'object')
					node.setAttribute(k, JSON.stringify(v));
				else
					node.setAttribute(k, v);
			}
		},
		create: function(html, attr, data) {
			var elem;
			if (!(attr instanceof Object) || Array.isArray(attr) || isElem(attr)) {
				data = attr;
				attr = null;
			}
			if (Array.isArray(html)) {
				elem = document.createDocumentFragment();
				html.forEach(function(h) { elem.appendChild(dom.create(h)); });
			}
			else if (isElem(html)) {
				elem = html;
			}
			else if (String(html).charAt(0) == '<') {
				throw new Error('stand-in: E() with markup is not supported');
			}
			else {
				elem = document.createElement(html);
			}
			if (attr)
				dom.attr(elem, attr);
			dom.append(elem, data);
			return elem;
		},
		parent: function(node, selector) {
			return node ? node.closest(selector) : null;
		},
		bindClassInstance: function(node, inst) {
			node.__standInInstance = inst;
		},
		findClassInstance: function(node) {
			while (node && !node.__standInInstance)
				node = node.parentNode;
			return node ? node.__standInInstance : null;
		},
		callClassMethod: function(node, method) {
			var inst = dom.findClassInstance(node);
			var args = Array.prototype.slice.call(arguments, 2);
			return inst ? inst[method].apply(inst, args) : null;
		},
		isEmpty: function(node) {
			return !node || !node.firstElementChild;
		}
	};

	var E = function() { return dom.create.apply(dom, arguments); };

	/* ---- ui ---- */
	var ui = {
		addNotification: function(title, children, cls) {
			var mc = document.getElementById('maincontent') || document.body;
			var msg = E('div', { 'class': 'alert-message ' + (cls || '') }, [
				title ? E('h4', [ title ]) : E([]),
				E('div', {}, children)
			]);
			mc.insertBefore(msg, mc.firstChild);
			return msg;
		},
		createHandlerFn: function(ctx, fn) {
			var args = Array.prototype.slice.call(arguments, 2);
			if (typeof(fn) == 'string')
				fn = ctx[fn];
			return function(ev) {
				var btn = ev.currentTarget;
				btn.classList.add('spinning');
				btn.disabled = true;
				return Promise.resolve(fn.apply(ctx, args.concat([ ev ]))).finally(function() {
					btn.classList.remove('spinning');
					btn.disabled = false;
				});
			};
		},
		changes: {
			apply: function() {
				return request('POST', '/stand-in/apply', {});
			}
		}
	};

	/* ---- transport ---- */
	function request(method, url, body) {
		return fetch(url, {
			method: method,
			headers: { 'Content-Type': 'application/json' },
			body: body != null ? JSON.stringify(body) : undefined
		}).then(function(r) {
			return r.json().then(function(j) {
				if (!r.ok)
					throw new Error(j && j.error ? j.error : ('HTTP ' + r.status));
				return j;
			});
		});
	}

	/* ---- rpc ---- */
	var ubusErrors = { 1: 'Invalid command', 2: 'Invalid argument', 3: 'Method not found',
		4: 'Resource not found', 5: 'No data received', 6: 'Permission denied', 7: 'Request timed out' };
	var rpc = {
		declare: function(d) {
			return function() {
				var params = {}, args = arguments;
				(d.params || []).forEach(function(p, i) {
					if (args[i] !== undefined)
						params[p] = args[i];
				});
				return request('POST', '/ubus', { object: d.object, method: d.method, params: params })
					.then(function(reply) {
						var code = reply.result[0], ret = reply.result[1];
						if (code != 0)
							throw new Error('RPC call to %s/%s failed with ubus code %d: %s'
								.format(d.object, d.method, code, ubusErrors[code] || 'Unknown error'));
						for (var key in (d.expect || {})) {
							if (key != '' && ret != null && typeof(ret) == 'object')
								ret = ret[key];
							if (ret == null)
								ret = d.expect[key];
							break;
						}
						return ret;
					});
			};
		}
	};

	/* ---- poll ---- */
	var poll = {
		queue: [],
		timer: null,
		add: function(fn, interval) {
			poll.queue.push({ fn: fn, interval: (interval || L.env.pollinterval) * 1000, last: Date.now(), busy: false });
			if (!poll.timer)
				poll.timer = setInterval(poll.step, 100);
			return true;
		},
		step: function() {
			var now = Date.now();
			poll.queue.forEach(function(e) {
				if (e.busy || now - e.last < e.interval)
					return;
				e.busy = true;
				Promise.resolve().then(e.fn).catch(function(err) {
					console.error('poll: ' + err);
				}).finally(function() {
					e.busy = false;
					e.last = Date.now();
				});
			});
		},
		stop: function() { clearInterval(poll.timer); poll.timer = null; }
	};

	/* ---- uci ---- */
	var uci = {
		state: {},   /* config -> { sections: {id: {...}}, order: [id] } */
		changes: {}, /* config -> [ op ] */
		newId: 0,
		load: function(config) {
			var configs = Array.isArray(config) ? config : [ config ];
			return Promise.all(configs.map(function(c) {
				return request('GET', '/stand-in/uci/' + encodeURIComponent(c)).then(function(j) {
					uci.state[c] = j;
					uci.changes[c] = [];
					return c;
				});
			}));
		},
		unload: function(config) { delete uci.state[config]; delete uci.changes[config]; },
		resolve: function(conf, sid) {
			var st = uci.state[conf];
			if (!st)
				return null;
			var m = /^@([^\[]+)\[(-?\d+)\]$/.exec(sid);
			if (m) {
				var ids = uci.sections(conf, m[1]).map(function(s) { return s['.name']; });
				var i = +m[2];
				return ids[i < 0 ? ids.length + i : i] || null;
			}
			return st.sections[sid] ? sid : null;
		},
		get: function(conf, sid, opt) {
			var id = uci.resolve(conf, sid);
			if (id == null)
				return null;
			var s = uci.state[conf].sections[id];
			if (opt == null)
				return s;
			return s[opt] != null ? s[opt] : null;
		},
		sections: function(conf, type, cb) {
			var st = uci.state[conf];
			if (!st)
				return [];
			var out = st.order.map(function(id) { return st.sections[id]; }).filter(function(s) {
				return type == null || s['.type'] == type;
			});
			if (cb)
				out.forEach(function(s) { cb.call(uci, s, s['.name']); });
			return out;
		},
		set: function(conf, sid, opt, val) {
			var id = uci.resolve(conf, sid);
			if (id == null) {
				/* LuCI's uci.js: "only set in existing sections" (silently). */
				console.warn('stand-in uci: set on missing section %s.%s ignored'.format(conf, sid));
				return;
			}
			if (val == null || val === '' || (Array.isArray(val) && !val.length))
				return uci.unset(conf, id, opt);
			if (Array.isArray(val))
				val = val.map(String);
			else
				val = String(val);
			uci.state[conf].sections[id][opt] = val;
			uci.changes[conf].push([ 'set', id, opt, val ]);
		},
		unset: function(conf, sid, opt) {
			var id = uci.resolve(conf, sid);
			if (id == null)
				return;
			delete uci.state[conf].sections[id][opt];
			uci.changes[conf].push([ 'unset', id, opt ]);
		},
		add: function(conf, type, name) {
			var id = name || ('new%d'.format(uci.newId++));
			var st = uci.state[conf];
			st.sections[id] = { '.name': id, '.type': type, '.anonymous': !name, '.index': st.order.length };
			st.order.push(id);
			uci.changes[conf].push([ 'add', id, type, !name ]);
			return id;
		},
		remove: function(conf, sid) {
			var id = uci.resolve(conf, sid);
			var st = uci.state[conf];
			delete st.sections[id];
			st.order = st.order.filter(function(x) { return x != id; });
			uci.changes[conf].push([ 'remove', id ]);
		},
		save: function() {
			var confs = Object.keys(uci.changes).filter(function(c) { return uci.changes[c].length; });
			return Promise.all(confs.map(function(c) {
				return request('POST', '/stand-in/uci/' + encodeURIComponent(c), { changes: uci.changes[c] });
			})).then(function() {
				return uci.load(confs);
			});
		}
	};

	/* ---- form ---- */
	var datatypes = {
		uinteger: function(v) { return /^\d+$/.test(v); },
		ufloat: function(v) { return v.trim() !== '' && !isNaN(+v) && +v >= 0; },
		integer: function(v) { return /^-?\d+$/.test(v); },
		port: function(v) { return /^\d+$/.test(v) && +v <= 65535; },
		portrange: function(v) {
			var m = /^(\d+)(?:-(\d+))?$/.exec(v);
			return !!m && +m[1] <= 65535 && (m[2] == null || (+m[2] <= 65535 && +m[2] >= +m[1]));
		},
		range: function(v, a, b) { return /^-?\d+(\.\d+)?$/.test(v) && +v >= +a && +v <= +b; },
		minlength: function(v, n) { return v.length >= +n; },
		maxlength: function(v, n) { return v.length <= +n; },
		ip4addr: function(v) {
			var m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(v);
			return !!m && m.slice(1).every(function(o) { return +o <= 255; });
		},
		ip6addr: function(v) { return /^[0-9a-fA-F:.]+$/.test(v) && v.indexOf(':') >= 0; },
		ipaddr: function(v) { return datatypes.ip4addr(v) || datatypes.ip6addr(v); },
		cidr: function(v) {
			var m = /^(.+)\/(\d+)$/.exec(v);
			return !!m && ((datatypes.ip4addr(m[1]) && +m[2] <= 32) || (datatypes.ip6addr(m[1]) && +m[2] <= 128));
		},
		hostport: function(v) {
			var m = /^(.+):(\d+)$/.exec(v);
			return !!m && datatypes.port(m[2]) && +m[2] > 0 &&
				(/^[A-Za-z0-9.-]+$/.test(m[1]) || (/^\[.+\]$/.test(m[1]) && datatypes.ip6addr(m[1].slice(1, -1))));
		},
		ipaddrport: function(v, bracket) {
			var m = /^\[(.+)\]:(\d+)$/.exec(v);
			if (m)
				return datatypes.ip6addr(m[1]) && datatypes.port(m[2]);
			m = /^([^:\[\]]+):(\d+)$/.exec(v);
			if (m)
				return datatypes.ip4addr(m[1]) && datatypes.port(m[2]);
			m = /^(.+):(\d+)$/.exec(v);
			return !(+bracket) && !!m && datatypes.ip6addr(m[1]) && datatypes.port(m[2]);
		}
	};

	/* Parses 'name(arg,arg)' / 'and(...)' / 'or(...)' into a checker. */
	function compileDatatype(dt) {
		var m = /^(\w+)(?:\((.*)\))?$/.exec(dt);
		if (!m)
			throw new Error('stand-in: bad datatype ' + dt);
		var name = m[1], args = [], depth = 0, cur = '';
		(m[2] || '').split('').forEach(function(c) {
			if (c == ',' && depth == 0) { args.push(cur); cur = ''; return; }
			if (c == '(') depth++;
			if (c == ')') depth--;
			cur += c;
		});
		if (cur !== '')
			args.push(cur);
		if (name == 'and' || name == 'or') {
			var subs = args.map(compileDatatype);
			return function(v) {
				return name == 'and' ? subs.every(function(f) { return f(v); }) : subs.some(function(f) { return f(v); });
			};
		}
		if (!datatypes[name])
			throw new Error('stand-in: datatype ' + name + ' is not implemented');
		return function(v) { return datatypes[name].apply(null, [ v ].concat(args)); };
	}

	var AbstractValue = BaseClass.extend({
		__init__: function(map, section, option, title, description) {
			this.map = map;
			this.section = section;
			this.option = option;
			this.title = title || '';
			this.description = description || '';
			this.rmempty = true;
			this.retain = false;
			this.default = null;
			this.deps = [];
			this.keylist = [];
			this.vallist = [];
		},
		depends: function(field, value) {
			var d = (typeof(field) == 'object') ? field : { [field]: value };
			this.deps.push(d);
		},
		value: function(key, label) {
			this.keylist.push(String(key));
			this.vallist.push(label != null ? label : key);
		},
		cbid: function(sid) {
			return 'cbid.%s.%s.%s'.format(this.map.config, sid, this.option);
		},
		cfgvalue: function(sid) {
			return uci.get(this.uciconfig || this.map.config, this.ucisection || sid, this.ucioption || this.option);
		},
		write: function(sid, v) {
			return uci.set(this.uciconfig || this.map.config, this.ucisection || sid, this.ucioption || this.option, v);
		},
		remove: function(sid) {
			return uci.unset(this.uciconfig || this.map.config, this.ucisection || sid, this.ucioption || this.option);
		},
		widgetNode: function(sid) {
			return document.getElementById(this.cbid(sid));
		},
		isActive: function(sid) {
			if (!this.deps.length)
				return true;
			var self = this;
			return this.deps.some(function(d) {
				return Object.keys(d).every(function(k) {
					var other = self.section.children.filter(function(o) { return o.option == k; })[0];
					var v = other ? other.formvalue(sid) : uci.get(self.map.config, sid, k);
					return String(v == null ? '' : v) == String(d[k]);
				});
			});
		},
		/* The datatype, then an option's own validate(section_id, value)
		 * (LuCI's signature: true, or the error text). */
		checkValue: function(sid, v) {
			if (v == null || v === '')
				return true;
			if (this.datatype) {
				var f = compileDatatype(this.datatype);
				if (!(Array.isArray(v) ? v.every(f) : f(v)))
					return false;
			}
			if (typeof this.validate == 'function') {
				var self = this;
				return (Array.isArray(v) ? v : [ v ]).every(function(x) { return self.validate(sid, x) === true; });
			}
			return true;
		},
		parse: function(sid) {
			var active = this.isActive(sid);
			if (!active)
				return this.retain ? null : this.remove(sid);
			var fv = this.formvalue(sid), cv = this.cfgvalue(sid);
			var node = this.widgetNode(sid);
			if (!this.checkValue(sid, fv)) {
				if (node)
					node.classList.add('cbi-input-invalid');
				throw new TypeError(_('Option "%s" contains an invalid input value.').format(this.title || this.option));
			}
			if (node)
				node.classList.remove('cbi-input-invalid');
			var empty = fv == null || fv === '' || (Array.isArray(fv) && !fv.length);
			if (empty) {
				if (this.rmempty || this.optional)
					return cv != null ? this.remove(sid) : null;
				throw new TypeError(_('Option "%s" must not be empty.').format(this.title || this.option));
			}
			if (JSON.stringify(fv) != JSON.stringify(cv))
				return this.write(sid, fv);
		},
		renderWidget: function(sid) {
			var cv = this.cfgvalue(sid);
			var val = (cv != null) ? cv : this.default;
			var node = this.makeWidget(sid, val);
			node.id = this.cbid(sid);
			node.addEventListener('change', L.bind(this.map.checkDepends, this.map));
			node.addEventListener('input', L.bind(this.map.checkDepends, this.map));
			return node;
		},
		renderRow: function(sid) {
			var row = E('div', { 'class': 'cbi-value', 'id': 'cbi-%s-%s-%s'.format(this.map.config, sid, this.option),
				'data-option': this.option, 'data-section': sid }, [
				E('label', { 'class': 'cbi-value-title', 'for': this.cbid(sid) }, [ this.title ]),
				E('div', { 'class': 'cbi-value-field' }, [
					this.renderWidget(sid),
					this.description ? E('div', { 'class': 'cbi-value-description' }, [ this.description ]) : E([])
				])
			]);
			row.__standInOption = this;
			return row;
		}
	});

	var Value = AbstractValue.extend({
		makeWidget: function(sid, val) {
			if (this.keylist.length)
				throw new Error('stand-in: Value with a choice list is not implemented');
			return E('input', { 'type': 'text', 'class': 'cbi-input-text', 'value': val != null ? val : '',
				'placeholder': this.placeholder || '' });
		},
		formvalue: function(sid) {
			var n = this.widgetNode(sid);
			return n ? n.value.trim() : this.cfgvalue(sid);
		}
	});

	var Flag = AbstractValue.extend({
		__init__: function() {
			AbstractValue.prototype.__init__.apply(this, arguments);
			this.enabled = '1';
			this.disabled = '0';
			this.default = this.disabled;
		},
		makeWidget: function(sid, val) {
			var cb = E('input', { 'type': 'checkbox', 'class': 'cbi-input-checkbox' });
			cb.checked = (String(val) == this.enabled);
			return cb;
		},
		formvalue: function(sid) {
			var n = this.widgetNode(sid);
			if (!n)
				return this.cfgvalue(sid);
			return n.checked ? this.enabled : this.disabled;
		},
		parse: function(sid) {
			if (this.isActive(sid) && this.rmempty && this.formvalue(sid) == this.disabled)
				return this.cfgvalue(sid) != null ? this.remove(sid) : null;
			return AbstractValue.prototype.parse.call(this, sid);
		}
	});

	var ListValue = AbstractValue.extend({
		makeWidget: function(sid, val) {
			var self = this;
			return E('select', { 'class': 'cbi-input-select' }, this.keylist.map(function(k, i) {
				var o = E('option', { 'value': k }, [ self.vallist[i] ]);
				if (k == (val != null ? val : self.keylist[0]))
					o.selected = true;
				return o;
			}));
		},
		formvalue: function(sid) {
			var n = this.widgetNode(sid);
			return n ? n.value : this.cfgvalue(sid);
		}
	});

	var DynamicList = AbstractValue.extend({
		makeWidget: function(sid, val) {
			var self = this;
			var items = (val == null) ? [] : (Array.isArray(val) ? val : String(val).split(/\s+/));
			var box = E('div', { 'class': 'cbi-dynlist' });
			var addItem = function(v) {
				var item = E('div', { 'class': 'item', 'data-value': v }, [
					E('span', [ v ]),
					E('button', { 'class': 'btn cbi-button-remove', 'type': 'button', 'click': function() {
						box.removeChild(item);
						self.map.checkDepends();
					} }, [ '×' ])
				]);
				box.insertBefore(item, input.parentNode);
			};
			var input = E('input', { 'type': 'text', 'class': 'cbi-input-text', 'placeholder': this.placeholder || '' });
			box.appendChild(E('div', { 'class': 'add-item' }, [
				input,
				E('button', { 'class': 'cbi-button cbi-button-add', 'type': 'button', 'click': function() {
					if (input.value.trim() !== '') {
						addItem(input.value.trim());
						input.value = '';
					}
				} }, [ '+' ])
			]));
			items.forEach(addItem);
			return box;
		},
		formvalue: function(sid) {
			var n = this.widgetNode(sid);
			if (!n)
				return this.cfgvalue(sid);
			var vals = Array.prototype.map.call(n.querySelectorAll('.item'), function(i) {
				return i.getAttribute('data-value');
			});
			var pending = n.querySelector('.add-item input').value.trim();
			if (pending !== '')
				vals.push(pending);
			return vals;
		}
	});

	var AbstractSection = BaseClass.extend({
		__init__: function(map, title, description) {
			this.map = map;
			this.title = title || '';
			this.description = description || '';
			this.children = [];
			this.addremove = false;
			this.anonymous = false;
		},
		option: function(cls, name, title, description) {
			if (this.children.some(function(o) { return o.option == name; }))
				throw new Error('stand-in: duplicate option ' + name);
			var o = cls.instantiate([ this.map, this, name, title, description ]);
			this.children.push(o);
			return o;
		},
		tab: function() { throw new Error('stand-in: tabs are not implemented'); },
		taboption: function() { throw new Error('stand-in: tabs are not implemented'); },
		parse: function() {
			var self = this;
			this.cfgsections().forEach(function(sid) {
				self.children.forEach(function(o) { o.parse(sid); });
			});
		},
		header: function() {
			return [
				this.title ? E('h3', [ this.title ]) : E([]),
				this.description ? E('div', { 'class': 'cbi-section-descr' }, [ this.description ]) : E([])
			];
		}
	});

	var NamedSection = AbstractSection.extend({
		__init__: function(map, section, type, title, description) {
			AbstractSection.prototype.__init__.call(this, map, title, description);
			this.section = section;
			this.sectiontype = type;
		},
		cfgsections: function() {
			return uci.get(this.map.config, this.section) ? [ this.section ] : [];
		},
		render: function() {
			var self = this;
			var el = E('div', { 'class': 'cbi-section', 'id': 'cbi-%s-%s'.format(this.map.config, this.section) }, this.header());
			if (!this.cfgsections().length)
				el.appendChild(E('em', [ _('This section contains no values yet') ]));
			else
				this.children.forEach(function(o) { el.appendChild(o.renderRow(self.section)); });
			return el;
		}
	});

	var TypedSection = AbstractSection.extend({
		__init__: function(map, type, title, description) {
			AbstractSection.prototype.__init__.call(this, map, title, description);
			this.sectiontype = type;
		},
		cfgsections: function() {
			return uci.sections(this.map.config, this.sectiontype).map(function(s) { return s['.name']; });
		},
		handleAdd: function() {
			uci.add(this.map.config, this.sectiontype);
			return this.map.rerender();
		},
		handleRemove: function(sid) {
			uci.remove(this.map.config, sid);
			return this.map.rerender();
		},
		addButton: function() {
			return E('div', { 'class': 'cbi-section-create' }, [
				E('button', { 'class': 'cbi-button cbi-button-add', 'type': 'button',
					'click': L.bind(this.handleAdd, this) }, [ _('Add') ])
			]);
		},
		removeButton: function(sid) {
			return E('button', { 'class': 'cbi-button cbi-button-remove', 'type': 'button',
				'click': L.bind(this.handleRemove, this, sid) }, [ _('Delete') ]);
		},
		render: function() {
			var self = this;
			var el = E('div', { 'class': 'cbi-section', 'id': 'cbi-%s-%s'.format(this.map.config, this.sectiontype) }, this.header());
			this.cfgsections().forEach(function(sid) {
				var box = E('div', { 'class': 'cbi-section-node', 'data-section': sid });
				self.children.forEach(function(o) { box.appendChild(o.renderRow(sid)); });
				if (self.addremove)
					box.appendChild(self.removeButton(sid));
				el.appendChild(box);
			});
			if (this.addremove)
				el.appendChild(this.addButton());
			return el;
		}
	});

	var GridSection = TypedSection.extend({
		render: function() {
			var self = this;
			/* LuCI edits non-editable grid columns in a modal, which the
			 * stand-in does not have. */
			this.children.forEach(function(o) {
				if (!o.editable)
					throw new Error('stand-in: GridSection option ' + o.option + ' must be editable');
			});
			var head = E('tr', { 'class': 'tr table-titles' }, this.children.map(function(o) {
				return E('th', { 'class': 'th' }, [ o.title ]);
			}).concat(this.addremove ? [ E('th', { 'class': 'th cbi-section-actions' }, [ '' ]) ] : []));
			var rows = this.cfgsections().map(function(sid) {
				return E('tr', { 'class': 'tr cbi-section-table-row', 'data-section': sid }, self.children.map(function(o) {
					var td = E('td', { 'class': 'td cbi-value-field', 'data-title': o.title, 'data-option': o.option }, [ o.renderWidget(sid) ]);
					td.__standInOption = o;
					return td;
				}).concat(self.addremove ? [ E('td', { 'class': 'td cbi-section-actions' }, [ self.removeButton(sid) ]) ] : []));
			});
			if (!rows.length)
				rows = [ E('tr', { 'class': 'tr placeholder' }, [
					E('td', { 'class': 'td' }, [ E('em', [ _('This section contains no values yet') ]) ]) ]) ];
			var el = E('div', { 'class': 'cbi-section cbi-tblsection', 'id': 'cbi-%s-%s'.format(this.map.config, this.sectiontype) },
				this.header().concat([ E('table', { 'class': 'table cbi-section-table' }, [ head ].concat(rows)) ]));
			if (this.addremove)
				el.appendChild(this.addButton());
			return el;
		}
	});

	var Map = BaseClass.extend({
		__init__: function(config, title, description) {
			this.config = config;
			this.title = title || '';
			this.description = description || '';
			this.children = [];
			this.root = null;
		},
		section: function(cls) {
			var args = [ this ].concat(Array.prototype.slice.call(arguments, 1));
			var s = cls.instantiate(args);
			this.children.push(s);
			return s;
		},
		load: function() {
			return uci.state[this.config] ? Promise.resolve() : uci.load(this.config);
		},
		renderContents: function() {
			var el = E('div', { 'class': 'cbi-map', 'id': 'cbi-' + this.config }, [
				this.title ? E('h2', [ this.title ]) : E([]),
				this.description ? E('div', { 'class': 'cbi-map-descr' }, [ this.description ]) : E([])
			].concat(this.children.map(function(s) { return s.render(); })));
			dom.bindClassInstance(el, this);
			if (this.root && this.root.parentNode)
				this.root.parentNode.replaceChild(el, this.root);
			this.root = el;
			this.checkDepends();
			return el;
		},
		render: function() {
			return this.load().then(L.bind(this.renderContents, this));
		},
		rerender: function() {
			/* Keep what was typed: parse into uci state first (no save);
			 * a still invalid row is reported on save, not here. */
			try { this.parse(); } catch (e) { console.warn('stand-in: ' + e.message); }
			return this.renderContents();
		},
		checkDepends: function() {
			if (!this.root)
				return;
			this.root.querySelectorAll('.cbi-value').forEach(function(row) {
				var o = row.__standInOption, sid = row.getAttribute('data-section');
				row.style.display = o.isActive(sid) ? '' : 'none';
			});
		},
		parse: function() {
			this.children.forEach(function(s) { s.parse(); });
		},
		save: function() {
			var self = this;
			return Promise.resolve().then(function() {
				self.parse();
				return uci.save();
			}).then(function() {
				return self.renderContents();
			});
		},
		reset: function() {
			return uci.load(this.config).then(L.bind(this.renderContents, this));
		}
	});

	var form = {
		Map: Map, NamedSection: NamedSection, TypedSection: TypedSection, GridSection: GridSection,
		Value: Value, Flag: Flag, ListValue: ListValue, DynamicList: DynamicList
	};

	/* ---- view ---- */
	var view = BaseClass.extend({
		__init__: function() {
			var vp = document.getElementById('view');
			dom.content(vp, E('div', { 'class': 'spinning' }, [ _('Loading view…') ]));
			return Promise.resolve(this.load()).then(L.bind(this.render, this)).then(L.bind(function(nodes) {
				dom.content(vp, nodes);
				dom.append(vp, this.addFooter());
				document.body.setAttribute('data-view-ready', '1');
			}, this)).catch(function(err) {
				dom.content(vp, E('div', { 'class': 'alert-message error', 'id': 'view-error' }, [ String(err && err.stack || err) ]));
				document.body.setAttribute('data-view-ready', 'error');
			});
		},
		load: function() {},
		render: function() {},
		handleSave: function() {
			var maps = document.querySelectorAll('#maincontent .cbi-map');
			return Promise.all(Array.prototype.map.call(maps, function(m) {
				return dom.callClassMethod(m, 'save');
			})).then(function() {
				document.body.setAttribute('data-saved', String(Date.now()));
			}).catch(function(err) {
				ui.addNotification(null, E('p', [ _('Save failed: %s').format(err.message) ]), 'error');
			});
		},
		handleSaveApply: function() {
			return this.handleSave().then(function() { return ui.changes.apply(); });
		},
		handleReset: function() {
			var maps = document.querySelectorAll('#maincontent .cbi-map');
			return Promise.all(Array.prototype.map.call(maps, function(m) {
				return dom.callClassMethod(m, 'reset');
			}));
		},
		addFooter: function() {
			var btns = [];
			if (this.handleSaveApply)
				btns.push(E('button', { 'class': 'cbi-button cbi-button-apply', 'id': 'btn-save-apply',
					'click': ui.createHandlerFn(this, 'handleSaveApply') }, [ _('Save & Apply') ]), ' ');
			if (this.handleSave)
				btns.push(E('button', { 'class': 'cbi-button cbi-button-save', 'id': 'btn-save',
					'click': ui.createHandlerFn(this, 'handleSave') }, [ _('Save') ]), ' ');
			if (this.handleReset)
				btns.push(E('button', { 'class': 'cbi-button cbi-button-reset', 'id': 'btn-reset',
					'click': ui.createHandlerFn(this, 'handleReset') }, [ _('Reset') ]));
			return btns.length ? E('div', { 'class': 'cbi-page-actions' }, btns) : E([]);
		}
	});

	/* ---- L and the module loader ---- */
	var modules = {
		baseclass: BaseClass, view: view, form: form, uci: uci, rpc: rpc, poll: poll, dom: dom, ui: ui
	};

	function loadModule(name) {
		if (modules[name])
			return Promise.resolve(modules[name]);
		var url = '/luci-static/resources/' + name.replace(/\./g, '/') + '.js';
		return fetch(url).then(function(r) {
			if (!r.ok)
				throw new Error('stand-in: cannot load module %s (%s): HTTP %d'.format(name, url, r.status));
			return r.text();
		}).then(function(src) {
			var reqs = [], re = /^\s*'require\s+([\w.\/-]+)(?:\s+as\s+(\w+))?';\s*$/gm, m;
			while ((m = re.exec(src)) != null)
				reqs.push({ mod: m[1], as: m[2] || m[1].replace(/.*\./, '') });
			return Promise.all(reqs.map(function(r) { return loadModule(r.mod); })).then(function(deps) {
				var fn = new Function(reqs.map(function(r) { return r.as; }).join(','),
					src + '\n//# sourceURL=' + url);
				var cls = fn.apply(window, deps);
				modules[name] = (cls && cls.instantiate && name.indexOf('view.') != 0) ? cls.instantiate([]) : cls;
				return modules[name];
			});
		});
	}

	var L = window.L = {
		env: { pollinterval: +(new URLSearchParams(location.search).get('poll') || 5) },
		Class: BaseClass,
		view: view,
		ui: ui,
		dom: dom,
		Poll: poll,
		bind: function(fn, ctx) {
			var args = Array.prototype.slice.call(arguments, 2);
			return function() { return fn.apply(ctx, args.concat(Array.prototype.slice.call(arguments))); };
		},
		resolveDefault: function(p, def) {
			return Promise.resolve(p).catch(function() { return def; });
		},
		isObject: function(o) { return o != null && typeof(o) == 'object'; },
		resource: function() { return '/luci-static/resources/' + Array.prototype.join.call(arguments, '/'); },
		require: loadModule,
		error: function(type, msg) { throw new Error(type + ': ' + msg); }
	};

	window.E = E;
	window._ = function(s) { return s; };
	window.N_ = function(n, s, p) { return n == 1 ? s : p; };

	/* Boot: ?view=dcol/overview loads view/dcol/overview.js. */
	window.addEventListener('DOMContentLoaded', function() {
		var name = new URLSearchParams(location.search).get('view');
		if (!name)
			return;
		loadModule('view.' + name.replace(/\//g, '.')).then(function(cls) {
			modules.__view = cls.instantiate([]);
		}).catch(function(err) {
			dom.content(document.getElementById('view'),
				E('div', { 'class': 'alert-message error', 'id': 'view-error' }, [ String(err && err.stack || err) ]));
			document.body.setAttribute('data-view-ready', 'error');
		});
	});
})();
