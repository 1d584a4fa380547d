//! Kernel glue: netlink on neli ([`netlink`], shared by generic netlink
//! `mptcp_pm` and `wireguard` in [`genl`], nf_tables and ctnetlink in
//! [`nfnl`], sock_diag in [`diag`]), rtnetlink on the `rtnetlink` crate
//! ([`rtnl`], [`routewatch`]), sysctls, sockets. Nothing above this module
//! knows a netlink attribute number.
//!
//! System calls go through nix (or `std`, neli, rtnetlink); the few nix
//! does not wrap are in `raw`, the one module of the crate allowed `unsafe`.

use std::io;

pub mod conntrack;
pub mod convert;
pub mod diag;
pub mod genl;
pub mod lan;
pub mod mptcp_pm;
pub mod netlink;
pub mod nfnl;
pub mod nft;
pub mod os;
mod raw;
pub mod relay;
pub mod routewatch;
pub mod rtnl;
pub mod sock;
pub mod sysctl;
pub mod vpnfw;
pub mod wg;

/// Errors of the kernel glue: the operation that failed and why.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered a netlink request with an error.
    #[error("{op}: {}{}", io::Error::from_raw_os_error(*.errno), .extack.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Netlink {
        /// What we were doing.
        op: &'static str,
        /// Positive errno.
        errno: i32,
        /// The kernel's extended-ack message, if any.
        extack: Option<String>,
    },
    /// The kernel sent something we could not parse.
    #[error("{op}: malformed netlink reply: {what}")]
    Malformed {
        /// What we were doing.
        op: &'static str,
        /// What was wrong.
        what: String,
    },
    /// neli could not decode a netlink message the kernel sent.
    #[error("{op}: undecodable netlink message: {source}")]
    Decode {
        /// What we were doing.
        op: &'static str,
        /// neli's decoding error.
        #[source]
        source: neli::err::DeError,
    },
    /// A netlink request could not be encoded (a bug in its construction).
    #[error("{op}: netlink request not encodable: {source}")]
    Encode {
        /// What we were doing.
        op: &'static str,
        /// neli's builder or serialization error.
        #[source]
        source: netlink::EncodeError,
    },
    /// rtnetlink could not carry out a request (a kernel refusal is
    /// [`SysError::Netlink`]).
    #[error("{op}: {source}")]
    Rtnetlink {
        /// What we were doing.
        op: &'static str,
        /// rtnetlink's error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A feature this needs is missing from the running kernel.
    #[error("{0}")]
    Unsupported(String),
    /// A kernel connection a worker reads from was closed.
    #[error("{op}: connection closed")]
    Closed {
        /// What we were reading.
        op: &'static str,
    },
    /// A worker did not answer in time.
    #[error("{op}: no answer within {waited:?}")]
    Silent {
        /// What we waited for.
        op: &'static str,
        /// How long.
        waited: std::time::Duration,
    },
}

impl SysError {
    /// Wraps an `io::Error` with the operation that caused it.
    pub fn io(op: &'static str, source: io::Error) -> Self {
        SysError::Io { op, source }
    }

    /// Wraps a failed system call's errno (from nix) with the operation.
    pub fn errno(op: &'static str, e: nix::errno::Errno) -> Self {
        SysError::Io {
            op,
            source: e.into(),
        }
    }
}
