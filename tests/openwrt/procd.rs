//! The feed's init script (`/etc/init.d/dcol`) under OpenWrt's procd as PID
//! 1: what the owner sees through `uci`, `reload_config`, `service` and
//! `logread`, and what procd does with the instance the script declares.

use std::time::Duration;

use dcol_tests::lab::need_root;
use dcol_tests::openwrt::{Image, Router};
use dcol_tests::Netns;

use crate::{dcol_log, install_offline, tail, wait_running, wait_stopped, Admin};

/// An image with both packages installed before its first boot, booted.
fn booted(name: &str, ns: &Netns) -> Router {
    let img = Image::new(name);
    install_offline(&img);
    img.boot(ns)
}

/// `uci batch` + `uci commit dcol` + `reload_config`: what the owner (and
/// LuCI's Save & Apply, through rpcd) does.
fn commit_and_reload(router: &Router, batch: &str) {
    router.ok(&format!(
        "uci batch <<'EOF'\n{batch}\nEOF\nuci commit dcol && reload_config"
    ));
}

/// Waits until the log has a line containing `what`; returns the log.
fn wait_log(router: &Router, what: &str) -> String {
    router
        .wait_for(Duration::from_secs(10), |r| {
            let log = dcol_log(r);
            log.contains(what).then_some(log)
        })
        .unwrap_or_else(|| {
            panic!(
                "no log line with {what:?} within 10 s:\n{}",
                tail(&dcol_log(router), 40)
            )
        })
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn init_script_under_procd_as_pid1() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("procd");
    let router = booted("procd", &ns);
    assert_eq!(router.ok("cat /proc/1/comm").trim(), "procd");
    assert!(router.pids("dcol").is_empty(), "off as shipped");

    // ---- membership on, but not a member: refused, and the log says why ----
    commit_and_reload(
        &router,
        "set dcol.main.enabled=1\nset dcol.client.enabled=1",
    );
    let log = wait_log(&router, "not started");
    assert!(
        log.contains("dcol: not started: /etc/dcol/member.key is missing (join from the web page"),
        "{log}"
    );
    assert!(router.pids("dcol").is_empty());

    // ---- a member now: a reload starts it ----
    let admin = Admin::new();
    admin.join(&router, "procd-router", "client,waypoint");
    router.ok("service dcol reload");
    let pid = wait_running(&router, None, Duration::from_secs(10));
    assert_eq!(router.ok("service dcol status").trim(), "running");
    router.ok("/etc/init.d/dcol running");
    let inst = router.service("dcol")["instances"]["instance1"].clone();
    assert_eq!(
        inst["command"],
        serde_json::json!(["/usr/sbin/dcol", "run", "--config", "/etc/config/dcol"]),
        "{inst}"
    );
    assert_eq!(inst["term_timeout"], 10, "{inst}");
    assert_eq!(inst["limits"]["nofile"], "16384 16384", "{inst}");
    assert!(inst["respawn"].is_object(), "{inst}");
    let status = router.ok("dcol status --json");
    assert!(status.contains("\"procd-router\""), "{status}");

    // ---- a tunable: reloaded in place (SIGHUP), the same process ----
    commit_and_reload(
        &router,
        "set dcol.client.max_detours=3\nset dcol.main.log_level=debug",
    );
    let log = wait_log(&router, &format!("dcol[{pid}]: [INFO] reloaded: "));
    assert!(log.contains("log level DEBUG; client settings"), "{log}");
    assert_eq!(router.pids("dcol"), vec![pid], "reload, not restart");

    // ---- the waypoint role: started in place too; procd publishes the
    //      instance's new firewall data (the signaling port) for fw4 ----
    let none = router.ok("ubus call service get_data '{\"name\":\"dcol\",\"type\":\"firewall\"}'");
    assert!(
        !none.contains("Allow-dcol"),
        "no fw4 rule while the waypoint is off: {none}"
    );
    commit_and_reload(
        &router,
        "set dcol.waypoint.enabled=1\nadd_list dcol.waypoint.listen=127.0.0.1:7450",
    );
    wait_log(
        &router,
        &format!("dcol[{pid}]: [INFO] reloaded: waypoint started"),
    );
    assert_eq!(router.pids("dcol"), vec![pid], "reload, not restart");
    let pid2 = pid;
    let fw = router.ok("ubus call service get_data '{\"name\":\"dcol\",\"type\":\"firewall\"}'");
    assert!(
        fw.contains("Allow-dcol-signaling-7447") && fw.contains("\"dest_port\": \"7447\""),
        "{fw}"
    );
    assert!(
        !fw.contains("7450"),
        "no rule for a loopback listener: {fw}"
    );
    let st = router
        .wait_for(Duration::from_secs(5), |r| {
            let s = r.sh("dcol status --json").stdout;
            let v: serde_json::Value = serde_json::from_slice(&s).ok()?;
            v["waypoint"].is_object().then_some(v)
        })
        .expect("the waypoint role in dcol status");
    assert_eq!(
        st["waypoint"]["listen"],
        serde_json::json!(["0.0.0.0:7447", "127.0.0.1:7450"])
    );

    // ---- respawn: procd starts it again after a crash ----
    router.ok(&format!("kill -9 {pid2}"));
    let pid3 = wait_running(&router, Some(pid2), Duration::from_secs(15));
    assert!(router.ok("dcol status").contains("procd-router"));

    // ---- validation rules registered with procd ----
    let v = router.ok("ubus call service validate '{\"package\":\"dcol\"}'");
    let v: serde_json::Value = serde_json::from_str(&v).expect("validate JSON");
    assert_eq!(v["dcol"]["client"]["max_detours"], "range(0,8)", "{v}");
    assert_eq!(v["dcol"]["waypoint"]["nat_ports"], "portrange", "{v}");
    assert!(v["dcol"]["dcol"]["log_level"].is_string(), "{v}");
    // (procd's shell glue drops the quotes of string literals)
    assert_eq!(
        v["dcol"]["waypoint"]["deny_port"], "list(or(portrange,none))",
        "{v}"
    );
    assert_eq!(v["dcol"]["peer"]["tunnel"], "or(nat,vpn)", "{v}");
    // ... and used: each value validate_data refuses is logged with its
    // option, value and datatype, and the daemon's own check refuses to start.
    router.ok(
        "uci set dcol.main.directory_interval_s=1; uci set dcol.client.proxy_port=0; uci commit dcol",
    );
    router.ok("/etc/init.d/dcol restart");
    let log = wait_log(&router, "expected range(1,65535)");
    assert!(
        log.contains("dcol: /etc/config/dcol: option 'directory_interval_s' in section 'main' is '1', expected range(2,86400)"),
        "{log}"
    );
    assert!(
        log.contains("dcol: /etc/config/dcol: option 'proxy_port' in section 'client' is '0', expected range(1,65535)"),
        "{log}"
    );
    assert!(
        log.contains("option 'directory_interval_s': expected a number 2-86400, got '1'"),
        "{log}"
    );
    router.ok(
        "uci delete dcol.main.directory_interval_s; uci delete dcol.client.proxy_port; uci commit dcol",
    );

    // ---- stop ----
    router.ok("/etc/init.d/dcol restart");
    let pid4 = wait_running(&router, Some(pid3), Duration::from_secs(10));
    router.ok("/etc/init.d/dcol stop");
    wait_stopped(&router, Duration::from_secs(12));
    wait_log(
        &router,
        &format!("dcol[{pid4}]: [INFO] stopped; kernel state removed"),
    );
    let st = router.sh("service dcol status");
    assert_eq!(
        (st.status.code(), String::from_utf8_lossy(&st.stdout).trim()),
        (Some(3), "inactive"),
        "stopped: procd forgot the service"
    );
    assert!(!router.ok("nft list tables").contains("dcol"));

    // ---- poweroff (rcS K shutdown) stops it cleanly; boot starts it ----
    router.ok("/etc/init.d/dcol start");
    wait_running(&router, Some(pid4), Duration::from_secs(10));
    assert!(
        table_exists(&ns, "dcol"),
        "the waypoint's table while running"
    );
    let img = router.poweroff();
    assert!(
        !table_exists(&ns, "dcol"),
        "K10dcol stopped dcol with SIGTERM at shutdown: no table left"
    );
    let router = img.boot(&ns);
    let booted_pid = wait_running(&router, None, Duration::from_secs(10));
    assert!(router.ok("dcol status").contains("procd-router"));
    assert!(
        dcol_log(&router).contains(&format!("dcol[{booted_pid}]: [INFO] dcol ")),
        "S95dcol started it at boot"
    );
}

