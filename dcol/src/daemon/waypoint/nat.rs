//! The waypoint core's decisions carried out: replies sent, NAT map
//! elements added, refreshed and removed, the conntrack flows of ended
//! tunnels deleted (with their byte counts kept as evidence).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::WaypointDriver;
use crate::proto::Nonce;
use crate::sys::conntrack::{self, Cleaned, Cleaner, Deleted};
use crate::sys::nft::NatElement;
use crate::sys::SysError;
use crate::waypoint::{Decision, Lease};

fn element(l: &Lease) -> NatElement {
    NatElement {
        client: l.client,
        port: l.port,
        destination: l.destination,
        expires_in: None,
    }
}

/// A granted lease and what its grant needs.
struct Grant {
    lease: Lease,
    timeout: Duration,
    to: SocketAddr,
    bytes: Vec<u8>,
    /// It joined a live lease: its element exists and is only refreshed.
    joined: bool,
}

impl WaypointDriver {
    /// Carries out `d`, the core's answer to `request` from `from` on
    /// socket `i`.
    pub(super) fn execute(
        &mut self,
        i: usize,
        now: Instant,
        wall: u64,
        from: SocketAddr,
        d: Decision,
        request: &[u8],
    ) {
        match d {
            d @ (Decision::VpnInstall { .. }
            | Decision::VpnRefresh { .. }
            | Decision::VpnRemove { .. }) => self.execute_vpn(i, wall, from, d, request),
            Decision::Drop { source } => {
                if self.log.allow(now) {
                    log::warn!("waypoint: {source} over its rate: datagram dropped unread");
                }
            }
            Decision::Ignore { reason } => {
                if self.log.allow(now) {
                    log::warn!("waypoint: ignored datagram from {from}: {reason}");
                }
            }
            Decision::Reply { to, bytes, refused } => {
                match refused {
                    Some(why) => {
                        if self.log.allow(now) {
                            log::warn!("waypoint: refused request from {from}: {why}");
                        }
                    }
                    None => log::debug!("waypoint: repeated request from {from}, same reply"),
                }
                self.send(i, to, &bytes);
            }
            d @ (Decision::Install { .. } | Decision::Join { .. }) => {
                let joined = matches!(d, Decision::Join { .. });
                if let Decision::Install {
                    lease,
                    timeout,
                    to,
                    bytes,
                    nonce,
                }
                | Decision::Join {
                    lease,
                    timeout,
                    to,
                    bytes,
                    nonce,
                } = d
                {
                    let g = Grant {
                        lease,
                        timeout,
                        to,
                        bytes,
                        joined,
                    };
                    self.install(i, (now, wall), from, g, nonce, request);
                }
            }
            Decision::Leave { lease, to, bytes } => {
                self.share_ended(&lease, "released");
                self.send(i, to, &bytes);
            }
            Decision::Refresh {
                lease,
                timeout,
                to,
                bytes,
            } => self.refresh(i, &lease, timeout, to, &bytes),
            Decision::Remove { lease, to, bytes } => self.remove(i, &lease, to, &bytes),
        }
    }

    /// Adds the map element of a new lease (refreshes it, for a grant that
    /// joined a live one), then sends the grant; a kernel failure withdraws
    /// the grant and refuses instead.
    fn install(
        &mut self,
        i: usize,
        (now, wall): (Instant, u64),
        from: SocketAddr,
        g: Grant,
        nonce: Nonce,
        request: &[u8],
    ) {
        let Some(nat) = self.nat.as_mut() else { return };
        let lease = &g.lease;
        let done = if g.joined {
            nat.refresh(&element(lease), g.timeout)
        } else {
            nat.add(&element(lease), g.timeout)
        };
        match done {
            Ok(()) => {
                let shared = match lease.holders.len() {
                    1 => String::new(),
                    n => format!(" (shared by {n})"),
                };
                log::info!(
                    "granted {} ({}) {}:{} -> {} for {}s{shared}",
                    lease.member_name,
                    lease.member,
                    lease.client,
                    lease.port,
                    lease.destination,
                    g.timeout.as_secs()
                );
                self.keep_evidence(
                    wall,
                    from,
                    (lease.member, &lease.member_name),
                    format!("nat {} -> {}", lease.port, lease.destination),
                    None,
                    request,
                );
                self.send(i, g.to, &g.bytes);
            }
            Err(e) => {
                log::error!("installing NAT element: {e}");
                let r = self.core.abort(
                    now,
                    wall,
                    lease,
                    g.to,
                    nonce,
                    g.bytes.len(),
                    "internal error",
                );
                if let Decision::Reply { to, bytes, .. } = r {
                    self.send(i, to, &bytes);
                }
            }
        }
    }

    fn refresh(
        &mut self,
        i: usize,
        lease: &Lease,
        timeout: Duration,
        to: SocketAddr,
        bytes: &[u8],
    ) {
        let Some(nat) = self.nat.as_mut() else { return };
        match nat.refresh(&element(lease), timeout) {
            Ok(()) => {
                log::debug!(
                    "renewed {}:{} for {}",
                    lease.client,
                    lease.port,
                    lease.member_name
                );
                self.send(i, to, bytes);
            }
            Err(e) => log::error!(
                "refreshing NAT element {}:{}: {e}",
                lease.client,
                lease.port
            ),
        }
    }

