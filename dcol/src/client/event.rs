//! Typed MPTCP path-manager events, decoded from generic netlink by `sys::mptcp_pm`.
//!
//! Addresses and ports are in host representation here; the netlink layer converts
//! from the network byte order the kernel uses in events.

use std::net::SocketAddr;

/// The MPTCP connection token the kernel uses to name a connection in events and
/// commands (RFC 8684 §3.2: a truncated hash of the key; locally unique).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u32);

/// One subflow as events describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubflowInfo {
    /// Local address id (0 for the initial subflow).
    pub local_id: u8,
    /// Remote address id.
    pub remote_id: u8,
    /// Local address and port of the subflow.
    pub local: SocketAddr,
    /// Remote address and port of the subflow.
    pub remote: SocketAddr,
    /// Whether the subflow is flagged backup.
    pub backup: bool,
}

/// An event from the kernel's `mptcp_pm` family (`mptcp_pm_events` group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PmEvent {
    /// `MPTCP_EVENT_CREATED`: a connection was created (SYN sent or received).
    Created {
        /// Connection token.
        token: Token,
        /// Local address and port of the initial subflow.
        local: SocketAddr,
        /// Remote address and port of the initial subflow.
        remote: SocketAddr,
        /// True on the passive (listening) side.
        server_side: bool,
    },
    /// `MPTCP_EVENT_ESTABLISHED`: the connection can take new subflows.
    Established {
        /// Connection token.
        token: Token,
        /// Local address and port of the initial subflow.
        local: SocketAddr,
        /// Remote address and port of the initial subflow.
        remote: SocketAddr,
        /// True on the passive (listening) side.
        server_side: bool,
    },
    /// `MPTCP_EVENT_CLOSED`: the connection is gone.
    Closed {
        /// Connection token.
        token: Token,
    },
    /// `MPTCP_EVENT_SUB_ESTABLISHED`.
    SubEstablished {
        /// Connection token.
        token: Token,
        /// The subflow.
        subflow: SubflowInfo,
    },
    /// `MPTCP_EVENT_SUB_CLOSED`; `error` is the socket error (e.g. 111 ECONNREFUSED).
    SubClosed {
        /// Connection token.
        token: Token,
        /// The subflow.
        subflow: SubflowInfo,
        /// `sk_err` of the subflow, if the kernel reported one.
        error: Option<u32>,
    },
    /// `MPTCP_EVENT_SUB_PRIORITY`: the backup flag of a subflow changed.
    SubPriority {
        /// Connection token.
        token: Token,
        /// The subflow.
        subflow: SubflowInfo,
    },
    /// Any other event type (ANNOUNCED, REMOVED, LISTENER_*), kept for logging.
    Other {
        /// The raw event type number.
        kind: u8,
        /// Connection token, when the event had one.
        token: Option<Token>,
    },
}
