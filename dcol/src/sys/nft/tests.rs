use super::*;
use crate::sys::netlink::testns::{is_root, star, NsThread};
use crate::sys::netlink::testsock;
use crate::sys::netlink::{string, test_attr as a};
const NLA_F_NESTED: u16 = 0x8000;

#[test]
fn caps_script_counts_kbit_as_1000_bits() {
    let caps = Caps {
        kbit: 3000,
        month_bytes: 4_000_000,
        used: 123,
    };
    let s = caps_script("dcol", &caps, true);
    assert!(
        s.starts_with("flush chain inet dcol caps\ndelete quota inet dcol month\n"),
        "{s}"
    );
    assert!(
        s.contains("add quota inet dcol month { over 4000000 bytes used 123 bytes; }"),
        "{s}"
    );
    assert!(
        s.contains("limit rate over 375000 bytes/second drop"),
        "{s}"
    );
    let over = Caps {
        used: 5_000_000,
        ..caps
    };
    assert!(
        caps_script("dcol", &over, false).contains("{ over 4000000 bytes used 4000000 bytes; }"),
        "a count past the cap starts at the cap"
    );
    // A small cap still lets a TCP burst through; no caps, no rules.
    let small = Caps {
        kbit: 8,
        ..Caps::default()
    };
    assert!(
        caps_script("t", &small, false).contains("over 1000 bytes/second burst 15384 bytes drop")
    );
    assert_eq!(
        caps_script("t", &Caps::default(), false),
        "flush chain inet t caps\n"
    );
}

fn el(client: &str, port: u16, dest: &str) -> NatElement {
    NatElement {
        client: client.parse().unwrap(),
        port,
        destination: dest.parse().unwrap(),
        expires_in: None,
    }
}

#[test]
fn key_layout_pads_each_field_to_four_bytes() {
    assert_eq!(
        concat("10.0.0.1".parse().unwrap(), 40000),
        [10, 0, 0, 1, 0x9c, 0x40, 0, 0]
    );
    let v6 = concat("2001:db8::1".parse().unwrap(), 443);
    assert_eq!(v6.len(), 20);
    assert_eq!(&v6[16..], &[0x01, 0xbb, 0, 0]);
    assert_eq!(
        parse_concat(&[10, 0, 0, 1, 0x9c, 0x40, 0, 0], false),
        Some(("10.0.0.1".parse().unwrap(), 40000))
    );
    assert_eq!(parse_concat(&[10, 0, 0, 1, 0x9c], false), None);
    assert_eq!(parse_concat(&v6, false), None);
    assert_eq!(
        parse_concat(&v6, true),
        Some(("2001:db8::1".parse().unwrap(), 443))
    );
}

/// The whole NEWSETELEM message, byte for byte.
#[test]
fn newsetelem_encoding() {
    let e = el("10.0.0.1", 40000, "10.0.0.9:443");
    let b = setelem_msg(
        "t",
        NFT_MSG_NEWSETELEM,
        "dcol",
        &e,
        Some(Duration::from_secs(30)),
    )
    .unwrap()
    .encode("t", 0, NlmF::empty())
    .unwrap();
    let mut want = Vec::new();
    want.extend_from_slice(&(b.len() as u32).to_ne_bytes());
    want.extend_from_slice(&0x0a0cu16.to_ne_bytes());
    want.extend_from_slice(&0x400u16.to_ne_bytes());
    want.extend_from_slice(&[0; 8]);
    want.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
    want.extend(a(NFTA_SET_ELEM_LIST_TABLE, b"dcol\0"));
    want.extend(a(NFTA_SET_ELEM_LIST_SET, b"nat4\0"));
    let mut elem = a(
        NFTA_SET_ELEM_KEY | NLA_F_NESTED,
        &a(NFTA_DATA_VALUE, &[10, 0, 0, 1, 0x9c, 0x40, 0, 0]),
    );
    elem.extend(a(NFTA_SET_ELEM_TIMEOUT, &30_000u64.to_be_bytes()));
    elem.extend(a(
        NFTA_SET_ELEM_DATA | NLA_F_NESTED,
        &a(NFTA_DATA_VALUE, &[10, 0, 0, 9, 0x01, 0xbb, 0, 0]),
    ));
    let list = a(NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
    want.extend(a(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list));
    assert_eq!(b, want);

    // Deletion: key only, in nat6 for IPv6.
    let e6 = el("2001:db8::1", 40001, "[2001:db8::9]:443");
    let b = setelem_msg("t", NFT_MSG_DELSETELEM, "dcol", &e6, None)
        .unwrap()
        .encode("t", 0, NlmF::empty())
        .unwrap();
    assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x0a0e);
    let body = Nfgenmsg::decode("t", payload(&b)).unwrap();
    let decoded: Vec<_> = body.attrs().iter().collect();
    assert_eq!(string(decoded[1]), "nat6");
    let list = nested("t", decoded[2]).unwrap();
    let inner = nested("t", list.iter().next().unwrap()).unwrap();
    assert_eq!(inner.len(), 1);
    assert_eq!(ty(inner.iter().next().unwrap()), NFTA_SET_ELEM_KEY);
    // Mixed families are refused before reaching the kernel.
    assert!(setelem_msg(
        "t",
        NFT_MSG_NEWSETELEM,
        "dcol",
        &el("10.0.0.1", 1, "[::1]:1"),
        None
    )
    .is_err());
}

