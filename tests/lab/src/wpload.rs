//! `dcol-lab waypoint-load`: one waypoint serving many members (issue 18).
//!
//! ```text
//!  members (200 addresses, 10.60.1.x) ── lm1 ┤ waypoint (dcol) ├ lw0 ── internet (server 10.77.0.2:6002)
//!                    10.60.0.0/16                  10.60.0.254     10.77.0.1 (WAN, default route)
//! ```
//! Every member has its own certificate (issued in-process by the
//! collective's root key), address and socket, and speaks the real signed
//! protocol (`wpmember.rs`): it holds 2 NAT leases, renews each every 5 s (the client's default)
//! (lease 30 s), and replaces one every 4 s, so 200 members churn 50 grants
//! a second; a TCP connection goes through every lease. A member's grants
//! go to 8 server addresses in turn, so the leases it holds are distinct
//! tunnels; with `--destinations 1` every grant goes to one address and
//! joins the member's live lease (shared tunnels, see `waypoint::leases`).
//! First a quiet
//! baseline in the same run: one member, grants one at a time, 10 a second,
//! nothing else. Then the churn for `--secs` (300; 30 with `--quick`),
//! sampling every 2 s the NAT map's elements, the conntrack entries of
//! tunnel flows, the grants `dcol status` lists, the daemon's CPU and RSS.
//! Afterwards every lease is released and the lab checks that nothing
//! leaked: no map element, no tunnel flow in conntrack, no grant in the
//! status, the evidence log's grant and end records equal to the grants and
//! releases the members saw, and after SIGTERM no table and no flow.
//!
//! Output: `DIR/results.json`, `DIR/waypoint-load.svg` (latency),
//! `DIR/waypoint-load-sizes.svg` (sizes over time), a summary on stdout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dcol::trust::{files, Certificate, Roles, SecretKey};
use dcol_tests::dcol::{
    dcol_bin, has_table, main_section, map_elements, Collective, Daemon, Scratch,
};
use dcol_tests::lab::enter_netns;
use dcol_tests::{veth, Netns};
use lexopt::prelude::ValueExt;
use serde_json::{json, Value};

use crate::load::{round3, stats, status_at};
use crate::loadgen::{Servers, TCP_PORT};
use crate::loadplot::{bars_svg, series_svg, Group};
use crate::procstat::{proc_cpu_s, status_kb};
use crate::wpmember::{self, Member, MemberReport, ReqKind, Schedule};

const WAYPOINT: Ipv4Addr = Ipv4Addr::new(10, 60, 0, 254);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Options of `dcol-lab waypoint-load`.
#[derive(Debug, Clone)]
struct Args {
    quick: bool,
    out: PathBuf,
    members: usize,
    rate: f64,
    secs: u64,
    destinations: u8,
}

fn parse(args: &mut lexopt::Parser) -> Result<Args, lexopt::Error> {
    let mut a = Args {
        quick: false,
        out: PathBuf::from("target/lab-waypoint-load"),
        members: 200,
        rate: 50.0,
        secs: 300,
        destinations: wpmember::DESTINATIONS,
    };
    let mut secs = None;
    while let Some(arg) = args.next()? {
        match arg {
            lexopt::Arg::Long("quick") => a.quick = true,
            lexopt::Arg::Long("out") => a.out = args.value()?.string()?.into(),
            lexopt::Arg::Long("members") => a.members = args.value()?.parse()?,
            lexopt::Arg::Long("rate") => a.rate = args.value()?.parse()?,
            lexopt::Arg::Long("secs") => secs = Some(args.value()?.parse()?),
            lexopt::Arg::Long("destinations") => {
                a.destinations = args.value()?.parse()?;
                if !(1..=wpmember::DESTINATIONS).contains(&a.destinations) {
                    return Err(format!(
                        "--destinations: 1 to {}, not {}",
                        wpmember::DESTINATIONS,
                        a.destinations
                    )
                    .into());
                }
            }
            other => return Err(other.unexpected()),
        }
    }
    if a.members == 0 || a.members > 250 || a.rate <= 0.0 {
        return Err("need 1-250 members and a positive --rate".into());
    }
    a.secs = secs.unwrap_or(if a.quick { 30 } else { 300 });
    Ok(a)
}

