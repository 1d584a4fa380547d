//! The traffic of `dcol-lab lan-load`: servers and clients of thousands of
//! TCP connections, each side on one thread with a current-thread tokio
//! runtime inside its network namespace.
//!
//! Every connection starts with an 8-byte header: its kind (`B` bulk upload,
//! `E` echo, `S` short) and its number. The server counts each bulk
//! connection's bytes in a shared slot (so the lab sees a stalled upload
//! where it happens: at the receiver), echoes `E` connections, and answers
//! a short connection's 16 bytes and closes first (so TIME_WAIT stays on the
//! server side, not on the client's ports).
//!
//! Ports: [`MPTCP_PORT`] listens with `IPPROTO_MPTCP` (an unmodified MPTCP
//! server: the LAN proxy's upstream gets detours there), [`TCP_PORT`] with
//! plain TCP.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dcol_tests::lab::enter_netns;
use dcol_tests::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The MPTCP server's port.
pub const MPTCP_PORT: u16 = 6001;
/// The plain TCP server's port.
pub const TCP_PORT: u16 = 6002;
/// How long an echo may take before the connection counts as stalled.
pub const STALL: Duration = Duration::from_secs(10);
/// How long a connection may take to connect, or a stalled echo to
/// arrive after all, before the connection counts as lost.
const GIVE_UP: Duration = Duration::from_secs(30);
const IPPROTO_MPTCP: i32 = 262;

/// What a connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Uploads as fast as it can.
    Bulk,
    /// Mostly idle: 32 bytes echoed every 2-5 s.
    Echo,
    /// Connect, 16 bytes echoed, closed by the server.
    Short,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Bulk => b'B',
            Kind::Echo => b'E',
            Kind::Short => b'S',
        }
    }
}

fn header(kind: Kind, id: usize) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = kind.byte();
    h[4..].copy_from_slice(&(id as u32).to_be_bytes());
    h
}

/// A thread in `ns` running `f` on a current-thread runtime.
fn in_runtime<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> JoinHandle<T> {
    let path = PathBuf::from("/var/run/netns").join(ns.name());
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        enter_netns(&file);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(f())
    })
}

/// The servers, counting bulk bytes per connection number.
pub struct Servers {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Bytes received per connection number.
    pub rx: Arc<Vec<AtomicU64>>,
}