#[test]
fn decode_listing() {
    let mut elem = a(
        NFTA_SET_ELEM_KEY | NLA_F_NESTED,
        &a(NFTA_DATA_VALUE, &[10, 0, 0, 1, 0x9c, 0x40, 0, 0]),
    );
    elem.extend(a(NFTA_SET_ELEM_TIMEOUT, &30_000u64.to_be_bytes()));
    elem.extend(a(NFTA_SET_ELEM_EXPIRATION, &29_500u64.to_be_bytes()));
    elem.extend(a(
        NFTA_SET_ELEM_DATA | NLA_F_NESTED,
        &a(NFTA_DATA_VALUE, &[10, 0, 0, 9, 0x01, 0xbb, 0, 0]),
    ));
    let mut bad = a(
        NFTA_SET_ELEM_KEY | NLA_F_NESTED,
        &a(NFTA_DATA_VALUE, &[10, 0, 0]),
    );
    bad.extend(a(
        NFTA_SET_ELEM_DATA | NLA_F_NESTED,
        &a(NFTA_DATA_VALUE, &[10, 0, 0, 9, 0x01, 0xbb, 0, 0]),
    ));
    let mut list = a(NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
    list.extend(a(NFTA_LIST_ELEM | NLA_F_NESTED, &bad));
    let mut p = vec![NFPROTO_INET, 0, 0, 0];
    p.extend(a(NFTA_SET_ELEM_LIST_TABLE, b"dcol\0"));
    p.extend(a(NFTA_SET_ELEM_LIST_SET, b"nat4\0"));
    p.extend(a(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list));
    let got = decode_setelems(&p, false).unwrap();
    assert_eq!(
        got,
        vec![NatElement {
            client: "10.0.0.1".parse().unwrap(),
            port: 40000,
            destination: "10.0.0.9:443".parse().unwrap(),
            expires_in: Some(Duration::from_millis(29_500)),
        }]
    );
    for cut in 0..p.len() {
        let _ = decode_setelems(&p[..cut], false);
    }
    assert!(decode_setelems(&p[..p.len() - 3], false).is_err());
}

#[test]
fn names_and_ruleset() {
    assert!(check_name("dcol").is_ok());
    assert!(check_name("dcol_test-1").is_ok());
    for bad in ["", "1x", "a b", "x;flush ruleset", "a}", &"x".repeat(65)] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
    let r = ruleset("dcol", (40000, 40999));
    assert!(r.starts_with("table inet dcol {"));
    // Only packets to the router itself are looked up, and the lookup
    // marks nothing: a packet no element matches leaves unmarked.
    assert!(r.contains("meta nfproto ipv4 tcp dport 40000-40999 fib daddr type local dnat ip to ip saddr . tcp dport map @nat4\n"), "{r}");
    assert!(r.contains("meta nfproto ipv6 tcp dport 40000-40999 fib daddr type local dnat ip6 to ip6 saddr . tcp dport map @nat6\n"), "{r}");
    let pre = chain(&r, "prerouting");
    assert!(!pre.contains("mark"), "{pre}");
    // After NAT: a DNATed flow is marked only when its 4-tuple is ours.
    let tr = chain(&r, "translated");
    assert!(
        tr.contains("type filter hook prerouting priority dstnat + 1;"),
        "{tr}"
    );
    assert!(tr.contains("meta l4proto tcp ct state new ct status dnat ct original ip saddr . ct original proto-dst . ct reply ip saddr . ct reply proto-src @flows4 ct mark set ct mark | 0x00dc0000"), "{tr}");
    assert!(tr.contains("ct original ip6 saddr . ct original proto-dst . ct reply ip6 saddr . ct reply proto-src @flows6 ct mark set ct mark | 0x00dc0000"), "{tr}");
    assert!(r.contains("set flows4 {\n\t\ttype ipv4_addr . inet_service . ipv4_addr . inet_service\n\t\tflags timeout"), "{r}");
    assert!(r.contains("set wan {\n\t\ttype ifname\n\t}"), "{r}");
    // The router itself is never a detour's destination.
    let inp = chain(&r, "local_in");
    assert!(inp.contains("type filter hook input"), "{inp}");
    assert!(
        inp.contains("ct mark & 0x00dc0000 == 0x00dc0000 drop"),
        "{inp}"
    );
    // Marked flows leave by the WAN or not at all; the packet mark for
    // fw4 comes after that check, before fw4's own chain (priority 0) and
    // before the caps count anything.
    let fwd = chain(&r, "forward");
    assert!(fwd.contains("priority filter - 3;"), "{fwd}");
    let drop = fwd.find("oifname != @wan drop").expect("WAN check");
    let mark = fwd
        .find("meta mark set meta mark | 0x00dd0000")
        .expect("packet mark");
    assert!(drop < mark, "{fwd}");
    assert!(
        fwd.find("ct direction reply return")
            .expect("original only")
            < drop
    );
    assert!(chain(&r, "caps").contains("priority filter - 2;"));
    assert!(chain(&r, "postrouting")
        .contains("ct status dnat ct mark & 0x00dc0000 == 0x00dc0000 masquerade"));
    // Kernels before 6.5 refuse a map used as a set (`... @nat4` without
    // `map`): OpenWrt 23.05 runs 5.15. No rule may do that.
    assert!(!r.contains("dport @"), "{r}");
    assert_eq!(
        r.matches("@nat").count(),
        r.matches("map @nat").count(),
        "{r}"
    );
    assert!(
        r.contains("priority dstnat")
            && r.contains("priority srcnat")
            && r.contains("priority filter")
    );
}

/// The text of chain `name` in a ruleset.
fn chain<'a>(r: &'a str, name: &str) -> &'a str {
    let start = r
        .find(&format!("chain {name} {{"))
        .unwrap_or_else(|| panic!("no chain {name}: {r}"));
    let len = r[start..].find("\n\t}").expect("chain end");
    &r[start..start + len]
}

