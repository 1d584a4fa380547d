// Needs: root, network namespaces, kernel MPTCP (userspace path manager), nftables
// with NAT, maps and numgen, tbf; programs ip, tc, nft, ethtool, iperf3,
// mptcpize (package mptcpd). tests/setup.sh installs them.
//
//! The detour strategy against the real kernel: a detour over a good path
//! stays `active` and carries data; the same detour with 6% loss switched on
//! the waypoint's access link is marked backup with SET_FLAGS, after which the
//! server receives (almost) nothing more from the waypoint — measured on the
//! server side with nftables counters per source address. The waypoint
//! scoreboard is written to `state_dir/scores` at exit and read back at the
//! next start (a corrupt line is skipped with a warning naming it).
//!
//! ```text
//!  client --1-- rc --2-- rs --3-- server
//!                \\       /
//!                 4     5
//!                  \\   /
//!                   rw --6-- waypoint   (loss on 6: only detour packets)
//! ```

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dcol_tests::lab::{need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_background, iperf3_server, JoinCounter, LinkProfile, Node};

/// The roles of the established detours that carried data.
fn detour_roles(s: &serde_json::Value) -> Vec<String> {
    s["client"]["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["subflows"].as_array().into_iter().flatten())
        .filter(|f| f["path"] == "detour" && f["state"] == "established")
        .filter(|f| f["bytes"].as_u64().unwrap_or(0) > 100_000)
        .filter_map(|f| f["role"].as_str().map(str::to_owned))
        .collect()
}

/// What one upload showed.
struct Upload {
    /// Roles seen, in order of first sight.
    roles: Vec<String>,
    /// Bytes from the waypoint per second after second 4.
    late_rate: f64,
    /// Bytes from the waypoint per second after the first `backup` was seen.
    after_backup_rate: Option<f64>,
}

/// Runs an 8 s MPTCP upload, watching the client's status and the server's
/// per-source byte counters.
fn upload(lab: &Lab, counter: &JoinCounter, server: IpAddr, waypoint: IpAddr) -> Upload {
    let t0 = Instant::now();
    let h = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 8);
    let mut roles: Vec<String> = Vec::new();
    let (mut at4, mut at_backup) = (None, None);
    while !h.is_finished() {
        for r in lab
            .cl()
            .try_status()
            .as_ref()
            .map(detour_roles)
            .unwrap_or_default()
        {
            if !roles.contains(&r) {
                eprintln!("{:5.2} s: detour {r}", t0.elapsed().as_secs_f64());
                if r == "backup" {
                    at_backup = Some((Instant::now(), counter.bytes_from(waypoint)));
                }
                roles.push(r);
            }
        }
        if at4.is_none() && t0.elapsed() >= Duration::from_secs(4) {
            at4 = Some((Instant::now(), counter.bytes_from(waypoint)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(h.join().unwrap(), "iperf3 upload failed");
    let (end_t, end) = (Instant::now(), counter.bytes_from(waypoint));
    let rate = |(t, b): (Instant, u64)| (end - b) as f64 / end_t.duration_since(t).as_secs_f64();
    Upload {
        roles,
        late_rate: at4.map_or(0.0, rate),
        after_backup_rate: at_backup.map(rate),
    }
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn lossy_detour_goes_to_backup_good_one_stays_and_scores_persist() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let waypoint: IpAddr = lab.topo.addr4(Node::Waypoint).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    let counter = JoinCounter::install(lab.topo.ns(Node::Server), IPERF_PORT, &[waypoint]);
    lab.start_waypoint();
    let cfg = lab.client_config_tunnels("\toption probation_ms '1500'\n", &["nat"]);
    lab.start_client_with(Node::Client, &cfg);

    // A good path: the detour passes probation and carries data throughout.
    let good = upload(&lab, &counter, server, waypoint);
    eprintln!(
        "good path: {:.0} bytes/s from the waypoint after 4 s",
        good.late_rate
    );
    assert!(
        good.roles.contains(&"active".to_owned()),
        "{:?}",
        good.roles
    );
    assert!(
        !good.roles.contains(&"backup".to_owned()),
        "{:?}",
        good.roles
    );
    assert!(
        good.late_rate > 400_000.0,
        "good detour carried only {:.0} B/s",
        good.late_rate
    );
    std::thread::sleep(Duration::from_secs(1));

    // 6% loss on the waypoint's access link: the detour is marked backup and
    // the waypoint path goes (nearly) silent.
    let rw = lab.topo.ns(Node::Rw);
    rw.exec(&["nft", "add", "table", "inet", "swloss"]);
    rw.exec(&[
        "nft",
        "add chain inet swloss lossy { type filter hook forward priority 0; policy accept; }",
    ]);
    rw.exec(&[
        "nft",
        "add rule inet swloss lossy oifname \"l6a\" numgen random mod 1000 < 60 drop",
    ]);
    let bad = upload(&lab, &counter, server, waypoint);
    let log = lab.cl().log_text();
    let after = bad
        .after_backup_rate
        .unwrap_or_else(|| panic!("no backup seen: {:?}\n{log}", bad.roles));
    eprintln!(
        "lossy path: {:.0} bytes/s from the waypoint after 4 s, {after:.0} after demotion",
        bad.late_rate
    );
    assert!(
        after * 10.0 < good.late_rate,
        "after demotion the server still got {after:.0} B/s via the waypoint (good path: {:.0})",
        good.late_rate
    );
    assert!(log.contains("to backup: loss"), "{log}");

    // The scoreboard is written at exit...
    let scores = lab.scratch.path().join("cl-state/scores");
    lab.client.as_mut().unwrap().terminate();
    let text = std::fs::read_to_string(&scores).expect("scores file written");
    eprintln!("{text}");
    assert!(text.starts_with("dcol-scores 1\n"), "{text}");
    assert!(text.contains("alice\t10.0.3.0/24\t"), "{text}");
    // ... and read back at the next start, a corrupt line skipped with a warning.
    std::fs::write(&scores, format!("{text}garbage line\n")).unwrap();
    lab.start_client_with(Node::Client, &cfg);
    let s = lab.cl().status();
    let peer = &s["client"]["peers"][0];
    assert!(peer["score"].as_f64().is_some(), "{s}");
    assert!(peer["detours_scored"].as_u64() >= Some(2), "{s}");
    assert_eq!(s["client"]["scores"][0]["prefix"], "10.0.3.0/24", "{s}");
    let log = lab.cl().log_text();
    assert!(
        log.contains("scores:4: skipped: 1 fields, expected 5"),
        "{log}"
    );
}
