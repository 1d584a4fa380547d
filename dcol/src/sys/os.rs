//! Small POSIX wrappers the daemon loop needs: `poll(2)`, a `signalfd(2)` for
//! SIGTERM/SIGINT/SIGHUP, the host's own addresses (`getifaddrs(3)`) and UDP
//! sockets (IPv6-only binds, `IP_PKTINFO` sends, `recvmmsg(2)` batches, a
//! forced receive buffer, a classic BPF source filter). All through nix (the
//! filter options, which nix lacks, through [`super::raw`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    self as nsock, sockopt, AddressFamily, ControlMessage, MsgFlags, MultiHeaders, SockFlag,
    SockType, SockaddrIn, SockaddrIn6, SockaddrStorage,
};

use super::raw;

pub use nix::sys::signal::Signal;

/// Waits until one of `fds` is readable or `timeout` passes (`None`: forever).
/// Returns, per fd, whether it is readable (or in error/hang-up, which a read
/// will report). EINTR counts as a timeout.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let timeout = match timeout {
        None => PollTimeout::NONE,
        // Rounded up: waking before the deadline would only poll again.
        Some(t) => {
            PollTimeout::try_from(t.as_millis().saturating_add(1)).unwrap_or(PollTimeout::MAX)
        }
    };
    match poll(&mut pfds, timeout) {
        Ok(_) => {}
        Err(Errno::EINTR) => return Ok(vec![false; fds.len()]),
        Err(e) => return Err(e.into()),
    }
    // Any bit, even one nix does not know, makes the descriptor worth a read.
    Ok(pfds
        .iter()
        .map(|p| p.revents().is_none_or(|r| !r.is_empty()))
        .collect())
}

/// SIGTERM, SIGINT and SIGHUP delivered through a file descriptor.
#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks SIGTERM, SIGINT and SIGHUP for this thread (call before starting
    /// threads) and ignores SIGPIPE, then opens a non-blocking signalfd for them.
    pub fn new() -> io::Result<Self> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            set.add(s);
        }
        set.thread_block()?;
        // Cannot fail for SIG_IGN on SIGPIPE; the relay's sends say MSG_NOSIGNAL.
        let _ = raw::ignore_sigpipe();
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The next pending signal, if any.
    pub fn read(&self) -> Option<Signal> {
        let info = self.fd.read_signal().ok()??;
        Signal::try_from(i32::try_from(info.ssi_signo).ok()?).ok()
    }
}

/// Every address configured on this host's interfaces (in the current network
/// namespace).
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| {
            let a = ifa.address?;
            if let Some(sin) = a.as_sockaddr_in() {
                Some(IpAddr::V4(sin.ip()))
            } else {
                a.as_sockaddr_in6().map(|sin6| IpAddr::V6(sin6.ip()))
            }
        })
        .collect())
}

/// Binds a non-blocking UDP socket. IPv6 sockets are IPv6-only, so that
/// `0.0.0.0:P` and `[::]:P` can both be bound and each family keeps its own
/// addresses (no IPv4-mapped sources).
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = nsock::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if addr.is_ipv6() {
        nsock::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    nsock::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(UdpSocket::from(fd))
}

/// Sends `buf` to `to` from the local address `from` (`IP_PKTINFO` /
/// `IPV6_PKTINFO`), so that the peer sees the address we choose rather than
/// the one routing would pick. On a router with several interfaces the
/// waypoint must see the address the detour subflows will come from.
pub fn send_from(sock: &UdpSocket, buf: &[u8], to: SocketAddr, from: IpAddr) -> io::Result<usize> {
    let iov = [IoSlice::new(buf)];
    let fd = sock.as_raw_fd();
    let n = match (to, from) {
        (SocketAddr::V4(t), IpAddr::V4(f)) => {
            let pi = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(f).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            let cmsg = [ControlMessage::Ipv4PacketInfo(&pi)];
            nsock::sendmsg(
                fd,
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&SockaddrIn::from(t)),
            )?
        }
        (SocketAddr::V6(t), IpAddr::V6(f)) => {
            let pi = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: f.octets(),
                },
                ipi6_ifindex: 0,
            };
            let cmsg = [ControlMessage::Ipv6PacketInfo(&pi)];
            // As before: no flow label (the std conversion would keep t's).
            let t = std::net::SocketAddrV6::new(*t.ip(), t.port(), 0, t.scope_id());
            nsock::sendmsg(
                fd,
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&SockaddrIn6::from(t)),
            )?
        }
        _ => return sock.send_to(buf, to),
    };
    Ok(n)
}