impl Servers {
    /// Listens on both ports in `ns` (all IPv4 addresses); `slots`
    /// connection numbers are counted.
    pub fn start(ns: &Netns, slots: usize) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let rx: Arc<Vec<AtomicU64>> = Arc::new((0..slots).map(|_| AtomicU64::new(0)).collect());
        let (st, r) = (stop.clone(), rx.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = in_runtime(ns, move || {
            Box::pin(async move {
                for (port, mptcp) in [(MPTCP_PORT, true), (TCP_PORT, false)] {
                    let l = listener(port, mptcp).expect("server listens");
                    tokio::spawn(accept_loop(l, r.clone()));
                }
                let _ = ready_tx.send(());
                while !st.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        });
        ready_rx.recv().expect("servers started");
        Servers {
            stop,
            thread: Some(thread),
            rx,
        }
    }

    /// Bytes received on connection `id` so far.
    pub fn received(&self, id: usize) -> u64 {
        self.rx.get(id).map_or(0, |a| a.load(Ordering::Relaxed))
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listener(port: u16, mptcp: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let proto = mptcp.then(|| Protocol::from(IPPROTO_MPTCP));
    let s = Socket::new(Domain::IPV4, Type::STREAM, proto)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    TcpListener::from_std(s.into())
}

async fn accept_loop(l: TcpListener, rx: Arc<Vec<AtomicU64>>) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                tokio::spawn(serve(s, rx.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve(mut s: TcpStream, rx: Arc<Vec<AtomicU64>>) -> io::Result<()> {
    let mut h = [0u8; 8];
    s.read_exact(&mut h).await?;
    let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let mut buf = vec![0u8; 16 * 1024];
    match h[0] {
        b'B' => loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            if let Some(c) = rx.get(id) {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
        },
        b'S' => {
            s.read_exact(&mut buf[..16]).await?;
            s.write_all(&buf[..16]).await?;
            Ok(())
        }
        _ => loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n]).await?;
        },
    }
}

/// One connection of the load.
#[derive(Debug, Clone, Copy)]
pub struct ConnSpec {
    /// Its number (the server's byte slot).
    pub id: usize,
    /// Where it goes.
    pub to: SocketAddr,
    /// What it does.
    pub kind: Kind,
}

/// What the connections of a load saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Connections that connected.
    pub connected: usize,
    /// Connections that did not connect within 30 s or were refused.
    pub connect_failed: usize,
    /// Connections that ended (error, reset, EOF) before the load did.
    pub lost: usize,
    /// Echo connections with an echo later than [`STALL`].
    pub stalled: usize,
    /// Round trips of the echoes, in ms.
    pub echo_ms: Vec<f64>,
    /// The first error of each kind seen, for the log.
    pub errors: Vec<String>,
}

/// Opens `conns` evenly over `ramp`, keeps them busy until `end`, closes
/// them; runs in `ns` on its own thread.
pub fn run_load(
    ns: &Netns,
    conns: Vec<ConnSpec>,
    ramp: Duration,
    end: Instant,
) -> JoinHandle<LoadReport> {
    in_runtime(ns, move || {
        Box::pin(async move {
            let n = conns.len().max(1) as u32;
            let mut tasks = Vec::new();
            for (i, c) in conns.into_iter().enumerate() {
                let start = tokio::time::Instant::now() + ramp * i as u32 / n;
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep_until(start).await;
                    one_conn(c, end).await
                }));
            }
            let mut r = LoadReport::default();
            for t in tasks {
                let o = t.await.unwrap_or(Outcome::Lost("task panicked".into()));
                r.add(o);
            }
            r
        })
    })
}

/// How one connection of the load ended.
enum Outcome {
    ConnectFailed(String),
    Lost(String),
    Done { stalled: bool, echo_ms: Vec<f64> },
}

impl LoadReport {
    fn add(&mut self, o: Outcome) {
        let mut note = |e: String| {
            if self.errors.len() < 10 {
                self.errors.push(e);
            }
        };
        match o {
            Outcome::ConnectFailed(e) => {
                note(format!("connect: {e}"));
                self.connect_failed += 1;
            }
            Outcome::Lost(e) => {
                note(format!("lost: {e}"));
                self.connected += 1;
                self.lost += 1;
            }
            Outcome::Done { stalled, echo_ms } => {
                self.connected += 1;
                self.stalled += usize::from(stalled);
                self.echo_ms.extend(echo_ms);
            }
        }
    }
}

async fn one_conn(c: ConnSpec, end: Instant) -> Outcome {
    let mut s = match tokio::time::timeout(GIVE_UP, TcpStream::connect(c.to)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Outcome::ConnectFailed(e.to_string()),
        Err(_) => return Outcome::ConnectFailed("timed out".into()),
    };
    if let Err(e) = s.write_all(&header(c.kind, c.id)).await {
        return Outcome::Lost(e.to_string());
    }
    let end = tokio::time::Instant::from_std(end);
    let r = match c.kind {
        Kind::Bulk => bulk(&mut s, end).await,
        _ => echo(&mut s, c.id, end).await,
    };
    match r {
        Ok((stalled, echo_ms)) => Outcome::Done { stalled, echo_ms },
        Err(e) => Outcome::Lost(e.to_string()),
    }
}

/// Writes until `end`; a write blocked for 30 s is an error.
async fn bulk(s: &mut TcpStream, end: tokio::time::Instant) -> io::Result<(bool, Vec<f64>)> {
    let chunk = vec![0x5au8; 16 * 1024];
    while tokio::time::Instant::now() < end {
        match tokio::time::timeout_at(end, s.write_all(&chunk)).await {
            Ok(r) => r?,
            Err(_) => break,
        }
    }
    Ok((false, Vec::new()))
}

