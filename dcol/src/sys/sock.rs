//! TCP and MPTCP socket calls the LAN relay needs and `std` lacks: non-blocking
//! listeners and connects, `SO_ORIGINAL_DST`, `MPTCP_INFO`, `SO_LINGER` {on, 0}
//! for resets, pipes, `splice(2)` and epoll. All through nix; the MPTCP
//! socket and `MPTCP_INFO`, which nix lacks, come from [`super::raw`].

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice as nix_splice, FcntlArg, OFlag, SpliceFFlags};
use nix::sys::epoll::{self, EpollCreateFlags, EpollEvent, EpollTimeout};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::socket::{
    self as nsock, sockopt, AddressFamily, MsgFlags, Shutdown, SockFlag, SockType, SockaddrIn,
    SockaddrIn6, SockaddrStorage,
};

use super::raw;

/// `MPTCP_INFO_FLAG_FALLBACK`: the connection fell back to plain TCP.
const MPTCP_INFO_FLAG_FALLBACK: u32 = 1 << 0;

/// Non-blocking and close-on-exec: every socket the relay opens.
const FLAGS: SockFlag = SockFlag::SOCK_NONBLOCK.union(SockFlag::SOCK_CLOEXEC);

/// `a` with an IPv4-mapped IPv6 address turned into IPv4.
fn unmapped(a: SocketAddrV6) -> SocketAddr {
    match a.ip().to_ipv4_mapped() {
        Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, a.port())),
        None => SocketAddr::V6(a),
    }
}

/// The address in `ss`, if it is IPv4 or IPv6 (IPv4-mapped IPv6 addresses are
/// returned as IPv4).
pub(crate) fn from_storage(ss: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(sin) = ss.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*sin)));
    }
    ss.as_sockaddr_in6()
        .map(|sin6| unmapped(SocketAddrV6::from(*sin6)))
}

fn family(a: &SocketAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A non-blocking, close-on-exec TCP socket for `a`'s family.
fn socket(a: &SocketAddr) -> io::Result<OwnedFd> {
    Ok(nsock::socket(family(a), SockType::Stream, FLAGS, None)?)
}

/// A non-blocking TCP listener on `addr` (IPv6 listeners are IPv6-only).
pub fn tcp_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let fd = socket(&addr)?;
    nsock::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        nsock::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    nsock::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    raw::listen(&fd, backlog)?;
    Ok(TcpListener::from(fd))
}

/// Accepts one connection (non-blocking, close-on-exec); `None` when there is
/// none waiting.
pub fn accept(listener: &TcpListener) -> io::Result<Option<(OwnedFd, SocketAddr)>> {
    // std's accept is accept4(SOCK_CLOEXEC) and hands the descriptor over as
    // an owned one (nix's returns a raw descriptor).
    let (s, peer) = match listener.accept() {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    s.set_nonblocking(true)?;
    let peer = match peer {
        SocketAddr::V6(a) => unmapped(a),
        a => a,
    };
    Ok(Some((OwnedFd::from(s), peer)))
}

/// The destination a REDIRECTed connection was addressed to before NAT
/// (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, from conntrack).
pub fn original_dst(fd: &OwnedFd, v6: bool) -> io::Result<SocketAddr> {
    Ok(if v6 {
        let sin6 = nsock::getsockopt(fd, sockopt::Ip6tOriginalDst)?;
        unmapped(SocketAddrV6::from(SockaddrIn6::from(sin6)))
    } else {
        let sin = nsock::getsockopt(fd, sockopt::OriginalDst)?;
        SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(sin)))
    })
}

/// The socket's local address.
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let ss: SockaddrStorage = nsock::getsockname(fd.as_raw_fd())?;
    from_storage(&ss).ok_or_else(|| io::Error::other("local address is not IP"))
}

