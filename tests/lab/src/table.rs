//! `dcol-lab table`: the README's performance table, written from the
//! recorded runs (`tests/lab/results/*/results.json`), never by hand.
//!
//! Every recorded run gives rows by its `command` (`paper`, `grid`,
//! `lan-load`, `waypoint-load`); each row names the figure, the value, the
//! baseline measured in the same run, their ratio, the target where the
//! issue set one, and the run it came from. The table replaces what lies
//! between `<!-- perf-table:begin -->` and `<!-- perf-table:end -->` in the
//! README (`--check`: only says whether it is up to date).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lexopt::prelude::ValueExt;
use serde_json::Value;

const BEGIN: &str = "<!-- perf-table:begin -->";
const END: &str = "<!-- perf-table:end -->";

/// One row of the table.
struct Row {
    what: String,
    value: String,
    baseline: String,
    ratio: String,
    target: String,
    run: String,
}

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn ratio(a: &Value, b: &Value) -> String {
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "–".into(),
    }
}

/// `dcol-lab table [--results DIR] [--readme FILE] [--check]`.
pub fn main(args: &mut lexopt::Parser) -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut results, mut readme, mut check) =
        (root.join("results"), root.join("../../README.md"), false);
    let parsed: Result<(), lexopt::Error> = (|| {
        while let Some(a) = args.next()? {
            match a {
                lexopt::Arg::Long("results") => results = args.value()?.string()?.into(),
                lexopt::Arg::Long("readme") => readme = args.value()?.string()?.into(),
                lexopt::Arg::Long("check") => check = true,
                other => return Err(other.unexpected()),
            }
        }
        Ok(())
    })();
    if let Err(e) = parsed {
        eprintln!("dcol-lab table: {e}");
        return ExitCode::from(2);
    }
    let table = render(&rows(&results));
    let text = match std::fs::read_to_string(&readme) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("dcol-lab table: {}: {e}", readme.display());
            return ExitCode::FAILURE;
        }
    };
    let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
        eprintln!(
            "dcol-lab table: {} has no {BEGIN} ... {END} markers",
            readme.display()
        );
        return ExitCode::FAILURE;
    };
    let new = format!("{}{BEGIN}\n{table}{}", &text[..a], &text[b..]);
    if check {
        let same = new == text;
        println!(
            "{}",
            if same {
                "README table up to date"
            } else {
                "README table out of date: run dcol-lab table"
            }
        );
        return if same {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Err(e) = std::fs::write(&readme, new) {
        eprintln!("dcol-lab table: {}: {e}", readme.display());
        return ExitCode::FAILURE;
    }
    print!("{table}");
    ExitCode::SUCCESS
}

/// The rows of every recorded run, oldest first.
fn rows(results: &Path) -> Vec<Row> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(results)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("results.json").exists())
                .collect()
        })
        .unwrap_or_default();
    // Oldest runs first: by the date that ends a run's name, then by name.
    dirs.sort_by_key(|p| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let date = n.get(n.len().saturating_sub(10)..).unwrap_or("").to_owned();
        (date, n)
    });
    let mut out = Vec::new();
    for d in dirs {
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(text) = std::fs::read_to_string(d.join("results.json")) else {
            continue;
        };
        let Ok(doc) = serde_json::from_str::<Value>(&text) else {
            eprintln!("dcol-lab table: {name}/results.json is not JSON; skipped");
            continue;
        };
        let run = format!("`{name}`");
        match doc["command"].as_str() {
            Some("paper") => paper_rows(&doc, &run, &mut out),
            Some("grid") => grid_rows(&doc, &run, &mut out),
            Some("lan-load") => lan_rows(&doc, &run, &mut out),
            Some("waypoint-load") => wp_rows(&doc, &run, &mut out),
            _ => {}
        }
    }
    out
}

fn row(
    what: impl Into<String>,
    value: String,
    baseline: String,
    ratio: String,
    target: &str,
    run: &str,
) -> Row {
    Row {
        what: what.into(),
        value,
        baseline,
        ratio,
        target: target.into(),
        run: run.into(),
    }
}

