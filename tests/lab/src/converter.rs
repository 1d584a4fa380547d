//! `dcol-lab converter`: servers that do not speak MPTCP, through converter
//! members (issue 17), in [`dcol_tests::convlab`]'s topology (the paper's
//! Figure 3, core links 10 Mbit/s, access 20; the converter 'carol' on the
//! server's router, the NAT waypoint 'alice' on the second core path):
//!
//! - uploads from an unmodified LAN host (plain `iperf3`, CUBIC), links
//!   without added delay: plain TCP (DCol off); an MPTCP server
//!   (`mptcpize`) with DCol's LAN proxy and a detour; a plain server
//!   through the converter with 0, 1 and 2 detours (`max_detours`; the
//!   topology has one waypoint, so a second detour can only be the same
//!   waypoint again);
//! - time to first byte of an HTTP/1.0 request to a plain server, with
//!   [`TTFB_LINK_DELAY`] one way on link 2 (rc ↔ rs: the LAN proxy's path
//!   to the converter) and link 3 (rs ↔ server: the converter's path to the
//!   server), by [`IngressDelays`] (the LAN proxy's and the converter's
//!   sockets are local to their routers, so the forwarding relays of
//!   `delay.rs` would not hold them); median, 90th percentile and stalls
//!   (more than 15 ms over the case's median) of many connections: direct
//!   (DCol off, before and after the rest), through the converter with TCP
//!   Fast Open (the Convert message in the SYN) and without it, in
//!   alternating rounds so that the machine's load falls on both alike;
//!   with the round trips (ping) rc → converter, converter → server and
//!   LAN host → server, the Fast Open counters of both routers and the
//!   load average.
//!
//! Writes `results.json` and `converter.svg` to `--out`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dcol_tests::convlab::ConvLab;
use dcol_tests::dcol::in_ns;
use dcol_tests::lab::{need_root, IPERF_PORT};
use dcol_tests::{iperf3_client, iperf3_server, LinkProfile, Node};
use lexopt::prelude::ValueExt;
use serde_json::{json, Value};

use crate::delay::IngressDelays;
use crate::plot::{self, Series};

/// One-way delay of links 2 and 3 while time to first byte is measured.
pub const TTFB_LINK_DELAY: Duration = Duration::from_millis(10);

/// The MPTCP iperf3 server's port (the plain one is [`IPERF_PORT`]).
const MPTCP_PORT: u16 = 5202;
/// The plain HTTP server's port (time to first byte).
const HTTP_PORT: u16 = 8080;

struct Args {
    quick: bool,
    out: PathBuf,
}

fn parse(args: &mut lexopt::Parser) -> Result<Args, lexopt::Error> {
    let mut a = Args {
        quick: false,
        out: PathBuf::from("target/lab-converter"),
    };
    while let Some(arg) = args.next()? {
        match arg {
            lexopt::Arg::Long("quick") => a.quick = true,
            lexopt::Arg::Long("out") => a.out = args.value()?.string()?.into(),
            other => return Err(other.unexpected()),
        }
    }
    Ok(a)
}

/// Uploads of `secs` from the LAN host to `port`; Mbit/s after the first second.
fn uploads(cl: &ConvLab, port: u16, secs: u32, n: usize) -> Vec<f64> {
    let host = cl.lab.topo.ns(Node::Client);
    (0..n)
        .filter_map(
            |_| match iperf3_client(host, cl.server(), port, secs, false, false) {
                Ok(r) => Some((r.mbps_after_first_second() * 100.0).round() / 100.0),
                Err(e) => {
                    eprintln!("iperf3 to port {port}: {e}");
                    None
                }
            },
        )
        .collect()
}

/// Time to first byte of `n` HTTP/1.0 requests from the LAN host, ms
/// (connect + request + first byte of the answer), after one warm-up.
fn ttfb(cl: &ConvLab, n: usize) -> Vec<f64> {
    let code = format!(
        "import socket,time,json\nr=[]\nfor i in range({}):\n t=time.perf_counter()\n s=socket.create_connection(('{}',{HTTP_PORT}),timeout=10)\n s.sendall(b'GET /x HTTP/1.0\\r\\n\\r\\n')\n s.recv(1)\n r.append((time.perf_counter()-t)*1000)\n s.close()\n time.sleep(0.05)\nprint(json.dumps(r[1:]))",
        n + 1,
        cl.server()
    );
    let out = in_ns(&cl.lab.ns(Node::Client), &["python3", "-c", &code]);
    serde_json::from_str(out.trim()).unwrap_or_default()
}