/// Decodes a NEWSETELEM/DELSETELEM message: (type, set, [(key, has
/// timeout, data)]) of its elements, or no list at all (`None`).
#[allow(clippy::type_complexity)]
fn elems(m: &NfMsg) -> (u16, String, Option<Vec<(Vec<u8>, bool, Option<Vec<u8>>)>>) {
    let mut set = String::new();
    let mut list = None;
    for a in m.body().attrs().iter() {
        match ty(a) {
            NFTA_SET_ELEM_LIST_SET => set = string(a),
            NFTA_SET_ELEM_LIST_ELEMENTS => {
                let mut v = Vec::new();
                for e in nested("t", a).unwrap().iter() {
                    let (mut key, mut timeout, mut data) = (Vec::new(), false, None);
                    for f in nested("t", e).unwrap().iter() {
                        let value = || {
                            let vs = nested("t", f).unwrap();
                            let v = vs.iter().next().expect("a value");
                            v.nla_payload().as_ref().to_vec()
                        };
                        match ty(f) {
                            NFTA_SET_ELEM_KEY => key = value(),
                            NFTA_SET_ELEM_DATA => data = Some(value()),
                            NFTA_SET_ELEM_TIMEOUT => timeout = true,
                            t => panic!("unexpected attribute {t}"),
                        }
                    }
                    v.push((key, timeout, data));
                }
                list = Some(v);
            }
            _ => {}
        }
    }
    (m.ty(), set, list)
}

