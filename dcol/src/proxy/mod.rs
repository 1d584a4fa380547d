//! The transparent LAN proxy's decisions, without I/O: which proxied
//! connections may get detours, and when ([`Gate`]), from the policy and what
//! the client's first bytes say ([`tls`]); how much of the router it may
//! take, and which destinations it never relays to ([`limits`]); whether new
//! LAN flows are intercepted at all right now ([`admission`]). The relay
//! itself (sockets, epoll, `splice`) is glue in [`crate::sys::relay`], the
//! interception rules in [`crate::sys::lan`].

pub mod admission;
pub mod convert;
pub mod limits;
pub mod tls;

use serde::{Deserialize, Serialize};

use crate::types::DetourPolicy;
use tls::Verdict;

/// Whether a proxied connection may have detours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Detours allowed.
    Open,
    /// Not yet: waiting for the client's TLS handshake to pass.
    Waiting,
    /// Never, and why.
    Shut(&'static str),
}

impl Gate {
    /// The gate of a new connection.
    pub fn initial(policy: DetourPolicy) -> Gate {
        match policy {
            DetourPolicy::All => Gate::Open,
            DetourPolicy::None => Gate::Shut("detour_policy 'none'"),
            DetourPolicy::TlsAfterHandshake => Gate::Waiting,
        }
    }

    /// The gate once the client's bytes said `verdict` (policy
    /// `tls-after-handshake`; the other policies never wait).
    pub fn after(self, verdict: Verdict) -> Gate {
        if self != Gate::Waiting {
            return self;
        }
        match verdict {
            Verdict::Pending => Gate::Waiting,
            Verdict::HandshakeDone => Gate::Open,
            Verdict::Plaintext => Gate::Shut("plaintext"),
            Verdict::Malformed(why) => Gate::Shut(why),
        }
    }

    /// Short text for logs and status.
    pub fn describe(self) -> &'static str {
        match self {
            Gate::Open => "open",
            Gate::Waiting => "waiting for the TLS handshake",
            Gate::Shut(why) => why,
        }
    }
}

/// The proxy's counters since the daemon started (part of the status JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Connections open now.
    pub active: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Refused: the LAN source was over `max_conns_per_host` (IPv4
    /// address) or `max_conns_per_prefix` (IPv6 /64) in the relay's own
    /// count. Flows over the kernel's caps go direct and are not counted.
    pub refused_limit: u64,
    /// Refused: the destination is special-purpose space not allowed by
    /// `proxy_allow_destination` (the kernel rules keep such flows away;
    /// this counts what got past them).
    #[serde(default)]
    pub refused_special: u64,
    /// Refused: connected to the proxy port directly (not redirected).
    pub refused_direct: u64,
    /// The server could not be reached (the LAN host got a reset).
    pub connect_failed: u64,
    /// Opened as plain TCP: the server is remembered as not speaking MPTCP.
    pub plain_tcp: u64,
    /// Fell back to TCP (server without MPTCP).
    pub fell_back: u64,
    /// Ended by a reset (from either side, or idle).
    pub resets: u64,
    /// Bytes from LAN devices to servers.
    pub bytes_up: u64,
    /// Bytes from servers to LAN devices.
    pub bytes_down: u64,
    /// Servers remembered as plain TCP.
    pub fallback_cached: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        use DetourPolicy::*;
        assert_eq!(Gate::initial(All), Gate::Open);
        assert!(matches!(Gate::initial(None), Gate::Shut(_)));
        let w = Gate::initial(TlsAfterHandshake);
        assert_eq!(w, Gate::Waiting);
        assert_eq!(w.after(Verdict::Pending), Gate::Waiting);
        assert_eq!(w.after(Verdict::HandshakeDone), Gate::Open);
        assert_eq!(w.after(Verdict::Plaintext), Gate::Shut("plaintext"));
        assert!(matches!(w.after(Verdict::Malformed("x")), Gate::Shut("x")));
        // A shut gate stays shut; an open one open.
        assert!(matches!(
            Gate::initial(None).after(Verdict::HandshakeDone),
            Gate::Shut(_)
        ));
        assert_eq!(Gate::Open.after(Verdict::Plaintext), Gate::Open);
    }
}
