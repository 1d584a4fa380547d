//! Small POSIX wrappers the daemon loop needs: `poll(2)`, a `signalfd(2)` for
//! SIGTERM/SIGINT/SIGHUP, the host's own addresses (`getifaddrs(3)`) and UDP
//! sockets (IPv6-only binds, `IP_PKTINFO` sends). All through nix.

use std::io;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    self as nsock, sockopt, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
    SockaddrIn, SockaddrIn6, SockaddrStorage,
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

#[cfg(test)]
mod tests {
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
}