/// Sets a socket's receive buffer to `bytes` (the kernel doubles it for
/// its bookkeeping): `SO_RCVBUFFORCE` as root, past `net.core.rmem_max`,
/// else `SO_RCVBUF` up to that limit. A waypoint's signaling socket gets a
/// large one, so that a flood it drops cheaply does not also push honest
/// datagrams out while the daemon is not scheduled.
pub fn set_recv_buffer(sock: &UdpSocket, bytes: usize) -> io::Result<()> {
    // nix casts to c_int: cap first.
    let v = bytes.min(i32::MAX as usize);
    nsock::setsockopt(sock, sockopt::RcvBufForce, &v)
        .or_else(|_| nsock::setsockopt(sock, sockopt::RcvBuf, &v))?;
    Ok(())
}

/// Room for one datagram of a [`RecvBatch`]: more than the signaling
/// protocol's limit, so an oversized datagram is seen as such.
pub const BATCH_DATAGRAM: usize = 2048;

/// Datagrams read with one `recvmmsg(2)`: a flood costs one system call
/// per batch, not per datagram. The buffers are reused across calls
/// (`Default`: no room, reads nothing; a placeholder).
#[derive(Default)]
pub struct RecvBatch {
    bufs: Vec<[u8; BATCH_DATAGRAM]>,
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl RecvBatch {
    /// Room for `n` datagrams per call (at least one).
    pub fn new(n: usize) -> RecvBatch {
        RecvBatch {
            bufs: vec![[0; BATCH_DATAGRAM]; n.max(1)],
            got: Vec::new(),
        }
    }

    /// Reads what is waiting on the non-blocking `sock`, up to the batch's
    /// size; returns how many arrived (0: none was waiting).
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        if self.bufs.is_empty() {
            return Ok(0);
        }
        // Allocated per call, as the iovecs (the headers point into them):
        // a batch stays Send.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(self.bufs.len(), None);
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
            self.bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
        let msgs = match nsock::recvmmsg(
            sock.as_raw_fd(),
            &mut headers,
            &mut iovs,
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(m) => m,
            Err(Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        for m in msgs {
            let from = m.address.as_ref().and_then(super::sock::from_storage);
            self.got.push((m.bytes.min(BATCH_DATAGRAM), from));
        }
        Ok(self.got.len())
    }

    /// Datagram `i` of the last [`RecvBatch::recv`] and its source (`None`
    /// for a family other than IPv4/IPv6).
    pub fn get(&self, i: usize) -> Option<(&[u8], Option<SocketAddr>)> {
        let (len, from) = *self.got.get(i)?;
        Some((&self.bufs[i][..len], from))
    }
}

/// One classic BPF instruction.
fn bpf(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// A socket filter (classic BPF) that drops datagrams whose IPv4 source is
/// in `v4` (`v6`: false) or whose IPv6 source is in one of the /64s in `v6`
/// (their first 8 bytes; `v6`: true), and passes the rest. At most 63
/// entries (the jumps are 8 bits).
fn source_filter(blocked: &[IpAddr], v6: bool) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SKF_NET_OFF};
    // Loads a word of the IP header (network order, as the kernel reads it).
    let ld = |off: i32| {
        bpf(
            BPF_LD | BPF_W | BPF_ABS,
            SKF_NET_OFF.wrapping_add(off) as u32,
            0,
            0,
        )
    };
    let mut prog = Vec::new();
    if v6 {
        let nets: Vec<[u8; 16]> = blocked
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(a) => Some(a.octets()),
                _ => None,
            })
            .take(63)
            .collect();
        let m = nets.len();
        for (e, o) in nets.iter().enumerate() {
            let hi = u32::from_be_bytes([o[0], o[1], o[2], o[3]]);
            let lo = u32::from_be_bytes([o[4], o[5], o[6], o[7]]);
            // Source address at offset 8 of the IPv6 header.
            prog.push(ld(8));
            prog.push(bpf(BPF_JMP | BPF_JEQ | BPF_K, hi, 0, 2));
            prog.push(ld(12));
            let to_drop = 4 * (m - e) - 3;
            prog.push(bpf(BPF_JMP | BPF_JEQ | BPF_K, lo, to_drop as u8, 0));
        }
    } else {
        let addrs: Vec<u32> = blocked
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(u32::from(*a)),
                _ => None,
            })
            .take(63)
            .collect();
        let n = addrs.len();
        // Source address at offset 12 of the IPv4 header.
        prog.push(ld(12));
        for (i, a) in addrs.iter().enumerate() {
            prog.push(bpf(BPF_JMP | BPF_JEQ | BPF_K, *a, (n - i) as u8, 0));
        }
    }
    prog.push(bpf(BPF_RET | BPF_K, u32::MAX, 0, 0));
    prog.push(bpf(BPF_RET | BPF_K, 0, 0, 0));
    prog
}

