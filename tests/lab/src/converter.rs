//! `dcol-lab converter`: servers that do not speak MPTCP, through converter
//! members (issue 17), in [`dcol_tests::convlab`]'s topology (the paper's
//! Figure 3, core links 10 Mbit/s, access 20; the converter 'carol' on the
//! server's router, the NAT waypoint 'alice' on the second core path):
//!
//! - uploads from an unmodified LAN host (plain `iperf3`, CUBIC): plain TCP
//!   (DCol off); an MPTCP server (`mptcpize`) with DCol's LAN proxy and a
//!   detour; a plain server through the converter with 0, 1 and 2 detours
//!   (`max_detours`; the topology has one waypoint, so a second detour can
//!   only be the same waypoint again);
//! - time to first byte of an HTTP/1.0 request to a plain server, median of
//!   many connections: direct (DCol off), through the converter with TCP
//!   Fast Open (the Convert message in the SYN) and without it.
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

use crate::plot::{self, Series};

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

fn median(v: &[f64]) -> f64 {
    (plot::median(v).unwrap_or(0.0) * 100.0).round() / 100.0
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

/// Time to first byte through the converter with Fast Open and without,
/// and the Fast Open counters of both routers around the first.
fn ttfb_converter(cl: &mut ConvLab, m: usize) -> Value {
    // Time to first byte through the converter, with and without Fast Open.
    client(cl, 0, "");
    let tfo_before = (tfo_counters(cl, Node::Rc), tfo_counters(cl, Node::Rs));
    let ttfb_tfo = ttfb(cl, m);
    let tfo_after = (tfo_counters(cl, Node::Rc), tfo_counters(cl, Node::Rs));
    client(cl, 0, "\toption convert_fastopen '0'\n");
    let ttfb_no_tfo = ttfb(cl, m);
    json!({
        "converter_with_fastopen": { "median": median(&ttfb_tfo), "all": ttfb_tfo },
        "converter_without_fastopen": { "median": median(&ttfb_no_tfo), "all": ttfb_no_tfo },
        "fastopen_counters": { "rc_before": tfo_before.0, "rc_after": tfo_after.0, "rs_before": tfo_before.1, "rs_after": tfo_after.1 },
    })
}

/// The uploads of every case (DCol off first, with the direct time to
/// first byte), starting the waypoint and the converter after it.
fn upload_rows(
    cl: &mut ConvLab,
    secs: u32,
    n: usize,
    m: usize,
) -> (Vec<(String, Vec<f64>)>, Vec<f64>) {
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    rows.push((
        "plain TCP (DCol off)".into(),
        uploads(cl, IPERF_PORT, secs, n),
    ));
    let ttfb_direct = ttfb(cl, m);
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
    (rows, ttfb_direct)
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
    let (secs, n, m) = if a.quick { (6, 1, 10) } else { (10, 3, 40) };
    let started = Instant::now();
    let mut cl = ConvLab::new(LinkProfile::core_limited());
    let _plain = iperf3_server(cl.lab.topo.ns(Node::Server), IPERF_PORT, false);
    let _mptcp = iperf3_server(cl.lab.topo.ns(Node::Server), MPTCP_PORT, true);
    cl.start_http_server("x", "x");
    std::thread::sleep(Duration::from_millis(500));
    let (rows, ttfb_direct) = upload_rows(&mut cl, secs, n, m);
    let status = cl.lab.cl().status();
    let ttfb_conv = ttfb_converter(&mut cl, m);
    let cv_status = cl.cv().status();
    let base = median(&rows[0].1).max(1e-9);
    let results = json!({
        "command": format!("dcol-lab converter{} --out {}", if a.quick { " --quick" } else { "" }, a.out.display()),
        "topology": "paper Figure 3, core links 10 Mbit/s, access 20 Mbit/s, no added delay; converter on rs (10.0.3.1:7447), NAT waypoint on rw's side; uploads from an unmodified LAN host behind rc (LAN proxy, convert 'auto', detour_policy 'all'), CUBIC",
        "seconds_per_upload": secs,
        "uploads_mbps": rows.iter().map(|(l, v)| json!({"case": l, "trials": v, "median": median(v), "ratio_vs_plain_tcp": median(v) / base})).collect::<Vec<_>>(),
        "ttfb_ms": {
            "connections": m,
            "direct_plain_tcp_dcol_off": { "median": median(&ttfb_direct), "all": ttfb_direct },
            "converter_with_fastopen": ttfb_conv["converter_with_fastopen"].clone(),
            "converter_without_fastopen": ttfb_conv["converter_without_fastopen"].clone(),
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
    println!(
        "time to first byte: direct {:.2} ms, converter with TFO {:.2} ms, without {:.2} ms\nResults: {}",
        median(&ttfb_direct),
        ttfb_conv["converter_with_fastopen"]["median"].as_f64().unwrap_or(0.0),
        ttfb_conv["converter_without_fastopen"]["median"].as_f64().unwrap_or(0.0),
        a.out.join("results.json").display()
    );
    ExitCode::SUCCESS
}
