'use strict';
'require view';
'require form';
'require rpc';
'require uci';

/*
 * Settings of /etc/config/dcol (UCI; the daemon's parser in
 * dcol/src/config/mod.rs is the reference for names and ranges). The
 * membership switch and the roles are on the overview page.
 */

var callStatus = rpc.declare({
	object: 'luci.dcol',
	method: 'status',
	expect: { }
});

return view.extend({
	load: function() {
		return uci.load('dcol').catch(function(err) {
			/* dcol's status call reads the same file: its error names the line. */
			return callStatus().catch(function() { return {}; }).then(function(st) {
				return { uciError: err, status: st };
			});
		});
	},

	render: function(data) {
		var m, s, o;

		if (data && data.uciError)
			return E('div', { 'class': 'alert-message error', 'id': 'dcol-config-error' }, [
				E('strong', [ _('/etc/config/dcol cannot be read: the settings cannot be shown.') ]),
				E('p', { 'class': 'dcol-config-error-text' }, [
					String(data.status && data.status.error != null ? data.status.error : (data.uciError.message || data.uciError))
				]),
				E('p', [ _('Fix the file (uci show dcol names the line too). Until then reloads are refused and a running dcol keeps the configuration it read last.') ])
			]);

		m = new form.Map('dcol', _('Detour Collective settings'),
			_('How many detours this router uses, what it offers to other members, and which waypoints it knows.'));

		s = m.section(form.NamedSection, 'client', 'client', _('Using detours (client role)'));
		s.addremove = false;

		o = s.option(form.Value, 'max_detours', _('Detours per connection'),
			_('Extra subflows through waypoints for one MPTCP connection (0-8).'));
		o.datatype = 'range(0,8)';
		o.placeholder = '2';

		o = s.option(form.ListValue, 'detour_policy', _('Detour policy for LAN devices'),
			_('Waypoints must never see a TLS handshake in the clear: the default detours TLS connections once the handshake is over, and never plaintext ones.'));
		o.value('tls-after-handshake', _('TLS connections, after the handshake (recommended)'));
		o.value('all', _('All connections, from the first byte'));
		o.value('none', _('None'));
		o.default = 'tls-after-handshake';

		o = s.option(form.Flag, 'lan_proxy', _('Detours for LAN devices'),
			_('Intercepts the TCP connections of devices on the LAN interfaces below and carries them as MPTCP. The devices need nothing installed.'));
		o.rmempty = false;

		o = s.option(form.ListValue, 'convert', _('Servers without MPTCP through converters'),
			_('Connections of LAN devices to servers known not to speak MPTCP go through a member that converts (RFC 8803), with detours toward it. That member sees the destinations and, for TLS, the server names: off unless you trust the converters.'));
		o.value('off', _('Off (recommended unless you trust the converters)'));
		o.value('auto', _('Through converter members'));
		o.default = 'off';
		o.depends('lan_proxy', '1');

		o = s.option(form.DynamicList, 'lan_interface', _('LAN interfaces'),
			_('Interfaces whose outgoing TCP is intercepted, e.g. br-lan.'));
		o.datatype = 'maxlength(15)';
		o.placeholder = 'br-lan';
		o.depends('lan_proxy', '1');

		o = s.option(form.DynamicList, 'bypass', _('Never intercept these destinations'),
			_('Addresses or networks (CIDR) that LAN devices reach directly, untouched.'));
		o.datatype = 'cidr';
		o.depends('lan_proxy', '1');

		o = s.option(form.DynamicList, 'bypass_port', _('Never intercept these ports'));
		o.datatype = 'port';
		o.depends('lan_proxy', '1');

		s = m.section(form.NamedSection, 'main', 'dcol', _('Membership directory'),
			_('The collective\'s directory lists its members\' waypoints and the revocation list, signed by the collective key (so plain http is safe). With the waypoint role on, this router publishes itself there.'));
		s.addremove = false;

		o = s.option(form.Value, 'directory', _('Directory URL'),
			_('Where the signed snapshot is, e.g. http://dir.example.org:7450/snapshot. Empty: only the waypoints listed below.'));
		o.datatype = 'maxlength(255)';
		o.placeholder = 'http://dir.example.org:7450/snapshot';
		/* LuCI validates empty values too: empty means no directory. */
		o.validate = function(section_id, value) {
			return value == '' || /^http:\/\/[^\s/]+(\/\S*)?$/.test(value) || _('Expecting an http:// URL');
		};

		o = s.option(form.Value, 'directory_max_peers', _('Directory members used as waypoints'),
			_('0-64.'));
		o.datatype = 'range(0,64)';
		o.placeholder = '8';

		o = s.option(form.ListValue, 'directory_tunnel', _('Tunnel to directory waypoints'));
		o.value('nat', _('NAT (no overhead)'));
		o.value('vpn', _('VPN (WireGuard)'));
		o.default = 'nat';

		s = m.section(form.NamedSection, 'waypoint', 'waypoint', _('Serving detours (waypoint role)'));
		s.addremove = false;

		o = s.option(form.Flag, 'upnp', _('Open ports on the home gateway (UPnP, NAT-PMP, PCP)'),
			_('Maps the signaling, WireGuard and the first 32 NAT tunnel ports on an upstream gateway that speaks UPnP IGD or NAT-PMP, and removes them when dcol stops. With an IPv6 signaling address (e.g. [::]:7447) the same ports are opened in the gateway\'s IPv6 firewall with PCP.'));
		o.default = '1';
		o.rmempty = false;

		o = s.option(form.DynamicList, 'stun_server', _('STUN servers'),
			_('host:port of STUN servers that tell this router its public address and NAT type (two or more tell the NAT type).'));
		o.datatype = 'hostport';
		o.placeholder = 'stun.example.org:3478';

		o = s.option(form.DynamicList, 'advertise', _('Public address'),
			_('address:port other members use to reach this router, when it cannot be found out (e.g. a manual port forward). Empty: found by UPnP and STUN.'));
		o.datatype = 'ipaddrport(1)';
		o.placeholder = '203.0.113.5:7447';

		o = s.option(form.Flag, 'convert', _('Convert for other members'),
			_('Members\' MPTCP connections to servers without MPTCP are converted here to plain TCP (RFC 8803), under the same destination rules, revocations and donation caps as detours. This router then opens those connections itself: each one is kept in the evidence log.'));
		o.rmempty = false;

		o = s.option(form.Value, 'convert_port', _('Converter port'),
			_('TCP port of the converter (the directory publishes it when it is the signaling port).'));
		o.datatype = 'port';
		o.placeholder = '7447';
		o.depends('convert', '1');

		o = s.option(form.Value, 'nat_ports', _('Port range for NAT tunnels'),
			_('One port per served detour, e.g. 40000-40999 (ports from 1024). Forward them on an upstream gateway if there is one.'));
		o.datatype = 'portrange';
		o.placeholder = '40000-40999';

		o = s.option(form.Value, 'max_tunnels_per_member', _('Donation cap: tunnels per member'),
			_('How many detours one member may use through this router at the same time.'));
		o.datatype = 'range(1,65535)';
		o.placeholder = '16';

		o = s.option(form.Value, 'donate_kbit', _('Donation cap: rate'),
			_('Most kbit/s all members\' detours through this router may use together, enforced in the kernel. 0 or empty: no cap.'));
		o.datatype = 'range(0,100000000)';
		o.placeholder = '0';

		o = s.option(form.Value, 'donate_monthly_gb', _('Donation cap: GB per month'),
			_('Detoured traffic this router carries per calendar month (UTC); when it is used up, the router stops granting detours until the month ends. Fractions allowed, e.g. 0.5. Empty: no cap.'));
		o.datatype = 'and(ufloat,maxlength(17))';
		o.placeholder = '100';

		o = s.option(form.Value, 'evidence_dir', _('Evidence log directory'),
			_('Every granted request is kept here, signed by the member who asked, as evidence if an abuse complaint arrives (dcol waypoint log). The default is in RAM: choose persistent storage, e.g. a USB stick, to keep it across reboots.'));
		o.datatype = 'and(minlength(2),maxlength(200))';
		o.placeholder = '/var/run/dcol/evidence';

		o = s.option(form.Value, 'evidence_max_kb', _('Evidence log size'),
			_('KiB kept at most, over four rotated files (0: keep nothing).'));
		o.datatype = 'range(0,1048576)';
		o.placeholder = '1024';

		o = s.option(form.Value, 'lease_s', _('Lease'),
			_('Seconds a tunnel lives without renewal (10-86400).'));
		o.datatype = 'range(10,86400)';
		o.placeholder = '300';

		o = s.option(form.DynamicList, 'listen', _('Signaling address'),
			_('UDP address:port where other members ask for detours.'));
		o.datatype = 'ipaddrport(1)';
		o.placeholder = '0.0.0.0:7447';

		s = m.section(form.GridSection, 'peer', _('Waypoints'),
			_('Other members\' routers this router may send detours through. The name is the one in their certificate.'));
		s.anonymous = true;
		s.addremove = true;

		o = s.option(form.Value, 'name', _('Name'));
		o.editable = true;
		o.datatype = 'and(minlength(1),maxlength(32))';
		o.rmempty = false;

		o = s.option(form.Value, 'address', _('Address'));
		o.editable = true;
		o.datatype = 'ipaddrport(1)';
		o.placeholder = '203.0.113.5:7447';
		o.rmempty = false;

		o = s.option(form.ListValue, 'tunnel', _('Tunnel'));
		o.editable = true;
		o.value('nat', _('NAT (no overhead)'));
		o.value('vpn', _('VPN (WireGuard)'));
		o.default = 'nat';

		o = s.option(form.Flag, 'convert', _('Converts'),
			_('This member converts to plain TCP (RFC 8803) at its address.'));
		o.editable = true;

		return m.render();
	}
});
