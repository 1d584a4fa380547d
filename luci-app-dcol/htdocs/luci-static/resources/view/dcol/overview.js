'use strict';
'require view';
'require form';
'require rpc';
'require poll';
'require dom';
'require uci';
'require ui';

/*
 * Overview: joining the collective (this router's member key, the join
 * request to send to the administrator, installing the certificate that
 * comes back), the membership switch (dcol.main.enabled) with the client and
 * waypoint roles under it, the member identity from the daemon, and what this
 * router gives and takes, with a small live graph.
 *
 * `ubus call luci.dcol membership` answers with `dcol member show --json`
 * (documented in dcol/src/member.rs): { ready, key: { present, id, request,
 * error }, cert: { present, name, roles, not_after, error }, collective:
 * { present, id, error } }. `create_key` creates the key; `install` {cert,
 * collective} checks the pasted texts against this router's key and installs
 * them, or answers {error}.
 *
 * `ubus call luci.dcol status` answers with `dcol status --json` (the contract,
 * documented in dcol/src/control/status.rs), or {"error": "..."} when the
 * daemon does not answer. A reply, shortened:
 *
 * {
 *   "version": "0.1.0", "uptime_s": 42,
 *   "member": { "name": "bob", "id": "3f2a9c0d11e4b7a0", "collective": "<64 hex>",
 *               "cert_not_after": 1795000000, "roles": "client,waypoint" },
 *   "client": { "connections": [ ... ], "peers": [ ... ],
 *               "lan_proxy": { "active": 3, "bytes_up": 48213, "bytes_down": 90312744,
 *                              "detour_policy": "tls-after-handshake", ... } },
 *   "waypoint": { "listen": [ "0.0.0.0:7447" ], "grants": [ ... ],
 *                 "datagrams": 10, "granted": 9, "refused": { "Stale": 1 } }
 * }
 *
 * Everything the daemon says is untrusted text: it only ever reaches the page
 * as an element of a children array (a text node), never as markup.
 */

var callStatus = rpc.declare({
	object: 'luci.dcol',
	method: 'status',
	expect: { }
});

var callMembership = rpc.declare({
	object: 'luci.dcol',
	method: 'membership',
	expect: { }
});

var callCreateKey = rpc.declare({
	object: 'luci.dcol',
	method: 'create_key',
	expect: { }
});

var callInstall = rpc.declare({
	object: 'luci.dcol',
	method: 'install',
	params: [ 'cert', 'collective' ],
	expect: { }
});

/* A failed rpc call as {error}, like the plugin's own errors. */
function rpcFailed(method) {
	return function(err) {
		return { error: _('rpc call luci.dcol %s failed: %s').format(method, err && err.message || err) };
	};
}

function fmtDate(unix) {
	return new Date(unix * 1000).toUTCString();
}

/* The status, or {error} also when the rpc call itself fails (rpcd, ACL). */
function fetchStatus() {
	return callStatus().catch(function(err) {
		return { error: _('rpc call luci.dcol status failed: %s').format(err && err.message || err) };
	});
}

var GRAPH_POINTS = 60;

function fmtBytes(n) {
	return '%1024.2mB'.format(+n || 0);
}

function fmtRate(bps) {
	return '%1000.2mbit/s'.format(bps * 8);
}

function fmtDuration(s) {
	s = Math.max(0, Math.floor(+s || 0));
	if (s < 60)
		return _('%ds').format(s);
	if (s < 3600)
		return _('%dm %ds').format(Math.floor(s / 60), s % 60);
	if (s < 86400)
		return _('%dh %dm').format(Math.floor(s / 3600), Math.floor(s % 3600 / 60));
	return _('%dd %dh').format(Math.floor(s / 86400), Math.floor(s % 86400 / 3600));
}