/// Starts a non-blocking connect to `dst`, as MPTCP when `mptcp` (falling back
/// to a TCP socket when the kernel has no MPTCP). Returns the socket and
/// whether it is MPTCP.
pub fn connect(dst: SocketAddr, mptcp: bool) -> io::Result<(OwnedFd, bool)> {
    let (fd, is_mptcp) = if mptcp {
        match raw::mptcp_socket(family(&dst), FLAGS) {
            Ok(fd) => (fd, true),
            Err(Errno::EPROTONOSUPPORT | Errno::EINVAL | Errno::ENOPROTOOPT) => {
                (socket(&dst)?, false)
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        (socket(&dst)?, false)
    };
    match nsock::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok((fd, is_mptcp)),
        Err(e) => Err(e.into()),
    }
}

/// A non-blocking MPTCP listener on `addr` (IPv6 listeners are IPv6-only)
/// with TCP Fast Open for `fastopen` waiting connections (0: without).
pub fn mptcp_listener(addr: SocketAddr, backlog: i32, fastopen: i32) -> io::Result<TcpListener> {
    let fd = raw::mptcp_socket(family(&addr), FLAGS)?;
    nsock::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        nsock::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    nsock::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    if fastopen > 0 {
        if let Err(e) = nsock::setsockopt(&fd, raw::TcpFastOpen, &fastopen) {
            log::info!("no TCP Fast Open on the MPTCP listener {addr}: {e}");
        }
    }
    raw::listen(&fd, backlog)?;
    Ok(TcpListener::from(fd))
}

/// An MPTCP socket to `dst` whose connect waits for the first write, so
/// that write rides in the SYN where the server gave a TCP Fast Open cookie
/// before (`TCP_FASTOPEN_CONNECT`; without it, an ordinary non-blocking
/// connect). Returns the socket and whether Fast Open is on.
pub fn connect_fastopen(dst: SocketAddr, fastopen: bool) -> io::Result<(OwnedFd, bool)> {
    let fd = raw::mptcp_socket(family(&dst), FLAGS)?;
    let tfo = fastopen && nsock::setsockopt(&fd, sockopt::TcpFastOpenConnect, &true).is_ok();
    match nsock::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok((fd, tfo)),
        Err(e) => Err(e.into()),
    }
}

/// A blocking TCP connection to `to` from the local address `from` (port
/// chosen by the kernel): `std` cannot bind before it connects. For tests
/// that need connections from many addresses of one host.
pub fn connect_from(from: std::net::IpAddr, to: SocketAddr) -> io::Result<std::net::TcpStream> {
    let fd = nsock::socket(family(&to), SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    nsock::bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(from, 0)),
    )?;
    nsock::connect(fd.as_raw_fd(), &SockaddrStorage::from(to))?;
    Ok(std::net::TcpStream::from(fd))
}

/// The pending error of a socket (`SO_ERROR`): how a non-blocking connect ended.
pub fn take_error(fd: &OwnedFd) -> io::Result<Option<io::Error>> {
    let v = nsock::getsockopt(fd, sockopt::SocketError)?;
    Ok((v != 0).then(|| io::Error::from_raw_os_error(v)))
}

/// What `MPTCP_INFO` says about a connected MPTCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MptcpInfo {
    /// The connection's token, as the path manager's events name it.
    pub token: u32,
    /// The connection fell back to plain TCP (the server or a middlebox
    /// dropped the MPTCP options).
    pub fallback: bool,
}

/// `getsockopt(SOL_MPTCP, MPTCP_INFO)`. A socket that fell back to TCP may
/// answer with an error instead (the kernel hands the call to TCP): that is
/// reported as a fallback too.
pub fn mptcp_info(fd: &OwnedFd) -> io::Result<MptcpInfo> {
    // struct mptcp_info starts with six u8 fields, two bytes of padding, then
    // u32 mptcpi_flags and u32 mptcpi_token (include/uapi/linux/mptcp.h).
    let (words, len) = match nsock::getsockopt(fd, raw::MptcpInfo) {
        Ok(x) => x,
        Err(Errno::EOPNOTSUPP | Errno::ENOPROTOOPT) => {
            return Ok(MptcpInfo {
                token: 0,
                fallback: true,
            })
        }
        Err(e) => return Err(e.into()),
    };
    if len < 16 {
        return Err(io::Error::other(format!(
            "MPTCP_INFO returned only {len} bytes"
        )));
    }
    Ok(MptcpInfo {
        token: words[3],
        fallback: words[2] & MPTCP_INFO_FLAG_FALLBACK != 0,
    })
}

