//! What nix does not wrap, or wraps only as `unsafe`: the one module of the
//! crate allowed `unsafe` code. Everything else in [`super`] calls the kernel
//! through nix (or `std`, or neli and rtnetlink for netlink) and is
//! `#![deny(unsafe_code)]` with the rest of the crate.
//!
//! What is here, and why nix cannot do it:
//! - [`mptcp_socket`]: nix's `socket()` takes a protocol only from its
//!   `SockProtocol` enum, which has no `IPPROTO_MPTCP` (262, RFC 8684);
//! - [`MptcpInfo`]: `getsockopt(SOL_MPTCP, MPTCP_INFO)`, an option nix lacks,
//!   as a nix [`GetSockOpt`] so callers use `nix::sys::socket::getsockopt`;
//! - [`AttachFilter`], [`DetachFilter`]: `SO_ATTACH_FILTER` and
//!   `SO_DETACH_FILTER` (a classic BPF socket filter): nix has neither
//!   option, and libc 0.2.191 keeps the Linux constants crate-private;
//! - [`TcpFastOpen`]: `TCP_FASTOPEN` on a listener (the server side of TCP
//!   Fast Open, the converter's), an option nix lacks (it has only the
//!   client's `TCP_FASTOPEN_CONNECT`);
//! - [`listen`]: nix's `Backlog` refuses a backlog above libc's `SOMAXCONN`,
//!   which is 128 on musl (the routers' libc), while the kernel's own cap is
//!   `net.core.somaxconn` (4096 by default since Linux 5.4): the relay asks
//!   for up to 1024 (see the test below);
//! - [`neli_fd`]: neli 0.7's socket implements `AsRawFd` but not `AsFd`,
//!   and nix's `poll` takes borrowed descriptors;
//! - [`ignore_sigpipe`]: nix's `signal()` is `unsafe` because a handler runs
//!   in signal context; `SIG_IGN` runs nothing.
//!
//! Each block states why it is sound. Constants nix lacks come from `libc`
//! (never hard-coded where `libc` has them: `SOCK_STREAM` is 2 on MIPS).
//! The test `unsafe_only_where_listed` below keeps `unsafe` out of every
//! other file of the repository but the exceptions it lists with a reason.
#![allow(unsafe_code)]

use std::mem::size_of_val;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::socket::{AddressFamily, GetSockOpt, SetSockOpt, SockFlag, SockType};

/// `SOL_MPTCP` (include/linux/socket.h).
const SOL_MPTCP: libc::c_int = 0x11c;
/// `MPTCP_INFO` (include/uapi/linux/mptcp.h).
const MPTCP_INFO: libc::c_int = 0x1;

/// An MPTCP stream socket: `socket(family, SOCK_STREAM | flags,
/// IPPROTO_MPTCP)`. Fails with `EPROTONOSUPPORT` (or `EINVAL`,
/// `ENOPROTOOPT`) where the kernel has no MPTCP.
pub fn mptcp_socket(family: AddressFamily, flags: SockFlag) -> nix::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers.
    let fd = Errno::result(unsafe {
        libc::socket(
            family as libc::c_int,
            SockType::Stream as libc::c_int | flags.bits(),
            libc::IPPROTO_MPTCP,
        )
    })?;
    // SAFETY: on success fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `listen(fd, backlog)` with the backlog as asked (the kernel caps it at
/// `net.core.somaxconn`).
pub fn listen(fd: &impl AsFd, backlog: i32) -> nix::Result<()> {
    // SAFETY: listen() takes no pointers; fd is borrowed for the call.
    Errno::result(unsafe { libc::listen(fd.as_fd().as_raw_fd(), backlog) }).map(drop)
}

/// `MPTCP_INFO` at `SOL_MPTCP`: the first bytes of `struct mptcp_info`, as
/// 32-bit words in host order, and how many bytes the kernel filled in.
#[derive(Debug, Clone, Copy)]
pub struct MptcpInfo;

impl GetSockOpt for MptcpInfo {
    type Val = ([u32; 32], usize);