/// `nstat` counters of TCP Fast Open in `ns` (absolute).
fn tfo_counters(cl: &ConvLab, n: Node) -> Value {
    let out = in_ns(&cl.lab.ns(n), &["nstat", "-az", "TcpExtTCPFastOpen*"]);
    let mut m = serde_json::Map::new();
    for l in out.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 2 && w[0].starts_with("TcpExt") {
            m.insert(w[0].to_owned(), json!(w[1].parse::<u64>().unwrap_or(0)));
        }
    }
    Value::Object(m)
}

/// (rc's `TcpExtTCPFastOpenActive`, rs's `TcpExtTCPFastOpenPassive`).
fn tfo_used(cl: &ConvLab) -> (u64, u64) {
    let rc = tfo_counters(cl, Node::Rc)["TcpExtTCPFastOpenActive"].as_u64();
    let rs = tfo_counters(cl, Node::Rs)["TcpExtTCPFastOpenPassive"].as_u64();
    (rc.unwrap_or(0), rs.unwrap_or(0))
}

fn median(v: &[f64]) -> f64 {
    (plot::median(v).unwrap_or(0.0) * 100.0).round() / 100.0
}

/// Connections this much slower than their case's median count as stalls.
const STALL_MS: f64 = 15.0;

/// Median, 90th percentile, stalls and every value of times to first byte.
fn ttfb_summary(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let p90 = s.get(s.len() * 9 / 10).copied().unwrap_or(0.0);
    let m = median(v);
    json!({
        "median": m,
        "p90": (p90 * 100.0).round() / 100.0,
        "stalls_15ms_over_median": v.iter().filter(|&&t| t > m + STALL_MS).count(),
        "all": v,
    })
}

