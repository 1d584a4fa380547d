//! Shared set-up of the root network-namespace tests and the demo: the paper's topology with a
//! DCol waypoint and a DCol client in it, and an unmodified MPTCP server.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::dcol::{main_section, Collective, Daemon, Member, Scratch};
use crate::{LinkProfile, Node, Topology};

/// Skips (loudly) when not root: only root can make network namespaces.
pub fn need_root() -> bool {
    if unsafe_is_root() {
        return true;
    }
    eprintln!("SKIP: this test needs root (network namespaces, nftables, MPTCP path manager)");
    false
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The signaling port the waypoints listen on.
pub const SIGNAL_PORT: u16 = 7447;
/// The iperf3 port of the server.
pub const IPERF_PORT: u16 = 5201;

/// A running collective: topology, members, daemons.
pub struct Lab {
    /// The client daemon, once started (dropped first: SIGTERM while the
    /// namespaces still exist).
    pub client: Option<Daemon>,
    /// The waypoint daemon, once started.
    pub waypoint: Option<Daemon>,
    /// The namespaces.
    pub topo: Topology,
    /// 'bob', the client.
    pub client_member: Member,
    /// 'alice', the waypoint.
    pub waypoint_member: Member,
    /// The collective.
    pub collective: Collective,
    /// Files of this run (removed last).
    pub scratch: Scratch,
}

impl Lab {
    /// Builds the topology and the collective; starts nothing.
    pub fn new(profile: LinkProfile) -> Lab {
        let topo = Topology::paper(profile);
        let scratch = Scratch::new("lab");
        let collective = Collective::new(scratch.path(), "coop");
        let client_member = collective.admit("bob", "client", 30);
        let waypoint_member = collective.admit("alice", "client,waypoint", 30);
        Lab {
            topo,
            scratch,
            collective,
            client_member,
            waypoint_member,
            waypoint: None,
            client: None,
        }
    }

    /// The name of a node's namespace.
    pub fn ns(&self, n: Node) -> String {
        self.topo.ns(n).name().to_owned()
    }

    /// A control socket path in the scratch dir.
    pub fn sock(&self, tag: &str) -> PathBuf {
        self.scratch.path().join(format!("{tag}.sock"))
    }

    /// The waypoint's UCI file.
    pub fn waypoint_config(&self, extra: &str) -> String {
        let state = self.scratch.path().join("wp-state");
        // The month's donation count, kept outside state_dir as on a router.
        let donated = self.scratch.path().join("wp-donated");
        format!(
            "{}config waypoint 'waypoint'\n\toption enabled '1'\n\tlist listen '0.0.0.0:{SIGNAL_PORT}'\n\tlist listen '[::]:{SIGNAL_PORT}'\n\toption nat_ports '40000-40099'\n\toption lease_s '60'\n\tlist allow_destination '10.0.0.0/8'\n\tlist allow_destination 'fd00::/8'\n\toption donation_file '{}'\n{extra}\n",
            main_section(&self.waypoint_member, &self.collective, &self.sock("wp"), &state),
            donated.display()
        )
    }

    /// The client's UCI file, with the waypoint as a peer over IPv4 and IPv6.
    pub fn client_config(&self, extra: &str) -> String {
        let state = self.scratch.path().join("cl-state");
        let w4 = self.topo.addr4(Node::Waypoint);
        let w6 = self.topo.addr6(Node::Waypoint);
        format!(
            "{}config client 'client'\n\toption enabled '1'\n\toption max_detours '2'\n\toption renew_interval_s '1'\n\toption liveness_misses '3'\n{extra}\nconfig peer\n\toption name 'alice'\n\toption address '{}'\n\toption tunnel 'nat'\n\nconfig peer\n\toption name 'alice'\n\toption address '{}'\n\toption tunnel 'nat'\n",
            main_section(&self.client_member, &self.collective, &self.sock("cl"), &state),
            SocketAddr::new(IpAddr::V4(w4), SIGNAL_PORT),
            SocketAddr::new(IpAddr::V6(w6), SIGNAL_PORT),
        )
    }

    /// A client UCI file with the waypoint as one IPv4 peer per entry of
    /// `tunnels` (`nat` or `vpn`; the same waypoint may serve both).
    pub fn client_config_tunnels(&self, extra: &str, tunnels: &[&str]) -> String {
        let state = self.scratch.path().join("cl-state");
        let w4 = SocketAddr::new(IpAddr::V4(self.topo.addr4(Node::Waypoint)), SIGNAL_PORT);
        let mut s = format!(
            "{}config client 'client'\n\toption enabled '1'\n\toption max_detours '2'\n\toption renew_interval_s '1'\n\toption liveness_misses '3'\n{extra}\n",
            main_section(&self.client_member, &self.collective, &self.sock("cl"), &state),
        );
        for t in tunnels {
            s.push_str(&format!(
                "config peer\n\toption name 'alice'\n\toption address '{w4}'\n\toption tunnel '{t}'\n\n"
            ));
        }
        s
    }

    /// Starts a daemon with `uci` in node `n`'s namespace as the client.
    pub fn start_client_with(&mut self, n: Node, uci: &str) {
        let d = Daemon::start(
            &self.ns(n),
            self.scratch.path(),
            "cl",
            uci,
            &self.sock("cl"),
        );
        self.client = Some(d);
    }

    /// Starts the waypoint daemon with `extra` in its waypoint section.
    pub fn start_waypoint_with(&mut self, extra: &str) {
        let cfg = self.waypoint_config(extra);
        let d = Daemon::start(
            &self.ns(Node::Waypoint),
            self.scratch.path(),
            "wp",
            &cfg,
            &self.sock("wp"),
        );
        self.waypoint = Some(d);
    }

    /// The UCI file of the client daemon on the client's router (`rc`) as a
    /// transparent proxy for the client host behind it (LAN interface
    /// `l1a`); the lab's private addresses are allowed as destinations (the
    /// proxy takes no private destination otherwise). `extra` goes into the
    /// client section.
    pub fn router_client_config(&self, extra: &str) -> String {
        self.client_config(&format!(
            "\toption lan_proxy '1'\n\tlist lan_interface 'l1a'\n\tlist proxy_allow_destination '10.0.0.0/8'\n\tlist proxy_allow_destination 'fd00::/8'\n{extra}"
        ))
    }

    /// Starts the client daemon on the client's router (`rc`) with
    /// [`Lab::router_client_config`]; the client host then runs unmodified
    /// programs. `rc`'s default routes are set over link 2 first: the proxy
    /// intercepts only flows routed to the default routes' interfaces. It
    /// also follows the router's forwarding verdicts, so the first
    /// connection from the client host to a server port goes direct.
    pub fn start_router_client(&mut self, extra: &str) {
        let rc = self.topo.ns(Node::Rc);
        rc.exec(&["ip", "-4", "route", "replace", "default", "via", "10.0.2.2"]);
        rc.exec(&[
            "ip",
            "-6",
            "route",
            "replace",
            "default",
            "via",
            "fd00:0:0:2::2",
        ]);
        let cfg = self.router_client_config(extra);
        let d = Daemon::start(
            &self.ns(Node::Rc),
            self.scratch.path(),
            "cl",
            &cfg,
            &self.sock("cl"),
        );
        self.client = Some(d);
    }

    /// Starts the waypoint daemon in its namespace.
    pub fn start_waypoint(&mut self) {
        let cfg = self.waypoint_config("");
        let d = Daemon::start(
            &self.ns(Node::Waypoint),
            self.scratch.path(),
            "wp",
            &cfg,
            &self.sock("wp"),
        );
        self.waypoint = Some(d);
    }

    /// Starts the client daemon in its namespace.
    pub fn start_client(&mut self) {
        let cfg = self.client_config("");
        let d = Daemon::start(
            &self.ns(Node::Client),
            self.scratch.path(),
            "cl",
            &cfg,
            &self.sock("cl"),
        );
        self.client = Some(d);
    }

    /// The waypoint daemon.
    pub fn wp(&self) -> &Daemon {
        self.waypoint.as_ref().expect("waypoint started")
    }

    /// The client daemon.
    pub fn cl(&self) -> &Daemon {
        self.client.as_ref().expect("client started")
    }
}

/// Count of detours in state `state` across the client's connections.
pub fn detours_in(status: &serde_json::Value, state: &str) -> usize {
    status["client"]["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["subflows"].as_array().into_iter().flatten())
        .filter(|s| s["path"] == "detour" && s["state"] == state)
        .count()
}

/// Sends `bytes` to `to` from a fresh UDP socket inside network namespace `ns`
/// and returns the reply, if one arrives within `wait`.
pub fn udp_exchange(ns: &str, to: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let ns_path = format!("/var/run/netns/{ns}");
    let bytes = bytes.to_vec();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns_path).expect("open netns");
        enter_netns(&f);
        let any: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = std::net::UdpSocket::bind(any).expect("bind");
        s.set_read_timeout(Some(wait)).expect("timeout");
        s.send_to(&bytes, to).expect("send");
        let mut buf = [0u8; 4096];
        s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
    })
    .join()
    .expect("udp thread")
}

/// Runs `f` on a thread inside `ns`: sockets it makes stay in `ns`.
pub fn in_netns<T: Send + 'static>(ns: &crate::Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/var/run/netns").join(ns.name());
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        enter_netns(&file);
        f()
    })
    .join()
    .expect("thread in netns")
}

/// Moves the calling thread into the network namespace open as `f`.
pub fn enter_netns(f: &std::fs::File) {
    use nix::sched::{setns, CloneFlags};
    setns(f, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns: {e}"));
}

/// No DNATed conntrack entry through the lab waypoint's tunnel ports
/// (40000-40099) in namespace `ns`: original direction to one of them, reply
/// direction from the lab's server (10.0.3.2).
pub fn no_tunnel_flows(ns: &str) -> bool {
    !crate::dcol::in_ns(ns, &["conntrack", "-L", "-p", "tcp"])
        .lines()
        .any(|l| l.contains("dport=400") && l.contains("src=10.0.3.2"))
}