/// A tunnel is two elements, changed together: the map's and the flow
/// set's (key = the map's key and value, in the `translated` chain's
/// order). Deleting is add-then-delete of each, without a timeout.
#[test]
fn tunnel_batches_keep_map_and_flows_in_step() {
    let e = el("10.0.0.1", 40000, "10.0.0.9:443");
    let key = vec![10, 0, 0, 1, 0x9c, 0x40, 0, 0];
    let data = vec![10, 0, 0, 9, 0x01, 0xbb, 0, 0];
    let flow: Vec<u8> = [key.clone(), data.clone()].concat();
    assert_eq!(flow_key(&e), flow);
    let done = |msgs: Vec<NfMsg>| -> Vec<_> { msgs.iter().map(elems).collect() };
    let (new, del) = (0x0a0c, 0x0a0e);
    let add = done(tunnel_msgs("t", Op::Add(Duration::from_secs(30)), "dcol", &e).unwrap());
    assert_eq!(
        add,
        vec![
            (
                new,
                "nat4".into(),
                Some(vec![(key.clone(), true, Some(data.clone()))])
            ),
            (new, "flows4".into(), Some(vec![(flow.clone(), true, None)])),
        ]
    );
    let rm = done(tunnel_msgs("t", Op::Delete, "dcol", &e).unwrap());
    assert_eq!(
        rm,
        vec![
            (
                new,
                "nat4".into(),
                Some(vec![(key.clone(), false, Some(data))])
            ),
            (del, "nat4".into(), Some(vec![(key, false, None)])),
            (
                new,
                "flows4".into(),
                Some(vec![(flow.clone(), false, None)])
            ),
            (del, "flows4".into(), Some(vec![(flow, false, None)])),
        ]
    );
    // IPv6: 20 + 20 bytes in flows6.
    let e6 = el("2001:db8::1", 40001, "[2001:db8::9]:443");
    let add6 = done(tunnel_msgs("t", Op::Add(Duration::from_secs(1)), "dcol", &e6).unwrap());
    assert_eq!(add6[1].1, "flows6");
    assert_eq!(add6[1].2.as_ref().unwrap()[0].0.len(), 40);
    assert!(tunnel_msgs("t", Op::Delete, "dcol", &el("10.0.0.1", 1, "[::1]:1")).is_err());
}

/// Replacing the WAN interfaces: a flush (DELSETELEM without a list),
/// then every name NUL-padded to IFNAMSIZ in one NEWSETELEM.
#[test]
fn wan_set_batch() {
    let names = vec!["eth1".to_owned(), "pppoe-wan".to_owned()];
    let msgs: Vec<_> = set_names_msgs("dcol", "wan", &names)
        .unwrap()
        .iter()
        .map(elems)
        .collect();
    let pad = |n: &str| {
        let mut k = n.as_bytes().to_vec();
        k.resize(16, 0);
        (k, false, None)
    };
    assert_eq!(
        msgs,
        vec![
            (0x0a0e, "wan".into(), None),
            (
                0x0a0c,
                "wan".into(),
                Some(vec![pad("eth1"), pad("pppoe-wan")])
            ),
        ]
    );
    let none = set_names_msgs("dcol", "wan", &[]).unwrap();
    assert_eq!(none.len(), 1, "an empty list only flushes");
    for bad in ["", "sixteen-chars-xx", "a\0b"] {
        assert!(
            set_names_msgs("dcol", "wan", &[bad.to_owned()]).is_err(),
            "{bad:?}"
        );
    }
    assert!(set_names_msgs("dcol", "wan", &["fifteen-chars-x".to_owned()]).is_ok());
}

const PORTS: (u16, u16) = (40000, 40099);

fn root() -> bool {
    if !is_root() {
        eprintln!("SKIP: needs root");
    }
    is_root()
}

/// A NEWOBJ answer for a quota: the counter is NFTA_QUOTA_CONSUMED in
/// the object's data; other attributes are passed over.
#[test]
fn quota_answer() {
    let mut data = a(1, &4_000_000u64.to_be_bytes());
    data.extend(a(2, &0u32.to_be_bytes()));
    data.extend(a(NFTA_QUOTA_CONSUMED, &12_345u64.to_be_bytes()));
    let mut p = vec![NFPROTO_INET, 0, 0, 0];
    p.extend(a(NFTA_OBJ_TABLE, b"dcol\0"));
    p.extend(a(NFTA_OBJ_NAME, b"month\0"));
    p.extend(a(NFTA_OBJ_TYPE, &NFT_OBJECT_QUOTA.to_be_bytes()));
    p.extend(a(NFTA_OBJ_DATA | NLA_F_NESTED, &data));
    assert_eq!(quota_consumed(&p).unwrap(), Some(12_345));
    assert_eq!(
        quota_consumed(&p[..p.len() - data.len() - 4]).unwrap(),
        None
    );
    for cut in 0..p.len() {
        let _ = quota_consumed(&p[..cut]);
    }
    assert!(quota_consumed(&p[..p.len() - 2]).is_err());
}