/// `dcol-lab waypoint-load [--quick] [--out DIR] [--members N] [--rate GRANTS_PER_S] [--secs S]`.
pub fn main(args: &mut lexopt::Parser) -> ExitCode {
    let a = match crate::begin::begin("waypoint-load", parse(args), |a| &a.out) {
        Ok(a) => a,
        Err(code) => return code,
    };
    crate::procstat::raise_nofile();
    let started = Instant::now();
    let doc = run(&a);
    let path = a.out.join("results.json");
    let _ = std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    );
    let _ = std::fs::write(a.out.join("waypoint-load.svg"), latency_svg(&doc));
    let _ = std::fs::write(a.out.join("waypoint-load-sizes.svg"), sizes_svg(&doc));
    print_summary(&doc);
    println!(
        "\nTotal {:.0} s. Results: {}",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    let ok = doc["leaks"]["ok"].as_bool() == Some(true);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The three namespaces.
struct Net {
    m: Netns,
    w: Netns,
    i: Netns,
}

fn build(members: usize) -> Net {
    let n = Net {
        m: Netns::new("wlm"),
        w: Netns::new("wlw"),
        i: Netns::new("wli"),
    };
    veth(&n.m, "lm0", "10.60.0.1/16", &n.w, "lm1", "10.60.0.254/16");
    veth(&n.w, "lw0", "10.77.0.1/24", &n.i, "lw1", "10.77.0.2/24");
    // The servers' other addresses (see `wpmember::DESTINATIONS`).
    for k in 1..crate::wpmember::DESTINATIONS {
        let a = format!("10.77.0.{}/24", 2 + k);
        n.i.exec(&["ip", "addr", "add", &a, "dev", "lw1"]);
    }
    let mut batch = String::new();
    for k in 0..members {
        batch.push_str(&format!("addr add {} dev lm0\n", member_addr(k)));
    }
    let file = std::env::temp_dir().join(format!("dcol-lab-{}-addrs", std::process::id()));
    std::fs::write(&file, batch).expect("write address batch");
    n.m.exec(&["ip", "-batch", file.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&file);
    n.m.exec(&["ip", "route", "add", "default", "via", "10.60.0.254"]);
    n.w.exec(&["ip", "route", "add", "default", "via", "10.77.0.2"]);
    n.i.exec(&["ip", "route", "add", "default", "via", "10.77.0.1"]);
    n.w.sysctl("net.ipv4.ip_forward", "1");
    n
}

fn member_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 60, 1 + (k / 250) as u8, 1 + (k % 250) as u8)
}

/// `n` members with certificates issued in-process by the root key.
fn members(coop: &Collective, n: usize) -> Vec<Member> {
    let root = files::read_secret_key(&coop.root_key).expect("root key");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (0..n)
        .map(|k| {
            let mut seed = [0x4du8; 32];
            seed[..8].copy_from_slice(&(k as u64).to_be_bytes());
            let key = SecretKey::from_seed(seed);
            let cert = Certificate::issue(
                &root,
                &format!("m{k:03}"),
                key.public(),
                None,
                now - 300,
                now + 86_400,
                Roles::CLIENT,
            )
            .expect("certificate");
            Member {
                cert,
                key,
                addr: member_addr(k),
            }
        })
        .collect()
}

