//! The `client` part of `dcol status`: connections with their subflows and
//! measurements, the peers, the scoreboard.

use std::net::SocketAddr;
use std::time::Instant;

use super::ClientDriver;
use crate::client::{self, strategy, Conn, Detour};
use crate::control;
use crate::types::TunnelKind;

fn tunnel_name(t: TunnelKind) -> &'static str {
    match t {
        TunnelKind::Nat => "nat",
        TunnelKind::Vpn => "vpn",
    }
}

/// A subflow's measurements as status shows them (`null` before any).
fn meter_status(m: &strategy::Meter) -> control::SubflowStatus {
    let measured = m.rtt.is_some();
    control::SubflowStatus {
        path: String::new(),
        waypoint: None,
        tunnel: None,
        local: None,
        remote: None,
        state: String::new(),
        detail: None,
        setup_ms: None,
        role: None,
        rate_kbit: measured.then_some(m.rate_bps / 1000.0),
        rtt_ms: m.rtt.map(|r| r.as_secs_f64() * 1000.0),
        loss_pct: measured.then_some(m.loss * 100.0),
        bytes: measured.then_some(m.bytes),
    }
}

fn conn_state(conn: &Conn) -> String {
    if conn.established_at.is_some() {
        "established"
    } else {
        "connecting"
    }
    .into()
}

impl ClientDriver {
    /// The `client` part of `dcol status` (its `lan_proxy` is the LAN
    /// proxy's to fill in).
    pub(super) fn status_doc(&self, now: Instant) -> control::ClientStatus {
        let board = self.core.scoreboard();
        let scores = board
            .entries()
            .filter(|(_, p, _)| *p != "*")
            .filter_map(|(w, p, s)| {
                Some(control::ScoreStatus {
                    waypoint: w.to_owned(),
                    prefix: p.to_owned(),
                    mean: s.mean()?,
                    weight: s.weight,
                    count: s.count,
                })
            })
            .collect();
        control::ClientStatus {
            connections: self.core.conns().map(|c| self.conn_status(c)).collect(),
            peers: self.peer_status(now),
            lan_proxy: None,
            scores,
        }
    }

    fn conn_status(&self, conn: &Conn) -> control::ConnectionStatus {
        let mut subflows = vec![control::SubflowStatus {
            path: "direct".into(),
            waypoint: None,
            tunnel: None,
            local: Some(conn.local.to_string()),
            remote: Some(conn.remote.to_string()),
            state: conn_state(conn),
            detail: None,
            setup_ms: None,
            role: None,
            ..meter_status(&conn.direct)
        }];
        subflows.extend(conn.detours.iter().map(|d| self.detour_status(conn, d)));
        control::ConnectionStatus {
            token: format!("{:#010x}", conn.token.0),
            local: conn.local.to_string(),
            remote: conn.remote.to_string(),
            state: conn_state(conn),
            lan_client: conn.lan.map(|l| l.to_string()),
            detour_gate: conn.gate.describe().to_owned(),
            subflows,
        }
    }

    fn detour_status(&self, conn: &Conn, d: &Detour) -> control::SubflowStatus {
        let detail = match &d.state {
            client::DetourState::Failed(why) => Some(why.clone()),
            _ => None,
        };
        control::SubflowStatus {
            path: "detour".into(),
            waypoint: Some(self.core.peer_name(d.peer).to_owned()),
            tunnel: Some(tunnel_name(self.tunnels[d.peer]).into()),
            local: d
                .local_port
                .map(|p| SocketAddr::new(d.local_ip(conn.local.ip()), p).to_string()),
            remote: self.core.detour_remote(d).map(|r| r.to_string()),
            state: d.state.name().into(),
            detail: detail.or_else(|| {
                d.judge
                    .as_ref()
                    .filter(|j| j.role == strategy::Role::Backup)
                    .and_then(|j| j.why.clone())
            }),
            setup_ms: d.setup.map(|s| s.as_millis() as u64),
            role: d
                .judge
                .as_ref()
                .filter(|_| d.state == client::DetourState::Established)
                .map(|j| j.role.name().to_owned()),
            ..d.judge
                .as_ref()
                .map(|j| meter_status(&j.meter))
                .unwrap_or_else(|| meter_status(&Default::default()))
        }
    }

    fn peer_status(&self, now: Instant) -> Vec<control::PeerStatus> {
        let board = self.core.scoreboard();
        self.core
            .peers(now)
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let vpn = self.core.vpn_state(i);
                control::PeerStatus {
                    address: p.address.to_string(),
                    tunnel: tunnel_name(self.tunnels[i]).into(),
                    up: p.up,
                    rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    vpn_state: vpn.map(|v| {
                        match v.state {
                            client::VpnState::Idle => "idle",
                            client::VpnState::Requesting => "requesting",
                            client::VpnState::Up { .. } => "up",
                        }
                        .to_owned()
                    }),
                    vpn_address: vpn.and_then(|v| match v.state {
                        client::VpnState::Up { address, .. } => Some(address.to_string()),
                        _ => None,
                    }),
                    vpn_error: vpn.and_then(|v| v.last_error.clone()),
                    score: board.score(&p.name, "*").and_then(|s| s.mean()),
                    detours_scored: board.score(&p.name, "*").map_or(0, |s| s.count),
                    name: p.name,
                }
            })
            .collect()
    }
}