    fn get<F: AsFd>(&self, fd: &F) -> nix::Result<Self::Val> {
        let mut buf = [0u32; 32];
        let mut len = size_of_val(&buf) as libc::socklen_t;
        // SAFETY: buf and len describe a writable buffer of len bytes; the
        // kernel writes at most len bytes and stores the count in len.
        Errno::result(unsafe {
            libc::getsockopt(
                fd.as_fd().as_raw_fd(),
                SOL_MPTCP,
                MPTCP_INFO,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        })?;
        Ok((buf, len as usize))
    }
}

/// `SO_ATTACH_FILTER` / `SO_DETACH_FILTER` (include/uapi/asm-generic/socket.h;
/// the same on MIPS, whose socket.h differs elsewhere).
const SO_ATTACH_FILTER: libc::c_int = 26;
const SO_DETACH_FILTER: libc::c_int = 27;

/// `setsockopt(fd, SOL_SOCKET, name, val)` with `val` passed as its bytes.
///
/// # Safety
/// `T` must be the type the kernel reads for option `name`, and any pointer
/// inside `val` must be valid for what the kernel reads through it during
/// the call.
unsafe fn set_socket_opt<T>(fd: BorrowedFd<'_>, name: libc::c_int, val: &T) -> nix::Result<()> {
    // SAFETY: val is a live T of the size passed; the caller vouches for
    // what it points to.
    Errno::result(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (val as *const T).cast(),
            size_of_val(val) as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `SO_ATTACH_FILTER`: replaces the socket's filter with a classic BPF
/// program (the kernel checks and copies it).
#[derive(Debug, Clone, Copy)]
pub struct AttachFilter;

impl SetSockOpt for AttachFilter {
    type Val = [libc::sock_filter];

    fn set<F: AsFd>(&self, fd: &F, prog: &[libc::sock_filter]) -> nix::Result<()> {
        let fprog = libc::sock_fprog {
            len: u16::try_from(prog.len()).map_err(|_| Errno::EINVAL)?,
            // The kernel only reads through it.
            filter: prog.as_ptr().cast_mut(),
        };
        // SAFETY: the option takes a sock_fprog; it points to `prog`, live
        // for the call, of the length it states.
        unsafe { set_socket_opt(fd.as_fd(), SO_ATTACH_FILTER, &fprog) }
    }
}

/// `SO_DETACH_FILTER`: removes the socket's filter (`ENOENT` when it has
/// none).
#[derive(Debug, Clone, Copy)]
pub struct DetachFilter;

impl SetSockOpt for DetachFilter {
    type Val = ();

    fn set<F: AsFd>(&self, fd: &F, _: &()) -> nix::Result<()> {
        // SAFETY: the kernel ignores the value (an int, by convention).
        unsafe { set_socket_opt(fd.as_fd(), SO_DETACH_FILTER, &0 as &libc::c_int) }
    }
}

/// `TCP_FASTOPEN` at `IPPROTO_TCP`: a listener accepts data in SYNs, up to
/// this many connections waiting (0 turns it off).
#[derive(Debug, Clone, Copy)]
pub struct TcpFastOpen;

impl SetSockOpt for TcpFastOpen {
    type Val = libc::c_int;

    fn set<F: AsFd>(&self, fd: &F, qlen: &libc::c_int) -> nix::Result<()> {
        // SAFETY: the option takes an int; qlen is a live c_int of the size passed.
        Errno::result(unsafe {
            libc::setsockopt(
                fd.as_fd().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_FASTOPEN,
                (qlen as *const libc::c_int).cast(),
                size_of_val(qlen) as libc::socklen_t,
            )
        })
        .map(drop)
    }
}

/// The descriptor of a neli socket, borrowed for as long as the socket.
pub fn neli_fd(sock: &neli::socket::NlSocket) -> BorrowedFd<'_> {
    // SAFETY: the NlSocket owns its descriptor and closes it only when it is
    // dropped, which the borrow of `sock` rules out while the result lives.
    unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) }
}

/// Ignores `SIGPIPE` for the whole process (a `splice` into a socket whose
/// peer reset raises it; `MSG_NOSIGNAL` covers only `send`).
pub fn ignore_sigpipe() -> nix::Result<()> {
    // SAFETY: SIG_IGN installs no handler, so no code runs in signal
    // context; the previous disposition is not used.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }.map(drop)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use nix::sys::socket::Backlog;

    use crate::proxy::limits::MAX_BACKLOG;

    /// The files of the repository that may say `unsafe`, and why.
    const UNSAFE_ALLOWED: &[(&str, &str)] = &[
        ("dcol/src/sys/raw.rs", "what nix does not wrap: this module"),
        (
            "tests/lab/src/sys.rs",
            "the lab's TUNSETIFF: nix wraps ioctls only in macros that make unsafe functions",
        ),
    ];

    /// Whether a line of Rust says `unsafe` as a word before any `//`
    /// comment (`unsafe_code` in a lint does not count).
    fn says_unsafe(line: &str) -> bool {
        let code = line.split("//").next().unwrap_or("");
        code.match_indices("unsafe").any(|(i, w)| {
            let word = |c: char| c.is_alphanumeric() || c == '_';
            !code[..i].ends_with(word) && !code[i + w.len()..].starts_with(word)
        })
    }

    /// The `.rs` files below `dir` (no build output, no hidden directories)
    /// that say `unsafe`, as paths relative to `root`.
    fn unsafe_files(root: &Path, dir: &Path, found: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                if !name.starts_with('.') && name != "target" {
                    unsafe_files(root, &path, found);
                }
            } else if name.ends_with(".rs")
                && std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .any(says_unsafe)
            {
                let rel = path.strip_prefix(root).unwrap();
                found.insert(rel.to_string_lossy().into_owned());
            }
        }
    }

    /// `unsafe` is only in this module and the listed exceptions, anywhere
    /// in the repository (the daemon, its tests, benches, fuzz targets and
    /// the lab); the daemon's crate also denies `unsafe_code` outside it.
    #[test]
    fn unsafe_only_where_listed() {
        assert!(says_unsafe("    let r = unsafe { f() };"));
        assert!(!says_unsafe("#![deny(unsafe_code)] // unsafe"));
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut found = BTreeSet::new();
        unsafe_files(root, root, &mut found);
        let allowed: BTreeSet<String> = UNSAFE_ALLOWED.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(
            found, allowed,
            "files saying `unsafe` (allowed: {UNSAFE_ALLOWED:?})"
        );
    }

    /// Why [`super::listen`] is here: nix caps the backlog at libc's
    /// `SOMAXCONN`, below what the relay asks for on musl.
    #[test]
    fn nix_backlog_stops_at_libc_somaxconn() {
        assert!(Backlog::new(libc::SOMAXCONN + 1).is_err());
        let relay_max = i32::try_from(MAX_BACKLOG).unwrap();
        assert_eq!(
            Backlog::new(relay_max).is_ok(),
            relay_max <= libc::SOMAXCONN
        );
        #[cfg(target_env = "musl")]
        assert!(Backlog::new(relay_max).is_err());
    }
}
