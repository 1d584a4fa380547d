//! Small POSIX wrappers the daemon loop needs: `poll(2)`, a `signalfd(2)` for
//! SIGTERM/SIGINT/SIGHUP, and the host's own addresses (`getifaddrs(3)`).
//!
//! This is one of the two modules allowed `unsafe` (with `netlink`); each block
//! states why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Waits until one of `fds` is readable or `timeout` passes (`None`: forever).
/// Returns, per fd, whether it is readable (or in error/hang-up, which a read
/// will report). EINTR counts as a timeout.
pub fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = match timeout {
        None => -1,
        Some(t) => i32::try_from(t.as_millis().saturating_add(1)).unwrap_or(i32::MAX),
    };
    // SAFETY: pfds is a valid, exclusively borrowed array of pollfd of the given length.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

/// SIGTERM, SIGINT and SIGHUP delivered through a file descriptor.
#[derive(Debug)]
pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    /// Blocks SIGTERM, SIGINT and SIGHUP for this thread (call before starting
    /// threads) and ignores SIGPIPE, then opens a non-blocking signalfd for them.
    pub fn new() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialize it;
        // sigprocmask and signalfd only read it. signal(SIGPIPE, SIG_IGN) has no
        // preconditions.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Signals {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The next pending signal number, if any.
    pub fn read(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data; read writes at most its size.
        unsafe {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let n = libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            );
            (n == size as isize).then_some(info.ssi_signo as i32)
        }
    }
}

/// Every address configured on this host's interfaces (in the current network
/// namespace).
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills head with a list we free below with freeifaddrs;
    // each ifa_addr, when non-null, points to a sockaddr of the family it names.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// Binds a non-blocking UDP socket. IPv6 sockets are IPv6-only, so that
/// `0.0.0.0:P` and `[::]:P` can both be bound and each family keeps its own
/// addresses (no IPv4-mapped sources).
pub fn bind_udp(addr: std::net::SocketAddr) -> io::Result<std::net::UdpSocket> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket() has no memory preconditions; on success we own the fd.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let sock = std::net::UdpSocket::from(owned);
    if addr.is_ipv6() {
        let one: libc::c_int = 1;
        // SAFETY: the option value points to a live c_int of the given size.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    bind(&sock, addr)?;
    Ok(sock)
}

fn bind(sock: &std::net::UdpSocket, addr: std::net::SocketAddr) -> io::Result<()> {
    let (ss, len) = super::sock::raw_addr(&addr);
    // SAFETY: ss holds a sockaddr of length len.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `buf` to `to` from the local address `from` (`IP_PKTINFO` /
/// `IPV6_PKTINFO`), so that the peer sees the address we choose rather than
/// the one routing would pick. On a router with several interfaces the
/// waypoint must see the address the detour subflows will come from.
pub fn send_from(
    sock: &std::net::UdpSocket,
    buf: &[u8],
    to: std::net::SocketAddr,
    from: IpAddr,
) -> io::Result<usize> {
    use std::mem::{size_of, zeroed};
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // Room for one cmsg of either pktinfo kind, u64-aligned.
    let mut cbuf = [0u64; 8];
    // SAFETY: all of these are plain data; zero is a valid value for each.
    let (mut sin, mut sin6): (libc::sockaddr_in, libc::sockaddr_in6) =
        unsafe { (zeroed(), zeroed()) };
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    let (level, ty, data_len) = match (to, from) {
        (std::net::SocketAddr::V4(t), IpAddr::V4(_)) => {
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = t.port().to_be();
            sin.sin_addr.s_addr = u32::from(*t.ip()).to_be();
            msg.msg_name = (&mut sin as *mut libc::sockaddr_in).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                size_of::<libc::in_pktinfo>(),
            )
        }
        (std::net::SocketAddr::V6(t), IpAddr::V6(_)) => {
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = t.port().to_be();
            sin6.sin6_addr.s6_addr = t.ip().octets();
            sin6.sin6_scope_id = t.scope_id();
            msg.msg_name = (&mut sin6 as *mut libc::sockaddr_in6).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                size_of::<libc::in6_pktinfo>(),
            )
        }
        _ => return sock.send_to(buf, to),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len as u32) } as _;
    // SAFETY: msg_control points to cbuf, large enough for one cmsg of
    // data_len bytes (64 bytes >= CMSG_SPACE(20)); CMSG_FIRSTHDR/CMSG_DATA
    // stay inside it; the pktinfo structs are written unaligned-safely.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = level;
        (*c).cmsg_type = ty;
        (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
        match from {
            IpAddr::V4(f) => {
                let mut pi: libc::in_pktinfo = zeroed();
                pi.ipi_spec_dst.s_addr = u32::from(f).to_be();
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), pi);
            }
            IpAddr::V6(f) => {
                let mut pi: libc::in6_pktinfo = zeroed();
                pi.ipi6_addr.s6_addr = f.octets();
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>(), pi);
            }
        }
        let n = libc::sendmsg(sock.as_raw_fd(), &msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Sets a socket's receive buffer to `bytes` (the kernel doubles it for
/// its bookkeeping): `SO_RCVBUFFORCE` as root, past `net.core.rmem_max`,
/// else `SO_RCVBUF` up to that limit. A waypoint's signaling socket gets a
/// large one, so that a flood it drops cheaply does not also push honest
/// datagrams out while the daemon is not scheduled.
pub fn set_recv_buffer(sock: &std::net::UdpSocket, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt: libc::c_int| {
        // SAFETY: the option value points to a live c_int of the given size.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF))
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
    got: Vec<(usize, Option<std::net::SocketAddr>)>,
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
    pub fn recv(&mut self, sock: &std::net::UdpSocket) -> io::Result<usize> {
        use std::mem::{size_of, zeroed};
        let n = self.bufs.len();
        self.got.clear();
        if n == 0 {
            return Ok(0);
        }
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
        let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { zeroed() }; n];
        let mut hdrs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(addrs.iter_mut())
            .map(|(iov, ss)| {
                // SAFETY: mmsghdr is plain data; all-zero is a valid value.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (ss as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: hdrs holds n headers whose names, iovecs and buffers live
        // (in addrs, iovs and self.bufs) until the call returns; no timeout.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        for (h, ss) in hdrs.iter().zip(&addrs).take(r as usize) {
            let len = (h.msg_len as usize).min(BATCH_DATAGRAM);
            self.got.push((len, super::sock::from_raw(ss)));
        }
        Ok(self.got.len())
    }

    /// Datagram `i` of the last [`RecvBatch::recv`] and its source (`None`
    /// for a family other than IPv4/IPv6).
    pub fn get(&self, i: usize) -> Option<(&[u8], Option<std::net::SocketAddr>)> {
        let (len, from) = *self.got.get(i)?;
        Some((&self.bufs[i][..len], from))
    }
}
