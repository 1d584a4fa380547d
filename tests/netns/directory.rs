// Needs: root, network namespaces, kernel MPTCP (userspace path manager), nftables
// with NAT and maps, conntrack, tbf; programs ip, tc, nft, ethtool, iperf3,
// mptcpize (package mptcpize), python3 (the "evil" static HTTP server).
// tests/setup.sh installs them.
//
//! The membership directory end to end. The paper's topology plus a
//! directory namespace hanging off the server's router:
//!
//! ```text
//!  client(bob) ── rc ──── rs ──── server (mptcpize iperf3 -s)
//!                 │        ├──── dir 10.0.7.2: `dcol directory serve` :7450,
//!                 │        │        waypoint carol :7447, python3 http.server :8080
//!                 └─ rw ───┘
//!                    └── waypoint alice 10.0.6.2:7447
//! ```
//! alice and carol publish their records; bob has no `config peer` and finds
//! both through the signed snapshot, and the server sees joins from them.
//! `dcol collective revoke` of bob: both waypoints end his tunnels and refuse
//! him within one refresh interval of the snapshot that lists him (measured).
//! Tampered, truncated and older snapshots from a static HTTP server are
//! refused and the cached one kept. Bad records are refused with 4xx while the
//! directory keeps serving. Turning membership off withdraws a record. Bob's
//! certificate, due for renewal, is renewed through the directory (`--renew`)
//! and taken without a restart, before his detours.
//!
//! `per_source_limits_count_an_ipv6_64_as_one_source` runs the server alone
//! on IPv6 and IPv4 against a host that owns a /64: seventy connections from
//! seventy of its addresses hold one source's share (8), not every slot, so
//! another source is still served; a head trickled in is cut off at the head
//! timeout and an oversized `Content-Length` refused before its body, each
//! with a 4xx and a line in the server's log.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use dcol::directory::{Record, Snapshot, Statement};
use dcol::http::{self, Url};
use dcol::trust::{files, Certificate};
use dcol_tests::dcol::{dcol_bin, in_ns, main_section, Collective, Daemon, Member};
use dcol_tests::lab::{enter_netns, need_root, Lab, IPERF_PORT, SIGNAL_PORT};
use dcol_tests::{iperf3_background, iperf3_client, iperf3_server, JoinCounter, LinkProfile};
use dcol_tests::{veth, Netns, Node};
use serde_json::Value;

/// The members' directory refresh interval (`option directory_interval_s`).
const INTERVAL: Duration = Duration::from_secs(2);
const DIR_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 7, 2);
const DIR_PORT: u16 = 7450;

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&fs::File::open(&path).expect("open netns"));
        f()
    })
    .join()
    .expect("netns thread")
}

fn base() -> Url {
    Url::parse(&format!("http://{DIR_ADDR}:{DIR_PORT}/")).unwrap()
}

/// `GET /snapshot` from namespace `ns`.
fn fetch(ns: &str) -> Vec<u8> {
    in_netns(ns, || {
        let r = http::get(
            &base().join("/snapshot").unwrap(),
            &[],
            http::Limits::default(),
        )
        .expect("GET /snapshot");
        assert_eq!(r.status, 200);
        r.body
    })
}

/// `POST path` from namespace `ns`: status and text.
fn post(ns: &str, path: &str, body: Vec<u8>) -> (u16, String) {
    let path = path.to_owned();
    in_netns(ns, move || {
        let r = http::post(
            &base().join(&path).unwrap(),
            &[],
            &body,
            http::Limits::default(),
        )
        .expect("POST");
        (r.status, String::from_utf8_lossy(&r.body).trim().to_owned())
    })
}

fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `config dcol 'main'` section with the directory options.
fn main_with_directory(lab: &Lab, m: &Member, tag: &str, url: &str) -> String {
    let s = lab.scratch.path();
    let main = main_section(
        m,
        &lab.collective,
        &lab.sock(tag),
        &s.join(format!("{tag}-state")),
    );
    format!(
        "{}\n\toption directory '{url}'\n\toption directory_interval_s '{}'\n\toption directory_cache '{}'\n\n",
        main.trim_end(),
        INTERVAL.as_secs(),
        s.join(format!("{tag}.snapshot")).display()
    )
}