/* "1.2 GB of 100 GB (1%), at most 8 Mbit/s" from the waypoint's status. */
function donation(wp) {
	var used = +wp.donated_month_bytes || 0, quota = +wp.donate_monthly_bytes || 0;
	var text = quota > 0
		? _('%s of %s (%d%%)').format('%1000.1mB'.format(used), '%1000.1mB'.format(quota), Math.floor(used * 100 / quota))
		: _('%s, no monthly cap').format('%1000.1mB'.format(used));
	if (+wp.donate_kbit > 0)
		text += ', ' + _('at most %s').format('%1000.1mbit/s'.format(+wp.donate_kbit * 1000));
	if (wp.refusing)
		text += ' — ' + _('used up: new detours are refused until the month ends or the cap is raised');
	return text;
}

/* What went through converters: this router's LAN flows (client.lan_proxy.converters)
 * and the conversions it does for others (waypoint.converter). */
function conversionsText(lp, wp) {
	var parts = [];
	(lp && Array.isArray(lp.converters) ? lp.converters : []).forEach(function(c) {
		parts.push(_('%d via %s (%d open, %d refused, %d failed%s)').format(
			+c.converted || 0, c.converter, +c.active || 0, +c.refused || 0, +c.failed || 0,
			c.held_down ? ', ' + _('held down') : ''));
	});
	var cv = wp && wp.converter;
	if (cv)
		parts.push(_('converting for others: %d running, %d since start, %d refused').format(
			Array.isArray(cv.conversions) ? cv.conversions.length : 0, +cv.converted || 0,
			Object.keys(cv.refused || {}).reduce(function(n, k) { return n + (+cv.refused[k] || 0); }, 0)));
	return parts.length ? parts.join('; ') : E('em', [ _('off') ]);
}

/* Where other members reach this waypoint, from NAT traversal. */
function reachability(tr) {
	if (!tr)
		return E('em', [ _('UPnP and STUN off') ]);
	if (!tr.last_pass)
		return E('em', [ _('checking…') ]);
	var v6 = tr.public6 ? ' ' + _('and %s over IPv6 (firewall pinholes)').format(tr.public6) : '';
	if (tr.public)
		return _('%s (%s)').format(tr.public, tr.note) + v6;
	return tr.note + v6;
}

/* The membership directory's snapshot in force. */
function directoryText(d) {
	if (!d)
		return E('em', [ _('not configured') ]);
	var renewal = d.renewal != null ? ' ' + _('(certificate renewal: %s)').format(d.renewal) : '';
	if (d.serial == null)
		return _('no snapshot yet (%s)').format(d.last_result || d.url) + renewal;
	return _('snapshot %d: %d member(s), %d used as waypoints, %d revoked').format(
		+d.serial, +d.members || 0, +d.peers || 0, +d.revoked || 0) + renewal;
}

function certValidity(notAfter) {
	var left = notAfter - Date.now() / 1000;
	var when = new Date(notAfter * 1000).toUTCString();

	if (left <= 0)
		return E('span', { 'class': 'label warning', 'id': 'dcol-cert' },
			[ _('expired on %s').format(when) ]);
	if (left < 14 * 86400)
		return E('span', { 'class': 'label notice', 'id': 'dcol-cert' },
			[ _('valid until %s (%d days left, ask the collective for a new certificate)').format(when, Math.floor(left / 86400)) ]);
	return E('span', { 'id': 'dcol-cert' },
		[ _('valid until %s (%d days left)').format(when, Math.floor(left / 86400)) ]);
}

function countDetours(client, state) {
	var n = 0;
	(client && Array.isArray(client.connections) ? client.connections : []).forEach(function(c) {
		(Array.isArray(c.subflows) ? c.subflows : []).forEach(function(sf) {
			if (sf.path == 'detour' && sf.state == state)
				n++;
		});
	});
	return n;
}

