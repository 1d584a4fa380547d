//! The owner's policy on an authenticated request: NAT detours (new,
//! renewed, released) and VPN leases, each answered with a signed reply
//! that fits the request.

use super::*;

impl Waypoint {
    /// A new NAT detour to `destination`: the owner's destination policy,
    /// then a lease on a free port.
    pub(super) fn decide_nat(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        req: &Request,
        limit: usize,
        destination: SocketAddr,
    ) -> Decision {
        let client = from.ip();
        let (member, nonce) = (req.cert.member, req.body.nonce);
        let lease_len = self.settings.lease;
        if let Err(why) =
            policy::check_destination(destination, &self.settings.destinations, &self.routes)
        {
            let d = format!("{destination}: {why}");
            return self.refusal(
                wall_ms,
                from,
                nonce,
                RefusalReason::DestinationNotAllowed,
                d,
                limit,
            );
        }
        match self.leases.grant(
            now,
            nonce,
            (member, &req.cert.name),
            (client, destination),
            lease_len,
        ) {
            Ok(granted) => {
                let (Granted::New(lease) | Granted::Joined(lease)) = &granted;
                let bytes = self.grant_bytes(wall_ms, nonce, lease.port, client);
                if bytes.len() > limit {
                    self.leases.withdraw(now, (lease.client, lease.port), nonce);
                    return self.ignore("grant would be larger than the request");
                }
                self.count_grant();
                match granted {
                    Granted::New(lease) => Decision::Install {
                        lease,
                        timeout: lease_len,
                        to: from,
                        bytes,
                        nonce,
                    },
                    Granted::Joined(lease) => Decision::Join {
                        lease,
                        timeout: lease_len,
                        to: from,
                        bytes,
                        nonce,
                    },
                }
            }
            Err(e) => {
                let (reason, d) = match e {
                    LeaseError::QuotaExceeded => (
                        RefusalReason::QuotaExceeded,
                        format!(
                            "{} holds {} tunnels",
                            req.cert.name, self.settings.max_per_member
                        ),
                    ),
                    LeaseError::NoPortsLeft => {
                        (RefusalReason::NoPortsLeft, "port range exhausted".into())
                    }
                };
                self.refusal(wall_ms, from, nonce, reason, d, limit)
            }
        }
    }

    /// Renewing the NAT lease on `port` (to `destination`, granted to nonce `lease`).
    pub(super) fn decide_renew(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        req: &Request,
        limit: usize,
        (port, destination, lease): (u16, SocketAddr, Nonce),
    ) -> Decision {
        let client = from.ip();
        let (member, nonce) = (req.cert.member, req.body.nonce);
        let lease_len = self.settings.lease;
        let owned = self
            .leases
            .lookup(client, port)
            .is_some_and(|l| l.member == member && l.destination == destination);
        let renewed = owned
            .then(|| {
                self.leases
                    .renew(now, (client, port), lease, now + lease_len)
                    .cloned()
            })
            .flatten();
        let Some(lease) = renewed else {
            let d = format!("no lease on port {port} for {client}");
            return self.refusal(wall_ms, from, nonce, RefusalReason::UnknownLease, d, limit);
        };
        let bytes = self.grant_bytes(wall_ms, nonce, port, client);
        self.fit(bytes, limit, |bytes| Decision::Refresh {
            lease,
            timeout: lease_len,
            to: from,
            bytes,
        })
    }

    /// Releasing the NAT lease on `port` (granted to nonce `lease`).
    pub(super) fn decide_release(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        req: &Request,
        limit: usize,
        (port, lease): (u16, Nonce),
    ) -> Decision {
        let client = from.ip();
        let (member, nonce) = (req.cert.member, req.body.nonce);
        let owned = self
            .leases
            .lookup(client, port)
            .is_some_and(|l| l.member == member && l.held_by(lease));
        let left = owned
            .then(|| self.leases.leave(now, (client, port), lease))
            .flatten();
        let Some(left) = left else {
            let d = format!("no lease on port {port} for {client}");
            return self.refusal(wall_ms, from, nonce, RefusalReason::UnknownLease, d, limit);
        };
        let bytes = self.response_bytes(
            wall_ms,
            nonce,
            Outcome::Granted {
                port,
                lease_secs: 0,
                observed: client,
            },
        );
        self.fit(bytes, limit, |bytes| match left {
            Left::Ended(lease) => Decision::Remove {
                lease,
                to: from,
                bytes,
            },
            Left::Stays(lease) => Decision::Leave {
                lease,
                to: from,
                bytes,
            },
        })
    }