fn paper_rows(doc: &Value, run: &str, out: &mut Vec<Row>) {
    let n = doc["trials_per_cell"].as_u64().unwrap_or(0);
    for c in doc["configs"].as_array().into_iter().flatten() {
        let key = c["key"].as_str().unwrap_or("?");
        let med = |s: &str| {
            c["scenarios"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["key"] == s)
                .map(|x| x["median_mbps"].clone())
                .unwrap_or(Value::Null)
        };
        let l = &c["ratios"]["loss_vs_tcp_pct"];
        if key == "symmetric" {
            let target = l["mptcp1"].as_f64().map(|m| m + 0.3);
            let met = match (l["dcol_vpn"].as_f64(), target) {
                (Some(v), Some(t)) => {
                    if v <= t {
                        " (met)"
                    } else {
                        " (not met)"
                    }
                }
                _ => "",
            };
            out.push(row(
                format!("{key}, no detour needed: DCol VPN loss vs TCP, {n} trials"),
                format!("{} %", f(&l["dcol_vpn"], 2)),
                format!("MPTCP-1 {} %", f(&l["mptcp1"], 2)),
                "–".into(),
                &format!(
                    "≤ MPTCP-1 + 0.3 = {}{met}",
                    target.map_or("–".into(), |t| format!("{t:.2} %"))
                ),
                run,
            ));
            out.push(row(
                format!("{key}, no detour needed: DCol NAT loss vs TCP, {n} trials"),
                format!("{} %", f(&l["dcol_nat"], 2)),
                format!("MPTCP-1 {} %", f(&l["mptcp1"], 2)),
                "–".into(),
                "",
                run,
            ));
        } else {
            out.push(row(
                format!("{key}: DCol NAT / TCP, {n} trials"),
                format!("{} Mbit/s", f(&med("dcol_nat"), 2)),
                format!("TCP {} Mbit/s", f(&med("tcp"), 2)),
                ratio(&med("dcol_nat"), &med("tcp")),
                "",
                run,
            ));
        }
    }
}

fn grid_rows(doc: &Value, run: &str, out: &mut Vec<Row>) {
    let n = doc["trials_per_cell"].as_u64().unwrap_or(0);
    for c in doc["configs"].as_array().into_iter().flatten() {
        let dcol = c["scenarios"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["key"] == "dcol")
            .map(|x| x["median_mbps"].clone())
            .unwrap_or(Value::Null);
        let met = if c["met"] == true {
            " (met)"
        } else {
            " (not met)"
        };
        out.push(row(
            format!(
                "three paths, {}: DCol with 2 detours, {n} trials",
                c["key"].as_str().unwrap_or("?")
            ),
            format!("{} Mbit/s", f(&dcol, 2)),
            format!(
                "3 × 1-subflow MPTCP {} Mbit/s",
                f(&c["sum_of_paths_mbps"], 2)
            ),
            ratio(&dcol, &c["sum_of_paths_mbps"]),
            &format!("≥ 0.97x{met}"),
            run,
        ));
        let m = &c["mtu"];
        if m.is_object() {
            out.push(row(
                "TCP through a WireGuard tunnel, MTU 1440 (IPv4 endpoint)",
                format!("{} Mbit/s", f(&m["tcp_vpn_median_mbps"]["mtu1440"], 2)),
                format!(
                    "MTU 1420 {} Mbit/s",
                    f(&m["tcp_vpn_median_mbps"]["mtu1420"], 2)
                ),
                ratio(
                    &m["tcp_vpn_median_mbps"]["mtu1440"],
                    &m["tcp_vpn_median_mbps"]["mtu1420"],
                ),
                "",
                run,
            ));
        }
    }
}