/* A key/value table; values are nodes or plain text (never markup). */
function itemTable(id, rows) {
	return E('table', { 'class': 'table', 'id': id }, rows.map(function(r) {
		return E('tr', { 'class': 'tr' }, [
			E('td', { 'class': 'td left', 'width': '33%' }, [ r[0] ]),
			E('td', { 'class': 'td left' }, [ r[1] ])
		]);
	}));
}

/*
 * /etc/config/dcol that uci cannot read (edited by hand): the form cannot be
 * built, so the page says so, with the line and reason dcol gives (its
 * status call reads the same file) instead of LuCI's bare RPC error.
 */
function configError(err, st) {
	return E('div', { 'class': 'alert-message error', 'id': 'dcol-config-error' }, [
		E('strong', [ _('/etc/config/dcol cannot be read: the settings cannot be shown.') ]),
		E('p', { 'class': 'dcol-config-error-text' }, [
			String(st && st.error != null ? st.error : (err && err.message || err))
		]),
		E('p', [ _('Fix the file (uci show dcol names the line too). Until then reloads are refused and a running dcol keeps the configuration it read last.') ])
	]);
}

function svgEl(tag, attrs) {
	var el = document.createElementNS('http://www.w3.org/2000/svg', tag);
	for (var k in attrs)
		el.setAttribute(k, attrs[k]);
	return el;
}