/// Makes the kernel drop datagrams to `sock` from `blocked` sources (IPv4
/// addresses; IPv6 /64s given as addresses) before they are queued, or
/// removes the filter when none of `blocked` is of the socket's family.
pub fn filter_sources(sock: &UdpSocket, blocked: &[IpAddr]) -> io::Result<()> {
    let v6 = sock.local_addr()?.is_ipv6();
    if !blocked.iter().any(|a| a.is_ipv6() == v6) {
        return match nsock::setsockopt(sock, raw::DetachFilter, &()) {
            // No filter attached: nothing to remove.
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    let prog = source_filter(blocked, v6);
    // The kernel copies the program.
    Ok(nsock::setsockopt(sock, raw::AttachFilter, &prog[..])?)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const WAIT: Option<Duration> = Some(Duration::from_secs(2));

    /// UDP with a chosen source address, and `poll` (kernel test: skipped
    /// under qemu-user by cross/test-qemu).
    #[test]
    fn kernel_send_from_picks_the_source_and_poll_sees_the_datagram() {
        let rx = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = rx.local_addr().unwrap();
        let tx = bind_udp("0.0.0.0:0".parse().unwrap()).unwrap();
        assert_eq!(
            poll_readable(&[rx.as_fd()], Some(Duration::ZERO)).unwrap(),
            vec![false]
        );
        let from: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(send_from(&tx, b"hi", to, from).unwrap(), 2);
        assert_eq!(
            poll_readable(&[rx.as_fd(), tx.as_fd()], WAIT).unwrap(),
            vec![true, false]
        );
        let mut buf = [0u8; 8];
        let (n, src) = rx.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], src.ip()), (&b"hi"[..], from));
        assert!(local_addresses()
            .unwrap()
            .contains(&"127.0.0.1".parse().unwrap()));

        // IPv6: IPv6-only, so the same port is free for IPv4.
        let Ok(rx6) = bind_udp("[::1]:0".parse().unwrap()) else {
            return; // no IPv6 loopback here
        };
        let port = rx6.local_addr().unwrap().port();
        bind_udp(SocketAddr::new("127.0.0.1".parse().unwrap(), port)).unwrap();
        let tx6 = bind_udp("[::]:0".parse().unwrap()).unwrap();
        let one: IpAddr = "::1".parse().unwrap();
        send_from(&tx6, b"v6", rx6.local_addr().unwrap(), one).unwrap();
        assert_eq!(poll_readable(&[rx6.as_fd()], WAIT).unwrap(), vec![true]);
        let (n, src) = rx6.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], src.ip()), (&b"v6"[..], one));
    }

    /// A signal sent to this thread arrives through the descriptor (kernel
    /// test). The mask is this test thread's only.
    #[test]
    fn kernel_signals_arrive_through_the_descriptor() {
        let s = Signals::new().unwrap();
        assert_eq!(s.read(), None);
        nix::sys::signal::raise(Signal::SIGHUP).unwrap();
        assert_eq!(poll_readable(&[s.fd()], WAIT).unwrap(), vec![true]);
        assert_eq!(s.read(), Some(Signal::SIGHUP));
        assert_eq!(s.read(), None);
    }

    #[test]
    fn source_filters_jump_to_the_drop() {
        let a: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "2001:db8::".parse().unwrap()];
        let p4 = source_filter(&a, false);
        // ld, one jeq, accept, drop.
        assert_eq!(p4.len(), 4);
        assert_eq!(p4[1].k, 0xc000_0201);
        // Instruction i jumps jt + 1 ahead: the jeq at 1 lands on the drop.
        assert_eq!(2 + usize::from(p4[1].jt), p4.len() - 1);
        assert_eq!((p4[2].k, p4[3].k), (u32::MAX, 0));
        let p6 = source_filter(&a, true);
        assert_eq!(p6.len(), 6);
        assert_eq!((p6[1].k, p6[1].jf), (0x2001_0db8, 2));
        // The second jeq jumps over the accept to the drop.
        assert_eq!(3 + 1 + usize::from(p6[3].jt), p6.len() - 1);
        // Bounded: 63 entries at most.
        let many: Vec<IpAddr> = (0..100u32).map(|i| Ipv4Addr::from(i).into()).collect();
        let p = source_filter(&many, false);
        assert_eq!(p.len(), 63 + 3);
        assert_eq!(2 + usize::from(p[1].jt), p.len() - 1);
    }

    /// Talks to the kernel (skipped under qemu-user by cross/test-qemu).
    #[test]
    fn kernel_source_filter_drops_only_listed_sources() {
        let rx = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = rx.local_addr().unwrap();
        let send = |from: &str, b: &[u8]| {
            let s = UdpSocket::bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
            s.send_to(b, to).unwrap();
        };
        let recv_all = || {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            std::thread::sleep(Duration::from_millis(50));
            while let Ok((n, _)) = rx.recv_from(&mut buf) {
                got.push(buf[..n].to_vec());
            }
            got
        };
        filter_sources(&rx, &["127.0.0.3".parse().unwrap()]).unwrap();
        send("127.0.0.3", b"flood");
        send("127.0.0.2", b"honest");
        assert_eq!(recv_all(), vec![b"honest".to_vec()]);
        // Removed: everything passes again (twice: removing none is fine).
        filter_sources(&rx, &[]).unwrap();
        filter_sources(&rx, &[]).unwrap();
        send("127.0.0.3", b"back");
        assert_eq!(recv_all(), vec![b"back".to_vec()]);
        // IPv6: by /64 (::1 is in ::/64).
        let Ok(rx6) = bind_udp("[::1]:0".parse().unwrap()) else {
            return; // no IPv6 loopback here
        };
        let to6 = rx6.local_addr().unwrap();
        let send6 = |b: &[u8]| {
            let s = UdpSocket::bind("[::1]:0").unwrap();
            s.send_to(b, to6).unwrap();
        };
        let recv6 = || {
            std::thread::sleep(Duration::from_millis(50));
            let mut buf = [0u8; 16];
            rx6.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
        };
        filter_sources(&rx6, &["::".parse().unwrap(), "192.0.2.1".parse().unwrap()]).unwrap();
        send6(b"dropped");
        assert_eq!(recv6(), None);
        filter_sources(&rx6, &["2001:db8::".parse().unwrap()]).unwrap();
        send6(b"passes");
        assert_eq!(recv6(), Some(b"passes".to_vec()));
    }
}