fn waypoint_uci(
    coop: &Collective,
    alice: &dcol_tests::dcol::Member,
    dir: &std::path::Path,
) -> String {
    format!(
        "{}config waypoint 'waypoint'\n\toption enabled '1'\n\toption listen '{WAYPOINT}:7447'\n\toption nat_ports '20000-29999'\n\toption lease_s '30'\n\tlist allow_destination '10.0.0.0/8'\n\toption upnp '0'\n\toption evidence_max_kb '65536'\n",
        main_section(alice, coop, &dir.join("wp.sock"), &dir.join("wp-state"))
    )
    .replace("option log_level 'debug'", "option log_level 'info'")
}

fn run(a: &Args) -> Value {
    let net = build(a.members);
    let _server = Servers::start(&net.i, 1);
    let scratch = Scratch::new("lab");
    let coop = Collective::new(scratch.path(), "coop");
    let alice = coop.admit("alice", "client,waypoint", 30);
    let uci = waypoint_uci(&coop, &alice, scratch.path());
    let mut wp = Daemon::start(
        net.w.name(),
        scratch.path(),
        "wp",
        &uci,
        &scratch.path().join("wp.sock"),
    );
    let all = members(&coop, a.members);
    let quiet_n = if a.quick { 100 } else { 300 };
    let sched = schedule(a, Duration::from_secs_f64(quiet_n as f64 / 10.0));
    eprintln!("quiet baseline: {quiet_n} grants from one member, 10 a second ...");
    let quiet =
        in_members(&net.m, {
            let m = all[0].clone();
            move || async move {
                vec![wpmember::quiet(m, sched, quiet_n, Duration::from_millis(100)).await]
            }
        })
        .join()
        .expect("quiet thread");
    eprintln!(
        "churn: {} members, {} grants/s for {} s ...",
        a.members, a.rate, a.secs
    );
    let load = in_members(&net.m, {
        let all = all.clone();
        move || async move {
            let n = all.len();
            let tasks: Vec<_> = all
                .into_iter()
                .enumerate()
                .map(|(k, m)| tokio::spawn(wpmember::run(k, n, m, sched)))
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap_or_default());
            }
            out
        }
    });
    let pid = wp.pid().expect("waypoint pid");
    let sock = scratch.path().join("wp.sock");
    let loop0 = status_at(&sock).map(|s| s.0["loop"].clone());
    let samples = sample_until(&net.w, &sock, pid, sched.start, sched.end);
    let loop1 = status_at(&sock).map(|s| s.0["loop"].clone());
    let reports = load.join().expect("members thread");
    let evidence_dir = scratch.path().join("wp-state/evidence");
    let leaks = leak_check(&net.w, &sock, &evidence_dir, &quiet, &reports, &mut wp);
    json!({
        "command": "waypoint-load",
        "quick": a.quick,
        "members": a.members, "leases_per_member": sched.leases, "grants_per_s": a.rate,
        "destinations": a.destinations,
        "renew_s": sched.renew.as_secs(), "lease_s": 30, "churn_s": a.secs,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).ok(),
        "quiet": summarize(&quiet, None),
        "load": summarize(&reports, Some(sched.start)),
        "samples": samples,
        "loop": crate::load::loop_delta(loop0.as_ref(), loop1.as_ref()),
        "leaks": leaks,
    })
}

/// The members' schedule: the churn starts after the quiet baseline
/// (`quiet`) and an 8 s ramp in which every member takes its leases.
fn schedule(a: &Args, quiet: Duration) -> Schedule {
    let ramp = Duration::from_secs(8);
    let start = Instant::now() + Duration::from_millis(200) + quiet + ramp + Duration::from_secs(1);
    Schedule {
        waypoint: SocketAddr::new(IpAddr::V4(WAYPOINT), 7447),
        destination: SocketAddr::new(IpAddr::V4(SERVER), TCP_PORT),
        destinations: a.destinations,
        leases: 2,
        churn: Duration::from_secs_f64(a.members as f64 / a.rate),
        renew: Duration::from_secs(5),
        ramp,
        start,
        end: start + Duration::from_secs(a.secs),
    }
}