/// 32 bytes echoed every 2-5 s until `end`.
async fn echo(
    s: &mut TcpStream,
    id: usize,
    end: tokio::time::Instant,
) -> io::Result<(bool, Vec<f64>)> {
    let mut rng = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rtts = Vec::new();
    let mut stalled = false;
    let msg = [0xa5u8; 32];
    let mut back = [0u8; 32];
    loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait = Duration::from_millis(2000 + rng % 3000);
        if tokio::time::Instant::now() + wait >= end {
            return Ok((stalled, rtts));
        }
        tokio::time::sleep(wait).await;
        let t = Instant::now();
        s.write_all(&msg).await?;
        match tokio::time::timeout(STALL, s.read_exact(&mut back)).await {
            Ok(r) => {
                r?;
            }
            Err(_) => {
                stalled = true;
                match tokio::time::timeout(GIVE_UP, s.read_exact(&mut back)).await {
                    Ok(r) => {
                        r?;
                    }
                    Err(_) => return Err(io::Error::other("echo lost")),
                }
            }
        }
        rtts.push(t.elapsed().as_secs_f64() * 1e3);
    }
}

/// What a run of short connections saw.
#[derive(Debug, Default, Clone)]
pub struct ShortReport {
    /// Connections that completed (connect, echo, server's close).
    pub done: usize,
    /// Connections that failed.
    pub failed: usize,
    /// From the first connect to the last close.
    pub elapsed: Duration,
    /// Time per connection, in ms.
    pub ms: Vec<f64>,
    /// The first few errors.
    pub errors: Vec<String>,
}

/// `n` short connections to `to` with at most `window` at once, from `ns`.
pub fn run_short(ns: &Netns, to: SocketAddr, n: usize, window: usize) -> ShortReport {
    in_runtime(ns, move || {
        Box::pin(async move {
            let next = Arc::new(AtomicUsize::new(0));
            let t0 = Instant::now();
            let workers: Vec<_> = (0..window)
                .map(|_| tokio::spawn(short_worker(to, n, next.clone())))
                .collect();
            let mut r = ShortReport::default();
            for w in workers {
                if let Ok((ms, errs)) = w.await {
                    r.done += ms.len();
                    r.ms.extend(ms);
                    r.failed += errs.len();
                    r.errors.extend(errs.into_iter().take(3));
                }
            }
            r.errors.truncate(10);
            r.elapsed = t0.elapsed();
            r
        })
    })
    .join()
    .expect("short connections thread")
}

async fn short_worker(to: SocketAddr, n: usize, next: Arc<AtomicUsize>) -> (Vec<f64>, Vec<String>) {
    let (mut ms, mut errs) = (Vec::new(), Vec::new());
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            return (ms, errs);
        }
        let t = Instant::now();
        match tokio::time::timeout(GIVE_UP, short_one(to, i)).await {
            Ok(Ok(())) => ms.push(t.elapsed().as_secs_f64() * 1e3),
            Ok(Err(e)) => errs.push(e.to_string()),
            Err(_) => errs.push("timed out".into()),
        }
    }
}

async fn short_one(to: SocketAddr, i: usize) -> io::Result<()> {
    let mut s = TcpStream::connect(to).await?;
    let mut msg = [0u8; 24];
    msg[..8].copy_from_slice(&header(Kind::Short, i));
    s.write_all(&msg).await?;
    let mut back = [0u8; 16];
    s.read_exact(&mut back).await?;
    let mut rest = [0u8; 16];
    if s.read(&mut rest).await? != 0 {
        return Err(io::Error::other("more than the echo"));
    }
    Ok(())
}

/// The `p`-quantile (0-1) of `v`, or `None` when empty.
pub fn quantile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(s[((s.len() - 1) as f64 * p).round() as usize])
}
