//! TCP and MPTCP socket calls the LAN relay needs and `std` lacks: non-blocking
//! listeners and connects, `SO_ORIGINAL_DST`, `MPTCP_INFO`, `SO_LINGER` {on, 0}
//! for resets, pipes, `splice(2)` and epoll.
//!
//! One of the modules allowed `unsafe` (with `netlink` and `os`); each block
//! states why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `SOL_MPTCP` (include/linux/socket.h).
const SOL_MPTCP: libc::c_int = 284;
/// `MPTCP_INFO` (include/uapi/linux/mptcp.h).
const MPTCP_INFO: libc::c_int = 1;
/// `MPTCP_INFO_FLAG_FALLBACK`: the connection fell back to plain TCP.
const MPTCP_INFO_FLAG_FALLBACK: u32 = 1 << 0;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A `sockaddr_storage` holding `a`, and its length.
pub(crate) fn raw_addr(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match a {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// The address in `ss`, if it is IPv4 or IPv6 (IPv4-mapped IPv6 addresses are
/// returned as IPv4).
pub(crate) fn from_raw(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

fn socket(family: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory preconditions; on success we own the fd.
    let fd = cvt(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto,
        )
    })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the value points to a live c_int of the size passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn family(a: &SocketAddr) -> libc::c_int {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// A non-blocking TCP listener on `addr` (IPv6 listeners are IPv6-only).
pub fn tcp_listener(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let fd = socket(family(&addr), 0)?;
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() {
        setsockopt_int(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (ss, len) = raw_addr(&addr);
    // SAFETY: ss holds a sockaddr of length len.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    })?;
    // SAFETY: plain syscall on a descriptor we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// Accepts one connection (non-blocking, close-on-exec); `None` when there is
/// none waiting.
pub fn accept(listener: &OwnedFd) -> io::Result<Option<(OwnedFd, SocketAddr)>> {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss/len describe a writable buffer of that size.
    let r = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: r is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(r) };
    let peer = from_raw(&ss).ok_or_else(|| io::Error::other("accepted a non-IP peer"))?;
    Ok(Some((fd, peer)))
}

/// The destination a REDIRECTed connection was addressed to before NAT
/// (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, from conntrack).
pub fn original_dst(fd: &OwnedFd, v6: bool) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let (level, name) = if v6 {
        (libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST)
    } else {
        (libc::SOL_IP, libc::SO_ORIGINAL_DST)
    };
    // SAFETY: ss/len describe a writable buffer of that size.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    from_raw(&ss).ok_or_else(|| io::Error::other("original destination is not IP"))
}

/// The socket's local address.
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss/len describe a writable buffer of that size.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    from_raw(&ss).ok_or_else(|| io::Error::other("local address is not IP"))
}

/// Starts a non-blocking connect to `dst`, as MPTCP when `mptcp` (falling back
/// to a TCP socket when the kernel has no MPTCP). Returns the socket and
/// whether it is MPTCP.
pub fn connect(dst: SocketAddr, mptcp: bool) -> io::Result<(OwnedFd, bool)> {
    let (fd, is_mptcp) = if mptcp {
        match socket(family(&dst), libc::IPPROTO_MPTCP) {
            Ok(fd) => (fd, true),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPROTONOSUPPORT | libc::EINVAL | libc::ENOPROTOOPT)
                ) =>
            {
                (socket(family(&dst), 0)?, false)
            }
            Err(e) => return Err(e),
        }
    } else {
        (socket(family(&dst), 0)?, false)
    };
    let (ss, len) = raw_addr(&dst);
    // SAFETY: ss holds a sockaddr of length len.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok((fd, is_mptcp))
}

/// A non-blocking MPTCP listener on `addr` (IPv6 listeners are IPv6-only)
/// with TCP Fast Open for `fastopen` waiting connections (0: without).
pub fn mptcp_listener(addr: SocketAddr, backlog: i32, fastopen: i32) -> io::Result<OwnedFd> {
    let fd = socket(family(&addr), libc::IPPROTO_MPTCP)?;
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() {
        setsockopt_int(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (ss, len) = raw_addr(&addr);
    // SAFETY: ss holds a sockaddr of length len.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    })?;
    if fastopen > 0 {
        let r = setsockopt_int(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            fastopen,
        );
        if let Err(e) = r {
            log::info!("no TCP Fast Open on the MPTCP listener {addr}: {e}");
        }
    }
    // SAFETY: plain syscall on a descriptor we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// An MPTCP socket to `dst` whose connect waits for the first write, so
/// that write rides in the SYN where the server gave a TCP Fast Open cookie
/// before (`TCP_FASTOPEN_CONNECT`; without it, an ordinary non-blocking
/// connect). Returns the socket and whether Fast Open is on.
pub fn connect_fastopen(dst: SocketAddr, fastopen: bool) -> io::Result<(OwnedFd, bool)> {
    let fd = socket(family(&dst), libc::IPPROTO_MPTCP)?;
    let tfo = fastopen
        && setsockopt_int(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN_CONNECT,
            1,
        )
        .is_ok();
    let (ss, len) = raw_addr(&dst);
    // SAFETY: ss holds a sockaddr of length len.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok((fd, tfo))
}

/// A blocking TCP connection to `to` from the local address `from` (port
/// chosen by the kernel): `std` cannot bind before it connects. For tests
/// that need connections from many addresses of one host.
pub fn connect_from(from: std::net::IpAddr, to: SocketAddr) -> io::Result<std::net::TcpStream> {
    let s = std::net::TcpStream::from(socket(family(&to), 0)?);
    // socket() makes it non-blocking: this connect blocks.
    s.set_nonblocking(false)?;
    for (a, bind) in [(SocketAddr::new(from, 0), true), (to, false)] {
        let (ss, len) = raw_addr(&a);
        let p = (&ss as *const libc::sockaddr_storage).cast();
        // SAFETY: ss holds a sockaddr of length len.
        cvt(unsafe {
            if bind {
                libc::bind(s.as_raw_fd(), p, len)
            } else {
                libc::connect(s.as_raw_fd(), p, len)
            }
        })?;
    }
    Ok(s)
}

/// The pending error of a socket (`SO_ERROR`): how a non-blocking connect ended.
pub fn take_error(fd: &OwnedFd) -> io::Result<Option<io::Error>> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v/len describe a writable c_int.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
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
    let mut buf = [0u32; 32];
    let mut len = size_of::<[u32; 32]>() as libc::socklen_t;
    // SAFETY: buf/len describe a writable buffer of that size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_MPTCP,
            MPTCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOPROTOOPT) => Ok(MptcpInfo {
                token: 0,
                fallback: true,
            }),
            _ => Err(e),
        };
    }
    if (len as usize) < 16 {
        return Err(io::Error::other(format!(
            "MPTCP_INFO returned only {len} bytes"
        )));
    }
    Ok(MptcpInfo {
        token: buf[3],
        fallback: buf[2] & MPTCP_INFO_FLAG_FALLBACK != 0,
    })
}