/// Makes the next `close` send a RST instead of a FIN (`SO_LINGER` {1, 0}).
pub fn set_reset_on_close(fd: &OwnedFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // Failure only means a FIN instead of a RST; nothing to do about it.
    let _ = nsock::setsockopt(fd, sockopt::Linger, &l);
}

/// `shutdown(fd, SHUT_WR)`: sends a FIN, keeps reading.
pub fn shutdown_write(fd: &OwnedFd) -> io::Result<()> {
    Ok(nsock::shutdown(fd.as_raw_fd(), Shutdown::Write)?)
}

/// A non-blocking pipe (read end, write end) and its capacity in bytes.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let cap = fcntl(&w, FcntlArg::F_GETPIPE_SZ)?;
    Ok((r, w, usize::try_from(cap).unwrap_or(0)))
}

/// Moves up to `len` bytes from `from` to `to` without copying them through
/// user space; one of the two must be a pipe. Non-blocking: `WouldBlock` when
/// nothing can move now; `Ok(0)` is end of file on `from`.
pub fn splice(from: &OwnedFd, to: &OwnedFd, len: usize) -> io::Result<usize> {
    // No offsets: the descriptors' own positions are used.
    Ok(nix_splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
    )?)
}

/// `read(2)`.
pub fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    Ok(nix::unistd::read(fd, buf)?)
}

/// `write(2)` (`send` with `MSG_NOSIGNAL`: no SIGPIPE on a reset peer).
pub fn write(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    Ok(nsock::send(fd.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL)?)
}

/// Raises the soft limit on open files to the hard limit; returns it.
pub fn raise_nofile() -> io::Result<u64> {
    let (mut cur, max) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if cur < max {
        setrlimit(Resource::RLIMIT_NOFILE, max, max)?;
        cur = max;
    }
    // rlim_t is u64 on every target here, not on every libc.
    #[allow(clippy::unnecessary_cast)]
    Ok(cur as u64)
}

/// Readiness flags of an epoll event.
pub mod ev {
    use nix::sys::epoll::EpollFlags;

    /// Readable.
    pub const IN: EpollFlags = EpollFlags::EPOLLIN;
    /// Writable.
    pub const OUT: EpollFlags = EpollFlags::EPOLLOUT;
    /// Peer shut down writing.
    pub const RDHUP: EpollFlags = EpollFlags::EPOLLRDHUP;
    /// Error.
    pub const ERR: EpollFlags = EpollFlags::EPOLLERR;
    /// Hang-up.
    pub const HUP: EpollFlags = EpollFlags::EPOLLHUP;
    /// Edge-triggered.
    pub const ET: EpollFlags = EpollFlags::EPOLLET;
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    ep: epoll::Epoll,
}