/// Average round trip (ping) from `from` to `to`, ms.
fn rtt(cl: &ConvLab, from: Node, to: &str) -> f64 {
    let out = in_ns(
        &cl.lab.ns(from),
        &["ping", "-n", "-q", "-c", "20", "-i", "0.05", to],
    );
    // "rtt min/avg/max/mdev = 0.041/0.058/0.090/0.011 ms"
    out.lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The 1-minute load average of the machine.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Restarts the LAN proxy with `detours` detours and `extra`.
fn client(cl: &mut ConvLab, detours: u8, extra: &str) {
    drop(cl.lab.client.take());
    cl.start_router_client(detours, extra);
    // Firewall verdicts and the fallback cache: the first connections go
    // direct, then the server is known not to speak MPTCP.
    let host = cl.lab.topo.ns(Node::Client);
    let _ = iperf3_client(host, cl.server(), IPERF_PORT, 1, false, false);
    let _ = iperf3_client(host, cl.server(), MPTCP_PORT, 1, false, false);
}

/// The round trips of the time-to-first-byte phase, ms.
fn rtts(cl: &ConvLab) -> Value {
    let conv = ConvLab::converter_addr().ip().to_string();
    let server = cl.server().to_string();
    json!({
        "rc_to_converter": rtt(cl, Node::Rc, &conv),
        "converter_to_server": rtt(cl, Node::Rs, &server),
        "lan_host_to_server": rtt(cl, Node::Client, &server),
    })
}

/// With [`TTFB_LINK_DELAY`] on links 2 and 3: time to first byte direct
/// (LAN proxy stopped), through the converter with Fast Open and without
/// (two alternating rounds of `m / 2` connections each; the Fast Open
/// counters of both routers around them), then direct again.
fn ttfb_converter(cl: &mut ConvLab, m: usize) -> Value {
    let half = m.div_ceil(2);
    let delays = match IngressDelays::start(
        &cl.lab,
        &[
            (Node::Rc, &["l2a"]),
            (Node::Rs, &["l2b", "l3a"]),
            (Node::Server, &["l3b"]),
        ],
        TTFB_LINK_DELAY,
    ) {
        Ok(d) => d,
        Err(e) => panic!("delay relays: {e}"),
    };
    let rtt_before = rtts(cl);
    drop(cl.lab.client.take());
    let direct_before = ttfb(cl, m);
    let (mut tfo, mut no_tfo) = (Vec::new(), Vec::new());
    let load_before = loadavg();
    let tfo_before = (tfo_counters(cl, Node::Rc), tfo_counters(cl, Node::Rs));
    // Fast Open SYNs sent by rc and taken by rs during the measured
    // connections only (and `ttfb`'s one warm-up each): [with Fast Open,
    // without].
    let mut counted = [(0u64, 0u64); 2];
    for _ in 0..2 {
        for (i, extra) in ["", "\toption convert_fastopen '0'\n"].iter().enumerate() {
            client(cl, 0, extra);
            // The first HTTP connections go direct until the fallback cache
            // knows that port 8080 does not speak MPTCP either.
            let _ = ttfb(cl, 2);
            let before = tfo_used(cl);
            let v = ttfb(cl, half);
            let after = tfo_used(cl);
            counted[i].0 += after.0 - before.0;
            counted[i].1 += after.1 - before.1;
            if i == 0 {
                tfo.extend(v)
            } else {
                no_tfo.extend(v)
            }
        }
    }
    let tfo_after = (tfo_counters(cl, Node::Rc), tfo_counters(cl, Node::Rs));
    drop(cl.lab.client.take());
    let direct_after = ttfb(cl, half);
    let rtt_after = rtts(cl);
    delays.stop(&cl.lab);
    json!({
        "direct_before": ttfb_summary(&direct_before),
        "converter_with_fastopen": ttfb_summary(&tfo),
        "converter_without_fastopen": ttfb_summary(&no_tfo),
        "direct_after": ttfb_summary(&direct_after),
        "rtt_ms": { "before": rtt_before, "after": rtt_after },
        "loadavg_1min": { "before": load_before, "after": loadavg() },
        "fastopen_during_measured_connections": {
            "with_fastopen": { "connections_measured": tfo.len(), "connections_opened": 2 * (half + 1), "rc_TCPFastOpenActive": counted[0].0, "rs_TCPFastOpenPassive": counted[0].1 },
            "without_fastopen": { "connections_measured": no_tfo.len(), "connections_opened": 2 * (half + 1), "rc_TCPFastOpenActive": counted[1].0, "rs_TCPFastOpenPassive": counted[1].1 },
        },
        "fastopen_counters": { "rc_before": tfo_before.0, "rc_after": tfo_after.0, "rs_before": tfo_before.1, "rs_after": tfo_after.1 },
    })
}

/// Medians' differences and ratios: what the converter adds to direct,
/// with Fast Open and without, and what Fast Open saves, in ms and in round
/// trips rc → converter (the one it should save).
fn differences(t: &Value) -> Value {
    let m = |k: &str| t[k]["median"].as_f64().unwrap_or(0.0);
    let r2 = |v: f64| (v * 100.0).round() / 100.0;
    let direct = m("direct_before");
    let (with, without) = (
        m("converter_with_fastopen"),
        m("converter_without_fastopen"),
    );
    let rtt = t["rtt_ms"]["before"]["rc_to_converter"]
        .as_f64()
        .unwrap_or(0.0)
        .max(1e-9);
    json!({
        "with_fastopen_minus_direct": r2(with - direct),
        "without_fastopen_minus_direct": r2(without - direct),
        "without_minus_with_fastopen": r2(without - with),
        "without_minus_with_in_rtts_rc_to_converter": r2((without - with) / rtt),
        "with_fastopen_over_direct": r2(with / direct.max(1e-9)),
        "without_fastopen_over_direct": r2(without / direct.max(1e-9)),
    })
}

/// The uploads of every case (DCol off first), starting the waypoint and
/// the converter after it.
fn upload_rows(cl: &mut ConvLab, secs: u32, n: usize) -> Vec<(String, Vec<f64>)> {
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    rows.push((
        "plain TCP (DCol off)".into(),
        uploads(cl, IPERF_PORT, secs, n),
    ));
    cl.lab.start_waypoint();
    cl.start_converter("");
    for (label, port, detours) in [
        ("MPTCP server, DCol, 1 detour", MPTCP_PORT, 1u8),
        ("plain server via converter, 0 detours", IPERF_PORT, 0),
        ("plain server via converter, 1 detour", IPERF_PORT, 1),
        ("plain server via converter, 2 detours", IPERF_PORT, 2),
    ] {
        client(cl, detours, "");
        rows.push((label.into(), uploads(cl, port, secs, n)));
        eprintln!("{label}: {:?}", rows.last().map(|r| &r.1));
    }
    rows
}

/// Runs the lab.
pub fn main(args: &mut lexopt::Parser) -> ExitCode {
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dcol-lab converter: {e}");
            return ExitCode::from(2);
        }
    };
    if !need_root() {
        return ExitCode::from(2);
    }
    crate::ensure_dcol_bin();
    crate::install_cleanup();
    let _ = std::fs::create_dir_all(&a.out);
    let (secs, n, m) = if a.quick { (6, 1, 40) } else { (10, 3, 100) };
    let started = Instant::now();
    let mut cl = ConvLab::new(LinkProfile::core_limited());
    let _plain = iperf3_server(cl.lab.topo.ns(Node::Server), IPERF_PORT, false);
    let _mptcp = iperf3_server(cl.lab.topo.ns(Node::Server), MPTCP_PORT, true);
    cl.start_http_server("x", "x");
    std::thread::sleep(Duration::from_millis(500));
    let rows = upload_rows(&mut cl, secs, n);
    let status = cl.lab.cl().status();
    let ttfb_conv = ttfb_converter(&mut cl, m);
    let cv_status = cl.cv().status();
    let base = median(&rows[0].1).max(1e-9);
    let results = json!({
        "command": format!("dcol-lab converter{} --out {}", if a.quick { " --quick" } else { "" }, a.out.display()),
        "topology": "paper Figure 3, core links 10 Mbit/s, access 20 Mbit/s; uploads with no added delay; time to first byte with 10 ms one way on link 2 (rc-rs) and link 3 (rs-server) (user-space TUN relays on each link's receiving end, IPv4, also for the routers' own sockets), none on link 1 (LAN) or links 4-6; converter on rs (10.0.3.1:7447), NAT waypoint on rw's side; uploads from an unmodified LAN host behind rc (LAN proxy, convert 'auto', detour_policy 'all'), CUBIC",
        "seconds_per_upload": secs,
        "uploads_mbps": rows.iter().map(|(l, v)| json!({"case": l, "trials": v, "median": median(v), "ratio_vs_plain_tcp": median(v) / base})).collect::<Vec<_>>(),
        "ttfb_ms": {
            "connections": m,
            "link_delay_one_way_ms": TTFB_LINK_DELAY.as_secs_f64() * 1000.0,
            "direct_plain_tcp_dcol_off": ttfb_conv["direct_before"].clone(),
            "direct_plain_tcp_dcol_off_after": ttfb_conv["direct_after"].clone(),
            "converter_with_fastopen": ttfb_conv["converter_with_fastopen"].clone(),
            "converter_without_fastopen": ttfb_conv["converter_without_fastopen"].clone(),
            "differences_ms": differences(&ttfb_conv),
            "rtt_ms": ttfb_conv["rtt_ms"].clone(),
            "loadavg_1min": ttfb_conv["loadavg_1min"].clone(),
            "fastopen_during_measured_connections": ttfb_conv["fastopen_during_measured_connections"].clone(),
            "fastopen_counters": ttfb_conv["fastopen_counters"].clone(),
        },
        "client_converters": status["client"]["lan_proxy"]["converters"].clone(),
        "converter": cv_status["waypoint"]["converter"].clone(),
        "wall_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    let _ = std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap_or_default(),
    );
    let series: Vec<Series> = rows
        .iter()
        .map(|(l, v)| Series {
            label: l
                .replace("plain server via converter", "via conv.")
                .replace(", DCol", ""),
            values: v.clone(),
            reference: None,
        })
        .collect();
    let svg = plot::box_plot_svg(
        "DCol: a plain TCP server through a converter member",
        "upload from an unmodified LAN host, Mbit/s (core 10 Mbit/s per path)",
        &series,
    );
    let _ = std::fs::write(a.out.join("converter.svg"), svg);
    for (l, v) in &rows {
        println!(
            "{l:<40} {:>6.2} Mbit/s  ({:.2}x plain TCP)",
            median(v),
            median(v) / base
        );
    }
    let t = |k: &str, q: &str| ttfb_conv[k][q].as_f64().unwrap_or(0.0);
    let r = |k: &str| ttfb_conv["rtt_ms"]["before"][k].as_f64().unwrap_or(0.0);
    let f = |k: &str| {
        let c = &ttfb_conv["fastopen_during_measured_connections"][k];
        format!(
            "{} / {} of {} connections ({} measured)",
            c["rc_TCPFastOpenActive"],
            c["rs_TCPFastOpenPassive"],
            c["connections_opened"],
            c["connections_measured"]
        )
    };
    println!(
        "time to first byte ({} ms one way on links 2 and 3), median (p90) ms: direct {:.2} ({:.2}), direct after {:.2} ({:.2}), converter with TFO {:.2} ({:.2}), without {:.2} ({:.2}); RTT ms rc-converter {:.2}, converter-server {:.2}, LAN host-server {:.2}\nFast Open during the measured connections (rc active / rs passive): with TFO {}, without {}\nResults: {}",
        TTFB_LINK_DELAY.as_millis(),
        t("direct_before", "median"),
        t("direct_before", "p90"),
        t("direct_after", "median"),
        t("direct_after", "p90"),
        t("converter_with_fastopen", "median"),
        t("converter_with_fastopen", "p90"),
        t("converter_without_fastopen", "median"),
        t("converter_without_fastopen", "p90"),
        r("rc_to_converter"),
        r("converter_to_server"),
        r("lan_host_to_server"),
        f("with_fastopen"),
        f("without_fastopen"),
        a.out.join("results.json").display()
    );
    ExitCode::SUCCESS
}
