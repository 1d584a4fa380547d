//! Propagation delay for the paper's topology: every link has 5 ms one way
//! (the paper's Mininet links), and in the "delayed" configurations link 2
//! has 100 ms more. This kernel has no netem, so each router (rc, rs, rw)
//! runs a delay relay (`dcol-lab relay`, [`crate::relay`]) on a TUN device,
//! and policy routing by input interface sends every packet the router
//! forwards through it.
//!
//! Each host-to-host path of Figure 3 crosses three links and two routers
//! (client → rc → rs → server, client → rc → rw → waypoint, waypoint → rw →
//! rs → server), so a router holds each forwarded packet for 1.5 link delays
//! (7.5 ms): 15 ms one way per path, as three 5 ms links give. A NAT detour
//! (client → rc → rw → waypoint → rw → rs → server) crosses six links and
//! four router hops: 30 ms, also right. In rc, a second relay adds link 2's
//! extra delay to what crosses link 2 (arriving on it, or leaving on it for
//! the server's subnet).
//!
//! ```text
//!  client --1-- rc ==2== rs --3-- server          rc, rs, rw: relay on TUN "dly0"
//!               \\       //                       (7.5 ms); rc also "dly2"
//!                4      5                         (7.5 ms + link 2's extra)
//!                 \\   //
//!                   rw --6-- waypoint
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use dcol_tests::lab::Lab;
use dcol_tests::{Netns, Node};

/// Relay device for every forwarded packet.
const BASE_DEV: &str = "dly0";
/// Relay device in rc for link 2's traffic when link 2 has extra delay.
const LINK2_DEV: &str = "dly2";
/// Routing tables that send traffic into the two devices.
const BASE_TABLE: &str = "101";
const LINK2_TABLE: &str = "102";

/// One link's one-way delay in the paper.
pub const LINK_DELAY: Duration = Duration::from_millis(5);

/// The delay relays of one lab topology.
pub struct Delays {
    /// (router, device, pid) of running relays.
    running: Vec<(Node, &'static str, u32)>,
}

/// A router's interfaces (the lab's veth names: link N is `lNa` at its first
/// node and `lNb` at its second).
fn router_ifaces(r: Node) -> &'static [&'static str] {
    match r {
        Node::Rc => &["l1a", "l2a", "l4a"],
        Node::Rs => &["l2b", "l3a", "l5b"],
        _ => &["l4b", "l5a", "l6a"],
    }
}

impl Delays {
    /// Installs the policy rules in rc, rs and rw. Until [`Delays::start`],
    /// the tables are empty and traffic is forwarded directly.
    pub fn rules(lab: &Lab) -> Delays {
        for r in [Node::Rc, Node::Rs, Node::Rw] {
            let ns = lab.topo.ns(r);
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0");
            for fam in ["-4", "-6"] {
                if r == Node::Rc {
                    // Link 2's own traffic first: what arrives over it, and
                    // what leaves over it (towards the server's subnet).
                    ns.exec(&[
                        "ip",
                        fam,
                        "rule",
                        "add",
                        "pref",
                        "100",
                        "iif",
                        "l2a",
                        "lookup",
                        LINK2_TABLE,
                    ]);
                    let server_net = if fam == "-4" {
                        "10.0.3.0/24"
                    } else {
                        "fd00:0:0:3::/64"
                    };
                    ns.exec(&[
                        "ip",
                        fam,
                        "rule",
                        "add",
                        "pref",
                        "101",
                        "iif",
                        "l1a",
                        "to",
                        server_net,
                        "lookup",
                        LINK2_TABLE,
                    ]);
                }
                for i in router_ifaces(r) {
                    ns.exec(&[
                        "ip", fam, "rule", "add", "pref", "110", "iif", i, "lookup", BASE_TABLE,
                    ]);
                }
            }
        }
        Delays {
            running: Vec::new(),
        }
    }

    /// (Re)starts the relays: `base` in every router, and in rc `base +
    /// link2_extra` for link 2 (when `link2_extra` is not zero). Waits until
    /// the devices are up and routed.
    pub fn start(
        &mut self,
        lab: &Lab,
        base: Duration,
        link2_extra: Duration,
    ) -> Result<(), String> {
        self.stop(lab);
        let mut want = vec![
            (Node::Rc, BASE_DEV, BASE_TABLE, base),
            (Node::Rs, BASE_DEV, BASE_TABLE, base),
            (Node::Rw, BASE_DEV, BASE_TABLE, base),
        ];
        if !link2_extra.is_zero() {
            want.push((Node::Rc, LINK2_DEV, LINK2_TABLE, base + link2_extra));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let exe = exe.to_string_lossy().into_owned();
        for (r, dev, table, delay) in want {
            let ns = lab.topo.ns(r);
            let us = delay.as_micros().to_string();
            let pid = ns.spawn(&[&exe, "relay", "--dev", dev, "--delay-us", &us]);
            self.running.push((r, dev, pid));
            wait_link(ns, dev, true)?;
            ns.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0");
            ns.sysctl(&format!("net.ipv4.conf.{dev}.forwarding"), "1");
            ns.sysctl(&format!("net.ipv6.conf.{dev}.forwarding"), "1");
            ns.exec(&["ip", "link", "set", dev, "up", "txqueuelen", "10000"]);
            for fam in ["-4", "-6"] {
                ns.exec(&[
                    "ip", fam, "route", "replace", "default", "dev", dev, "table", table,
                ]);
            }
        }
        Ok(())
    }

    /// Stops every relay: devices and routes go with them; traffic is then
    /// forwarded without delay.
    pub fn stop(&mut self, lab: &Lab) {
        for (r, dev, pid) in self.running.drain(..) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = wait_link(lab.topo.ns(r), dev, false);
        }
    }
}