impl Epoll {
    /// A new epoll instance (close-on-exec).
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            ep: epoll::Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        })
    }

    /// The epoll descriptor (readable when events are waiting).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ep.0.as_fd()
    }

    /// Watches `fd` for `events`, reporting `data`.
    pub fn add(&self, fd: impl AsFd, events: epoll::EpollFlags, data: u64) -> io::Result<()> {
        Ok(self.ep.add(fd, EpollEvent::new(events, data))?)
    }

    /// Collects ready events without blocking; returns (flags, data) pairs.
    pub fn ready(&self, out: &mut Vec<(epoll::EpollFlags, u64)>, max: usize) -> io::Result<()> {
        let mut evs = vec![EpollEvent::empty(); max];
        let n = match self.ep.wait(&mut evs, EpollTimeout::ZERO) {
            Ok(n) => n,
            Err(Errno::EINTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        out.extend(evs.iter().take(n).map(|e| (e.events(), e.data())));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::sys::os::poll_readable;

    const WAIT: Option<Duration> = Some(Duration::from_secs(2));

    #[test]
    fn addresses_come_back_unmapped() {
        for (given, want) in [
            ("192.0.2.1:80", "192.0.2.1:80"),
            ("[::ffff:192.0.2.1]:443", "192.0.2.1:443"),
            ("[2001:db8::1]:7447", "[2001:db8::1]:7447"),
        ] {
            let a: SocketAddr = given.parse().unwrap();
            let got = from_storage(&SockaddrStorage::from(a));
            assert_eq!(got, Some(want.parse().unwrap()), "{given}");
        }
    }

    /// The relay's primitives on loopback, end to end (talks to the kernel:
    /// skipped under qemu-user by cross/test-qemu).
    #[test]
    fn kernel_relay_primitives_accept_splice_and_reset() {
        let l = tcp_listener("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        let server = l.local_addr().unwrap();
        assert!(accept(&l).unwrap().is_none(), "nothing waiting yet");
        let ep = Epoll::new().unwrap();
        ep.add(&l, ev::IN | ev::ET, 7).unwrap();

        // An MPTCP socket where the kernel has MPTCP; the listener is plain
        // TCP, so the connection falls back.
        let (up, mptcp) = connect(server, true).unwrap();
        assert_eq!(poll_readable(&[ep.fd()], WAIT).unwrap(), vec![true]);
        let mut ready = Vec::new();
        ep.ready(&mut ready, 8).unwrap();
        assert_eq!(ready, vec![(ev::IN, 7)]);
        let (lan, peer) = accept(&l).unwrap().expect("a connection");
        assert_eq!(peer, local_addr(&up).unwrap());
        assert_eq!(local_addr(&lan).unwrap(), server);
        assert!(take_error(&up).unwrap().is_none());
        if mptcp {
            assert!(mptcp_info(&up).unwrap().fallback);
        }
        // Not redirected: conntrack (if it tracks loopback here) names the
        // listener itself, which the relay refuses; else there is no entry.
        match original_dst(&lan, false) {
            Ok(d) => assert_eq!(d, server),
            Err(e) => assert_eq!(e.raw_os_error(), Some(Errno::ENOENT as i32)),
        }

        // up -> lan -> pipe, then EOF after shutdown.
        let (r, w, cap) = pipe().unwrap();
        assert!(cap >= 4096);
        assert_eq!(write(&up, b"hello").unwrap(), 5);
        shutdown_write(&up).unwrap();
        let (mut moved, mut eof) = (0, false);
        for _ in 0..100 {
            match splice(&lan, &w, cap) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => moved += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_readable(&[lan.as_fd()], WAIT).unwrap();
                }
                Err(e) => panic!("splice: {e}"),
            }
        }
        assert_eq!((moved, eof), (5, true));
        let mut buf = [0u8; 16];
        assert_eq!(read(&r, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(
            read(&r, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );

        // A reset travels as a reset.
        set_reset_on_close(&lan);
        drop(lan);
        assert_eq!(poll_readable(&[up.as_fd()], WAIT).unwrap(), vec![true]);
        assert_eq!(
            read(&up, &mut buf).unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        assert!(raise_nofile().unwrap() >= 64);
    }

    /// A refused connect ends with its error in `SO_ERROR` (kernel test).
    #[test]
    fn kernel_refused_connect_reports_its_error() {
        // A port nobody listens on: bind one, then close it.
        let port = tcp_listener("127.0.0.1:0".parse().unwrap(), 1)
            .unwrap()
            .local_addr()
            .unwrap();
        let (up, _) = connect(port, false).unwrap();
        let ep = Epoll::new().unwrap();
        ep.add(&up, ev::OUT | ev::ET, 1).unwrap();
        assert_eq!(poll_readable(&[ep.fd()], WAIT).unwrap(), vec![true]);
        let e = take_error(&up).unwrap().expect("an error");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let from = connect_from([127, 0, 0, 3].into(), port).unwrap_err();
        assert_eq!(from.kind(), io::ErrorKind::ConnectionRefused);
    }
}