/// Root, in a fresh namespace: the monthly quota's counter read over
/// netlink is the one `nft` shows, carried over from the caps; without
/// a quota it is 0.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn root_quota_counter() {
    if !root() {
        return;
    }
    let ns = NsThread::new();
    let (t, _) = ns.run(|| NatTable::create("dcolq", PORTS)).unwrap();
    let caps = Caps {
        kbit: 0,
        month_bytes: 1_000_000,
        used: 12_345,
    };
    let mut t = ns
        .run(move || {
            let mut t = t;
            t.set_caps(&caps).map(|()| t)
        })
        .unwrap();
    assert_eq!(t.quota_used().unwrap(), 12_345);
    let json = ns.out(&["nft", "-j", "list", "quota", "inet", "dcolq", "month"]);
    assert!(json.contains(r#""used": 12345"#), "{json}");
    let mut t = ns
        .run(move || {
            let mut t = t;
            t.set_caps(&Caps::default()).map(|()| t)
        })
        .unwrap();
    assert_eq!(t.quota_used().unwrap(), 0);
    t.destroy().unwrap();
    assert_eq!(ns.out(&["nft", "list", "ruleset"]), "", "nothing left");
}

/// Root: a child process spawned by a thread that unshared its network
/// namespace lives in that namespace (what `NatTable::create` relies on).
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn root_child_inherits_thread_netns() {
    if !root() {
        return;
    }
    let ns = NsThread::new();
    ns.cmd(&["nft", "add", "table", "inet", "dcol_probe_inherit"]);
    assert!(ns.run(|| table_exists("dcol_probe_inherit")).unwrap());
    assert!(
        !table_exists("dcol_probe_inherit").unwrap(),
        "the host must not see the namespace's table"
    );
}

/// The elements of set `set` of table `inet <table>` in `ns`, as
/// `nft -j` prints each (a `concat` of values, or a plain value).
fn set_elements(ns: &NsThread, table: &str, set: &str) -> Vec<String> {
    let j = ns.out(&["nft", "-j", "list", "set", "inet", table, set]);
    let v: serde_json::Value = serde_json::from_str(&j).expect("nft -j");
    let mut out: Vec<String> = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["set"]["elem"].as_array())
        .flatten()
        .map(|e| {
            let val = e.get("elem").map_or(e, |x| &x["val"]);
            match val.get("concat").and_then(|c| c.as_array()) {
                Some(parts) => parts
                    .iter()
                    .map(|p| p.to_string().trim_matches('"').to_owned())
                    .collect::<Vec<_>>()
                    .join(" . "),
                None => val.to_string().trim_matches('"').to_owned(),
            }
        })
        .collect();
    out.sort();
    out
}