return view.extend({
	history: [],
	lastSample: null,

	load: function() {
		return Promise.all([
			fetchStatus(),
			uci.load('dcol').catch(function(err) { return { uciError: err }; }),
			callMembership().catch(rpcFailed('membership'))
		]);
	},

	/* Joining: key, join request, certificate. `note` is the outcome of
	 * the last action ({ok} or {error}). */
	renderJoin: function(ms, note) {
		if (!ms || typeof(ms) != 'object')
			ms = { error: _('Empty reply from rpcd') };

		var noteEl = E('div', { 'id': 'dcol-join-note' }, note ? [
			E('div', { 'class': note.error != null ? 'alert-message error' : 'alert-message notice' },
				[ String(note.error != null ? note.error : note.ok) ])
		] : []);

		if (ms.error != null)
			return E('div', { 'id': 'dcol-join' }, [
				E('div', { 'class': 'alert-message warning', 'id': 'dcol-join-error' }, [ String(ms.error) ]),
				noteEl
			]);

		var key = ms.key || {}, cert = ms.cert || {}, coll = ms.collective || {};
		var body = [];

		if (!key.present) {
			body.push(E('p', [ _('This router has no member key yet. Create it, then send its join request to the administrator of your collective.') ]));
			body.push(E('button', { 'class': 'cbi-button cbi-button-action', 'id': 'dcol-create-key',
				'click': ui.createHandlerFn(this, 'handleCreateKey') }, [ _('Create the member key') ]));
		}
		else if (key.error != null) {
			body.push(E('div', { 'class': 'alert-message warning', 'id': 'dcol-key-error' }, [ String(key.error) ]));
		}
		else {
			body.push(E('p', [ _('Join request of member %s: send it to the administrator of your collective, with the name this router should have.').format(key.id) ]));
			body.push(E('textarea', { 'id': 'dcol-join-request', 'readonly': 'readonly', 'rows': 2,
				'style': 'width:100%;font-family:monospace', 'click': function(ev) { ev.target.select(); } },
				[ String(key.request || '') ]));

			var state;
			if (ms.ready)
				state = E('p', { 'id': 'dcol-join-state' }, [ _('Member \'%s\' (%s) of collective %s, certificate valid until %s.')
					.format(cert.name, cert.roles, String(coll.id || '').substring(0, 16) + '…', fmtDate(+cert.not_after)) ]);
			else if (cert.error != null || coll.error != null)
				state = E('div', { 'class': 'alert-message warning', 'id': 'dcol-join-state' },
					[ String(cert.error != null ? cert.error : coll.error) ]);
			else
				state = E('p', { 'id': 'dcol-join-state' }, [ cert.present
					? _('A certificate is installed but no collective key: paste the collective key below.')
					: _('No certificate yet: paste the one the administrator sends back, and the collective key.') ]);
			body.push(state);

			body.push(E('div', { 'class': 'cbi-value' }, [
				E('label', { 'class': 'cbi-value-title', 'for': 'dcol-cert-text' }, [ _('Certificate') ]),
				E('div', { 'class': 'cbi-value-field' }, [
					E('textarea', { 'id': 'dcol-cert-text', 'rows': 3, 'style': 'width:100%;font-family:monospace',
						'placeholder': 'dcol-cert-v1 …' }),
					E('div', { 'class': 'cbi-value-description' }, [ ms.ready
						? _('A new certificate from the administrator (e.g. before this one expires) replaces it.')
						: _('The line starting with dcol-cert-v1 that the administrator sends back.') ])
				])
			]));
			body.push(E('div', { 'class': 'cbi-value' }, [
				E('label', { 'class': 'cbi-value-title', 'for': 'dcol-collective-text' }, [ _('Collective key') ]),
				E('div', { 'class': 'cbi-value-field' }, [
					E('input', { 'type': 'text', 'id': 'dcol-collective-text', 'style': 'width:100%;font-family:monospace',
						'placeholder': 'dcol-public-v1 …' }),
					E('div', { 'class': 'cbi-value-description' }, [ coll.present && coll.error == null
						? _('Empty: keep the installed one (%s…).').format(String(coll.id).substring(0, 16))
						: _('The collective\'s public key (dcol-public-v1 …); compare it with what the administrator tells you in person.') ])
				])
			]));
			body.push(E('button', { 'class': 'cbi-button cbi-button-apply', 'id': 'dcol-install',
				'click': ui.createHandlerFn(this, 'handleInstall') }, [ _('Check and install') ]));
		}
		body.push(noteEl);

		if (ms.ready)
			return E('div', { 'id': 'dcol-join', 'data-ready': '1' }, [
				E('details', note ? { 'id': 'dcol-join-details', 'open': 'open' } : { 'id': 'dcol-join-details' }, [
					E('summary', [ _('Member \'%s\', certificate valid until %s: show the key, install a new certificate')
						.format(cert.name, fmtDate(+cert.not_after)) ])
				].concat(body))
			]);
		return E('div', { 'id': 'dcol-join', 'data-ready': '0' }, [
			E('h3', [ _('Joining a collective') ]),
			E('p', [ _('This router is not a member yet: dcol cannot start until its member key, a certificate for it and the collective key are here.') ])
		].concat(body));
	},

	refreshJoin: function(note) {
		return callMembership().catch(rpcFailed('membership')).then(L.bind(function(ms) {
			dom.content(document.querySelector('#dcol-join-box'), this.renderJoin(ms, note));
		}, this));
	},

	handleCreateKey: function() {
		return callCreateKey().catch(rpcFailed('create_key')).then(L.bind(function(r) {
			return this.refreshJoin(r && r.error != null ? { error: r.error } : null);
		}, this));
	},

	handleInstall: function() {
		var cert = document.querySelector('#dcol-cert-text').value;
		var coll = document.querySelector('#dcol-collective-text').value;

		return callInstall(cert, coll).catch(rpcFailed('install')).then(L.bind(function(r) {
			if (!r || r.error != null || !r.installed) {
				/* Keep what was pasted: only the note changes. */
				dom.content(document.querySelector('#dcol-join-note'), E('div', { 'class': 'alert-message error' },
					[ String(r && r.error != null ? r.error : _('Empty reply from rpcd')) ]));
				return;
			}
			return this.refreshJoin({ ok: _('Installed: member \'%s\', certificate valid until %s. dcol takes it now when membership is on.')
				.format(r.name, fmtDate(+r.not_after)) });
		}, this));
	},

	/* Rate of the LAN traffic carried, from the byte counters of two polls. */
	sample: function(st) {
		var lp = st && st.client ? st.client.lan_proxy : null;
		var now = Date.now() / 1000;
		var rate = null;

		if (lp) {
			var bytes = (+lp.bytes_up || 0) + (+lp.bytes_down || 0);
			var last = this.lastSample;
			if (last && now > last.t && bytes >= last.bytes)
				rate = (bytes - last.bytes) / (now - last.t);
			this.lastSample = { t: now, bytes: bytes };
		}
		else {
			this.lastSample = null;
		}

		if (rate != null) {
			this.history.push(rate);
			if (this.history.length > GRAPH_POINTS)
				this.history.shift();
		}
		return rate;
	},

	renderGraph: function() {
		var w = 600, h = 120;
		var max = Math.max.apply(null, this.history.concat([ 125000 ]));
		var svg = svgEl('svg', {
			'id': 'dcol-graph', 'width': '100%', 'height': h,
			'viewBox': '0 0 %d %d'.format(w, h), 'preserveAspectRatio': 'none',
			'style': 'border:1px solid #ccc;background:#fafafa'
		});
		var step = w / (GRAPH_POINTS - 1);
		var off = GRAPH_POINTS - this.history.length;
		var pts = this.history.map(function(v, i) {
			return '%.1f,%.1f'.format((off + i) * step, h - 4 - (v / max) * (h - 14));
		});

		svg.appendChild(svgEl('polyline', {
			'points': pts.join(' '), 'fill': 'none', 'stroke': '#0069d6', 'stroke-width': 2
		}));
		svg.setAttribute('data-points', this.history.length);
		return E('div', [
			svg,
			E('div', { 'class': 'cbi-value-description' }, [
				_('LAN traffic carried, last %d samples; top of the graph: %s').format(GRAPH_POINTS, fmtRate(max))
			])
		]);
	},

	renderStatus: function(st) {
		if (!st || typeof(st) != 'object')
			st = { error: _('Empty reply from rpcd') };

		if (st.error != null) {
			this.lastSample = null;
			return E('div', { 'id': 'dcol-status' }, [
				E('div', { 'class': 'alert-message warning', 'id': 'dcol-error' }, [
					E('strong', [ _('The dcol daemon does not answer.') ]), ' ',
					E('span', { 'class': 'dcol-error-text' }, [ String(st.error) ]),
					E('p', [ _('When membership is off the daemon is stopped; otherwise see the log page.') ])
				])
			]);
		}

		var m = st.member || {};
		var client = st.client, wp = st.waypoint;
		var rate = this.sample(st);
		var lp = client ? client.lan_proxy : null;
		var grants = wp && Array.isArray(wp.grants) ? wp.grants.length : 0;

		return E('div', { 'id': 'dcol-status' }, [
			E('h3', [ _('Member identity') ]),
			itemTable('dcol-identity', [
				[ _('Member name'), E('strong', { 'id': 'dcol-member-name' }, [ m.name || '?' ]) ],
				[ _('Member id'), E('code', { 'id': 'dcol-member-id' }, [ m.id || '?' ]) ],
				[ _('Collective'), E('code', { 'title': m.collective || '' },
					[ String(m.collective || '?').replace(/^(.{8}).+(.{8})$/, '$1…$2') ]) ],
				[ _('Certificate'), m.cert_not_after ? certValidity(+m.cert_not_after) : _('unknown') ],
				[ _('Roles in the certificate'), m.roles || _('none') ],
				[ _('Daemon'), _('dcol %s, running for %s').format(st.version || '?', fmtDuration(st.uptime_s)) ]
			]),
			E('h3', [ _('What this router takes and gives') ]),
			itemTable('dcol-traffic', [
				[ _('Using detours (client role)'), client
					? _('%d detour(s) established on %d connection(s)').format(
						countDetours(client, 'established'),
						Array.isArray(client.connections) ? client.connections.length : 0)
					: E('em', [ _('off') ]) ],
				[ _('LAN traffic carried (up / down)'), lp
					? E('span', { 'id': 'dcol-bytes' }, [ '%s / %s'.format(fmtBytes(lp.bytes_up), fmtBytes(lp.bytes_down)) ])
					: E('em', [ _('LAN proxy off') ]) ],
				[ _('Current rate'), E('span', { 'id': 'dcol-rate' },
					[ rate != null ? fmtRate(rate) : '–' ]) ],
				[ _('Serving detours (waypoint role)'), wp
					? E('span', { 'id': 'dcol-grants' }, [ _('%d active grant(s), %d granted since start').format(grants, +wp.granted || 0) ])
					: E('em', [ _('off') ]) ],
				[ _('Donated this month'), wp
					? E('span', { 'id': 'dcol-donated' }, [ donation(wp) ])
					: E('em', [ _('off') ]) ],
				[ _('Reachable from other members at'), wp
					? E('span', { 'id': 'dcol-reach' }, [ reachability(st.traversal) ])
					: E('em', [ _('off') ]) ],
				[ _('Conversions (servers without MPTCP)'), E('span', { 'id': 'dcol-conversions' }, [ conversionsText(lp, wp) ]) ],
				[ _('Membership directory'), E('span', { 'id': 'dcol-directory' }, [ directoryText(st.directory) ]) ]
			]),
			lp ? this.renderGraph() : E([])
		]);
	},

	pollStatus: function() {
		return fetchStatus()
			.then(L.bind(function(st) {
				dom.content(document.querySelector('#dcol-status-box'), this.renderStatus(st));
			}, this));
	},

	render: function(data) {
		var m, s, o;

		if (data[1] && data[1].uciError)
			return configError(data[1].uciError, data[0]);

		/* uci.set() ignores missing sections: make sure the role switches
		 * have somewhere to go (the package's default file has both). */
		[ 'client', 'waypoint' ].forEach(function(sec) {
			if (!uci.get('dcol', sec))
				uci.add('dcol', sec, sec);
		});

		m = new form.Map('dcol', _('Detour Collective'),
			_('Routers of a collective carry extra MPTCP subflows for each other: connections get more bandwidth and avoid bad paths. The servers need nothing but MPTCP.'));

		s = m.section(form.NamedSection, 'main', 'dcol', _('Membership'));
		s.addremove = false;

		o = s.option(form.Flag, 'enabled', _('Share this router with the collective and use detours'),
			_('Starts the dcol daemon. Off: this router neither uses nor serves detours.'));
		o.default = '1';
		o.rmempty = false;

		o = s.option(form.Flag, 'client_enabled', _('Use detours (client role)'),
			_('Connections of this router and its LAN get extra subflows through other members.'));
		o.ucisection = 'client';
		o.ucioption = 'enabled';
		o.default = '1';
		o.rmempty = false;
		o.retain = true;
		/* A bare 'enabled' would name this option's own ucisection (client). */
		o.depends('dcol.main.enabled', '1');

		o = s.option(form.Flag, 'waypoint_enabled', _('Serve detours (waypoint role)'),
			_('Other members may send subflows through this router, up to the limits on the settings page.'));
		o.ucisection = 'waypoint';
		o.ucioption = 'enabled';
		o.default = '1';
		o.rmempty = false;
		o.retain = true;
		o.depends('dcol.main.enabled', '1');

		return m.render().then(L.bind(function(mapEl) {
			var box = E('div', { 'class': 'cbi-section', 'id': 'dcol-status-box' }, [
				this.renderStatus(data[0])
			]);
			var join = E('div', { 'class': 'cbi-section', 'id': 'dcol-join-box' }, [
				this.renderJoin(data[2], null)
			]);

			poll.add(L.bind(this.pollStatus, this));

			return E([], [ join, mapEl, box ]);
		}, this));
	}
});
