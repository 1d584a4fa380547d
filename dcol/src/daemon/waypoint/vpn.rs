//! The waypoint's VPN tunnels: one WireGuard interface with an address of
//! the VPN subnet, its firewall table, and a peer per member with a lease.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{DaemonError, WaypointDriver};
use crate::config::{Config, WaypointConfig};
use crate::control;
use crate::daemon::identity::Identity;
use crate::sys::rtnl::Rtnl;
use crate::sys::vpnfw::{self, VpnFirewall};
use crate::sys::wg::{WgDevice, WgPeer};
use crate::trust;
use crate::waypoint::vpn::{wg_mtu, VpnLease};
use crate::waypoint::{Decision, VpnSettings};

/// The VPN firewall's share of the waypoint's destination rules.
pub(super) fn policy(w: &WaypointConfig) -> vpnfw::Policy {
    vpnfw::Policy {
        allow: w.allow_destination.clone(),
        deny_ports: w.deny_port.clone(),
    }
}

impl WaypointDriver {
    /// Creates the WireGuard interface, its addresses and its firewall.
    pub(super) fn start_vpn(&mut self, cfg: &Config, id: &Identity) -> Result<(), DaemonError> {
        let w = &cfg.waypoint;
        let Some(subnet) = &w.vpn_subnet else {
            return Ok(());
        };
        let secret = trust::wg::secret(&id.key);
        let dev = WgDevice::create(&w.vpn_interface, &secret, w.vpn_port)?;
        let vpn: VpnSettings = super::settings(cfg, id).vpn.expect("subnet set");
        let mut rt = Rtnl::open()?;
        let r = rt
            .add_addr(
                &w.vpn_interface,
                IpAddr::V4(vpn.own_address()),
                subnet.prefix,
            )
            .and_then(|()| match (vpn.own_address6(), &w.vpn_subnet6) {
                (Some(a), Some(s6)) => rt.add_addr(&w.vpn_interface, IpAddr::V6(a), s6.prefix),
                _ => Ok(()),
            })
            // Its members reach it over IPv6 too when it listens there.
            .and_then(|()| {
                rt.set_mtu(
                    &w.vpn_interface,
                    wg_mtu(w.listen.iter().any(|l| l.is_ipv6())),
                )
            })
            .and_then(|()| rt.set_up(&w.vpn_interface));
        if let Err(e) = r {
            dev.destroy();
            return Err(e.into());
        }
        log::info!(
            "waypoint: VPN tunnels on {} ({}, key {}, port {}), subnet {subnet}",
            w.vpn_interface,
            dev.backend(),
            trust::wg::to_base64(&vpn.wg_key),
            w.vpn_port
        );
        self.wg = Some(dev);
        let mut fw = VpnFirewall::create(
            &format!("{}_vpn", w.table),
            &w.vpn_interface,
            subnet,
            w.vpn_subnet6.as_ref(),
            &policy(w),
        )?;
        // Before it is kept: Drop removes a table the role holds.
        let r = fw.set_wan(&self.wan);
        self.vpnfw = Some(fw);
        r?;
        Ok(())
    }

    /// Removes the firewall table, every peer (keeping their byte counts)
    /// and the interface.
    pub(super) fn stop_vpn(&mut self) {
        if let Some(fw) = self.vpnfw.take() {
            if let Err(e) = fw.destroy() {
                log::error!("removing the VPN firewall table: {e}");
            }
        }
        let live: Vec<VpnLease> = self.core.vpn_leases().cloned().collect();
        for l in &live {
            self.end_vpn(l, "waypoint stopped");
        }
        if let Some(dev) = self.wg.take() {
            let n = live.len();
            dev.destroy();
            log::info!("VPN interface removed ({n} peer(s))");
        }
    }

    pub(super) fn expire_vpn(&mut self, now: Instant) {
        for l in self.core.expire_vpn(now) {
            log::info!("VPN lease ended: {} {}", l.member_name, l.address);
            self.end_vpn(&l, "ended");
        }
    }

