//! Detour setup latency for `dcol-lab lan-load`: probe connections from the
//! LAN host to the MPTCP server, each timed by the client daemon itself
//! (its log line "detour of 0x... via alice established X ms after the
//! connection": from the connection's ESTABLISHED event to the detour
//! subflow's). The status is not polled meanwhile (building it for 1,000
//! connections is a loop turn of its own); a probe takes the first such
//! line logged after it connected, which during a steady load is its own
//! (every line of the window is also reported, `detour_setups_logged_ms`).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dcol_tests::dcol::Daemon;
use dcol_tests::lab::{enter_netns, Lab};
use dcol_tests::Node;
use serde_json::{json, Value};

use crate::load::stats;
use crate::loadgen::MPTCP_PORT;

/// The probes' connection numbers (beyond the load's).
const PROBE_ID: u32 = 0x00ff_0000;

/// `n` probes one after another with nothing else running.
pub fn idle_setups(lab: &Lab, d: &Daemon, server: Ipv4Addr, n: usize) -> Value {
    let log = d.log.clone();
    let ns = lab.ns(Node::Client);
    let v = std::thread::spawn(move || {
        enter(&ns);
        (0..n)
            .filter_map(|i| {
                let r = probe(&log, server, i as u32);
                std::thread::sleep(Duration::from_millis(300));
                r
            })
            .collect::<Vec<f64>>()
    })
    .join()
    .unwrap_or_default();
    eprintln!("  detour setup, idle: {}", stats(&v));
    with_values(&v)
}

/// `n` probes spread evenly between `steady` and `end`, on their own thread.
pub fn probes_under_load(
    lab: &Lab,
    d: &Daemon,
    server: Ipv4Addr,
    n: usize,
    steady: Instant,
    end: Instant,
) -> JoinHandle<Value> {
    let log = d.log.clone();
    let ns = lab.ns(Node::Client);
    std::thread::spawn(move || {
        enter(&ns);
        let span = end
            .saturating_duration_since(steady)
            .saturating_sub(Duration::from_secs(6));
        let mut v = Vec::new();
        for i in 0..n {
            let at = steady + span * i as u32 / n.max(1) as u32;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if Instant::now() + Duration::from_secs(5) > end {
                break;
            }
            v.extend(probe(&log, server, 1000 + i as u32));
        }
        eprintln!("  detour setup, under load: {}", stats(&v));
        with_values(&v)
    })
}

fn with_values(v: &[f64]) -> Value {
    let mut s = stats(v);
    s["values"] = json!(v);
    s
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    enter_netns(&f);
}

/// One probe: connects, echoes 1 KB, waits (5 s at most) for the daemon to
/// log a detour established after the connect; the setup time it logged.
fn probe(log: &std::path::Path, server: Ipv4Addr, n: u32) -> Option<f64> {
    let from = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let to = SocketAddr::new(IpAddr::V4(server), MPTCP_PORT);
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut msg = vec![0x11u8; 8 + 1024];
    msg[0] = b'E';
    msg[4..8].copy_from_slice(&(PROBE_ID + n).to_be_bytes());
    s.write_all(&msg).ok()?;
    // The server echoes what follows the header.
    let mut back = vec![0u8; 1024];
    if let Err(e) = s.read_exact(&mut back) {
        eprintln!("  probe {n}: no echo: {e}");
        return None;
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let text = std::fs::read(log).unwrap_or_default();
        let new = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
        if let Some(ms) = setups_in_log(&new).first() {
            return Some(*ms);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("  probe {n}: no detour logged within 5 s");
    None
}

/// Every detour setup time (ms) the client daemon logged in `text`.
pub fn setups_in_log(text: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.contains("detour of ") && l.contains(" established "))
        .filter_map(|l| {
            let rest = l.split(" established ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_setup_times_from_the_log() {
        let log = "x INFO detour of 0x0012abcd via alice established 3.25 ms after the connection\nother line\nx INFO detour of 0x1 via bob established 10.00 ms after the connection\n";
        assert_eq!(setups_in_log(log), vec![3.25, 10.0]);
    }
}
