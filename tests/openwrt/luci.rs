//! luci-app-dcol through OpenWrt's own web stack: uhttpd, rpcd (its session,
//! ACL, uci and exec plugins), the ucode dispatcher and the real luci.js
//! runtime with the bootstrap theme, in headless Chromium driven by
//! tests/luci/run.mjs (playwright-core on Debian's chromium). The router is
//! the client's router of the paper's topology, booted from an image with
//! both packages and fw4; the browser is on the LAN host behind it, which
//! also runs a plain iperf3 upload the router's LAN proxy detours through
//! the waypoint 'alice' once the owner has set it up from the pages.
//!
//! ```text
//!  LAN host ──l1── router (OpenWrt) ──l2── rs ── server (mptcpize iperf3 -s)
//!  (chromium,       │ uhttpd, rpcd,          │
//!   iperf3)         │ fw4, dcol              │
//!                   └──────l4── rw ───l5─────┘
//!                               │
//!                            waypoint (dcol 'alice')
//! ```
//!
//! What run.mjs checks (each printed as `ok: ...`): log in; a router that is
//! not a member shows why the daemon does not answer and offers to join;
//! the member key is created, the join request shown, wrong certificates
//! refused with the reason, the right one installed, all through the page;
//! settings (a waypoint peer, the LAN proxy, a donation cap) validated and
//! saved with Save & Apply; the membership switch starts the daemon and
//! turns it off again (procd's view, through ubus); every page renders with
//! live data (detours via alice the daemon reports; the detours the router
//! serves to 'bob', another member's router in the waypoint's namespace,
//! through fw4; the log from logd) and no console error; a hand-broken
//! /etc/config/dcol is shown as an error with its line, not a blank page.
//! Screenshots: target/openwrt-artifacts/luci/*.png.

use std::path::{Path, PathBuf};
use std::process::Command;

use dcol_tests::dcol::{dcol_bin, main_section};
use dcol_tests::lab::{need_root, Lab, IPERF_PORT, SIGNAL_PORT};
use dcol_tests::openwrt::{Image, Userland, ZoneSetup, ROOT_PASSWORD};
use dcol_tests::{iperf3_server, LinkProfile, Node};

use crate::install_offline;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Fails loudly when the browser side is not installed.
fn browser_tools(luci: &Path) -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "{} missing: run `bash tests/luci/setup.sh` (installs Debian's chromium and the npm packages)",
        chromium.display()
    );
    assert!(
        luci.join("node_modules/playwright-core").is_dir(),
        "tests/luci/node_modules missing: run `bash tests/luci/setup.sh` (npm ci)"
    );
    chromium
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn luci_app_on_openwrts_web_stack_in_a_browser() {
    if !need_root() {
        return;
    }
    let luci = workspace().join("tests/luci");
    let chromium = browser_tools(&luci);

    let mut lab = Lab::new(LinkProfile::core_limited());
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    // A second server for bob (iperf3 serves one test at a time).
    let _srv2 = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT + 1, true);
    lab.start_waypoint();
    // The router's WAN for its own waypoint role: the default route (the lab
    // routes each prefix; a waypoint serves only destinations routed to the
    // WAN).
    lab.topo
        .ns(Node::Rc)
        .exec(&["ip", "route", "add", "default", "via", "10.0.2.2"]);
    // 'bob', another member's router (in the waypoint's namespace), whose
    // detours the router serves once its waypoint role is on; run.mjs starts
    // it then.
    let router_wan = "10.0.4.1";
    let bob_sock = lab.sock("bob");
    let bob_config = lab.scratch.path().join("bob.conf");
    std::fs::write(
        &bob_config,
        format!(
            "{}config client 'client'\n\toption enabled '1'\n\toption max_detours '1'\n\
             \toption renew_interval_s '1'\n\nconfig peer\n\toption name 'homerouter'\n\
             \toption address '{router_wan}:{SIGNAL_PORT}'\n\toption tunnel 'nat'\n",
            main_section(
                &lab.client_member,
                &lab.collective,
                &bob_sock,
                &lab.scratch.path().join("bob-state")
            )
        ),
    )
    .expect("write bob's config");

    // The owner's router: both packages installed at image build time, fw4
    // with the LAN on l1a and the WAN on the two core links, uhttpd on all
    // addresses (OpenWrt's default; the build's config has loopback only).
    let img = Image::new("luci");
    install_offline(&img);
    img.firewall(&ZoneSetup::new(&["l1a"], &["l2a", "l4a"]));
    img.uci("delete uhttpd.main.listen_http\nadd_list uhttpd.main.listen_http='0.0.0.0:80'");
    // The lab's addresses are private: the owner allows them as destinations
    // of the waypoint role and of the LAN proxy (the settings page has no
    // field for these test-only options).
    img.uci(
        "add_list dcol.waypoint.allow_destination='10.0.0.0/8'\n\
         add_list dcol.client.proxy_allow_destination='10.0.0.0/8'",
    );
    let router = img.boot(lab.topo.ns(Node::Rc));

    let artifacts = router.artifacts();
    let url = format!("http://{}/", lab.topo.addr4(Node::Rc));
    let waypoint = format!("{}:{SIGNAL_PORT}", lab.topo.addr4(Node::Waypoint));
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(Node::Client)])
        .args(["node", "run.mjs"])
        .args(["--url", &url, "--password", ROOT_PASSWORD])
        .args(["--router-pid", &router.pid1().to_string()])
        .arg("--dcol-bin")
        .arg(dcol_bin())
        .arg("--collective-key")
        .arg(&lab.collective.root_key)
        .arg("--collective-pub")
        .arg(&lab.collective.root_pub)
        .args(["--waypoint", &waypoint, "--lan-interface", "l1a"])
        .args(["--server", &format!("{}", lab.topo.addr4(Node::Server))])
        .args(["--iperf-port", &IPERF_PORT.to_string()])
        .args(["--member-netns", &lab.ns(Node::Waypoint)])
        .arg("--member-config")
        .arg(&bob_config)
        .arg("--member-socket")
        .arg(&bob_sock)
        .args(["--member-iperf-port", &(IPERF_PORT + 1).to_string()])
        .arg("--luci-src")
        .arg(Userland::get().sources().join("luci"))
        .arg("--artifacts")
        .arg(&artifacts)
        .arg("--chromium")
        .arg(&chromium)
        .current_dir(&luci)
        .output()
        .expect("run node tests/luci/run.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "browser test failed ({}); screenshots and the router's log in {}",
        out.status,
        artifacts.display()
    );
    assert!(
        stdout.contains(" passed, 0 failed"),
        "run.mjs printed no result line"
    );
    for png in [
        "login",
        "overview-not-member",
        "join-key",
        "join-refused",
        "join-installed",
        "settings",
        "overview-running",
        "detours",
        "detours-served",
        "log",
        "overview-membership-off",
        "broken-config",
        "error-markup",
    ] {
        assert!(
            artifacts.join(format!("{png}.png")).exists(),
            "screenshot {png}.png missing"
        );
    }
}