fn lan_rows(doc: &Value, run: &str, out: &mut Vec<Row>) {
    let (r, p) = (&doc["routed"], &doc["proxied"]);
    let (rl, pl) = (&r["load"], &p["load"]);
    let n = format!(
        "{} LAN conns ({} MPTCP), {} s",
        doc["conns"], doc["mptcp_conns"], doc["hold_s"]
    );
    let lost = |l: &Value| {
        let stalled =
            l["echo_stalled"].as_u64().unwrap_or(0) + l["bulk_stalled"].as_u64().unwrap_or(0);
        let mut s = format!(
            "{} lost, {stalled} stalled",
            l["lost"].as_u64().unwrap_or(0) + l["connect_failed"].as_u64().unwrap_or(0),
        );
        // Newer runs say which server the stalled uploads went to.
        let to = &l["bulk_stalled_to"];
        if stalled > 0 && to.is_object() {
            s.push_str(&format!(
                " (uploads to the TCP server {}, to the MPTCP server {}; longest gap {} s)",
                to["tcp_server"],
                to["mptcp_server"],
                f(&l["bulk_longest_gap_s"], 1)
            ));
        }
        s
    };
    out.push(row(
        format!("{n}: through the proxy"),
        lost(pl),
        format!("routed: {}", lost(rl)),
        "–".into(),
        "0 lost, 0 stalled",
        run,
    ));
    let m = &pl["machine"];
    out.push(row(
        format!("{n}: dcol RSS peak / CPU"),
        format!(
            "{} KB / {} % of a core",
            f(&m["daemon_rss_peak_kb"], 0),
            f(&m["daemon_cpu_pct"], 1)
        ),
        format!("RSS at start {} KB", f(&m["daemon_rss_start_kb"], 0)),
        "–".into(),
        "RSS ≤ 16 MB",
        run,
    ));
    out.push(row(
        format!("{n}: slowest loop turn"),
        format!(
            "{} ms ({} turns over 50 ms)",
            f(&pl["loop"]["max_ms"], 1),
            pl["loop"]["over_50ms"]
        ),
        "–".into(),
        "–".into(),
        "no turn over 50 ms",
        run,
    ));
    out.push(row(
        format!("{n}: echo round trip p99"),
        format!("{} ms", f(&pl["echo_ms"]["p99"], 1)),
        format!("routed {} ms", f(&rl["echo_ms"]["p99"], 1)),
        ratio(&pl["echo_ms"]["p99"], &rl["echo_ms"]["p99"]),
        "",
        run,
    ));
    out.push(row(
        format!("{n}: machine CPU"),
        format!("{} s", f(&pl["machine"]["busy_cpu_s"], 1)),
        format!("routed {} s", f(&rl["machine"]["busy_cpu_s"], 1)),
        ratio(&pl["machine"]["busy_cpu_s"], &rl["machine"]["busy_cpu_s"]),
        "",
        run,
    ));
    if doc["waypoint_upnp"] == true {
        let w = &doc["waypoint_after_load"];
        let refused: u64 = w["refused"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        out.push(row(
            format!("{n}, waypoint with UPnP (32 ports): connections with a detour at the end"),
            format!(
                "{} of {} MPTCP; {refused} grant(s) refused; bulk {} Mbit/s",
                pl["detoured_at_end"],
                doc["mptcp_conns"],
                f(&pl["bulk_mbps"], 1)
            ),
            format!("routed bulk {} Mbit/s", f(&rl["bulk_mbps"], 1)),
            ratio(&pl["bulk_mbps"], &rl["bulk_mbps"]),
            "",
            run,
        ));
    }
    setup_short_rows(doc, run, out);
}

/// The LAN load's detour setup and short-connection rows.
fn setup_short_rows(doc: &Value, run: &str, out: &mut Vec<Row>) {
    let (r, p) = (&doc["routed"], &doc["proxied"]);
    let pl = &p["load"];
    let (i, u) = (
        &p["detour_setup_idle_ms"],
        &pl["detour_setup_under_load_ms"],
    );
    out.push(row(
        "detour setup under that load, median / p99 (ratio: medians)",
        format!("{} / {} ms", f(&u["median"], 1), f(&u["p99"], 1)),
        format!(
            "idle {} / {} ms; one loaded queue: routed echo p50 {} ms",
            f(&i["median"], 1),
            f(&i["p99"], 1),
            f(&r["load"]["echo_ms"]["median"], 1)
        ),
        ratio(&u["median"], &i["median"]),
        "",
        run,
    ));
    let (rs, ps) = (&r["short"], &p["short"]);
    out.push(row(
        format!(
            "{} short connections, {} at once{}",
            doc["short_conns"],
            doc["short_window"],
            if ps["drained_after_load_s"].is_number() {
                ", after the load drained"
            } else {
                ""
            }
        ),
        format!(
            "{}/s, {} failed, p99 {} ms",
            f(&ps["per_s"], 0),
            ps["failed"],
            f(&ps["ms"]["p99"], 1)
        ),
        format!(
            "routed {}/s, p99 {} ms",
            f(&rs["per_s"], 0),
            f(&rs["ms"]["p99"], 1)
        ),
        ratio(&ps["per_s"], &rs["per_s"]),
        "",
        run,
    ));
}

fn wp_rows(doc: &Value, run: &str, out: &mut Vec<Row>) {
    let (q, l, s) = (&doc["quiet"], &doc["load"], &doc["samples"]);
    let (m, g, t) = (&doc["members"], &doc["grants_per_s"], &doc["churn_s"]);
    let shared = if doc["destinations"] == 1 {
        " (one destination: shared tunnels)"
    } else {
        ""
    };
    let n = format!("waypoint, {m} members, {g} grants/s, {t} s{shared}");
    out.push(row(
        format!("{n}: grant latency median / p99 (ratio: p99s)"),
        format!(
            "{} / {} ms",
            f(&l["grant_ms"]["median"], 1),
            f(&l["grant_ms"]["p99"], 1)
        ),
        format!(
            "quiet {} / {} ms",
            f(&q["grant_ms"]["median"], 2),
            f(&q["grant_ms"]["p99"], 2)
        ),
        ratio(&l["grant_ms"]["p99"], &q["grant_ms"]["p99"]),
        "",
        run,
    ));
    out.push(row(
        format!("{n}: unanswered / refused requests"),
        format!("{} / {}", l["unanswered"], l["refused"]),
        format!(
            "{} grants, {} renewals, {} releases",
            l["grants"], l["renewals"], l["releases"]
        ),
        "–".into(),
        "",
        run,
    ));
    out.push(row(
        format!("{n}: NAT map / tunnel flows (median, max)"),
        format!(
            "{} / {}, {} / {}",
            f(&s["median_map_elements"], 0),
            f(&s["median_tunnel_flows"], 0),
            f(&s["max_map_elements"], 0),
            f(&s["max_tunnel_flows"], 0)
        ),
        "–".into(),
        "–".into(),
        "",
        run,
    ));
    out.push(row(
        format!("{n}: dcol CPU, RSS peak, loop turns over 50 ms"),
        format!(
            "{} % of a core, {} KB, {} turns over 50 ms (slowest {} ms since start)",
            f(&s["steady_cpu_pct"], 1),
            f(&s["rss_peak_kb"], 0),
            doc["loop"]["over_50ms"],
            f(&doc["loop"]["max_ms_since_start"], 1)
        ),
        "–".into(),
        "–".into(),
        "no turn over 50 ms",
        run,
    ));
    let k = &doc["leaks"];
    out.push(row(
        format!("{n}: left after all released"),
        format!(
            "{} elements, {} flows; evidence {} grant / {} end records",
            k["map_elements"],
            k["tunnel_flows"],
            k["evidence_grant_records"],
            k["evidence_end_records"]
        ),
        format!("{} grants", k["grants_answered"]),
        "–".into(),
        if k["ok"] == true {
            "none, records = grants (met)"
        } else {
            "none, records = grants (NOT met)"
        },
        run,
    ));
}

fn render(rows: &[Row]) -> String {
    let mut s = String::from("| measurement | result | baseline (same run) | ratio | target | run (`tests/lab/results/`) |\n| --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.what, r.value, r.baseline, r.ratio, r.target, r.run
        ));
    }
    s
}