/// Makes the next `close` send a RST instead of a FIN (`SO_LINGER` {1, 0}).
pub fn set_reset_on_close(fd: &OwnedFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the value points to a live linger struct of the size passed.
    // Failure only means a FIN instead of a RST; nothing to do about it.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// `shutdown(fd, SHUT_WR)`: sends a FIN, keeps reading.
pub fn shutdown_write(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) }).map(drop)
}

/// A non-blocking pipe (read end, write end) and its capacity in bytes.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a writable array of two c_int.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: both are fresh descriptors we own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl F_GETPIPE_SZ takes no pointer.
    let cap = cvt(unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) })?;
    Ok((r, w, cap as usize))
}

/// Moves up to `len` bytes from `from` to `to` without copying them through
/// user space; one of the two must be a pipe. Non-blocking: `WouldBlock` when
/// nothing can move now; `Ok(0)` is end of file on `from`.
pub fn splice(from: &OwnedFd, to: &OwnedFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets are allowed (the descriptors' own positions are used).
    cvt_size(unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    })
}

/// `read(2)`.
pub fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is writable for its length.
    cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// `write(2)` (`send` with `MSG_NOSIGNAL`: no SIGPIPE on a reset peer).
pub fn write(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is readable for its length.
    cvt_size(unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    })
}

/// Raises the soft limit on open files to the hard limit; returns it.
pub fn raise_nofile() -> io::Result<u64> {
    // SAFETY: rlimit is plain data; get/setrlimit read/write it.
    unsafe {
        let mut r: libc::rlimit = zeroed();
        cvt(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r))?;
        if r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            cvt(libc::setrlimit(libc::RLIMIT_NOFILE, &r))?;
        }
        Ok(r.rlim_cur as u64)
    }
}

/// Readiness flags of an epoll event.
pub mod ev {
    /// Readable.
    pub const IN: u32 = libc::EPOLLIN as u32;
    /// Writable.
    pub const OUT: u32 = libc::EPOLLOUT as u32;
    /// Peer shut down writing.
    pub const RDHUP: u32 = libc::EPOLLRDHUP as u32;
    /// Error.
    pub const ERR: u32 = libc::EPOLLERR as u32;
    /// Hang-up.
    pub const HUP: u32 = libc::EPOLLHUP as u32;
    /// Edge-triggered.
    pub const ET: u32 = libc::EPOLLET as u32;
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// A new epoll instance (close-on-exec).
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; on success we own the fd.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: fd is fresh.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The epoll descriptor (readable when events are waiting).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Watches `fd` for `events`, reporting `data`.
    pub fn add(&self, fd: &OwnedFd, events: u32, data: u64) -> io::Result<()> {
        let mut e = libc::epoll_event { events, u64: data };
        // SAFETY: e is a valid epoll_event; the kernel copies it.
        cvt(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut e,
            )
        })
        .map(drop)
    }

    /// Collects ready events without blocking; returns (flags, data) pairs.
    pub fn ready(&self, out: &mut Vec<(u32, u64)>, max: usize) -> io::Result<()> {
        let mut evs: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; max];
        // SAFETY: evs is a writable array of max epoll_event.
        let n = unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), evs.as_mut_ptr(), max as libc::c_int, 0)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(evs[..n as usize].iter().map(|e| (e.events, e.u64)));
        Ok(())
    }
}
