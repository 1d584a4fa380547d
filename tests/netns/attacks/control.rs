//! See the crate docs (main.rs) for what this part covers.
//!
//! A local process holds the client router's control socket: seven
//! connections that never send (one of them asks and never reads),
//! replaced as soon as the daemon cuts one off. `dcol status` from an eighth
//! client still answers at once and a detour comes up while they stay; a
//! burst beyond the cap (8) is told "busy", logged, and the socket serves
//! again once it is gone.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcol_tests::dcol::dcol_bin;
use dcol_tests::lab::{detours_in, need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_background, iperf3_server, JoinCounter, LinkProfile, Node};

/// Keeps `n` stuck connections to `socket` open until dropped; the first
/// asks for the status and never reads, the others never send. One the
/// daemon closes is replaced at once. Counts the replacements.
struct Holder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Holder {
    fn start(socket: PathBuf, n: usize) -> Holder {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let open = |i: usize| {
                let mut c = UnixStream::connect(&socket).expect("connect the control socket");
                if i == 0 {
                    c.write_all(b"status\n").unwrap();
                }
                c.set_nonblocking(true).unwrap();
                c
            };
            let mut conns: Vec<UnixStream> = (0..n).map(open).collect();
            let mut replaced = 0;
            while !s.load(Ordering::SeqCst) {
                for (i, c) in conns.iter_mut().enumerate() {
                    let mut b = [0u8; 1];
                    // The silent ones see EOF when cut off (the daemon
                    // sends them nothing); the one that asked is never read.
                    if i > 0 && matches!(c.read(&mut b), Ok(0)) {
                        *c = open(i);
                        replaced += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            replaced
        });
        Holder {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `dcol status --json` against `socket`: the outcome and how long it took.
fn timed_status(socket: &Path) -> (Result<serde_json::Value, String>, Duration) {
    let t0 = Instant::now();
    let out = Command::new(dcol_bin())
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .expect("run dcol status");
    let took = t0.elapsed();
    if out.status.success() {
        (
            Ok(serde_json::from_slice(&out.stdout).expect("status JSON")),
            took,
        )
    } else {
        (Err(String::from_utf8_lossy(&out.stderr).into_owned()), took)
    }
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn stuck_control_clients_do_not_hold_the_daemon() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let waypoint: IpAddr = lab.topo.addr4(Node::Waypoint).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    let counter = JoinCounter::install(lab.topo.ns(Node::Server), IPERF_PORT, &[waypoint]);
    lab.start_waypoint();
    lab.start_client();
    let socket = lab.cl().socket.clone();

    let holder = Holder::start(socket.clone(), 7);
    std::thread::sleep(Duration::from_millis(300));
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let (st, took) = timed_status(&socket);
        st.unwrap_or_else(|e| panic!("dcol status with 7 stuck clients: {e}"));
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("dcol status with 7 stuck control clients: slowest of 5 took {slowest:?}");
    assert!(
        slowest < Duration::from_millis(700),
        "dcol status took {slowest:?} with stuck control clients"
    );

    // A detour comes up while they stay (the daemon cuts them off after
    // 2 s; the holder reconnects them at once).
    let bg = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 5);
    let t0 = Instant::now();
    let st = lab
        .cl()
        .wait_status(Duration::from_secs(4), |s| {
            detours_in(s, "established") >= 1
        })
        .unwrap_or_else(|s| panic!("no detour with stuck control clients: {s}"));
    eprintln!(
        "detour established {:?} after the transfer started: {}",
        t0.elapsed(),
        st["client"]["connections"][0]["subflows"]
    );
    assert!(bg.join().expect("iperf3 thread"), "the transfer failed");
    let via = counter.bytes_from(waypoint);
    assert!(via > 1_000_000, "only {via} bytes through the waypoint");
    let replaced = holder.stop();
    eprintln!("{via} bytes through the waypoint; {replaced} stuck clients cut off and replaced");
    assert!(
        replaced >= 6,
        "the daemon did not cut the silent clients off: {replaced}"
    );

    // A burst beyond the cap is told it is busy, and the socket serves again
    // once the burst is gone. The probe connects last: the acceptor takes
    // connections in order and decides busy or served when it accepts, so
    // the answer does not depend on how fast this machine reads it. (The
    // holder's handlers saw EOF when it stopped; give them time to end.)
    std::thread::sleep(Duration::from_millis(300));
    let burst: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    // It sends nothing: a busy daemon answers and closes without reading.
    let mut probe = UnixStream::connect(&socket).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = probe.read_to_string(&mut answer);
    assert!(
        answer.contains("busy: 8 control clients connected"),
        "answered beyond the cap: {answer}"
    );
    let mut busy = 0;
    for mut c in burst {
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut text = String::new();
        if c.read_to_string(&mut text).is_ok() && text.contains("busy") {
            busy += 1;
        }
    }
    assert_eq!(busy, 12, "8 of the 20 are served, the rest told busy");
    let (st, _) = timed_status(&socket);
    st.unwrap_or_else(|e| panic!("not served after the burst: {e}"));
    let log = lab.cl().log_text();
    assert!(
        log.contains("control socket: 8 clients connected (at most 8); refusing more"),
        "{log}"
    );
}
