//! The lab's few system calls: a TUN device for the delay relay, the timer
//! slack that makes its sleeps precise, and signal masking so Ctrl-C can clean
//! up the namespaces, through nix. The only module with `unsafe`: nix
//! wraps `ioctl` only in macros that make `unsafe` functions, so
//! `TUNSETIFF` stays a libc call here.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use nix::sys::signal::{SigSet, Signal};

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates (non-persistent) TUN device `name` without packet information
/// headers in the calling thread's network namespace; it disappears when the
/// returned file is closed.
pub fn tun_open(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name '{name}' must have 1-15 bytes"),
        ));
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReqFlags`
    // lays out (40 bytes: 16 of name, the flags at offset 16); it lives for the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReqFlags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// Sets the calling thread's timer slack to 1 ns, so `nanosleep` wakes up
/// within tens of microseconds instead of the default 50 µs slack plus batching.
pub fn timerslack_1ns() -> io::Result<()> {
    Ok(nix::sys::prctl::set_timerslack(1)?)
}

fn sigset(signals: &[libc::c_int]) -> io::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(Signal::try_from(*s)?);
    }
    Ok(set)
}

/// Blocks `signals` in the calling thread (and every thread it starts later);
/// children started with `std::process::Command` get an empty mask again.
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<()> {
    Ok(sigset(signals)?.thread_block()?)
}

/// Waits until one of `signals` (blocked beforehand) arrives; returns it.
pub fn wait_signal(signals: &[libc::c_int]) -> io::Result<libc::c_int> {
    Ok(sigset(signals)?.wait()? as libc::c_int)
}

/// Raises the open-file limit to the hard limit (the load runs hold
/// thousands of sockets); returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads one struct rlimit we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// Clock ticks per second of `/proc`'s CPU times (`USER_HZ`).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}
