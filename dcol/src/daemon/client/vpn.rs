//! The client's tunnels to VPN waypoints: one WireGuard interface per
//! waypoint with a default route in the waypoint's own routing table and a
//! rule `from <tunnel address> lookup <table>`, so only subflows bound to
//! the tunnel address use it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use super::ClientDriver;
use crate::sys::rtnl::Rtnl;
use crate::sys::wg::{WgDevice, WgPeer};
use crate::sys::SysError;
use crate::trust::wg::WgKey;
use crate::waypoint::vpn::wg_mtu;

/// A client's tunnel to one VPN waypoint.
pub(super) struct ClientVpn {
    dev: WgDevice,
    /// The rules that route the tunnel address's traffic (source, table).
    rules: Vec<(IpAddr, u32)>,
}

impl ClientVpn {
    /// Removes the rules and the interface (its routes go with it).
    fn down(self) {
        match Rtnl::open() {
            Ok(mut rt) => {
                for (src, table) in &self.rules {
                    if let Err(e) = rt.del_rule(*src, *table, *table) {
                        log::warn!("removing rule from {src}: {e}");
                    }
                }
            }
            Err(e) => log::warn!("rtnetlink: {e}"),
        }
        self.dev.destroy();
    }

    /// Key, the waypoint as its peer, addresses, routes and rules.
    fn configure(
        &mut self,
        address: (Ipv4Addr, Option<Ipv6Addr>),
        wg_key: WgKey,
        endpoint: SocketAddr,
        table: u32,
    ) -> Result<(), SysError> {
        let (address, address6) = address;
        let name = self.dev.name().to_owned();
        let mut allowed = vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)];
        if address6.is_some() {
            allowed.push((IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0));
        }
        self.dev.set_peer(&WgPeer {
            key: wg_key,
            endpoint: Some(endpoint),
            allowed,
            keepalive: Some(25),
        })?;
        let mut rt = Rtnl::open()?;
        rt.add_addr(&name, IpAddr::V4(address), 32)?;
        if let Some(a6) = address6 {
            rt.add_addr(&name, IpAddr::V6(a6), 128)?;
        }
        rt.set_mtu(&name, wg_mtu(endpoint.is_ipv6()))?;
        rt.set_up(&name)?;
        rt.add_default_route(&name, true, table)?;
        rt.add_rule(IpAddr::V4(address), table, table)?;
        self.rules.push((IpAddr::V4(address), table));
        if let Some(a6) = address6 {
            rt.add_default_route(&name, false, table)?;
            rt.add_rule(IpAddr::V6(a6), table, table)?;
            self.rules.push((IpAddr::V6(a6), table));
        }
        Ok(())
    }
}

impl ClientDriver {
    /// Brings the tunnel to VPN peer `peer` up (replacing an old one); a
    /// failure is the core's to hear.
    pub(super) fn vpn_up(
        &mut self,
        peer: usize,
        address: Ipv4Addr,
        address6: Option<Ipv6Addr>,
        wg_key: WgKey,
        endpoint: SocketAddr,
    ) {
        let name = self.core.peer_name(peer).to_owned();
        if let Some(old) = self.vpns.remove(&peer) {
            old.down();
        }
        let ifname = format!("{}{peer}", self.vpn_prefix);
        let table = self.vpn_table.saturating_add(peer as u32);
        let r = WgDevice::create(&ifname, &self.wg_secret, 0).and_then(|dev| {
            let mut v = ClientVpn {
                dev,
                rules: Vec::new(),
            };
            match v.configure((address, address6), wg_key, endpoint, table) {
                Ok(()) => Ok(v),
                Err(e) => {
                    v.down();
                    Err(e)
                }
            }
        });
        match r {
            Ok(v) => {
                log::info!(
                    "VPN tunnel to {name} up: {} ({}) address {address}",
                    v.dev.name(),
                    v.dev.backend()
                );
                self.vpns.insert(peer, v);
            }
            Err(e) => {
                log::warn!("VPN tunnel to {name}: {e}");
                self.core.vpn_failed(Instant::now(), peer, &e.to_string());
            }
        }
    }

    /// Takes the tunnel to VPN peer `peer` down.
    pub(super) fn vpn_down(&mut self, peer: usize) {
        if let Some(v) = self.vpns.remove(&peer) {
            let name = v.dev.name().to_owned();
            v.down();
            log::info!("VPN tunnel {name} down");
        }
    }

    /// Takes every tunnel down (the role stops).
    pub(super) fn vpns_down(&mut self) {
        for (_, v) in self.vpns.drain() {
            v.down();
        }
    }
}
