//! A waypoint as the client knows it: its configuration, whether it answers,
//! and for how long it refused new tunnels.

use std::time::{Duration, Instant};

use super::{vpn, PeerSpec};

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) spec: PeerSpec,
    pub(super) down_until: Option<Instant>,
    /// Full for us (it refused `NoPortsLeft` or `QuotaExceeded`): no new NAT
    /// tunnel is asked for until then. Unlike `down_until`, answers to
    /// renewals do not end it, and the peer shows up.
    pub(super) full_until: Option<Instant>,
    /// It refused us for its owner's policy (donation used up, evidence
    /// store full, over our request rate): no new tunnel is asked for until
    /// then. Answers to other requests (renewals of running detours) do not
    /// end it, unlike `down_until`, which only means "not answering".
    pub(super) refused_until: Option<Instant>,
    pub(super) last_rtt: Option<Duration>,
    /// The tunnel, for VPN peers.
    pub(super) vpn: Option<vpn::VpnPeer>,
}

impl Peer {
    pub(super) fn new(spec: PeerSpec) -> Peer {
        Peer {
            vpn: spec.vpn.then(vpn::VpnPeer::default),
            spec,
            down_until: None,
            full_until: None,
            refused_until: None,
            last_rtt: None,
        }
    }
}
