//! Follows the kernel's routing state and hands snapshots ([`Routes`]) to the
//! daemon's poll loop.
//!
//! One worker thread runs a current-thread tokio runtime with an
//! [`rtnetlink`] connection subscribed to link, address (IPv4, IPv6) and
//! route (IPv4, IPv6) changes. At start and after every burst of changes
//! (collected for [`SETTLE`]) it dumps links, addresses and routes and sends
//! the new snapshot over a channel, then writes a byte to a socket pair whose
//! other end sits in the daemon's `poll(2)` set ([`RouteWatch::fd`]). The
//! daemon takes the newest snapshot with [`RouteWatch::latest`]; all
//! decisions stay in its single thread.
//!
//! The thread inherits the network namespace of the thread that calls
//! [`RouteWatch::start`]. Dropping the [`RouteWatch`] stops the thread (within
//! [`STOP_POLL`]). Nothing is left in the kernel: the worker only reads.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};

use super::SysError;
use crate::routes::{Route, RouteKind, Routes};
use crate::types::Cidr;

/// How long a burst of changes is collected before the tables are dumped again.
pub const SETTLE: Duration = Duration::from_millis(100);
/// How often the worker checks whether it should stop.
pub const STOP_POLL: Duration = Duration::from_millis(250);
/// How long [`RouteWatch::start`] waits for the first snapshot.
const FIRST_WAIT: Duration = Duration::from_secs(5);

/// The running worker (see the module docs).
#[derive(Debug)]
pub struct RouteWatch {
    wake: UnixStream,
    rx: mpsc::Receiver<Result<Routes, SysError>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RouteWatch {
    /// Starts the worker and returns it with the first snapshot.
    pub fn start() -> Result<(RouteWatch, Routes), SysError> {
        let op = "route watch";
        let (wake, wake_tx) = UnixStream::pair().map_err(|e| SysError::io(op, e))?;
        wake.set_nonblocking(true)
            .map_err(|e| SysError::io(op, e))?;
        wake_tx
            .set_nonblocking(true)
            .map_err(|e| SysError::io(op, e))?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("dcol-routes".into())
            .spawn(move || worker(tx, wake_tx, stop2))
            .map_err(|e| SysError::io(op, e))?;
        let mut w = RouteWatch {
            wake,
            rx,
            stop,
            thread: Some(thread),
        };
        let first = match w.rx.recv_timeout(FIRST_WAIT) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(SysError::Silent {
                    op: "route watch: the first routing table",
                    waited: FIRST_WAIT,
                })
            }
        };
        w.drain_wake();
        Ok((w, first))
    }

    /// The descriptor that turns readable when a new snapshot is waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The newest snapshot sent since the last call, if any. Dump errors
    /// are logged (the previous snapshot stays in force).
    pub fn latest(&mut self) -> Option<Routes> {
        self.drain_wake();
        let mut newest = None;
        while let Ok(r) = self.rx.try_recv() {
            match r {
                Ok(r) => newest = Some(r),
                Err(e) => log::warn!("routes: {e}; keeping the last routing table"),
            }
        }
        newest
    }

    fn drain_wake(&mut self) {
        let mut b = [0u8; 64];
        while matches!((&self.wake).read(&mut b), Ok(n) if n > 0) {}
    }
}

impl Drop for RouteWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn worker(tx: mpsc::Sender<Result<Routes, SysError>>, mut wake: UnixStream, stop: Arc<AtomicBool>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Err(SysError::io("route watch: tokio runtime", e)));
            return;
        }
    };
    rt.block_on(async move {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ];
        let (conn, handle, mut events) = match rtnetlink::new_multicast_connection(&groups) {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(SysError::io("route watch: rtnetlink socket", e)));
                return;
            }
        };
        tokio::spawn(conn);
        loop {
            let snap = dump(&handle).await;
            if tx.send(snap).is_err() {
                return;
            }
            let _ = wake.write(&[1]);
            // Wait for a change (or stop), then let the burst settle.
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match tokio::time::timeout(STOP_POLL, events.next()).await {
                    Ok(Some(_)) => break,
                    Ok(None) => {
                        let op = "route watch: rtnetlink";
                        let _ = tx.send(Err(SysError::Closed { op }));
                        return;
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(SETTLE).await;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, events.next()).await {}
        }
    });
}

