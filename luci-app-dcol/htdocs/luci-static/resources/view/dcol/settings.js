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
		s.tab('general', _('General'));
		s.tab('advanced', _('Advanced'));

		o = s.taboption('general', form.Value, 'max_detours', _('Detours per connection'),
			_('Extra subflows through waypoints for one MPTCP connection (0-8).'));
		o.datatype = 'range(0,8)';
		o.placeholder = '2';

		o = s.taboption('general', form.ListValue, 'detour_policy', _('Detour policy for LAN devices'),
			_('Waypoints must never see a TLS handshake in the clear: the default detours TLS connections once the handshake is over, and never plaintext ones.'));
		o.value('tls-after-handshake', _('TLS connections, after the handshake (recommended)'));
		o.value('all', _('All connections, from the first byte'));
		o.value('none', _('None'));
		o.default = 'tls-after-handshake';

		o = s.taboption('general', form.Flag, 'lan_proxy', _('Detours for LAN devices'),
			_('Intercepts the TCP connections of devices on the LAN interfaces below and carries them as MPTCP. The devices need nothing installed.'));
		o.default = '0';
		o.rmempty = false;

		o = s.taboption('general', form.ListValue, 'convert', _('Servers without MPTCP through converters'),
			_('Connections of LAN devices to servers known not to speak MPTCP go through a member that converts (RFC 8803), with detours toward it. That member sees the destinations and, for TLS, the server names: off unless you trust the converters.'));
		o.value('off', _('Off (recommended unless you trust the converters)'));
		o.value('auto', _('Through converter members'));
		o.default = 'off';
		o.depends('lan_proxy', '1');

		o = s.taboption('general', form.DynamicList, 'lan_interface', _('LAN interfaces'),
			_('Interfaces whose outgoing TCP is intercepted, e.g. br-lan.'));
		o.datatype = 'rangelength(1,15)';
		o.placeholder = 'br-lan';
		o.depends('lan_proxy', '1');

		o = s.taboption('general', form.DynamicList, 'bypass', _('Never intercept these destinations'),
			_('Addresses or networks (CIDR) that LAN devices reach directly, untouched.'));
		o.datatype = 'or(cidr,ipaddr)';
		o.depends('lan_proxy', '1');

		o = s.taboption('general', form.DynamicList, 'bypass_port', _('Never intercept these ports'));
		o.datatype = 'range(1,65535)';
		o.depends('lan_proxy', '1');

		o = s.taboption('general', form.Value, 'proxy_port', _('Proxy port'),
			_('Local port the intercepted LAN connections are redirected to.'));
		o.datatype = 'range(1,65535)';
		o.placeholder = '7448';
		o.depends('lan_proxy', '1');

		o = s.taboption('general', form.Value, 'max_conns_per_host', _('Connections per LAN device'),
			_('Proxied connections one device (MAC address) or IPv4 address may have open; more go direct.'));
		o.datatype = 'range(1,65536)';
		o.placeholder = '512';
		o.depends('lan_proxy', '1');

		o = s.taboption('general', form.Value, 'max_conns_per_prefix', _('Connections per IPv6 /64'),
			_('Proxied connections one IPv6 /64 of the LAN may have open; more go direct.'));
		o.datatype = 'range(1,65536)';
		o.placeholder = '1024';
		o.depends('lan_proxy', '1');

		o = s.taboption('general', form.Value, 'proxy_max_conns', _('Proxied connections in all'),
			_('Near this many, interception pauses and new LAN connections go direct. 0: from the open-file limit.'));
		o.datatype = 'range(0,1000000)';
		o.placeholder = '0';
		o.depends('lan_proxy', '1');

		o = s.taboption('general', form.DynamicList, 'proxy_allow_destination', _('Special-purpose destinations to take'),
			_('Private, shared (CGNAT) or ULA networks behind the WAN that the proxy may take all the same, e.g. a provider\'s services in 100.64.0.0/10.'));
		o.datatype = 'or(cidr,ipaddr)';
		o.depends('lan_proxy', '1');

		o = s.taboption('general', form.Flag, 'proxy_follow_firewall', _('Follow the firewall'),
			_('Intercept a device\'s flow only once the router\'s firewall has forwarded its first packets. Off: fw4\'s forward rules do not apply to proxied flows.'));
		o.default = '1';
		o.depends('lan_proxy', '1');

		o = s.taboption('advanced', form.Value, 'proxy_idle_timeout_s', _('Idle proxied connections closed after'),
			_('Seconds with no bytes either way (1-604800).'));
		o.datatype = 'range(1,604800)';
		o.placeholder = '3600';

		o = s.taboption('advanced', form.Value, 'sample_interval_ms', _('Measure detours every'),
			_('Milliseconds between measurements of detour subflows (50-5000; 0: no measuring, detours stay as created).'));
		o.datatype = 'or("0",range(50,5000))';
		o.placeholder = '250';

		o = s.taboption('advanced', form.Value, 'probation_ms', _('Probation of a new detour'),
			_('Milliseconds before a new detour is kept, demoted to backup or dropped (200-60000).'));
		o.datatype = 'range(200,60000)';
		o.placeholder = '2000';

		o = s.taboption('advanced', form.Value, 'request_timeout_ms', _('Request timeout'),
			_('Milliseconds before a detour request is sent again (10-10000).'));
		o.datatype = 'range(10,10000)';
		o.placeholder = '300';

		o = s.taboption('advanced', form.Value, 'renew_interval_s', _('Lease renewal interval'),
			_('Seconds between renewals of a detour lease (1-3600).'));
		o.datatype = 'range(1,3600)';
		o.placeholder = '5';

		o = s.taboption('advanced', form.Value, 'liveness_misses', _('Missed renewals'),
			_('Renewals a waypoint may miss before it counts as gone (1-100).'));
		o.datatype = 'range(1,100)';
		o.placeholder = '3';

		o = s.taboption('advanced', form.Value, 'vpn_interface_prefix', _('VPN interface prefix'),
			_('WireGuard interfaces to waypoints are named this plus a number (up to 12 characters).'));
		o.datatype = 'rangelength(1,12)';
		o.placeholder = 'dcolc';

		o = s.taboption('advanced', form.Flag, 'convert_fastopen', _('TCP Fast Open toward converters'),
			_('The Convert header rides in the SYN, saving a round trip before the first byte.'));
		o.default = '1';
		o.depends('convert', 'auto');

		o = s.taboption('advanced', form.Value, 'vpn_table', _('First VPN routing table'),
			_('Routing tables (and rule priorities) of VPN tunnels start here.'));
		o.datatype = 'range(1,2147418112)';
		o.placeholder = '7400';

		s = m.section(form.NamedSection, 'main', 'dcol', _('Membership directory'),
			_('The collective\'s directory lists its members\' waypoints and the revocation list, signed by the collective key (so plain http is safe). With the waypoint role on, this router publishes itself there.'));
		s.addremove = false;
		s.tab('general', _('General'));
		s.tab('advanced', _('Advanced'));

		o = s.taboption('general', form.Value, 'directory', _('Directory URL'),
			_('Where the signed snapshot is, e.g. http://dir.example.org:7450/snapshot. Empty: only the waypoints listed below.'));
		o.placeholder = 'http://dir.example.org:7450/snapshot';
		/* LuCI validates empty values too: empty means no directory. */
		o.validate = function(section_id, value) {
			return value == '' || /^http:\/\/[^\s/]+(\/\S*)?$/.test(value) || _('Expecting an http:// URL');
		};

		o = s.taboption('general', form.Value, 'directory_max_peers', _('Directory members used as waypoints'),
			_('0-64.'));
		o.datatype = 'range(0,64)';
		o.placeholder = '8';

		o = s.taboption('general', form.ListValue, 'directory_tunnel', _('Tunnel to directory waypoints'));
		o.value('nat', _('NAT (no overhead)'));
		o.value('vpn', _('VPN (WireGuard)'));
		o.default = 'nat';

		o = s.taboption('general', form.ListValue, 'log_level', _('Log level'));
		o.value('error', _('Errors'));
		o.value('warn', _('Warnings'));
		o.value('info', _('Information'));
		o.value('debug', _('Debugging'));
		o.value('trace', _('Tracing'));
		o.default = 'info';

		o = s.taboption('advanced', form.Value, 'directory_publish', _('Directory records URL'),
			_('Where this router posts its record, when the snapshot is on another host. Empty: /records on the directory\'s host.'));
		o.placeholder = 'http://dir.example.org:7450/records';
		o.validate = function(section_id, value) {
			return value == '' || /^http:\/\/[^\s/]+(\/\S*)?$/.test(value) || _('Expecting an http:// URL');
		};

		o = s.taboption('advanced', form.Value, 'directory_interval_s', _('Directory fetch interval'),
			_('Seconds between fetches of the snapshot (2-86400).'));
		o.datatype = 'range(2,86400)';
		o.placeholder = '300';

		o = s.taboption('advanced', form.Value, 'directory_cache', _('Directory cache'),
			_('The last good snapshot, kept across reboots.'));
		o.datatype = 'string';
		o.placeholder = '/etc/dcol/directory.snapshot';

		o = s.taboption('advanced', form.Value, 'key', _('Member key'));
		o.datatype = 'string';
		o.placeholder = '/etc/dcol/member.key';

		o = s.taboption('advanced', form.Value, 'cert', _('Member certificate'));
		o.datatype = 'string';
		o.placeholder = '/etc/dcol/member.cert';

		o = s.taboption('advanced', form.Value, 'collective', _('Collective public key'));
		o.datatype = 'string';
		o.placeholder = '/etc/dcol/collective.pub';

		o = s.taboption('advanced', form.Value, 'revocation_list', _('Revocation list'),
			_('The collective\'s signed revocation list, re-read when it changes; a missing file revokes nobody.'));
		o.datatype = 'string';
		o.placeholder = '/etc/dcol/revoked.list';

		o = s.taboption('advanced', form.DynamicList, 'revoked', _('Refused members'),
			_('Member ids (16 hex digits) this router refuses.'));
		o.datatype = 'and(hexstring,rangelength(16,16))';

		o = s.taboption('advanced', form.Value, 'control_socket', _('Status socket'));
		o.datatype = 'string';
		o.placeholder = '/var/run/dcol.sock';

		o = s.taboption('advanced', form.Value, 'state_dir', _('State directory'),
			_('Crash-recovery state and scores (RAM on OpenWrt).'));
		o.datatype = 'string';
		o.placeholder = '/var/run/dcol';

		s = m.section(form.NamedSection, 'waypoint', 'waypoint', _('Serving detours (waypoint role)'));
		s.addremove = false;
		s.tab('general', _('General'));
		s.tab('advanced', _('Advanced'));

		o = s.taboption('general', form.Flag, 'upnp', _('Open ports on the home gateway (UPnP, NAT-PMP, PCP)'),
			_('Maps the signaling, WireGuard and the first 32 NAT tunnel ports on an upstream gateway that speaks UPnP IGD or NAT-PMP, and removes them when dcol stops. With an IPv6 signaling address (e.g. [::]:7447) the same ports are opened in the gateway\'s IPv6 firewall with PCP.'));
		o.default = '1';
		o.rmempty = false;

		o = s.taboption('general', form.DynamicList, 'stun_server', _('STUN servers'),
			_('host:port of STUN servers that tell this router its public address and NAT type (two or more tell the NAT type).'));
		o.datatype = 'hostport';
		o.placeholder = 'stun.example.org:3478';

		o = s.taboption('general', form.DynamicList, 'advertise', _('Public address'),
			_('address:port other members use to reach this router, when it cannot be found out (e.g. a manual port forward). Empty: found by UPnP and STUN.'));
		o.datatype = 'ipaddrport(1)';
		o.placeholder = '203.0.113.5:7447';

		o = s.taboption('general', form.Flag, 'convert', _('Convert for other members'),
			_('Members\' MPTCP connections to servers without MPTCP are converted here to plain TCP (RFC 8803), under the same destination rules, revocations and donation caps as detours. This router then opens those connections itself: each one is kept in the evidence log.'));
		o.rmempty = false;
		o.default = '0';

		o = s.taboption('general', form.Value, 'convert_port', _('Converter port'),
			_('TCP port of the converter (the directory publishes it when it is the signaling port).'));
		o.datatype = 'range(1,65535)';
		o.placeholder = '7447';
		o.depends('convert', '1');

		o = s.taboption('general', form.Value, 'nat_ports', _('Port range for NAT tunnels'),
			_('One port per served detour, e.g. 40000-40999 (ports from 1024). Forward them on an upstream gateway if there is one.'));
		o.datatype = 'portrange';
		o.placeholder = '40000-40999';

		o = s.taboption('general', form.Value, 'max_tunnels_per_member', _('Donation cap: tunnels per member'),
			_('How many detours one member may use through this router at the same time.'));
		o.datatype = 'range(1,1000000)';
		o.placeholder = '16';

		o = s.taboption('general', form.Value, 'donate_kbit', _('Donation cap: rate'),
			_('Most kbit/s all members\' detours through this router may use together, enforced in the kernel. 0 or empty: no cap.'));
		o.datatype = 'range(0,100000000)';
		o.placeholder = '0';

		o = s.taboption('general', form.Value, 'donate_monthly_gb', _('Donation cap: GB per month'),
			_('Detoured traffic this router carries per calendar month (UTC); when it is used up, the router stops granting detours until the month ends. Fractions allowed, e.g. 0.5. Empty: no cap.'));
		o.datatype = 'ufloat';
		o.placeholder = '0';

		o = s.taboption('general', form.Value, 'evidence_dir', _('Evidence log directory'),
			_('Every granted request is kept here, signed by the member who asked, as evidence if an abuse complaint arrives (dcol waypoint log). The default is in RAM: choose persistent storage, e.g. a USB stick, to keep it across reboots.'));
		o.datatype = 'string';
		o.placeholder = '/var/run/dcol/evidence';

		o = s.taboption('general', form.Value, 'evidence_max_kb', _('Evidence log size'),
			_('KiB kept at most, over four rotated files (0: keep nothing).'));
		o.datatype = 'range(0,1048576)';
		o.placeholder = '1024';

		o = s.taboption('general', form.Value, 'lease_s', _('Lease'),
			_('Seconds a tunnel lives without renewal (10-86400).'));
		o.datatype = 'range(10,86400)';
		o.placeholder = '300';

		o = s.taboption('general', form.DynamicList, 'listen', _('Signaling address'),
			_('UDP address:port where other members ask for detours.'));
		o.datatype = 'ipaddrport(1)';
		o.placeholder = '0.0.0.0:7447';

		o = s.taboption('general', form.DynamicList, 'deny_port', _('Ports never detoured to'),
			_('Destination ports (or ranges like 6660-6669) no member may reach through this router. \'none\': no port denied.'));
		o.datatype = 'or(portrange,"none")';
		o.placeholder = '25';

		o = s.taboption('advanced', form.DynamicList, 'allow_destination', _('Special-purpose destinations allowed'),
			_('Networks detours may reach despite the built-in policy (private, shared, ULA space).'));
		o.datatype = 'or(cidr,ipaddr)';

		o = s.taboption('advanced', form.Value, 'vpn_subnet', _('VPN tunnels: IPv4 subnet'),
			_('Also offer WireGuard tunnels, addressed from this subnet (/30 or larger; needs kmod-wireguard). Empty: NAT tunnels only.'));
		o.datatype = 'cidr4';
		o.placeholder = '10.247.0.0/24';

		o = s.taboption('advanced', form.Value, 'vpn_subnet6', _('VPN tunnels: IPv6 subnet'));
		o.datatype = 'cidr6';

		o = s.taboption('advanced', form.Value, 'vpn_port', _('VPN tunnels: WireGuard port'));
		o.datatype = 'range(1,65535)';
		o.placeholder = '51820';

		o = s.taboption('advanced', form.Value, 'vpn_interface', _('VPN tunnels: interface'));
		o.datatype = 'rangelength(1,15)';
		o.placeholder = 'dcolwg';

		o = s.taboption('advanced', form.Value, 'donation_file', _('Donated volume file'),
			_('Where the month\'s donated bytes survive a reboot (written hourly and at exit).'));
		o.datatype = 'string';
		o.placeholder = '/etc/dcol/donated';

		o = s.taboption('advanced', form.Value, 'upnp_url', _('Gateway description URL'),
			_('The UPnP gateway\'s description, skipping discovery. Empty: discovered.'));
		o.placeholder = 'http://192.168.1.1:5000/rootDesc.xml';
		o.validate = function(section_id, value) {
			return value == '' || /^http:\/\/[^\s/]+(\/\S*)?$/.test(value) || _('Expecting an http:// URL');
		};

		o = s.taboption('advanced', form.Value, 'upnp_lease_s', _('Gateway mapping lease'),
			_('Seconds (10-604800; 0: permanent).'));
		o.datatype = 'or("0",range(10,604800))';
		o.placeholder = '3600';

		o = s.taboption('advanced', form.Value, 'convert_max_per_member', _('Converter: connections per member'),
			_('How many conversions one member may hold through this router at the same time.'));
		o.datatype = 'range(1,65536)';
		o.placeholder = '256';
		o.depends('convert', '1');

		o = s.taboption('advanced', form.Value, 'convert_max_per_source', _('Converter: connections per source'),
			_('How many connections to the converter one address (IPv6: one /64) may hold at the same time.'));
		o.datatype = 'range(1,65536)';
		o.placeholder = '256';
		o.depends('convert', '1');

		o = s.taboption('advanced', form.Value, 'max_clock_skew_s', _('Allowed clock difference'),
			_('Seconds a member\'s clock may differ from this router\'s (1-3600).'));
		o.datatype = 'range(1,3600)';
		o.placeholder = '30';

		o = s.taboption('advanced', form.Value, 'table', _('nftables table'));
		o.datatype = 'rangelength(1,16)';
		o.placeholder = 'dcol';

		s = m.section(form.GridSection, 'peer', _('Waypoints'),
			_('Other members\' routers this router may send detours through. The name is the one in their certificate.'));
		s.anonymous = true;
		s.addremove = true;

		o = s.option(form.Value, 'name', _('Name'));
		o.editable = true;
		o.datatype = 'rangelength(1,32)';
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
		o.default = '0';

		return m.render();
	}
});