    /// Removes an ended VPN lease's peer and keeps its byte count (the
    /// peer's WireGuard counters, both ways) as evidence.
    fn end_vpn(&mut self, l: &VpnLease, why: &str) {
        let mut bytes = None;
        if let Some(dev) = self.wg.as_mut() {
            match dev.peer_bytes(&l.wg_key) {
                Ok(b) => bytes = b.map(|(rx, tx)| rx.saturating_add(tx)),
                Err(e) => log::warn!("VPN byte count of {}: {e}", l.member_name),
            }
            if let Err(e) = dev.remove_peer(&l.wg_key) {
                log::warn!("removing VPN peer of {}: {e}", l.member_name);
            }
        }
        self.keep_evidence(
            super::wall_ms(),
            SocketAddr::new(l.client, 0),
            (l.member, &l.member_name),
            format!("end vpn {}: {why}", l.address),
            bytes,
            &[],
        );
    }

    /// Carries out a VPN decision for `request` from `from` on socket `i`.
    pub(super) fn execute_vpn(
        &mut self,
        i: usize,
        wall: u64,
        from: SocketAddr,
        d: Decision,
        request: &[u8],
    ) {
        match d {
            Decision::VpnInstall {
                lease,
                replaced,
                to,
                bytes,
                nonce,
            } => {
                let Some(dev) = self.wg.as_mut() else { return };
                if let Some(old) = replaced {
                    let _ = dev.remove_peer(&old);
                }
                match add_peer(dev, &lease) {
                    Ok(()) => {
                        self.keep_evidence(
                            wall,
                            from,
                            (lease.member, &lease.member_name),
                            format!("vpn {}", lease.address),
                            None,
                            request,
                        );
                        self.send(i, to, &bytes);
                    }
                    Err(e) => {
                        log::error!("adding VPN peer: {e}");
                        let r = self.core.abort_vpn(
                            wall,
                            &lease,
                            to,
                            nonce,
                            bytes.len(),
                            "internal error",
                        );
                        if let Decision::Reply { to, bytes, .. } = r {
                            self.send(i, to, &bytes);
                        }
                    }
                }
            }
            Decision::VpnRefresh { lease, to, bytes } => {
                log::debug!("renewed VPN of {}", lease.member_name);
                self.send(i, to, &bytes);
            }
            Decision::VpnRemove { lease, to, bytes } => {
                self.end_vpn(&lease, "released");
                log::info!("released VPN of {} ({})", lease.member_name, lease.address);
                self.send(i, to, &bytes);
            }
            _ => {}
        }
    }

    /// The `vpn_peers` part of the status.
    pub(super) fn vpn_status(&self, now: Instant) -> Vec<control::VpnPeerStatus> {
        self.core
            .vpn_leases()
            .map(|l| control::VpnPeerStatus {
                member: l.member_name.clone(),
                member_id: l.member.to_string(),
                address: l.address.to_string(),
                client: l.client.to_string(),
                wg_key: trust::wg::to_base64(&l.wg_key),
                age_s: now.saturating_duration_since(l.granted_at).as_secs(),
                expires_in_s: l.expires_at.saturating_duration_since(now).as_secs(),
            })
            .collect()
    }
}

/// Adds the WireGuard peer of a granted lease (its addresses only).
fn add_peer(dev: &mut WgDevice, lease: &VpnLease) -> Result<(), crate::sys::SysError> {
    let mut allowed = vec![(IpAddr::V4(lease.address), 32)];
    if let Some(a6) = lease.address6 {
        allowed.push((IpAddr::V6(a6), 128));
    }
    dev.set_peer(&WgPeer {
        key: lease.wg_key,
        endpoint: None,
        allowed,
        keepalive: None,
    })?;
    log::info!(
        "granted VPN to {} ({}) from {}: {} key {}",
        lease.member_name,
        lease.member,
        lease.client,
        lease.address,
        trust::wg::to_base64(&lease.wg_key)
    );
    Ok(())
}
