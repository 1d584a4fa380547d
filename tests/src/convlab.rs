//! The converter lab (issue 17), shared by the root test
//! `tests/netns/convert.rs` and `dcol-lab converter`: the paper's topology
//! with an unmodified host behind the client's router (`rc`, DCol's LAN
//! proxy, `option convert 'auto'`), a PLAIN TCP server (no mptcpize), a
//! converter member 'carol' on the server's router (`rs`) and the NAT
//! waypoint 'alice' on the second core path:
//!
//! ```text
//!  client ──1── rc ══2 (core, direct subflow)══ rs ──3── server (plain TCP)
//!   LAN host    │ dcol: LAN proxy     dcol: converter 'carol' (10.0.3.1:7447)
//!               4 (core)                          5 (core)
//!               └──────────── rw ─────────────────┘
//!                             │6
//!                          waypoint 'alice' (NAT detour toward the converter)
//! ```
//! The converter is reached at its link-3 address so the detour (rw → l5
//! → rs) does not share link 2 with the direct subflow. `rs` gets a
//! default route over link 3: the converter's destination policy takes
//! only destinations routed to its WAN.

use std::net::{IpAddr, SocketAddr};

use crate::dcol::{main_section, Daemon, Member};
use crate::lab::{Lab, SIGNAL_PORT};
use crate::{LinkProfile, Node};

/// The converter's address (rs on link 3).
pub const CONVERTER: &str = "10.0.3.1";

/// The converter lab.
pub struct ConvLab {
    /// The converter daemon on `rs` (dropped first).
    pub converter: Option<Daemon>,
    /// The rest: topology, client, waypoint, collective.
    pub lab: Lab,
    /// 'carol', the converter member.
    pub carol: Member,
}

impl ConvLab {
    /// The topology and members; starts nothing.
    pub fn new(profile: LinkProfile) -> ConvLab {
        let lab = Lab::new(profile);
        let carol = lab.collective.admit("carol", "client,waypoint", 30);
        let rs = lab.topo.ns(Node::Rs);
        rs.exec(&["ip", "-4", "route", "replace", "default", "via", "10.0.3.2"]);
        ConvLab {
            converter: None,
            lab,
            carol,
        }
    }

    /// The converter's socket address.
    pub fn converter_addr() -> SocketAddr {
        SocketAddr::new(CONVERTER.parse().expect("constant"), SIGNAL_PORT)
    }

    /// The converter's UCI file; `extra` goes into its waypoint section.
    pub fn converter_config(&self, extra: &str) -> String {
        let s = self.lab.scratch.path();
        format!(
            "{}config waypoint 'waypoint'\n\toption enabled '1'\n\tlist listen '0.0.0.0:{SIGNAL_PORT}'\n\toption nat_ports '41000-41099'\n\toption upnp '0'\n\tlist allow_destination '10.0.0.0/8'\n\toption donation_file '{}'\n\toption convert '1'\n{extra}\n",
            main_section(&self.carol, &self.lab.collective, &s.join("cv.sock"), &s.join("cv-state")),
            s.join("cv-donated").display()
        )
    }

    /// Starts the converter on `rs`.
    pub fn start_converter(&mut self, extra: &str) {
        let cfg = self.converter_config(extra);
        let s = self.lab.scratch.path();
        let d = Daemon::start(&self.lab.ns(Node::Rs), s, "cv", &cfg, &s.join("cv.sock"));
        self.converter = Some(d);
    }

    /// The converter daemon.
    pub fn cv(&self) -> &Daemon {
        self.converter.as_ref().expect("converter started")
    }

    /// The converter peer section for the client.
    pub fn converter_peer() -> String {
        format!(
            "config peer\n\toption name 'carol'\n\toption address '{}'\n\toption convert '1'\n",
            Self::converter_addr()
        )
    }

    /// Starts the LAN proxy on `rc` with `option convert 'auto'`, detours
    /// for every connection (iperf3 is plaintext), at most `detours`
    /// detours, and `extra` in the client section.
    pub fn start_router_client(&mut self, detours: u8, extra: &str) {
        let extra = format!(
            "\toption detour_policy 'all'\n\toption convert 'auto'\n\toption max_detours '{detours}'\n{extra}"
        );
        let rc = self.lab.topo.ns(Node::Rc);
        rc.exec(&["ip", "-4", "route", "replace", "default", "via", "10.0.2.2"]);
        let cfg = format!(
            "{}\n{}",
            self.lab.router_client_config(&extra),
            Self::converter_peer()
        );
        let s = self.lab.scratch.path().to_owned();
        let d = Daemon::start(&self.lab.ns(Node::Rc), &s, "cl", &cfg, &self.lab.sock("cl"));
        self.lab.client = Some(d);
    }

    /// Starts a plain (no MPTCP) HTTP server on the server at port 8080
    /// serving `name` with `body`; returns once it listens.
    pub fn start_http_server(&self, name: &str, body: &str) {
        let dir = self.lab.scratch.path().join("www");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(name), body).expect("write");
        let www = dir.to_str().expect("utf-8").to_owned();
        let ns = self.lab.topo.ns(Node::Server);
        ns.spawn(&[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
            &www,
        ]);
        for _ in 0..100 {
            if !ns
                .output(&["ss", "-Hltn", "sport = :8080"])
                .stdout
                .is_empty()
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        panic!("the HTTP server does not listen");
    }

    /// The plain server's address.
    pub fn server(&self) -> IpAddr {
        self.lab.topo.addr4(Node::Server).into()
    }
}

impl Drop for ConvLab {
    fn drop(&mut self) {
        // SIGTERM while the namespaces still exist.
        drop(self.converter.take());
    }
}
