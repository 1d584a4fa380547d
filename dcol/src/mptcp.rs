//! The MPTCP vocabulary shared by the kernel glue and the path-manager policy:
//! connection tokens, address ids, subflows, the path manager's events and the
//! per-subflow counters the strategy measures (mptcpd's split: types in the
//! library, policy in the plugin).
//!
//! `sys::mptcp_pm` decodes the kernel's `mptcp_pm` generic netlink events into
//! [`PmEvent`]s and takes [`Token`]s and [`AddrId`]s in its commands;
//! `sys::diag` reads [`Sample`]s; `client` consumes both and decides. This
//! module does no I/O and knows no netlink attribute number: addresses and
//! ports here are plain `std::net` values, already converted from the network
//! byte order the kernel uses in events.
//!
//! ```
//! use dcol::mptcp::{AddrId, PmEvent, SubflowInfo, Token};
//!
//! let ev = PmEvent::SubClosed {
//!     token: Token(0xdead_beef),
//!     subflow: SubflowInfo {
//!         local_id: AddrId(1),
//!         remote_id: AddrId(0),
//!         local: "10.0.1.1:40000".parse().unwrap(),
//!         remote: "203.0.113.5:40001".parse().unwrap(),
//!         backup: false,
//!     },
//!     error: Some(111),
//! };
//! assert_eq!(ev.token(), Some(Token(0xdead_beef)));
//! assert!(!AddrId(1).is_initial() && AddrId::INITIAL.is_initial());
//! ```

use std::net::SocketAddr;
use std::time::Duration;

/// The MPTCP connection token the kernel uses to name a connection in events and
/// commands (RFC 8684 §3.2: a truncated hash of the key; locally unique).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u32);

/// An MPTCP address id (RFC 8684 §3.2 and §3.4.1): names a local or remote
/// address of a connection in MP_JOIN, ADD_ADDR and the path manager's
/// commands. Id 0 is the address of the initial subflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrId(pub u8);

impl AddrId {
    /// The initial subflow's address id (RFC 8684 §3.2).
    pub const INITIAL: AddrId = AddrId(0x0);

    /// Whether this is the initial subflow's id, which a command creating a
    /// subflow must not use.
    pub fn is_initial(self) -> bool {
        self == Self::INITIAL
    }
}

/// One subflow as events describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubflowInfo {
    /// Local address id ([`AddrId::INITIAL`] for the initial subflow).
    pub local_id: AddrId,
    /// Remote address id.
    pub remote_id: AddrId,
    /// Local address and port of the subflow.
    pub local: SocketAddr,
    /// Remote address and port of the subflow.
    pub remote: SocketAddr,
    /// Whether the subflow is flagged backup.
    pub backup: bool,
}

/// An event from the kernel's path manager (`mptcp_pm` family, group
/// `mptcp_pm_events`).
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
    /// Any other event type (ANNOUNCED, REMOVED, LISTENER_*), or a known one
    /// that lacked what its type needs; kept for logging.
    Other {
        /// The raw event type number.
        kind: u8,
        /// Connection token, when the event had one.
        token: Option<Token>,
    },
}

impl PmEvent {
    /// The connection the event is about, if it names one.
    pub fn token(&self) -> Option<Token> {
        match self {
            PmEvent::Created { token, .. }
            | PmEvent::Established { token, .. }
            | PmEvent::Closed { token }
            | PmEvent::SubEstablished { token, .. }
            | PmEvent::SubClosed { token, .. }
            | PmEvent::SubPriority { token, .. } => Some(*token),
            PmEvent::Other { token, .. } => *token,
        }
    }
}

/// A TCP subflow's local and remote address.
pub type FourTuple = (SocketAddr, SocketAddr);

/// Cumulative counters of one TCP subflow (from `struct tcp_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// `tcpi_bytes_acked`: bytes we sent that the peer acknowledged.
    pub bytes_acked: u64,
    /// `tcpi_bytes_received`: bytes we received.
    pub bytes_received: u64,
    /// `tcpi_segs_out`.
    pub segs_out: u32,
    /// `tcpi_total_retrans`.
    pub retrans: u32,
    /// `tcpi_rtt`: smoothed RTT.
    pub rtt: Duration,
    /// `tcpi_min_rtt`: the lowest RTT seen (propagation, without queueing).
    pub min_rtt: Duration,
    /// `tcpi_delivery_rate` in bytes/s.
    pub delivery_rate: u64,
}