fn waypoint_section(enabled: bool, listen: &str, advertise: &str) -> String {
    format!(
        "config waypoint 'waypoint'\n\toption enabled '{}'\n\tlist listen '{listen}'\n\toption nat_ports '40000-40099'\n\toption lease_s '60'\n\tlist allow_destination '10.0.0.0/8'\n{advertise}\n",
        u8::from(enabled)
    )
}

fn client_section() -> &'static str {
    "config client 'client'\n\toption enabled '1'\n\toption max_detours '2'\n\toption renew_interval_s '1'\n\toption liveness_misses '3'\n"
}

fn grants_of(st: &Value, member: &str) -> usize {
    st["waypoint"]["grants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["member"] == member)
        .count()
}

fn members(snapshot: &[u8], root: &dcol::trust::PublicKey) -> Vec<String> {
    let s = Snapshot::verify(snapshot, root).expect("verified snapshot");
    s.entries().map(|e| e.unwrap().name).collect()
}

/// The directory namespace, linked to the server's router as link 7.
fn directory_ns(lab: &Lab) -> Netns {
    let d = Netns::new("dir");
    let rs = lab.topo.ns(Node::Rs);
    dcol_tests::run(&[
        "ip",
        "link",
        "add",
        "l7a",
        "netns",
        rs.name(),
        "type",
        "veth",
        "peer",
        "name",
        "l7b",
        "netns",
        d.name(),
    ]);
    rs.exec(&["ip", "addr", "add", "10.0.7.1/24", "dev", "l7a"]);
    rs.exec(&["ip", "link", "set", "l7a", "up"]);
    d.exec(&["ip", "addr", "add", "10.0.7.2/24", "dev", "l7b"]);
    d.exec(&["ip", "link", "set", "l7b", "up"]);
    d.exec(&["ip", "route", "add", "default", "via", "10.0.7.1"]);
    lab.topo
        .ns(Node::Rc)
        .exec(&["ip", "route", "add", "10.0.7.0/24", "via", "10.0.2.2"]);
    lab.topo
        .ns(Node::Rw)
        .exec(&["ip", "route", "add", "10.0.7.0/24", "via", "10.0.5.2"]);
    d
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn directory_join_revoke_tamper_leave() {
    if !need_root() {
        return;
    }
    let lab = Lab::new(LinkProfile::core_limited());
    let dns = directory_ns(&lab);
    let scratch = lab.scratch.path().to_owned();
    let (cns, wns) = (lab.ns(Node::Client), lab.ns(Node::Waypoint));
    let carol = lab.collective.admit("carol", "client,waypoint", 30);
    let dave = lab.collective.admit("dave", "client,waypoint", 30);
    let root = files::read_public_key(&lab.collective.root_pub).unwrap();
    let bob_id = files::read_certificate(&lab.client_member.cert)
        .unwrap()
        .member;

    // The directory server.
    let serve_log = fs::File::create(scratch.join("serve.log")).unwrap();
    let _serve = dns.spawn_logged(
        &[
            dcol_bin().to_str().unwrap(),
            "directory",
            "serve",
            "--collective-key",
            lab.collective.root_key.to_str().unwrap(),
            "--store",
            scratch.join("store").to_str().unwrap(),
            "--listen",
            &format!("0.0.0.0:{DIR_PORT}"),
            "--snapshot-interval",
            "1",
            "--renew",
        ],
        serve_log,
    );
    poll(Duration::from_secs(5), "directory listening", || {
        let out = dns.output(&["ss", "-Hltn", &format!("sport = :{DIR_PORT}")]);
        (!out.stdout.is_empty()).then_some(())
    });
    let url = format!("http://{DIR_ADDR}:{DIR_PORT}/snapshot");

    // Two members publish: alice (wildcard listen, `list advertise`) and
    // carol (listens on her address, which is published as is).
    let alice_cfg = |enabled: bool| {
        format!(
            "{}{}",
            main_with_directory(&lab, &lab.waypoint_member, "wp", &url),
            waypoint_section(
                enabled,
                &format!("0.0.0.0:{SIGNAL_PORT}"),
                &format!("\tlist advertise '10.0.6.2:{SIGNAL_PORT}'\n")
            )
        )
    };
    let alice = Daemon::start(&wns, &scratch, "wp", &alice_cfg(true), &lab.sock("wp"));
    let carol_cfg = |enabled: bool| {
        let main = main_with_directory(&lab, &carol, "carol", &url);
        let main = if enabled {
            main
        } else {
            main.replace("option enabled '1'", "option enabled '0'")
        };
        format!(
            "{main}{}",
            waypoint_section(true, &format!("{DIR_ADDR}:{SIGNAL_PORT}"), "")
        )
    };
    let mut carol_d = Daemon::start(
        dns.name(),
        &scratch,
        "carol",
        &carol_cfg(true),
        &lab.sock("carol"),
    );
    let t0 = Instant::now();
    poll(
        Duration::from_secs(10),
        "both records in the snapshot",
        || (members(&fetch(&cns), &root).len() == 2).then_some(()),
    );
    eprintln!(
        "both records listed {:?} after the daemons started",
        t0.elapsed()
    );

    // Bob's certificate is in the last third of its validity (3 days, 0.8
    // left): the directory (run with --renew) gives him a new one.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = files::read_certificate(&lab.client_member.cert).unwrap();
    let due = Certificate::issue(
        &files::read_secret_key(&lab.collective.root_key).unwrap(),
        "bob",
        old.key,
        old.wg_key,
        now_s - 190_000,
        now_s + 69_200,
        old.roles,
    )
    .unwrap();
    fs::write(&lab.client_member.cert, files::certificate_text(&due)).unwrap();

    // Bob: no `config peer`; finds both through the directory.
    let bob_cfg = |url: &str| {
        format!(
            "{}{}",
            main_with_directory(&lab, &lab.client_member, "cl", url),
            client_section()
        )
    };
    let bob = Daemon::start(&cns, &scratch, "cl", &bob_cfg(&url), &lab.sock("cl"));
    let st = bob
        .wait_status(Duration::from_secs(5), |s| {
            s["directory"]["members"] == 2
                && s["client"]["peers"].as_array().map(Vec::len) == Some(2)
        })
        .unwrap_or_else(|s| panic!("bob did not take the directory's peers: {s}"));
    let mut names: Vec<&str> = st["client"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["alice", "carol"], "{st}");
    assert_eq!(st["directory"]["peers"], 2, "{st}");
    let st = bob
        .wait_status(Duration::from_secs(10), |s| {
            s["member"]["cert_not_after"].as_u64() > Some(now_s + 2 * 86_400)
        })
        .unwrap_or_else(|s| panic!("bob's certificate was not renewed: {s}\n{}", bob.log_text()));
    let renewed = files::read_certificate(&lab.client_member.cert).unwrap();
    eprintln!(
        "certificate renewed through the directory: not_after {} -> {} ({})",
        due.not_after, renewed.not_after, st["directory"]["renewal"]
    );
    assert_eq!(st["member"]["cert_not_after"], renewed.not_after, "{st}");
    assert!(renewed.not_after >= now_s + 259_000, "{renewed:?}");
    assert_eq!((renewed.key, renewed.wg_key), (old.key, old.wg_key));
    assert!(st["directory"]["renewal"]
        .as_str()
        .is_some_and(|r| r.starts_with("renewed until")));

    // A real detour: the server sees joins from the waypoints.
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let (alice_ip, carol_ip): (IpAddr, IpAddr) = ("10.0.6.2".parse().unwrap(), DIR_ADDR.into());
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    let counter =
        JoinCounter::install(lab.topo.ns(Node::Server), IPERF_PORT, &[alice_ip, carol_ip]);
    std::thread::sleep(Duration::from_millis(300));
    let r = iperf3_client(
        lab.topo.ns(Node::Client),
        server,
        IPERF_PORT,
        5,
        true,
        false,
    )
    .expect("iperf3 through directory waypoints");
    let (via_a, via_c) = (counter.bytes_from(alice_ip), counter.bytes_from(carol_ip));
    eprintln!(
        "MPTCP with directory waypoints: {:.2} Mbit/s; server got {via_a} bytes from alice, {via_c} from carol",
        r.mbps_after_first_second()
    );
    assert!(via_a > 100_000, "no detour through alice: {via_a} bytes");
    assert!(
        via_a + via_c > 1_000_000,
        "detours carried {via_a}+{via_c} bytes"
    );
    let older = fs::read(scratch.join("cl.snapshot")).expect("bob's cache file");

    // Revocation while a transfer runs through both waypoints.
    let bg = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 12);
    alice
        .wait_status(Duration::from_secs(8), |s| grants_of(s, "bob") > 0)
        .unwrap_or_else(|s| panic!("no grant for bob at alice: {s}"));
    let carol_has = carol_d
        .wait_status(Duration::from_secs(3), |s| grants_of(s, "bob") > 0)
        .is_ok();
    let t_revoke = Instant::now();
    let out = in_ns(
        &cns,
        &[
            dcol_bin().to_str().unwrap(),
            "collective",
            "revoke",
            "--collective-key",
            lab.collective.root_key.to_str().unwrap(),
            "--cert",
            lab.client_member.cert.to_str().unwrap(),
            "--list",
            scratch.join("revoked.list").to_str().unwrap(),
            "--directory",
            &format!("http://{DIR_ADDR}:{DIR_PORT}"),
        ],
    );
    assert!(out.contains(&format!("member {bob_id} revoked")), "{out}");
    let t_snap = poll(
        Duration::from_secs(5),
        "the revocation in the snapshot",
        || {
            let b = fetch(&cns);
            let s = Snapshot::verify(&b, &root).unwrap();
            s.head.revoked.contains(&bob_id).then(Instant::now)
        },
    );
    let t_alice = poll(Duration::from_secs(10), "alice ends bob's tunnels", || {
        (grants_of(&alice.status(), "bob") == 0).then(Instant::now)
    });
    let t_carol = poll(Duration::from_secs(10), "carol ends bob's tunnels", || {
        (grants_of(&carol_d.status(), "bob") == 0).then(Instant::now)
    });
    let late = |t: Instant| t.saturating_duration_since(t_snap);
    eprintln!(
        "revoke -> snapshot {:?}; snapshot -> alice refuses {:?}, carol {:?} (carol had grants: {carol_has}); refresh interval {INTERVAL:?}",
        t_snap - t_revoke,
        late(t_alice),
        late(t_carol)
    );
    // Polling a status costs ~20 ms per round: a small margin.
    let limit = INTERVAL + Duration::from_millis(500);
    assert!(late(t_alice) <= limit, "alice took {:?}", late(t_alice));
    assert!(late(t_carol) <= limit, "carol took {:?}", late(t_carol));
    // Bob's next requests are refused as revoked: a new connection asks
    // for detours again (the running one may not, once its tunnels ended).
    let _ = bg.join();
    let again = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 3);
    let st = alice
        .wait_status(Duration::from_secs(8), |s| {
            s["waypoint"]["refused"]["Revoked"].as_u64().unwrap_or(0) > 0
        })
        .unwrap_or_else(|s| panic!("alice never refused bob as revoked: {s}"));
    assert_eq!(st["directory"]["revoked"], 1, "{st}");
    assert!(alice.log_text().contains("is revoked; its tunnels end now"));
    let _ = again.join();

    // Tampered, truncated and older snapshots from a static HTTP server.
    let evil = scratch.join("evil");
    fs::create_dir_all(&evil).unwrap();
    let good = fs::read(scratch.join("cl.snapshot")).unwrap();
    let good_serial = Snapshot::verify(&good, &root).unwrap().head.serial;
    assert!(Snapshot::verify(&older, &root).unwrap().head.serial < good_serial);
    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n / 2] ^= 0x01;
    fs::write(evil.join("flipped"), &flipped).unwrap();
    fs::write(evil.join("truncated"), &good[..n - 10]).unwrap();
    fs::write(evil.join("older"), &older).unwrap();
    dns.spawn(&[
        "python3",
        "-m",
        "http.server",
        "8080",
        "--bind",
        "10.0.7.2",
        "--directory",
        evil.to_str().unwrap(),
    ]);
    poll(Duration::from_secs(10), "python3 http.server", || {
        let out = dns.output(&["ss", "-Hltn", "sport = :8080"]);
        (!out.stdout.is_empty()).then_some(())
    });
    for (file, why) in [
        ("flipped", "bad signature"),
        ("truncated", "bad signature"),
        ("older", "older than the cached serial"),
    ] {
        let line = bob.reload(&bob_cfg(&format!("http://{DIR_ADDR}:8080/{file}")));
        assert!(!line.contains("keeping the running"), "{line}");
        let st = bob
            .wait_status(Duration::from_secs(5), |s| {
                s["directory"]["last_result"]
                    .as_str()
                    .is_some_and(|r| r.contains(why) && r.contains(file))
            })
            .unwrap_or_else(|s| panic!("{file}: not refused with '{why}': {s}"));
        assert_eq!(st["directory"]["serial"], good_serial, "{file}: {st}");
        assert_eq!(st["directory"]["members"], 2, "{file}: {st}");
        assert_eq!(
            fs::read(scratch.join("cl.snapshot")).unwrap(),
            good,
            "{file}: the cache was overwritten"
        );
        assert!(
            bob.log_text()
                .contains(&format!("keeping the cached serial {good_serial}")),
            "{file}"
        );
    }
    bob.reload(&bob_cfg(&url));

    // Bad records: refused with 4xx; the directory keeps serving.
    let key = |m: &Member| files::read_secret_key(&m.key).unwrap();
    let cert = |m: &Member| files::read_certificate(&m.cert).unwrap();
    let now_ms = dcol::daemon::wall_ms();
    let withdraw =
        |m: &Member, seq: u64| Record::sign(&key(m), cert(m), seq, Statement::Withdraw).encode();
    let mut flipped = withdraw(&carol, now_ms);
    let n = flipped.len();
    flipped[n - 1] ^= 1;
    let other = Collective::new(&scratch, "other");
    let eve = other.admit("eve", "client,waypoint", 30);
    let first = withdraw(&dave, now_ms);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("garbage", b"GET / HTTP/1.0".to_vec(), 400, "record"),
        ("bad signature", flipped, 403, "bad signature"),
        (
            "other collective",
            withdraw(&eve, now_ms),
            403,
            "another collective",
        ),
        (
            "revoked member",
            withdraw(&lab.client_member, now_ms),
            403,
            "revoked",
        ),
        ("oversized", vec![0x01; 5000], 413, "larger than"),
        ("first", first.clone(), 200, "accepted"),
        ("replay", first, 409, "not newer"),
        (
            "stale",
            withdraw(&dave, now_ms - 4 * 3600 * 1000),
            409,
            "stale",
        ),
    ];
    for (what, body, status, text) in cases {
        let (st, t) = post(&cns, "/records", body);
        eprintln!("{what}: {st} {t}");
        assert_eq!(st, status, "{what}: {t}");
        assert!(t.contains(text), "{what}: '{t}' lacks '{text}'");
    }
    let mut codes = Vec::new();
    for i in 1..=8 {
        codes.push(post(&cns, "/records", withdraw(&dave, now_ms + i)).0);
    }
    eprintln!("8 more records from dave at once: {codes:?}");
    assert!(codes.contains(&429), "no rate limit: {codes:?}");
    assert!(
        codes.iter().filter(|&&c| c == 200).count() <= 4,
        "{codes:?}"
    );
    let snap = fetch(&cns);
    let mut listed = members(&snap, &root);
    listed.sort();
    assert_eq!(listed, ["alice", "carol"], "the store changed");

    // Carol's donation for this month is used up: her record is withdrawn
    // (members stop picking a waypoint that refuses) and published again
    // when she raises the cap.
    let month = dns.output(&["date", "-u", "+%Y-%m"]).stdout;
    let donated = scratch.join("carol-donated");
    let month = String::from_utf8_lossy(&month);
    fs::write(&donated, format!("{} 5000\n", month.trim())).unwrap();
    let capped = carol_cfg(true).replace(
        "\toption lease_s '60'\n",
        &format!(
            "\toption lease_s '60'\n\toption donate_monthly_gb '0.000001'\n\toption donation_file '{}'\n",
            donated.display()
        ),
    );
    carol_d.reload(&capped);
    poll(
        Duration::from_secs(5),
        "carol withdrawn while used up",
        || (members(&fetch(&cns), &root) == ["alice"]).then_some(()),
    );
    let st = carol_d.status();
    assert!(
        st["waypoint"]["refusing"]
            .as_str()
            .is_some_and(|r| r.contains(" of 1000 bytes donated in ")),
        "{st}"
    );
    assert!(
        carol_d
            .log_text()
            .contains("this month's donation is used up; withdrawing the record"),
        "{}",
        carol_d.log_text()
    );
    carol_d.reload(&carol_cfg(true));
    poll(Duration::from_secs(5), "carol published again", || {
        let mut listed = members(&fetch(&cns), &root);
        listed.sort();
        (listed == ["alice", "carol"]).then_some(())
    });

    // Leaving: alice's waypoint off (reload), carol `enabled '0'` (reload,
    // the daemon exits): both records withdrawn.
    let line = alice.reload(&alice_cfg(false));
    assert!(line.contains("waypoint stopped"), "{line}");
    poll(Duration::from_secs(5), "alice withdrawn", || {
        (members(&fetch(&cns), &root) == ["carol"]).then_some(())
    });
    assert!(
        alice.log_text().contains("withdrawal record of 'alice'"),
        "{}",
        alice.log_text()
    );
    bob.wait_status(INTERVAL * 3, |s| s["directory"]["members"] == 1)
        .unwrap_or_else(|s| panic!("bob still lists alice: {s}"));
    carol_d.reload(&carol_cfg(false));
    poll(Duration::from_secs(10), "carol exits", || {
        (!carol_d.running()).then_some(())
    });
    poll(Duration::from_secs(5), "carol withdrawn", || {
        members(&fetch(&cns), &root).is_empty().then_some(())
    });
    assert!(
        carol_d.log_text().contains("membership off"),
        "{}",
        carol_d.log_text()
    );
    let serve = fs::read_to_string(scratch.join("serve.log")).unwrap_or_default();
    assert!(serve.contains("refused record"), "{serve}");
}

