// Needs: root, network namespaces, kernel MPTCP (userspace path manager),
// nftables (NAT, maps, REDIRECT), conntrack, tbf; programs ip, tc, nft,
// ethtool, iperf3, mptcpize; and for the browser: Debian's `chromium`, Node.js
// (>= 20) with tests/luci's npm packages (playwright-core, `npm ci`).
// tests/luci/setup.sh installs chromium and the npm packages. Skips only when
// not root; a missing chromium or node is a failure, not a skip.
//
//! luci-app-dcol in a real browser: the app's real view files on the LuCI
//! stand-in (tests/luci/stand-in, tests/luci/server.mjs), whose rpc calls run
//! the app's real rpcd plugin and so the real `dcol status --json` of the
//! daemons below, driven by tests/luci/run.mjs in headless Chromium while a
//! LAN host's transfer is detoured through the waypoint 'alice'.
//!
//! ```text
//!  client ──l1── rc ──l2── rs ── server (mptcpize iperf3 -s)
//!  (LAN host,     │ dcol    │
//!   plain iperf3) └─l4─ rw ─l5┘
//!                       │
//!                    waypoint (dcol 'alice')
//! ```
//!
//! Asserts (in run.mjs, each printed as `ok: ...`): the membership switch and
//! Save write `dcol.main.enabled` to the UCI file; the Detours table shows the
//! connections, tokens and detours via 'alice' that the daemon itself reports,
//! and the waypoint's grants; an error from the daemon (a missing socket whose
//! name carries markup) is shown as text, not swallowed; settings validate and
//! save; the ACL grants only what the issue allows; and a router without
//! a member key joins from the overview: Create makes the key, the page
//! shows the join request, a certificate issued for it (by `dcol collective
//! admit`) is checked and installed, wrong ones are refused with the reason. Screenshots go to
//! target/luci-artifacts/*.png.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dcol_tests::dcol::dcol_bin;
use dcol_tests::lab::{detours_in, need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_server, LinkProfile, Node};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node missing: run `bash tests/luci/setup.sh`"
    );
    assert!(
        luci.join("node_modules/playwright-core").is_dir(),
        "tests/luci/node_modules missing: run `bash tests/luci/setup.sh` (npm ci)"
    );
    chromium
}

/// A plain (non-MPTCP) iperf3 upload from the LAN host, killed on drop.
struct Transfer(Child);

impl Drop for Transfer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn luci_app_in_a_browser_against_the_real_daemon() {
    if !need_root() {
        return;
    }
    let luci = workspace().join("tests/luci");
    let chromium = browser_tools(&luci);

    let mut lab = Lab::new(LinkProfile::core_limited());
    let server = lab.topo.addr4(Node::Server);
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    // Caps well above the transfer's rate: the overview shows them.
    lab.start_waypoint_with("\toption donate_kbit '20000'\n\toption donate_monthly_gb '5'\n");
    // iperf3 is plaintext: only policy 'all' detours it.
    lab.start_router_client("\toption detour_policy 'all'\n");

    let _transfer = Transfer(
        Command::new("ip")
            .args(["netns", "exec", &lab.ns(Node::Client), "iperf3", "-c"])
            .arg(server.to_string())
            .args(["-p", &IPERF_PORT.to_string(), "-t", "120", "-C", "cubic"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn iperf3"),
    );
    let st = lab
        .cl()
        .wait_status(Duration::from_secs(10), |s| {
            detours_in(s, "established") >= 1
        })
        .unwrap_or_else(|s| panic!("no established detour before the browser test: {s}"));
    eprintln!("daemon status before the browser test: {st}");

    // The pages edit a copy of the client's UCI file (the daemon keeps its own).
    let uci_dir = lab.scratch.path().join("luci-uci");
    std::fs::create_dir_all(&uci_dir).expect("mkdir");
    let uci = uci_dir.join("dcol");
    std::fs::copy(&lab.cl().config, &uci).expect("copy the UCI file");

    let artifacts = workspace().join("target/luci-artifacts");
    let out = Command::new("node")
        .arg("run.mjs")
        .arg("--socket")
        .arg(&lab.cl().socket)
        .arg("--wp-socket")
        .arg(&lab.wp().socket)
        .arg("--uci")
        .arg(&uci)
        .arg("--dcol-bin")
        .arg(dcol_bin())
        .arg("--dcol-dir")
        .arg(&lab.collective.dir)
        .arg("--log")
        .arg(&lab.cl().log)
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
        "browser test failed ({}); screenshots in {}",
        out.status,
        artifacts.display()
    );
    assert!(
        stdout.contains(" passed, 0 failed"),
        "run.mjs printed no result line"
    );

    // What the browser saved is a file the daemon accepts, with the switch off.
    let text = std::fs::read_to_string(&uci).expect("read UCI file");
    let main = text
        .split("\nconfig ")
        .find(|s| s.starts_with("config dcol 'main'") || s.starts_with("dcol 'main'"))
        .expect("main section");
    assert!(
        main.contains("option enabled '0'"),
        "membership switch not saved:\n{text}"
    );
    let check = Command::new(dcol_bin())
        .args(["config", "check", "--config"])
        .arg(&uci)
        .output()
        .expect("dcol config check");
    assert!(
        check.status.success(),
        "dcol rejects what LuCI wrote: {}\n{text}",
        String::from_utf8_lossy(&check.stderr)
    );
    for png in [
        "overview",
        "overview-membership-off",
        "detours",
        "detours-waypoint",
        "settings",
        "log",
        "error-detours",
        "error-overview",
        "join-key",
        "join-refused",
        "join-installed",
    ] {
        assert!(
            artifacts.join(format!("{png}.png")).exists(),
            "screenshot {png}.png missing"
        );
    }
}