/// Whether `table inet NAME` exists in `ns`.
fn table_exists(ns: &Netns, name: &str) -> bool {
    String::from_utf8_lossy(&ns.exec(&["nft", "list", "tables"]).stdout)
        .lines()
        .any(|l| l.trim() == format!("table inet {name}"))
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn hand_broken_config_keeps_the_running_daemon() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("badconf");
    let router = booted("badconf", &ns);
    let admin = Admin::new();
    admin.join(&router, "badconf-router", "client");
    commit_and_reload(
        &router,
        "set dcol.main.enabled=1\nset dcol.client.enabled=1",
    );
    let pid = wait_running(&router, None, Duration::from_secs(10));

    // ---- a value dcol refuses, set through uci ----
    commit_and_reload(&router, "set dcol.client.max_detours=99");
    let line = router.ok("grep -n \"max_detours '99'\" /etc/config/dcol | cut -d: -f1");
    let want = format!(
        "dcol: not reloaded, keeping the running configuration: dcol: /etc/config/dcol:{}: option 'max_detours': expected a number 0-8, got '99'",
        line.trim()
    );
    let log = wait_log(&router, "not reloaded");
    assert!(log.contains(&want), "want {want:?} in:\n{log}");
    assert_eq!(router.pids("dcol"), vec![pid], "still the same daemon");
    assert!(router.ok("dcol status").contains("badconf-router"));

    // ---- a file broken by hand: uci itself cannot parse it ----
    router.ok("sed -i \"s/option max_detours '99'/option max_detours '3/\" /etc/config/dcol");
    let commit = router.sh("uci commit dcol; reload_config");
    let line = router.ok("grep -n \"max_detours '3$\" /etc/config/dcol | cut -d: -f1");
    let line = line.trim();
    let log = router
        .wait_for(Duration::from_secs(10), |r| {
            let log = dcol_log(r);
            log.contains(&format!("/etc/config/dcol:{line}: unterminated single quote"))
                .then_some(log)
        })
        .unwrap_or_else(|| {
            panic!(
                "no 'unterminated single quote' at line {line} in the log (uci commit said: {}):\n{}",
                String::from_utf8_lossy(&commit.stderr),
                tail(&dcol_log(&router), 30)
            )
        });
    assert!(
        log.contains("not reloaded, keeping the running configuration"),
        "{log}"
    );
    assert_eq!(router.pids("dcol"), vec![pid], "still the same daemon");
    assert!(router.ok("dcol status").contains("badconf-router"));

    // ---- repaired: reloaded in place ----
    router.ok("sed -i \"s/option max_detours '3$/option max_detours '3'/\" /etc/config/dcol; reload_config");
    wait_log(
        &router,
        &format!("dcol[{pid}]: [INFO] reloaded: client settings"),
    );
    assert_eq!(router.pids("dcol"), vec![pid]);
}