/// Sends `bytes` from `from` and reads the answer (up to `limit`): its
/// text and how long it took.
fn ask_from(from: IpAddr, to: SocketAddr, bytes: &[u8], limit: Duration) -> (String, Duration) {
    let t0 = Instant::now();
    let mut c = dcol::sys::sock::connect_from(from, to).expect("connect");
    c.write_all(bytes).expect("send");
    c.set_read_timeout(Some(limit)).unwrap();
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    (text, t0.elapsed())
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn per_source_limits_count_an_ipv6_64_as_one_source() {
    if !need_root() {
        return;
    }
    // dir [2001:db8:d::1] 10.9.0.1 ── host: [2001:db8:d::2] 10.9.0.2, and
    // 2001:db8:e:1::/64 (its own /64, routed to it), 2001:db8:e:2::1.
    let dir = Netns::new("dir6");
    let host = Netns::new("host6");
    veth(&dir, "d0", "10.9.0.1/24", &host, "e0", "10.9.0.2/24");
    dir.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:d::1/64",
        "dev",
        "d0",
        "nodad",
    ]);
    host.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:d::2/64",
        "dev",
        "e0",
        "nodad",
    ]);
    let attacker: Vec<IpAddr> = (1..=70u16)
        .map(|i| IpAddr::from([0x2001, 0xdb8, 0xe, 1, 0, 0, 0, i]))
        .collect();
    let other: IpAddr = "2001:db8:e:2::1".parse().unwrap();
    for a in attacker.iter().chain([&other]) {
        host.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{a}/128"),
            "dev",
            "e0",
            "nodad",
        ]);
    }
    dir.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:e::/48",
        "via",
        "2001:db8:d::2",
    ]);

    let scratch = dcol_tests::dcol::Scratch::new("dir-sources");
    let coop = Collective::new(scratch.path(), "coop");
    let log = scratch.path().join("serve.log");
    dir.spawn_logged(
        &[
            dcol_bin().to_str().unwrap(),
            "directory",
            "serve",
            "--collective-key",
            coop.root_key.to_str().unwrap(),
            "--store",
            scratch.path().join("store").to_str().unwrap(),
            "--listen",
            &format!("[::]:{DIR_PORT}"),
        ],
        fs::File::create(&log).unwrap(),
    );
    poll(Duration::from_secs(5), "directory listening", || {
        let out = dir.output(&["ss", "-Hltn", &format!("sport = :{DIR_PORT}")]);
        (!out.stdout.is_empty()).then_some(())
    });
    let v6: SocketAddr = format!("[2001:db8:d::1]:{DIR_PORT}").parse().unwrap();
    let v4: SocketAddr = format!("10.9.0.1:{DIR_PORT}").parse().unwrap();
    let get = b"GET / HTTP/1.1\r\n\r\n";
    let quick = Duration::from_secs(1);

    let (attacker2, other2) = (attacker.clone(), other);
    let (busy, served6, served4, at_once) = in_netns(host.name(), move || {
        // Seventy connections, each from another address of one /64, each
        // sending half a head and stalling (the server's slots: 64 in all,
        // 8 per source; the head timeout is 3 s).
        let t0 = Instant::now();
        let mut held = Vec::new();
        let mut busy = 0;
        for a in &attacker2 {
            let mut c = dcol::sys::sock::connect_from(*a, v6).expect("connect");
            let _ = c.write_all(b"GET /snapshot HTTP/1.1\r\nX-");
            held.push(c);
        }
        // A refused connection gets its 503 at once.
        std::thread::sleep(Duration::from_millis(300));
        for c in &mut held {
            c.set_nonblocking(true).unwrap();
            let mut b = [0u8; 12];
            if matches!(c.read(&mut b), Ok(n) if b[..n].starts_with(b"HTTP/1.1 503")) {
                busy += 1;
            }
        }
        // Another /64 and an IPv4 host are served while they stall.
        let (text6, took6) = ask_from(other2, v6, get, quick * 2);
        let (text4, took4) = ask_from("10.9.0.2".parse().unwrap(), v4, get, quick * 2);
        let at_once = t0.elapsed() < Duration::from_millis(2500);
        drop(held);
        (busy, (text6, took6), (text4, took4), at_once)
    });
    eprintln!(
        "70 stalled connections from one /64: {busy} refused with 503; another /64: {:?} in {:?}; IPv4: {:?} in {:?}",
        served6.0.lines().next(),
        served6.1,
        served4.0.lines().next(),
        served4.1
    );
    assert!(at_once, "the checks took longer than the head timeout");
    assert_eq!(busy, 62, "one /64 got more than its 8 connections");
    assert!(served6.0.starts_with("HTTP/1.1 200"), "{}", served6.0);
    assert!(served4.0.starts_with("HTTP/1.1 200"), "{}", served4.0);
    assert!(served6.1 < quick && served4.1 < quick);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("connection cap (8 connections from 2001:db8:e:1::/64)"),
        "{text}"
    );

    // A trickled head: 408 at the head timeout (3 s), not the request's
    // (10 s); an oversized Content-Length: 413 before the body.
    let a0 = attacker[0];
    let (slow, oversized) = in_netns(host.name(), move || {
        let t0 = Instant::now();
        let mut c = dcol::sys::sock::connect_from(a0, v6).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
        // A byte every 100 ms, until the server answers.
        let mut b = [0u8; 1];
        for byte in b"POST /records HTTP/1.1\r\nContent-Length: 10\r\nX-Pad: 0123456789\r\n".iter()
        {
            c.set_nonblocking(true).unwrap();
            let answered = c.peek(&mut b).is_ok_and(|n| n > 0);
            c.set_nonblocking(false).unwrap();
            if answered || c.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let took = t0.elapsed();
        let mut text = String::new();
        let _ = c.read_to_string(&mut text);
        let slow = (text, took);
        let oversized = ask_from(
            a0,
            v6,
            b"POST /records HTTP/1.1\r\nContent-Length: 200000\r\n\r\n",
            Duration::from_secs(12),
        );
        (slow, oversized)
    });
    eprintln!(
        "trickled head: {:?} after {:?}",
        slow.0.lines().next(),
        slow.1
    );
    assert!(slow.0.starts_with("HTTP/1.1 408"), "{}", slow.0);
    assert!(
        slow.1 > Duration::from_millis(2900) && slow.1 < Duration::from_secs(5),
        "{:?}",
        slow.1
    );
    assert!(oversized.0.starts_with("HTTP/1.1 413"), "{}", oversized.0);
    assert!(oversized.1 < quick, "{:?}", oversized.1);
    let text = fs::read_to_string(&log).unwrap();
    for want in [
        "refused request from [2001:db8:e:1::1]:",
        "408 the request head was not complete within 3s",
        "413 the body (200000 bytes) is larger than a record may be (4096 bytes)",
    ] {
        assert!(text.contains(want), "'{want}' not in the log:\n{text}");
    }
}