/// Root, in a fresh namespace: create, add (v4 and v6), list via netlink
/// and via `nft`, refresh (the timeout really restarts), remove, crash
/// reconciliation, destroy. Every step keeps the flow sets in step with
/// the maps.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn root_nat_table_lifecycle() {
    if !root() {
        return;
    }
    let ns = NsThread::new();
    let name = "dcoltest";
    let (mut t, left) = ns
        .run(move || NatTable::create(name, PORTS))
        .expect("create");
    assert!(left.is_empty());
    assert!(
        set_elements(&ns, name, WAN_SET).is_empty(),
        "WAN starts empty"
    );
    let e4 = el("10.99.0.1", 40000, "10.98.0.2:443");
    let e6 = el("fd00:99::1", 40001, "[fd00:98::2]:8443");
    t.add(&e4, Duration::from_secs(30)).expect("add v4");
    t.add(&e6, Duration::from_secs(30)).expect("add v6");
    // The flow elements of e4 and e6, as listed.
    let (f4, f6) = (
        "10.99.0.1 . 40000 . 10.98.0.2 . 443",
        "fd00:99::1 . 40001 . fd00:98::2 . 8443",
    );
    // Deletes an element behind the table's back, as an expiry does.
    let forget = |set: &str, e: &str| {
        ns.cmd(&[
            "nft",
            "delete",
            "element",
            "inet",
            name,
            set,
            &format!("{{ {e} }}"),
        ]);
    };
    let in_step = |ns: &NsThread, f4: &[&str], f6: &[&str]| {
        assert_eq!(set_elements(ns, name, FLOWS4), f4, "flows4");
        assert_eq!(set_elements(ns, name, FLOWS6), f6, "flows6");
    };
    in_step(&ns, &[f4], &[f6]);

    let text = ns.out(&["nft", "list", "map", "inet", name, "nat4"]);
    assert!(
        text.contains("10.99.0.1 . 40000 timeout 30s expires"),
        "{text}"
    );
    assert!(text.contains(": 10.98.0.2 . 443"), "{text}");
    let json = ns.out(&["nft", "-j", "list", "map", "inet", name, "nat4"]);
    assert!(json.contains(r#""timeout": 30"#), "{json}");
    assert!(
        json.contains(r#"{"concat": ["10.99.0.1", 40000]}"#),
        "{json}"
    );
    assert!(json.contains(r#"{"concat": ["10.98.0.2", 443]}"#), "{json}");
    let text6 = ns.out(&["nft", "list", "map", "inet", name, "nat6"]);
    assert!(
        text6.contains("fd00:99::1 . 40001 timeout 30s expires"),
        "{text6}"
    );
    assert!(text6.contains(": fd00:98::2 . 8443"), "{text6}");
    let flows = ns.out(&["nft", "list", "set", "inet", name, FLOWS4]);
    assert!(flows.contains("timeout 30s expires"), "{flows}");

    let mut got = t.elements().unwrap();
    got.sort_by_key(|e| e.port);
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].client, got[0].port, got[0].destination),
        (e4.client, e4.port, e4.destination)
    );
    assert_eq!(
        (got[1].client, got[1].port, got[1].destination),
        (e6.client, e6.port, e6.destination)
    );
    let left4 = got[0].expires_in.unwrap();
    assert!(
        left4 <= Duration::from_secs(30) && left4 > Duration::from_secs(25),
        "{left4:?}"
    );

    // Adding the same key again replaces it (no EEXIST), flow included.
    t.add(
        &el("10.99.0.1", 40000, "10.98.0.3:443"),
        Duration::from_secs(30),
    )
    .expect("re-add");
    in_step(&ns, &["10.99.0.1 . 40000 . 10.98.0.3 . 443"], &[f6]);
    // Refresh restarts the timeout at the new value.
    t.refresh(&e4, Duration::from_secs(300)).expect("refresh");
    let got = t.elements().unwrap();
    let r = got.iter().find(|e| e.port == 40000).unwrap();
    assert_eq!(r.destination, e4.destination);
    assert!(r.expires_in.unwrap() > Duration::from_secs(290), "{r:?}");
    let text = ns.out(&["nft", "list", "map", "inet", name, "nat4"]);
    assert!(
        text.contains("10.99.0.1 . 40000 timeout 5m expires"),
        "{text}"
    );
    let flows = ns.out(&["nft", "list", "set", "inet", name, FLOWS4]);
    assert!(flows.contains("timeout 5m expires"), "{flows}");
    in_step(&ns, &[f4], &[f6]);
    // Refresh and remove of an element the kernel no longer holds (here
    // deleted behind our back, as an expiry does) succeed.
    forget("nat4", "10.99.0.1 . 40000");
    forget(FLOWS4, f4);
    t.refresh(&e4, Duration::from_secs(10))
        .expect("refresh after expiry");
    assert_eq!(t.elements().unwrap().len(), 2);
    in_step(&ns, &[f4], &[f6]);
    forget("nat4", "10.99.0.1 . 40000");
    t.remove(e4.client, e4.port)
        .expect("remove a half-expired tunnel");
    in_step(&ns, &[], &[f6]);
    t.add(&e4, Duration::from_secs(10)).unwrap();

    t.remove(e4.client, e4.port).expect("remove");
    t.remove(e4.client, e4.port).expect("remove twice is fine");
    let got = t.elements().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].port, 40001);
    in_step(&ns, &[], &[f6]);
    // A map element we did not install (someone else's data under our
    // key) is replaced, and removed, all the same.
    ns.cmd(&[
        "nft",
        "add",
        "element",
        "inet",
        name,
        "nat4",
        "{ 10.99.0.7 . 40007 : 10.98.0.7 . 7 }",
    ]);
    t.add(
        &el("10.99.0.7", 40007, "10.98.0.8:8"),
        Duration::from_secs(10),
    )
    .expect("replace a foreign element");
    assert_eq!(
        set_elements(&ns, name, FLOWS4),
        ["10.99.0.7 . 40007 . 10.98.0.8 . 8"]
    );
    t.remove("10.99.0.7".parse().unwrap(), 40007).unwrap();
    assert!(set_elements(&ns, name, FLOWS4).is_empty());
    assert_eq!(t.elements().unwrap().len(), 1);

    // The WAN set: replaced as a whole, emptied.
    t.set_wan(&["eth1".into(), "pppoe-wan".into()]).unwrap();
    assert_eq!(set_elements(&ns, name, WAN_SET), ["eth1", "pppoe-wan"]);
    t.set_wan(&["wwan0".into()]).unwrap();
    assert_eq!(set_elements(&ns, name, WAN_SET), ["wwan0"]);
    t.set_wan(&[]).unwrap();
    assert!(set_elements(&ns, name, WAN_SET).is_empty());
    assert!(t.set_wan(&["x".repeat(16)]).is_err());
    t.set_wan(&["wwan0".into()]).unwrap();

    // Crash: the table is left behind; the next create lists and replaces it.
    drop(t);
    let (t2, left) = ns
        .run(move || NatTable::create(name, PORTS))
        .expect("second create");
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].client, left[0].port, left[0].destination),
        (e6.client, e6.port, e6.destination)
    );
    let tables = ns.out(&["nft", "list", "tables"]);
    assert_eq!(
        tables.matches(&format!("table inet {name}")).count(),
        1,
        "{tables}"
    );
    let mut t2 = t2;
    assert!(t2.elements().unwrap().is_empty());
    in_step(&ns, &[], &[]);
    assert!(
        set_elements(&ns, name, WAN_SET).is_empty(),
        "a new table starts closed"
    );

    t2.destroy().expect("destroy");
    assert!(!ns.run(move || table_exists(name)).unwrap());
    assert_eq!(ns.out(&["nft", "list", "ruleset"]), "", "nothing left");
    // Destroying what is already gone is fine.
    let (mut t3, _) = ns.run(move || NatTable::create(name, PORTS)).unwrap();
    ns.cmd(&["nft", "delete", "table", "inet", name]);
    assert!(t3.elements().expect("listing a vanished table").is_empty());
    t3.destroy().expect("destroy of a vanished table");
    assert!(matches!(
        ns.run(|| NatTable::create("bad name", PORTS)),
        Err(SysError::Io { .. })
    ));
}