/// Links, addresses and routes (both families) as one snapshot.
async fn dump(handle: &Handle) -> Result<Routes, SysError> {
    let mut names = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(l) = links
        .try_next()
        .await
        .map_err(|source| SysError::Rtnetlink {
            op: "route watch: dump links",
            source,
        })?
    {
        for a in &l.attributes {
            if let LinkAttribute::IfName(n) = a {
                names.push((l.header.index, n.clone()));
            }
        }
    }
    let mut own = Vec::new();
    let mut addrs = handle.address().get().execute();
    while let Some(a) = addrs
        .try_next()
        .await
        .map_err(|source| SysError::Rtnetlink {
            op: "route watch: dump addresses",
            source,
        })?
    {
        // IFA_LOCAL is the router's own address (IFA_ADDRESS is the peer's
        // on point-to-point links); IPv6 has only IFA_ADDRESS.
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        own.extend(local.or(addr));
    }
    let mut routes = Vec::new();
    for v4 in [true, false] {
        let msg = if v4 {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        };
        let mut rs = handle.route().get(msg).execute();
        while let Some(r) = rs.try_next().await.map_err(|source| SysError::Rtnetlink {
            op: "route watch: dump routes",
            source,
        })? {
            routes.extend(route_of(&r, v4));
        }
    }
    Ok(Routes::new(routes, own, names))
}

/// Our view of one route message (`None` for what we do not model).
fn route_of(r: &RouteMessage, v4: bool) -> Option<Route> {
    let kind = match r.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local | RouteType::Broadcast | RouteType::Anycast | RouteType::Multicast => {
            RouteKind::Local
        }
        RouteType::BlackHole | RouteType::Unreachable | RouteType::Prohibit | RouteType::Throw => {
            RouteKind::Unroutable
        }
        _ => return None,
    };
    let mut table = u32::from(r.header.table);
    let mut dst: IpAddr = if v4 {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let mut oifs = Vec::new();
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = (*a).into(),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = (*a).into(),
            RouteAttribute::Oif(i) => oifs.push(*i),
            RouteAttribute::MultiPath(hops) => oifs.extend(hops.iter().map(|h| h.interface_index)),
            _ => {}
        }
    }
    let prefix = r.header.destination_prefix_length;
    Some(Route {
        dst: Cidr::new(dst, prefix)?,
        table,
        kind,
        oifs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Verdict;
    use crate::sys::netlink::testns::{is_root, sh, NsThread};
    use std::time::Instant;

    /// Waits (in the namespace thread) for a snapshot that satisfies `f`.
    fn wait_for(w: &mut RouteWatch, what: &str, f: impl Fn(&Routes) -> bool) -> Routes {
        let t0 = Instant::now();
        loop {
            let fds = [w.fd()];
            let _ = super::super::os::poll_readable(&fds, Some(Duration::from_millis(200)));
            if let Some(r) = w.latest() {
                if f(&r) {
                    return r;
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no snapshot: {what}");
        }
    }

    #[test]
    #[cfg_attr(
        not(dcol_root),
        ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
    )]
    fn root_follows_address_and_route_changes() {
        if !is_root() {
            eprintln!("SKIP: needs root (a network namespace)");
            return;
        }
        let ns = NsThread::new();
        ns.run(|| {
            sh("ip link add wanq type veth peer name wanqp && ip link set wanqp up && ip link set wanq up");
            sh("ip addr add 203.0.113.2/24 dev wanq && ip route add default via 203.0.113.1");
            sh("ip link add lanq type veth peer name lanqp && ip link set lanqp up && ip link set lanq up");
            sh("ip addr add 198.51.100.1/28 dev lanq");
            let (mut w, r) = RouteWatch::start().expect("route watch");
            assert_eq!(r.wan(), ["wanq"]);
            let lan_host: IpAddr = "198.51.100.5".parse().unwrap();
            assert_eq!(r.verdict(lan_host), Verdict::NotWan("lanq".into()));
            assert_eq!(r.verdict("8.8.8.8".parse().unwrap()), Verdict::Wan);
            // A new address on the LAN: the router's own at once.
            sh("ip addr add 192.0.2.77/32 dev lanq");
            let r = wait_for(&mut w, "new address", |r| {
                r.verdict("192.0.2.77".parse().unwrap()) == Verdict::Local
            });
            assert_eq!(r.wan(), ["wanq"]);
            // An IPv6 prefix on the LAN and an IPv6 default on the WAN.
            sh("ip -6 addr add 2001:db8:9::1/64 dev lanq nodad");
            sh("ip -6 addr add 2001:db8:1::2/64 dev wanq nodad && ip -6 route add default via 2001:db8:1::1");
            let r = wait_for(&mut w, "IPv6 prefix", |r| {
                r.verdict("2001:db8:9::5".parse().unwrap()) == Verdict::NotWan("lanq".into())
                    && r.verdict("2a00::1".parse().unwrap()) == Verdict::Wan
            });
            assert_eq!(r.verdict("2001:db8:9::1".parse().unwrap()), Verdict::Local);
            // The default route goes away: nothing is the WAN.
            sh("ip route del default && ip -6 route del default");
            let r = wait_for(&mut w, "no default", |r| r.wan().is_empty());
            assert_eq!(r.verdict("8.8.8.8".parse().unwrap()), Verdict::NoRoute);
            let t0 = Instant::now();
            drop(w);
            assert!(t0.elapsed() < STOP_POLL * 4, "stopped in {:?}", t0.elapsed());
        });
    }
}
