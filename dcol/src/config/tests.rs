//! The parser against the table: values, errors with their place, warnings,
//! defaults.

use std::path::{Path, PathBuf};

use super::*;
use crate::types::{Cidr, PortRange, TunnelKind};

fn p(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new("/etc/config/dcol"))
}

const SAMPLE: &str = "
config dcol 'main'
	option enabled '1'
	option key '/etc/dcol/member.key'
	option cert '/etc/dcol/member.cert'
	option collective '/etc/dcol/collective.pub'
	option control_socket '/var/run/dcol.sock'

config client 'client'
	option enabled '1'
	option max_detours '2'

config waypoint 'waypoint'
	option enabled '1'
	option listen '0.0.0.0:7447'          # UDP signaling
	option nat_ports '40000-40999'
	list allow_destination '10.0.0.0/8'    # only where private destinations must be reachable (tests)

config peer
	option name 'alice'
	option address '203.0.113.5:7447'
	option tunnel 'nat'                    # nat | vpn
";

#[test]
fn deny_ports() {
    let c = p("config waypoint\n").unwrap();
    assert_eq!(c.waypoint.deny_port, [PortRange { lo: 25, hi: 25 }]);
    let c = p("config waypoint\n\tlist deny_port '22'\n\tlist deny_port '6660-6669'\n").unwrap();
    assert_eq!(
        c.waypoint.deny_port,
        [
            PortRange { lo: 22, hi: 22 },
            PortRange { lo: 6660, hi: 6669 }
        ]
    );
    assert!(c.waypoint.deny_port[1].contains(6665));
    assert!(!c.waypoint.deny_port[1].contains(6670));
    let c = p("config waypoint\n\tlist deny_port 'none'\n").unwrap();
    assert!(c.waypoint.deny_port.is_empty());
    for bad in ["0", "70000", "30-20", "smtp", "25-"] {
        let e = p(&format!("config waypoint\n\tlist deny_port '{bad}'\n")).unwrap_err();
        assert_eq!((e.line(), e.option()), (2, Some("deny_port")), "{bad}");
        assert!(e.to_string().contains(bad), "{bad}: {e}");
    }
}

#[test]
fn traversal_options() {
    let c = p("config waypoint\n\tlist stun_server 'stun.example.org:3478'\n\tlist stun_server '11.7.9.1:3478'\n\toption upnp_url 'http://192.168.1.1:5000/rootDesc.xml'\n\toption upnp_lease_s '0'\n").unwrap();
    let w = &c.waypoint;
    assert_eq!(w.stun_servers, ["stun.example.org:3478", "11.7.9.1:3478"]);
    assert!(w.upnp && w.upnp_lease_s == 0 && w.upnp_url.is_some());
    assert_eq!(w.grant_ports(), (40000, 40031));
    let c = p("config waypoint\n\toption upnp '0'\n").unwrap();
    assert_eq!(c.waypoint.grant_ports(), (40000, 40999));
    for bad in [
        "config waypoint\n\tlist stun_server 'stun.example.org'\n",
        "config waypoint\n\tlist stun_server 'bad host:3478'\n",
        "config waypoint\n\tlist stun_server 'h:0'\n",
        "config waypoint\n\toption upnp_lease_s '5'\n",
        "config waypoint\n\toption upnp 'maybe'\n",
        "config waypoint\n\toption upnp_url 'https://gw/'\n",
    ] {
        let e = p(bad).unwrap_err().to_string();
        assert!(e.contains("dcol:2: option"), "{bad}: {e}");
    }
}