/// A TCP connection from the calling thread's namespace, or the error
/// after `secs` (a dropped SYN times out; a refused one fails at once).
fn try_connect(to: &str, secs: u64) -> std::io::Result<std::net::TcpStream> {
    std::net::TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(secs))
}

/// `conntrack -L` lines in `ns` whose original destination port is `port`.
fn ct_flows(ns: &NsThread, port: u16) -> String {
    let p = port.to_string();
    ns.out(&["conntrack", "-L", "-p", "tcp", "--orig-port-dst", &p])
}

/// A connection from `from` to `to`, served in `at`, that arrives from
/// `peer` and is unmarked in the waypoint `w`'s conntrack. Returns the
/// flow as `conntrack -L` shows it.
fn unmarked_flow(w: &NsThread, from: &NsThread, at: &NsThread, to: &str, peer: &str) -> String {
    let addr: SocketAddr = to.parse().unwrap();
    let l = at.run(move || testsock::listen(addr, false)).unwrap();
    let to = to.to_owned();
    let _c = from.run(move || try_connect(&to, 5)).expect("connect");
    let (_s, got) = l.accept().unwrap();
    assert_eq!(got.ip(), peer.parse::<IpAddr>().unwrap());
    let ct = ct_flows(w, addr.port());
    assert!(ct.contains("mark=0 ") && !ct.contains("mark=144"), "{ct}");
    ct
}

/// A tunnel on `port` from the client to `dest`, served in `at`: the
/// client's SYN times out and `dest` sees nothing.
fn dropped_tunnel(t: &mut NatTable, c: &NsThread, at: &NsThread, port: u16, dest: &str) {
    let d: SocketAddr = dest.parse().unwrap();
    let l = at.run(move || testsock::listen(d, false)).unwrap();
    l.set_nonblocking(true).unwrap();
    t.add(&el("10.99.0.1", port, dest), Duration::from_secs(60))
        .unwrap();
    let r = c.run(move || try_connect(&format!("10.99.0.2:{port}"), 2));
    assert_eq!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::TimedOut),
        "a tunnel to {dest} must be dropped"
    );
    assert!(l.accept().is_err(), "{dest} was reached through a tunnel");
}

