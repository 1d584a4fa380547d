'use strict';
'require view';
'require rpc';
'require poll';
'require dom';

/*
 * Detours: live tables of the client's MPTCP connections with their subflows,
 * the configured waypoints, and on a waypoint the grants it serves.
 *
 * Data: `ubus call luci.dcol status` (`dcol status --json`, documented in
 * dcol/src/control/status.rs). The parts used here:
 *
 * "client": {
 *   "connections": [
 *     { "token": "0x1a2b3c4d", "local": "10.0.1.1:51234", "remote": "10.0.3.2:5201",
 *       "state": "established", "lan_client": "192.168.1.20:40312", "detour_gate": "open",
 *       "subflows": [
 *         { "path": "direct", "waypoint": null, "tunnel": null, "local": "10.0.1.1:51234",
 *           "remote": "10.0.3.2:5201", "state": "established", "detail": null, "setup_ms": null },
 *         { "path": "detour", "waypoint": "alice", "tunnel": "nat", "local": "10.0.1.1:40123",
 *           "remote": "10.0.6.2:40000", "state": "established", "detail": null, "setup_ms": 3 } ] } ],
 *   "peers": [ { "name": "alice", "address": "10.0.6.2:7447", "tunnel": "nat", "up": true, "rtt_ms": 1.2 } ]
 * },
 * "waypoint": {
 *   "grants": [ { "member": "bob", "member_id": "3f2a9c0d11e4b7a0", "client": "10.0.1.1", "port": 40000,
 *                 "destination": "10.0.3.2:5201", "age_s": 12, "expires_in_s": 288, "holders": 1 } ] }
 *
 * or {"error": "..."} when the daemon does not answer. Daemon text only ever
 * goes into children arrays (text nodes).
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

function table(id, titles, rows, empty) {
	var head = E('tr', { 'class': 'tr table-titles' }, titles.map(function(t) {
		return E('th', { 'class': 'th' }, [ t ]);
	}));

	if (!rows.length)
		rows = [ E('tr', { 'class': 'tr placeholder' }, [
			E('td', { 'class': 'td', 'colspan': titles.length }, [ E('em', [ empty ]) ])
		]) ];

	return E('table', { 'class': 'table', 'id': id }, [ head ].concat(rows));
}

function cells(values) {
	return values.map(function(v, i) {
		return E('td', { 'class': 'td' }, [ v == null ? '–' : v ]);
	});
}

function subflowPath(sf) {
	if (sf.path == 'direct')
		return _('direct');
	return _('via %s (%s tunnel)').format(sf.waypoint || '?', sf.tunnel || '?');
}

function subflowState(sf) {
	var label = E('span', {
		'class': 'label' + (sf.state == 'failed' ? ' warning' : (sf.state == 'established' ? ' success' : ''))
	}, [ sf.state || '?' ]);

	if (sf.detail != null)
		return E('span', [ label, ' ', E('small', [ sf.detail ]) ]);
	return label;
}

function gate(g) {
	if (!g)
		return '–';
	if (g == 'open')
		return E('span', { 'class': 'label success' }, [ _('open') ]);
	return E('span', { 'title': _('No detours for this connection, or not yet') }, [ g ]);
}

function connectionRows(conns) {
	var rows = [];

	conns.forEach(function(c) {
		var sfs = Array.isArray(c.subflows) ? c.subflows : [];

		sfs.forEach(function(sf, i) {
			var first = (i == 0);
			rows.push(E('tr', {
				'class': 'tr dcol-subflow' + (first ? ' dcol-conn-first' : ''),
				'data-token': c.token,
				'data-path': sf.path,
				'data-waypoint': sf.waypoint || '',
				'data-state': sf.state
			}, cells([
				first ? E('code', [ c.token ]) : '',
				first ? c.remote : '',
				first ? (c.lan_client || E('em', [ _('this router') ])) : '',
				first ? gate(c.detour_gate) : '',
				subflowPath(sf),
				subflowState(sf),
				(sf.local || '?') + ' → ' + (sf.remote || '?'),
				sf.setup_ms != null ? _('%d ms').format(sf.setup_ms) : null
			])));
		});

		if (!sfs.length)
			rows.push(E('tr', { 'class': 'tr dcol-subflow', 'data-token': c.token }, cells([
				E('code', [ c.token ]), c.remote, c.lan_client || E('em', [ _('this router') ]),
				gate(c.detour_gate), null, c.state, null, null
			])));
	});

	return rows;
}

return view.extend({
	load: function() {
		return fetchStatus();
	},

	renderTables: function(st) {
		if (!st || typeof(st) != 'object')
			st = { error: _('Empty reply from rpcd') };

		if (st.error != null)
			return E('div', { 'id': 'dcol-detours' }, [
				E('div', { 'class': 'alert-message warning', 'id': 'dcol-error' }, [
					E('strong', [ _('The dcol daemon does not answer.') ]), ' ',
					E('span', { 'class': 'dcol-error-text' }, [ String(st.error) ])
				])
			]);

		var out = [];
		var client = st.client, wp = st.waypoint;

		out.push(E('h3', [ _('Connections and their subflows') ]));
		if (client) {
			out.push(table('dcol-connections', [
				_('Connection'), _('Server'), _('LAN client'), _('Detour gate'),
				_('Path'), _('State'), _('Addresses'), _('Setup')
			], connectionRows(Array.isArray(client.connections) ? client.connections : []),
			_('No MPTCP connections right now.')));

			out.push(E('h3', [ _('Waypoints') ]));
			out.push(table('dcol-peers', [ _('Name'), _('Address'), _('Tunnel'), _('Reachable'), _('Round trip') ],
				(Array.isArray(client.peers) ? client.peers : []).map(function(p) {
					return E('tr', { 'class': 'tr' }, cells([
						p.name, p.address, p.tunnel,
						p.up ? _('yes') : E('span', { 'class': 'label warning' }, [ _('no, held down') ]),
						p.rtt_ms != null ? '%.1f ms'.format(p.rtt_ms) : null
					]));
				}), _('No waypoints configured.')));
		}
		else {
			out.push(E('p', [ E('em', [ _('The client role is off: this router uses no detours.') ]) ]));
		}

		out.push(E('h3', [ _('Detours served (waypoint)') ]));
		if (wp) {
			out.push(table('dcol-grants', [
				_('Member'), _('Member id'), _('Client'), _('Port'), _('Destination'), _('Connections'), _('Age'), _('Expires in')
			], (Array.isArray(wp.grants) ? wp.grants : []).map(function(g) {
				/* Connections of the member to that destination share one tunnel. */
				var holders = Number.isInteger(g.holders) && g.holders > 0 ? g.holders : 1;
				return E('tr', { 'class': 'tr dcol-grant', 'data-holders': String(holders) }, cells([
					g.member, E('code', [ g.member_id ]), g.client, String(g.port), g.destination,
					String(holders), _('%ds').format(g.age_s), _('%ds').format(g.expires_in_s)
				]));
			}), _('No detours served right now.')));
		}
		else {
			out.push(E('p', [ E('em', [ _('The waypoint role is off: this router serves no detours.') ]) ]));
		}

		return E('div', { 'id': 'dcol-detours' }, out);
	},

	render: function(st) {
		poll.add(L.bind(function() {
			return fetchStatus()
				.then(L.bind(function(st) {
					dom.content(document.querySelector('#dcol-detours-box'), this.renderTables(st));
				}, this));
		}, this));

		return E([], [
			E('h2', [ _('Detours') ]),
			E('div', { 'class': 'cbi-map-descr' }, [
				_('Live view of the MPTCP connections of this router and the detours through other members, refreshed every few seconds.')
			]),
			E('div', { 'class': 'cbi-section', 'id': 'dcol-detours-box' }, [ this.renderTables(st) ])
		]);
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});
