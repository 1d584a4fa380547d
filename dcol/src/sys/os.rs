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
    use super::sock::setsockopt_int;
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let fd = sock.as_raw_fd();
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v)
        .or_else(|_| setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, v))
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
                libc::MSG_DONTWAIT as _, // c_int on glibc, c_uint on musl
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

/// `SO_ATTACH_FILTER` / `SO_DETACH_FILTER` (the same on every target here;
/// the libc crate lacks them for Linux).
const SO_ATTACH_FILTER: libc::c_int = 26;
const SO_DETACH_FILTER: libc::c_int = 27;

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
fn source_filter(blocked: &[std::net::IpAddr], v6: bool) -> Vec<libc::sock_filter> {
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
                std::net::IpAddr::V6(a) => Some(a.octets()),
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
                std::net::IpAddr::V4(a) => Some(u32::from(*a)),
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
pub fn filter_sources(sock: &std::net::UdpSocket, blocked: &[std::net::IpAddr]) -> io::Result<()> {
    let v6 = sock.local_addr()?.is_ipv6();
    if !blocked.iter().any(|a| a.is_ipv6() == v6) {
        let r =
            super::sock::setsockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, SO_DETACH_FILTER, 0);
        // No filter attached: nothing to remove.
        return match r {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        };
    }
    let mut prog = source_filter(blocked, v6);
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: fprog points to `prog`, which lives until the call returns
    // (the kernel copies the program).
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, UdpSocket};
    use std::time::Duration;

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