/// Waits until `dev` exists (`present`) or is gone.
fn wait_link(ns: &Netns, dev: &str, present: bool) -> Result<(), String> {
    let t0 = Instant::now();
    while ns.output(&["ip", "link", "show", dev]).status.success() != present {
        if t0.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "relay device {dev} did not {} in {}",
                if present { "appear" } else { "go away" },
                ns.name()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The per-router hold that gives each 3-link path `3 × LINK_DELAY`.
pub fn per_router() -> Duration {
    LINK_DELAY * 3 / 2
}

/// Relay device for [`IngressDelays`].
const INGRESS_DEV: &str = "dlyin";
/// Routing table that sends ingress traffic into [`INGRESS_DEV`].
const INGRESS_TABLE: &str = "103";
/// Where the `local` rule goes while [`IngressDelays`] runs (after the
/// ingress rule, pref 10).
const LOCAL_PREF: &str = "20";

/// IPv4 delay on what arrives on given interfaces, whether the namespace
/// forwards it or delivers it locally ([`Delays`] holds only forwarded
/// packets, so it cannot delay a connection between two routers' own
/// sockets, such as the LAN proxy's to a converter). The `local` rule moves
/// from pref 0 to [`LOCAL_PREF`] behind an `iif` rule (pref 10) that routes
/// the interface's packets into a relay; the relay writes them back into
/// its device, where the `iif` rule no longer matches, and they go on to
/// `local` or the main table. Delaying each link's receiving end by `d`
/// gives the link `d` one way in both directions. Only TCP and ICMP are
/// held: ARP's check of a request's target address is a route lookup on
/// the same interface (without a protocol), which must still find `local`.
/// Early demux is off while the relays run: it attaches a socket to a
/// packet for a local address, and the kernel drops forwarded packets that
/// carry one.
pub struct IngressDelays {
    /// (node, pid) of running relays.
    running: Vec<(Node, u32)>,
}

impl IngressDelays {
    /// Starts a relay of `delay` in each node of `at`, for the packets
    /// arriving on the node's listed interfaces; waits until routed.
    pub fn start(
        lab: &Lab,
        at: &[(Node, &[&str])],
        delay: Duration,
    ) -> Result<IngressDelays, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let exe = exe.to_string_lossy().into_owned();
        let us = delay.as_micros().to_string();
        let mut d = IngressDelays {
            running: Vec::new(),
        };
        for (n, ifaces) in at {
            let ns = lab.topo.ns(*n);
            let pid = ns.spawn(&[&exe, "relay", "--dev", INGRESS_DEV, "--delay-us", &us]);
            d.running.push((*n, pid));
            wait_link(ns, INGRESS_DEV, true)?;
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
            ns.sysctl("net.ipv4.ip_early_demux", "0");
            ns.sysctl("net.ipv4.tcp_early_demux", "0");
            ns.sysctl(&format!("net.ipv4.conf.{INGRESS_DEV}.rp_filter"), "0");
            ns.sysctl(&format!("net.ipv4.conf.{INGRESS_DEV}.forwarding"), "1");
            ns.exec(&[
                "ip",
                "link",
                "set",
                INGRESS_DEV,
                "up",
                "txqueuelen",
                "10000",
            ]);
            ns.exec(&[
                "ip",
                "-4",
                "route",
                "replace",
                "default",
                "dev",
                INGRESS_DEV,
                "table",
                INGRESS_TABLE,
            ]);
            for i in *ifaces {
                // A packet for a local address is "forwarded" into the
                // relay: the receiving interface must forward.
                ns.sysctl(&format!("net.ipv4.conf.{i}.forwarding"), "1");
                ns.sysctl(&format!("net.ipv4.conf.{i}.rp_filter"), "0");
                for proto in ["tcp", "icmp"] {
                    ns.exec(&[
                        "ip",
                        "-4",
                        "rule",
                        "add",
                        "pref",
                        "10",
                        "iif",
                        i,
                        "ipproto",
                        proto,
                        "lookup",
                        INGRESS_TABLE,
                    ]);
                }
            }
            ns.exec(&[
                "ip", "-4", "rule", "add", "pref", LOCAL_PREF, "lookup", "local",
            ]);
            ns.exec(&["ip", "-4", "rule", "del", "pref", "0", "lookup", "local"]);
        }
        Ok(d)
    }

    /// Stops the relays and restores the rules: no added delay.
    pub fn stop(mut self, lab: &Lab) {
        for (n, pid) in std::mem::take(&mut self.running) {
            let ns = lab.topo.ns(n);
            ns.exec(&["ip", "-4", "rule", "add", "pref", "0", "lookup", "local"]);
            ns.exec(&[
                "ip", "-4", "rule", "del", "pref", LOCAL_PREF, "lookup", "local",
            ]);
            while ns
                .output(&["ip", "-4", "rule", "del", "pref", "10"])
                .status
                .success()
            {}
            ns.sysctl("net.ipv4.ip_early_demux", "1");
            ns.sysctl("net.ipv4.tcp_early_demux", "1");
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = wait_link(ns, INGRESS_DEV, false);
        }
    }
}