/// Root, four namespaces:
/// ```text
///  client (10.99.0.1) ──wc── waypoint ──ws── server (10.98.0.2)
///                               └──wl── lan (10.97.0.2)
/// ```
/// `wc` and `ws` are the waypoint's WAN (a router's one WAN interface
/// split in two so the test can tell directions apart), `wl` its LAN.
/// A tunnel is DNATed to the server, marked and masqueraded, and leaves
/// only by the WAN; nothing else is marked or translated: a packet to a
/// tunnel port no element matches, a flow forwarded from the LAN to a
/// remote port in the range. A tunnel DNATed to the LAN is dropped in
/// forward, one DNATed to the router's own address in input.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn root_nat_forwarding_and_masquerade() {
    if !root() {
        return;
    }
    let (w, hosts) = star(&[
        ("wc", "10.99.0.2/24", "cw", "10.99.0.1/24"),
        ("ws", "10.98.0.1/24", "sw", "10.98.0.2/24"),
        ("wl", "10.97.0.1/24", "lw", "10.97.0.2/24"),
    ]);
    let [c, s, l] = <[NsThread; 3]>::try_from(hosts).ok().expect("three hosts");
    let (mut t, _) = w.run(|| NatTable::create("dcolfw", PORTS)).expect("create");
    t.add(
        &el("10.99.0.1", 40000, "10.98.0.2:5000"),
        Duration::from_secs(60),
    )
    .unwrap();
    let listener = s
        .run(|| testsock::listen("10.98.0.2:5000".parse().unwrap(), false))
        .unwrap();
    listener.set_nonblocking(true).unwrap();

    // No WAN interface known yet: the tunnel is dropped, not forwarded.
    let r = c.run(|| try_connect("10.99.0.2:40000", 2));
    assert_eq!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::TimedOut),
        "an empty WAN set must drop the tunnel"
    );
    assert!(
        listener.accept().is_err(),
        "the server saw the dropped tunnel"
    );

    t.set_wan(&["wc".into(), "ws".into()]).unwrap();
    let tunnel = c.run(|| try_connect("10.99.0.2:40000", 5)).expect("tunnel");
    listener.set_nonblocking(false).unwrap();
    let (_srv1, peer1) = listener.accept().unwrap();
    assert_eq!(
        peer1.ip(),
        "10.98.0.1".parse::<IpAddr>().unwrap(),
        "tunnel flows are masqueraded"
    );
    let direct = c.run(|| try_connect("10.98.0.2:5000", 5)).expect("direct");
    let (_srv2, peer2) = listener.accept().unwrap();
    assert_eq!(
        peer2.ip(),
        "10.99.0.1".parse::<IpAddr>().unwrap(),
        "unrelated forwarded flows are not"
    );
    let ct = ct_flows(&w, 40000);
    assert!(ct.contains("dport=40000"), "{ct}");
    assert!(ct.contains("mark=14417920"), "detour flow not marked: {ct}");
    let ct = ct_flows(&w, 5000);
    assert!(ct.contains("mark=0 "), "unrelated flow marked: {ct}");

    // A tunnel port no element matches (another client, no lease): not
    // translated, not marked; here a service of the router's own
    // answers it.
    let ct = unmarked_flow(&w, &c, &w, "10.99.0.2:40001", "10.99.0.1");
    assert!(
        ct.contains("src=10.99.0.2 dst=10.99.0.1 sport=40001"),
        "{ct}"
    );
    // The owner's LAN host connects to a remote server on a port in the
    // range: forwarded untouched (not translated, not marked).
    let ct = unmarked_flow(&w, &l, &s, "10.98.0.2:40002", "10.97.0.2");
    assert!(
        ct.contains("src=10.98.0.2 dst=10.97.0.2 sport=40002"),
        "{ct}"
    );

    // The policy's mistakes: a tunnel to the LAN is dropped in forward,
    // one to the router's own address in input.
    dropped_tunnel(&mut t, &c, &l, 40003, "10.97.0.2:22");
    dropped_tunnel(&mut t, &c, &w, 40004, "10.97.0.1:22");

    // Revocation deletes the flow (sys::conntrack).
    let n = w
        .run(|| crate::sys::conntrack::delete_flows("10.99.0.1".parse().unwrap(), 40000))
        .expect("delete_flows");
    assert_eq!(n, 1);
    let ct = w.out(&["conntrack", "-L", "-p", "tcp"]);
    assert!(!ct.contains("dport=40000"), "{ct}");
    assert!(ct.contains("dport=5000"), "the direct flow survives: {ct}");
    assert_eq!(
        w.run(|| crate::sys::conntrack::delete_flows("10.99.0.1".parse().unwrap(), 40000))
            .unwrap(),
        0
    );
    drop((tunnel, direct));
    t.destroy().unwrap();
    assert_eq!(w.out(&["nft", "list", "ruleset"]), "", "nothing left");
}