#[test]
fn design_sample_parses() {
    let c = p(SAMPLE).unwrap();
    assert!(c.main.enabled && c.client.enabled && c.waypoint.enabled);
    assert_eq!(c.client.max_detours, 2);
    assert_eq!(c.waypoint.listen, vec!["0.0.0.0:7447".parse().unwrap()]);
    assert_eq!(c.waypoint.nat_ports, (40000, 40999));
    assert_eq!(
        c.waypoint.allow_destination,
        vec!["10.0.0.0/8".parse().unwrap()]
    );
    assert_eq!(c.peers.len(), 1);
    assert_eq!(c.peers[0].address, "203.0.113.5:7447".parse().unwrap());
    assert_eq!(c.peers[0].tunnel, TunnelKind::Nat);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn directory_options() {
    let c = p("config dcol 'main'\n\toption directory 'http://dir.example:7450/snapshot'\n\toption directory_interval_s '60'\n\toption directory_max_peers '4'\n\toption directory_tunnel 'vpn'\n\toption directory_cache '/tmp/x'\nconfig waypoint\n\tlist advertise '203.0.113.5:7447'\n\tlist advertise '[2001:db8::5]:7447'\n").unwrap();
    let d = &c.directory;
    assert_eq!(
        d.url.as_ref().unwrap().to_string(),
        "http://dir.example:7450/snapshot"
    );
    assert_eq!(
        d.publish_url().unwrap().to_string(),
        "http://dir.example:7450/records"
    );
    assert_eq!(
        (d.interval_s, d.max_peers, d.tunnel),
        (60, 4, TunnelKind::Vpn)
    );
    assert_eq!(d.cache, PathBuf::from("/tmp/x"));
    assert_eq!(c.waypoint.advertise.len(), 2);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = p("config dcol\n\toption directory 'http://cdn.example/s'\n\toption directory_publish 'http://dir.example/records'\n").unwrap();
    assert_eq!(
        c.directory.publish_url().unwrap().to_string(),
        "http://dir.example:80/records"
    );
    assert_eq!(Config::default().directory.publish_url(), None);
    let e = p("config dcol\n\toption directory 'https://x/'\n").unwrap_err();
    assert_eq!((e.line(), e.option()), (2, Some("directory")));
    assert!(e.to_string().contains("https"), "{e}");
    for bad in [
        "config dcol\n\toption directory 'ftp://x/'\n",
        "config dcol\n\toption directory_interval_s '1'\n",
        "config dcol\n\toption directory_max_peers '65'\n",
        "config dcol\n\toption directory_tunnel 'gre'\n",
        "config waypoint\n\tlist advertise '0.0.0.0:7447'\n",
        "config waypoint\n\tlist advertise '203.0.113.5'\n",
    ] {
        assert!(p(bad).is_err(), "accepted: {bad}");
    }
}

#[test]
fn donation_caps() {
    let c = p("config waypoint\n\toption donate_kbit '8000'\n\toption donate_monthly_gb '0.25'\n")
        .unwrap();
    assert_eq!(c.waypoint.donation_file, Path::new("/etc/dcol/donated"));
    let c = p("config waypoint\n\toption donation_file '/srv/donated'\n").unwrap();
    assert_eq!(c.waypoint.donation_file, Path::new("/srv/donated"));
    let c = p("config waypoint\n\toption donate_kbit '8000'\n\toption donate_monthly_gb '0.25'\n")
        .unwrap();
    assert_eq!(c.waypoint.donate_kbit, 8000);
    assert_eq!(c.waypoint.donate_monthly_bytes, 250_000_000);
    assert_eq!(super::kind::gigabytes("100").unwrap(), 100_000_000_000);
    assert_eq!(super::kind::gigabytes("0.000000001").unwrap(), 1);
}

#[test]
fn strategy_options() {
    let c = p(
        "config client 'client'\n\toption sample_interval_ms '0'\n\toption probation_ms '500'\n",
    )
    .unwrap();
    assert_eq!(
        (c.client.sample_interval_ms, c.client.probation_ms),
        (0, 500)
    );
    let e = p("config client 'client'\n\toption sample_interval_ms '10'\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/config/dcol:2: option 'sample_interval_ms': expected 0 (off) or 50-5000, got '10'"
    );
    let e = p("config client 'client'\n\toption probation_ms '100'\n").unwrap_err();
    assert_eq!((e.line(), e.option()), (2, Some("probation_ms")));
}

#[test]
fn errors_name_line_and_option() {
    let e = p("config client 'client'\n\toption max_detours 'x'\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/config/dcol:2: option 'max_detours': expected a number 0-8, got 'x'"
    );
    let e = p("config waypoint 'w'\n\n\toption nat_ports '50-10'\n").unwrap_err();
    assert_eq!((e.line(), e.option()), (3, Some("nat_ports")));
    let e = p("config peer\n\toption name 'bob'\n").unwrap_err();
    assert_eq!((e.line(), e.option()), (1, Some("address")));
    let e = p("config dcol 'main'\n\toption enabled 'maybe'\n").unwrap_err();
    assert!(e.to_string().contains("boolean"));
    let e = p("option x 'y'\n").unwrap_err();
    assert!(e.to_string().contains("outside"));
    let e = p("config dcol 'main'\n\toption key 'unterminated\n").unwrap_err();
    assert!(e.to_string().contains("unterminated"));
    for bad in [
        "config peer\n\toption name 'a b'\n\toption address '1.2.3.4:1'\n",
        "config peer\n\toption name 'a'\n\toption address '1.2.3.4'\n",
        "config peer\n\toption name 'a'\n\toption address '1.2.3.4:1'\n\toption tunnel 'gre'\n",
        "config waypoint\n\tlist allow_destination '10.0.0.0/33'\n",
        "config waypoint\n\toption table 'Bad-Name'\n",
        "config client\n\tlist lan_interface 'br lan'\n",
        "config client\n\tlist bypass_port '0'\n",
        "config client\n\toption proxy_port '70000'\n",
        "config client\n\toption detour_policy 'some'\n",
        "config waypoint\n\toption donate_monthly_gb '1.2.3'\n",
        "config waypoint\n\toption donate_monthly_gb '-1'\n",
        "config waypoint\n\toption donate_kbit 'fast'\n",
        "config client\n\toption proxy_idle_timeout_s '0'\n",
        "config client\n\tlist proxy_allow_destination '10.0.0.0/40'\n",
        "config client\n\tlist proxy_allow_destination 'lan'\n",
        "config client\n\toption proxy_follow_firewall 'perhaps'\n",
        "config client\n\toption max_conns_per_prefix '0'\n",
        "config client\n\toption proxy_max_conns '-1'\n",
        "config dcol\n\tlist revoked 'xyz'\n",
        "config dcol\n\toption log_level 'loud'\n",
        "config client\n\toption renew_interval_s '0'\n",
        "bogus line\n",
    ] {
        assert!(p(bad).is_err(), "accepted: {bad}");
    }
}

#[test]
fn warnings_defaults_and_quoting() {
    let c = p("config dcol 'main'\n\toption frobnicate '1'\n\toption enabled \"0\"\n\toption enabled 1\nconfig other\n").unwrap();
    assert!(c.main.enabled, "the last of two 'enabled' wins");
    assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    assert!(c.warnings[0]
        .to_string()
        .contains(":2: unknown option 'frobnicate'"));
    assert!(!c.client.enabled && !c.waypoint.enabled);
    let c = p("config waypoint\n\tlist listen '0.0.0.0:1'\n\tlist listen '[::]:1'\n").unwrap();
    assert_eq!(c.waypoint.listen.len(), 2);
    assert_eq!(
        c.client.lan_interfaces,
        vec!["br-lan".to_string()],
        "default LAN interface"
    );
    let c = p("config client\n\toption lan_proxy '1'\n\tlist lan_interface 'l1a'\n\tlist bypass '10.9.0.0/16'\n\tlist bypass_port '22'\n").unwrap();
    assert!(c.client.lan_proxy);
    assert_eq!(c.client.lan_interfaces, vec!["l1a".to_string()]);
    assert_eq!(c.client.bypass_ports, vec![22]);
    assert_eq!(c.client.bypass[0].to_string(), "10.9.0.0/16");
    assert!(c.client.proxy_follow_firewall);
    assert_eq!(
        (c.client.max_conns_per_prefix, c.client.proxy_max_conns),
        (1024, 0)
    );
    let c = p("config client\n\tlist proxy_allow_destination '100.64.0.0/10'\n\tlist proxy_allow_destination 'fd00::/8'\n\toption proxy_follow_firewall '0'\n\toption max_conns_per_prefix '64'\n\toption proxy_max_conns '300'\n").unwrap();
    let allow: Vec<String> = c
        .client
        .proxy_allow_destination
        .iter()
        .map(Cidr::to_string)
        .collect();
    assert_eq!(allow, ["100.64.0.0/10", "fd00::/8"]);
    assert!(!c.client.proxy_follow_firewall);
    assert_eq!(
        (c.client.max_conns_per_prefix, c.client.proxy_max_conns),
        (64, 300)
    );
    let e = p("config client\n\n\tlist proxy_allow_destination '10.0.0.0/40'\n").unwrap_err();
    assert_eq!((e.line(), e.option()), (3, Some("proxy_allow_destination")));
}

const ALPHABET: &[u8] = b"config option list 'x\"\\# \n\tabc0-9:/[]";

#[test]
fn garbage_never_panics() {
    let mut s = 1u32;
    for n in 0..500 {
        let text: String = (0..n % 97)
            .map(|_| {
                s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ALPHABET[(s >> 16) as usize % ALPHABET.len()] as char
            })
            .collect();
        let _ = p(&text);
    }
}

#[test]
fn table_defaults_parse_and_are_the_default_config() {
    for o in OPTIONS {
        assert!(
            !(o.required && o.default.is_some()),
            "{}: a required option has no default",
            o.name
        );
        if let Some(v) = o.default {
            let mut d = Draft::new(Path::new("t"));
            o.kind
                .apply(&mut d, v)
                .unwrap_or_else(|e| panic!("{}: default '{v}': {e}", o.name));
        }
    }
    let names: Vec<(Section, &str)> = OPTIONS.iter().map(|o| (o.section, o.name)).collect();
    for (i, n) in names.iter().enumerate() {
        assert!(!names[..i].contains(n), "{n:?} twice in the table");
    }
    let c = Config::default();
    assert!(c.main.enabled && !c.client.enabled && !c.waypoint.enabled);
    assert_eq!(c.main.log_level, log::LevelFilter::Info);
    assert_eq!(c.client.lan_interfaces, ["br-lan"]);
    assert_eq!(c.waypoint.listen, ["0.0.0.0:7447".parse().unwrap()]);
    assert_eq!(c.waypoint.deny_port, [PortRange { lo: 25, hi: 25 }]);
    assert_eq!(
        (c.client.max_detours, c.waypoint.nat_ports),
        (2, (40000, 40999))
    );
    assert_eq!(c.directory.cache, Path::new("/etc/dcol/directory.snapshot"));
    assert!(c.warnings.is_empty());
    let sections = p("config dcol
config client
config waypoint
")
    .unwrap();
    assert!(sections.client.enabled && sections.waypoint.enabled);
    assert_eq!(sections.client.proxy_port, c.client.proxy_port);
}

#[test]
fn errors_say_section_and_option() {
    let e = p("config dcol
config waypoint 'w'
	option vpn_subnet 'fd00::/64'
")
    .unwrap_err();
    match &e {
        ConfigError::Value {
            line,
            section,
            option,
            what: ValueError::Subnet { family, .. },
            ..
        } => assert_eq!(
            (*line, *section, *option, *family),
            (3, Section::Waypoint, "vpn_subnet", "IPv4")
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "/etc/config/dcol:3: option 'vpn_subnet': expected an IPv4 subnet of /30 or larger, got 'fd00::/64'"
    );
    let e = p("config dcol
	option log_level 'loud'
")
    .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("expected error, warn, warning, info, debug, trace, got 'loud'"),
        "{e}"
    );
    let e = load(Path::new("/nonexistent/dcol")).unwrap_err();
    assert!(
        matches!(e, ConfigError::Read { .. }) && e.line() == 0,
        "{e}"
    );
}

#[test]
fn convert_options() {
    let c = p("config dcol 'main'\nconfig client 'client'\n\toption convert 'auto'\n\toption convert_fastopen '0'\nconfig waypoint 'waypoint'\n\toption convert '1'\n\toption convert_port '7448'\n\toption convert_max_per_source '8'\nconfig peer\n\toption name 'carol'\n\toption address '203.0.113.5:7447'\n\toption convert '1'\n").unwrap();
    assert_eq!(c.client.convert, ConvertMode::Auto);
    assert!(!c.client.convert_fastopen);
    assert!(c.waypoint.convert);
    assert_eq!(c.waypoint.convert_port, 7448);
    assert_eq!(c.waypoint.convert_max_per_source, 8);
    assert!(c.peers[0].convert);
    let d = Config::default();
    assert_eq!(d.client.convert, ConvertMode::Off);
    assert_eq!(d.waypoint.convert_port, 7447);
    let e = p("config client\n\toption convert 'always'\n").unwrap_err();
    assert!(e.to_string().contains("expected 'off' or 'auto'"), "{e}");
    let e = p("config client\n\toption lan_proxy '1'\nconfig waypoint\n\toption convert '1'\n\toption convert_port '7448'\n").unwrap_err();
    assert_eq!(e.option(), Some("convert_port"));
    assert!(
        e.to_string()
            .contains("TCP port 7448 is taken by option 'proxy_port'"),
        "{e}"
    );
}
