'use strict';
'require view';
'require form';
'require rpc';
'require poll';
'require dom';
'require uci';

/*
 * Overview: the membership switch (dcol.main.enabled) with the client and
 * waypoint roles under it, the member identity from the daemon, and what this
 * router gives and takes, with a small live graph.
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
	return text;
}

/* Where other members reach this waypoint, from NAT traversal. */
function reachability(tr) {
	if (!tr)
		return E('em', [ _('UPnP and STUN off') ]);
	if (!tr.last_pass)
		return E('em', [ _('checking…') ]);
	if (tr.public)
		return _('%s (%s)').format(tr.public, tr.note);
	return tr.note;
}

/* The membership directory's snapshot in force. */
function directoryText(d) {
	if (!d)
		return E('em', [ _('not configured') ]);
	if (d.serial == null)
		return _('no snapshot yet (%s)').format(d.last_result || d.url);
	return _('snapshot %d: %d member(s), %d used as waypoints, %d revoked').format(
		+d.serial, +d.members || 0, +d.peers || 0, +d.revoked || 0);
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
			uci.load('dcol')
		]);
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
		o.rmempty = false;

		o = s.option(form.Flag, 'client_enabled', _('Use detours (client role)'),
			_('Connections of this router and its LAN get extra subflows through other members.'));
		o.ucisection = 'client';
		o.ucioption = 'enabled';
		o.rmempty = false;
		o.retain = true;
		o.depends('enabled', '1');

		o = s.option(form.Flag, 'waypoint_enabled', _('Serve detours (waypoint role)'),
			_('Other members may send subflows through this router, up to the limits on the settings page.'));
		o.ucisection = 'waypoint';
		o.ucioption = 'enabled';
		o.rmempty = false;
		o.retain = true;
		o.depends('enabled', '1');

		return m.render().then(L.bind(function(mapEl) {
			var box = E('div', { 'class': 'cbi-section', 'id': 'dcol-status-box' }, [
				this.renderStatus(data[0])
			]);

			poll.add(L.bind(this.pollStatus, this));

			return E([], [ mapEl, box ]);
		}, this));
	}
});