    fn remove(&mut self, i: usize, lease: &Lease, to: SocketAddr, bytes: &[u8]) {
        let Some(nat) = self.nat.as_mut() else { return };
        if let Err(e) = nat.remove(lease.client, lease.port) {
            log::warn!("removing NAT element: {e}");
        }
        self.drop_flows(lease, "released");
        log::info!(
            "released {}:{} of {}",
            lease.client,
            lease.port,
            lease.member_name
        );
        self.send(i, to, bytes);
    }

    /// One holder of a shared lease is gone (`why`) while others keep it:
    /// nothing changes in the kernel; its end record is written (the
    /// tunnel's bytes go on the record of the lease's end).
    pub(super) fn share_ended(&self, l: &Lease, why: &str) {
        log::info!(
            "{why}: one share of {} {}:{} -> {} ({} left)",
            l.member_name,
            l.client,
            l.port,
            l.destination,
            l.holders.len()
        );
        self.keep_evidence(
            super::wall_ms(),
            SocketAddr::new(l.client, 0),
            (l.member, &l.member_name),
            format!("end nat {} -> {}: {why} (shared)", l.port, l.destination),
            None,
            &[],
        );
    }

    /// Removes the NAT elements and flows of leases ended by a revocation.
    pub(super) fn end_leases(&mut self, ended: &[Lease]) {
        for l in ended {
            self.end_lease(l, "revoked");
        }
        self.flush_ended();
    }

    /// Removes the NAT element and the flows of an ended lease.
    pub(super) fn end_lease(&mut self, l: &Lease, why: &str) {
        log::info!(
            "{why}: {} {}:{} -> {}",
            l.member_name,
            l.client,
            l.port,
            l.destination
        );
        if let Some(nat) = &mut self.nat {
            if let Err(e) = nat.remove(l.client, l.port) {
                log::warn!("removing the NAT element of {}:{}: {e}", l.client, l.port);
            }
        }
        self.drop_flows(l, why);
    }

    /// A NAT lease ended (`why`): its conntrack flows are deleted (and,
    /// with the evidence log on, the bytes they carried recorded) at the end
    /// of this loop turn, together with the other leases ended in it.
    fn drop_flows(&mut self, l: &Lease, why: &str) {
        self.ended.push((l.clone(), why.to_owned()));
    }

    /// Hands the conntrack flows of the leases ended since the last call
    /// to the cleaner's thread, as one batch (one dump for all of them).
    /// Their end records are written when it reports ([`Self::cleaned`]).
    pub(super) fn flush_ended(&mut self) {
        if self.ended.is_empty() {
            return;
        }
        let ended = std::mem::take(&mut self.ended);
        let tunnels: Vec<_> = ended.iter().map(|(l, _)| (l.client, l.port)).collect();
        match self.cleaner.as_mut() {
            Some(c) => {
                let id = c.submit(tunnels);
                self.ending.insert(id, (super::wall_ms(), ended));
            }
            // Only while the driver is dropped, after the thread ended.
            None => {
                let per = deleted(conntrack::delete_batch(&tunnels), tunnels.len());
                self.end_records(super::wall_ms(), &ended, &per);
            }
        }
    }

    /// The cleaner's thread deleted the flows of some batches.
    pub(super) fn cleaned(&mut self) {
        let done = self.cleaner.as_mut().map(Cleaner::done).unwrap_or_default();
        for c in done {
            self.record_cleaned(c);
        }
    }

    /// Logs what `c` deleted and writes the end records of its leases.
    pub(super) fn record_cleaned(&mut self, c: Cleaned) {
        let ended: Vec<(u64, Vec<(Lease, String)>)> = c
            .batches
            .iter()
            .filter_map(|id| self.ending.remove(id))
            .collect();
        let per = deleted(c.result, ended.iter().map(|(_, e)| e.len()).sum());
        for (wall, e) in ended {
            self.end_records(wall, &e, &per);
        }
    }

    /// Logs the flows deleted for each of `ended` and writes its end record
    /// (with the bytes its flows carried).
    fn end_records(&self, wall: u64, ended: &[(Lease, String)], per: &Deleted) {
        for (l, why) in ended {
            let (n, bytes) = per.of(l.client, l.port);
            if n > 0 {
                log::info!("deleted {n} conntrack flow(s) of {}:{}", l.client, l.port);
            }
            // One end record per holder left, as there was one grant record
            // each; the tunnel's bytes go on the first.
            for k in 0..l.holders.len().max(1) {
                self.keep_evidence(
                    wall,
                    SocketAddr::new(l.client, 0),
                    (l.member, &l.member_name),
                    format!("end nat {} -> {}: {why}", l.port, l.destination),
                    (k == 0).then_some(bytes),
                    &[],
                );
            }
        }
    }
}

/// What a cleanup of `n` tunnels deleted; a failure is logged (the flows
/// then live on until conntrack times them out; their map elements are
/// gone, so no new flow starts).
fn deleted(result: Result<Deleted, SysError>, n: usize) -> Deleted {
    result.unwrap_or_else(|e| {
        log::warn!("conntrack cleanup of {n} ended tunnel(s): {e}");
        Deleted::default()
    })
}