    pub(super) fn decide_vpn(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        req: &Request,
        limit: usize,
    ) -> Decision {
        let nonce = req.body.nonce;
        let member = req.cert.member;
        let lease_len = self.settings.lease;
        let Some(table) = self.vpn.as_mut() else {
            let d = "this waypoint has no vpn_subnet".to_owned();
            return self.refusal(wall_ms, from, nonce, RefusalReason::NoVpn, d, limit);
        };
        match req.body.kind {
            RequestKind::Vpn => self.vpn_grant(now, wall_ms, from, req, limit),
            RequestKind::VpnRenew { lease } | RequestKind::VpnRelease { lease } => {
                if table.lookup(member, lease).is_none() {
                    let d = format!("no VPN lease of {}", req.cert.name);
                    return self.refusal(
                        wall_ms,
                        from,
                        nonce,
                        RefusalReason::UnknownLease,
                        d,
                        limit,
                    );
                }
                if matches!(req.body.kind, RequestKind::VpnRenew { .. }) {
                    let l = table
                        .renew(member, now + lease_len)
                        .cloned()
                        .expect("looked up");
                    let bytes = self.vpn_grant_bytes(wall_ms, nonce, &l, lease_len);
                    self.fit(bytes, limit, |bytes| Decision::VpnRefresh {
                        lease: l,
                        to: from,
                        bytes,
                    })
                } else {
                    let l = table.end(member).expect("looked up");
                    let bytes = self.vpn_grant_bytes(wall_ms, nonce, &l, Duration::ZERO);
                    self.fit(bytes, limit, |bytes| Decision::VpnRemove {
                        lease: l,
                        to: from,
                        bytes,
                    })
                }
            }
            _ => unreachable!("only VPN requests come here"),
        }
    }

    /// A new VPN lease: the member's WireGuard key and a free address.
    pub(super) fn vpn_grant(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        req: &Request,
        limit: usize,
    ) -> Decision {
        let (member, nonce) = (req.cert.member, req.body.nonce);
        let lease_len = self.settings.lease;
        let table = self.vpn.as_mut().expect("decide_vpn checked the VPN table");
        let Some(wg_key) = req.cert.wg_key else {
            let d = format!("{}'s certificate", req.cert.name);
            return self.refusal(
                wall_ms,
                from,
                nonce,
                RefusalReason::NoWireGuardKey,
                d,
                limit,
            );
        };
        let Some((lease, replaced)) = table.grant(
            now,
            nonce,
            member,
            &req.cert.name,
            wg_key,
            from.ip(),
            lease_len,
        ) else {
            let d = "no free address".to_owned();
            return self.refusal(
                wall_ms,
                from,
                nonce,
                RefusalReason::NoAddressesLeft,
                d,
                limit,
            );
        };
        let bytes = self.vpn_grant_bytes(wall_ms, nonce, &lease, lease_len);
        self.fit(bytes, limit, |bytes| Decision::VpnInstall {
            lease,
            replaced,
            to: from,
            bytes,
            nonce,
        })
    }

    pub(super) fn vpn_grant_bytes(
        &mut self,
        wall_ms: u64,
        nonce: Nonce,
        l: &VpnLease,
        len: Duration,
    ) -> Vec<u8> {
        let (wg_key, port) = self
            .vpn
            .as_ref()
            .map(|t| (t.settings().wg_key, t.settings().port))
            .unwrap_or_default();
        self.response_bytes(
            wall_ms,
            nonce,
            Outcome::VpnGranted {
                address: l.address,
                address6: l.address6,
                wg_key,
                port,
                lease_secs: u32::try_from(len.as_secs()).unwrap_or(u32::MAX),
            },
        )
    }
}