/// Runs `f`'s future on a current-thread runtime on a thread in the
/// members' namespace.
fn in_members<F, Fut>(ns: &Netns, f: F) -> std::thread::JoinHandle<Vec<MemberReport>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<MemberReport>>,
{
    let path = PathBuf::from("/var/run/netns").join(ns.name());
    std::thread::spawn(move || {
        enter_netns(&std::fs::File::open(&path).expect("open netns"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f())
    })
}

/// Latency and outcome figures of some members' records (`since`: only
/// requests sent after it, the churn's steady state).
fn summarize(reports: &[MemberReport], since: Option<Instant>) -> Value {
    let steady = |t: f64| since.is_none() || t >= 0.0;
    let of = |k: ReqKind| -> Vec<f64> {
        reports
            .iter()
            .flat_map(|r| r.records.iter())
            .filter(|r| r.kind == k && steady(r.t) && r.refused.is_none())
            .filter_map(|r| r.ms)
            .collect()
    };
    let count = |k: ReqKind, pred: &dyn Fn(&wpmember::Record) -> bool| -> usize {
        reports
            .iter()
            .flat_map(|r| r.records.iter())
            .filter(|r| r.kind == k && pred(r))
            .count()
    };
    let mut refusals: Vec<String> = reports
        .iter()
        .flat_map(|r| r.records.iter())
        .filter_map(|r| r.refused.clone())
        .collect();
    refusals.sort();
    refusals.dedup();
    let granted = |k| count(k, &|r| r.ms.is_some() && r.refused.is_none());
    let kinds = [ReqKind::Grant, ReqKind::Renew, ReqKind::Release];
    let unanswered: usize = kinds.iter().map(|k| count(*k, &|r| r.ms.is_none())).sum();
    let refused: usize = kinds
        .iter()
        .map(|k| count(*k, &|r| r.refused.is_some()))
        .sum();
    json!({
        "grant_ms": stats(&of(ReqKind::Grant)),
        "renew_ms": stats(&of(ReqKind::Renew)),
        "release_ms": stats(&of(ReqKind::Release)),
        "grants": granted(ReqKind::Grant),
        "renewals": granted(ReqKind::Renew),
        "releases": granted(ReqKind::Release),
        "unanswered": unanswered,
        "refused": refused,
        "refusal_kinds": refusals.into_iter().take(10).collect::<Vec<_>>(),
        "flows": reports.iter().map(|r| r.flows).sum::<usize>(),
        "flows_failed": reports.iter().map(|r| r.flows_failed).sum::<usize>(),
    })
}

/// Conntrack entries of tunnel flows (to the waypoint's tunnel ports) in `w`.
fn tunnel_flows(w: &Netns) -> usize {
    let out = w.output(&[
        "conntrack",
        "-L",
        "-p",
        "tcp",
        "--orig-dst",
        &WAYPOINT.to_string(),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("dport=2"))
        .count()
}

fn conntrack_total(w: &Netns) -> Option<u64> {
    let out = w.output(&["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn status_grants(sock: &std::path::Path) -> Option<usize> {
    status_at(sock).and_then(|s| s.0["waypoint"]["grants"].as_array().map(Vec::len))
}

/// Every 2 s from now to `end`: sizes, the daemon's CPU (share of a core
/// since the last sample) and RSS.
fn sample_until(
    w: &Netns,
    sock: &std::path::Path,
    pid: u32,
    start: Instant,
    end: Instant,
) -> Value {
    let t0 = Instant::now();
    let mut rows = Vec::new();
    let (mut cpu, mut at) = (proc_cpu_s(pid), Instant::now());
    let (cpu_start, mut cpu_at_start) = (cpu, None);
    while Instant::now() < end {
        std::thread::sleep(
            Duration::from_secs(2).min(end.saturating_duration_since(Instant::now())),
        );
        let (c, now) = (proc_cpu_s(pid), Instant::now());
        if now >= start && cpu_at_start.is_none() {
            cpu_at_start = Some((c, now));
        }
        rows.push(json!({
            "t": round3(now.duration_since(t0).as_secs_f64()),
            "steady": now >= start,
            "map_elements": map_elements(w.name(), "dcol", "nat4"),
            "tunnel_flows": tunnel_flows(w),
            "conntrack": conntrack_total(w),
            "status_grants": status_grants(sock),
            "cpu_pct": round3((c - cpu) / now.duration_since(at).as_secs_f64() * 100.0),
            "rss_kb": status_kb(pid, "VmRSS:"),
        }));
        (cpu, at) = (c, now);
    }
    let steady_cpu = cpu_at_start
        .map(|(c0, t)| round3((proc_cpu_s(pid) - c0) / t.elapsed().as_secs_f64() * 100.0));
    let col = |k: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r["steady"] == true)
            .filter_map(|r| r[k].as_f64())
            .collect()
    };
    let max = |k: &str| {
        col(k)
            .into_iter()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    json!({
        "rows": rows,
        "steady_cpu_pct": steady_cpu,
        "total_cpu_s": round3(proc_cpu_s(pid) - cpu_start),
        "max_map_elements": max("map_elements"),
        "max_tunnel_flows": max("tunnel_flows"),
        "max_conntrack": max("conntrack"),
        "rss_peak_kb": status_kb(pid, "VmHWM:"),
        "median_map_elements": crate::loadgen::quantile(&col("map_elements"), 0.5),
        "median_tunnel_flows": crate::loadgen::quantile(&col("tunnel_flows"), 0.5),
    })
}

/// Evidence records: (grants, ends) of NAT tunnels.
fn evidence_counts(dir: &std::path::Path) -> (usize, usize, usize) {
    let out = Command::new(dcol_bin())
        .args(["waypoint", "log", "--json", "--dir"])
        .arg(dir)
        .output();
    let Ok(out) = out else { return (0, 0, 0) };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let recs = v["records"].as_array().cloned().unwrap_or_default();
    let g = |p: &str| {
        recs.iter()
            .filter(|r| r["grant"].as_str().unwrap_or("").starts_with(p))
            .count()
    };
    (g("nat "), g("end nat"), recs.len())
}

/// After every lease was released: nothing left, and the evidence matches.
fn leak_check(
    w: &Netns,
    sock: &std::path::Path,
    ev: &std::path::Path,
    quiet: &[MemberReport],
    load: &[MemberReport],
    wp: &mut Daemon,
) -> Value {
    std::thread::sleep(Duration::from_secs(3));
    let (elements, flows, grants) = (
        map_elements(w.name(), "dcol", "nat4"),
        tunnel_flows(w),
        status_grants(sock),
    );
    let granted: usize = quiet
        .iter()
        .chain(load)
        .flat_map(|r| r.records.iter())
        .filter(|r| r.kind == ReqKind::Grant && r.ms.is_some() && r.refused.is_none())
        .count();
    let released: usize = quiet
        .iter()
        .chain(load)
        .flat_map(|r| r.records.iter())
        .filter(|r| r.kind == ReqKind::Release && r.ms.is_some() && r.refused.is_none())
        .count();
    let (ev_grants, ev_ends, ev_all) = evidence_counts(ev);
    let st = wp.terminate();
    std::thread::sleep(Duration::from_millis(500));
    let (table_after, flows_after) = (has_table(w.name(), "dcol"), tunnel_flows(w));
    let ok = elements == 0
        && flows == 0
        && grants == Some(0)
        && ev_grants == granted
        && ev_ends == granted
        && !table_after
        && flows_after == 0;
    eprintln!(
        "leaks: map {elements}, tunnel flows {flows}, status grants {grants:?}; evidence {ev_grants} grants / {ev_ends} ends for {granted} grants ({released} releases answered); after SIGTERM ({st}): table {table_after}, flows {flows_after} -> {}",
        if ok { "ok" } else { "LEAK OR MISMATCH" }
    );
    json!({
        "ok": ok,
        "map_elements": elements, "tunnel_flows": flows, "status_grants": grants,
        "grants_answered": granted, "releases_answered": released,
        "evidence_grant_records": ev_grants, "evidence_end_records": ev_ends, "evidence_records": ev_all,
        "exit": st.code(), "table_after_exit": table_after, "tunnel_flows_after_exit": flows_after,
    })
}

fn latency_svg(doc: &Value) -> String {
    let g = |label: &str, k: &str| Group {
        label: label.into(),
        bars: vec![
            (
                "quiet: one member, 10 grants/s".into(),
                doc["quiet"][k]["median"].as_f64(),
            ),
            (
                "under load: median".into(),
                doc["load"][k]["median"].as_f64(),
            ),
            ("quiet p99".into(), doc["quiet"][k]["p99"].as_f64()),
            ("under load: p99".into(), doc["load"][k]["p99"].as_f64()),
        ],
    };
    let sub = format!(
        "{} members, {} grants/s, {} s",
        doc["members"], doc["grants_per_s"], doc["churn_s"]
    );
    bars_svg(
        "Waypoint under load: request latency",
        &sub,
        "milliseconds",
        &[
            g("grant", "grant_ms"),
            g("renewal", "renew_ms"),
            g("release", "release_ms"),
        ],
    )
}

fn sizes_svg(doc: &Value) -> String {
    let rows = doc["samples"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let line = |k: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| Some((r["t"].as_f64()?, r[k].as_f64()?)))
            .collect()
    };
    let sub = format!(
        "{} members, {} grants/s; sampled every 2 s",
        doc["members"], doc["grants_per_s"]
    );
    series_svg(
        "Waypoint under load: kernel state",
        &sub,
        "entries",
        &[
            ("NAT map elements".into(), line("map_elements")),
            ("tunnel flows (conntrack)".into(), line("tunnel_flows")),
            ("grants (dcol status)".into(), line("status_grants")),
        ],
    )
}

fn print_summary(doc: &Value) {
    let (q, l, s) = (&doc["quiet"], &doc["load"], &doc["samples"]);
    println!(
        "\nWaypoint load: {} members, {} grants/s, {} s",
        doc["members"], doc["grants_per_s"], doc["churn_s"]
    );
    println!(
        "  grant latency: quiet median {} p99 {} ms; under load median {} p99 {} ms",
        q["grant_ms"]["median"],
        q["grant_ms"]["p99"],
        l["grant_ms"]["median"],
        l["grant_ms"]["p99"]
    );
    println!(
        "  renewals: median {} p99 {} ms; unanswered {}, refused {} {}",
        l["renew_ms"]["median"],
        l["renew_ms"]["p99"],
        l["unanswered"],
        l["refused"],
        l["refusal_kinds"]
    );
    println!(
        "  grants {} renewals {} releases {}; flows {} ({} failed)",
        l["grants"], l["renewals"], l["releases"], l["flows"], l["flows_failed"]
    );
    println!(
        "  sizes (steady, median/max): map {}/{}, tunnel flows {}/{}, conntrack max {}",
        s["median_map_elements"],
        s["max_map_elements"],
        s["median_tunnel_flows"],
        s["max_tunnel_flows"],
        s["max_conntrack"]
    );
    println!(
        "  dcol CPU {} % of a core, RSS peak {} KB; loop: slowest bucket <= {} ms, max {} ms ({})",
        s["steady_cpu_pct"],
        s["rss_peak_kb"],
        doc["loop"]["slowest_bucket_le_ms"],
        doc["loop"]["max_ms"],
        doc["loop"]["max_driver"]
    );
    println!("  leaks: {}", doc["leaks"]);
}
