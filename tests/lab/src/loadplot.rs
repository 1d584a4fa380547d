//! Plots of the load runs: grouped bars (a baseline next to the measured
//! value, same run) and time series, as plain SVG.

use std::fmt::Write;

use serde_json::Value;

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 90.0;
const COLORS: [&str; 4] = ["#9bb7d4", "#e07b00", "#2ca02c", "#d62728"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A group of bars: its label and (series name, value) pairs.
pub struct Group {
    /// Under the group.
    pub label: String,
    /// One bar per series; `None` is drawn as missing.
    pub bars: Vec<(String, Option<f64>)>,
}

fn nice_max(max: f64) -> f64 {
    let m = max.max(1e-9) * 1.1;
    let p = 10f64.powf(m.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|k| k * p)
        .find(|v| *v >= m)
        .unwrap_or(10.0 * p)
}

fn frame(
    o: &mut String,
    title: &str,
    subtitle: &str,
    unit: &str,
    ymax: f64,
) -> impl Fn(f64) -> f64 {
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="16">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    let _ = writeln!(
        o,
        r##"<text x="{}" y="40" text-anchor="middle" fill="#555">{}</text>"##,
        W / 2.0,
        esc(subtitle)
    );
    let plot_h = H - TOP - BOTTOM;
    let y = move |v: f64| TOP + plot_h * (1.0 - v / ymax);
    for k in 0..=5 {
        let v = ymax * f64::from(k) / 5.0;
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(v),
            W - 20.0,
            LEFT - 6.0,
            y(v) + 4.0,
            fmt(v)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">{1}</text>"#,
        TOP + plot_h / 2.0,
        esc(unit)
    );
    y
}

fn fmt(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Grouped bars, y from 0.
pub fn bars_svg(title: &str, subtitle: &str, unit: &str, groups: &[Group]) -> String {
    let max = groups
        .iter()
        .flat_map(|g| g.bars.iter().filter_map(|b| b.1))
        .fold(0.0f64, f64::max);
    let ymax = nice_max(max);
    let mut o = String::new();
    let y = frame(&mut o, title, subtitle, unit, ymax);
    let gw = (W - LEFT - 20.0) / groups.len().max(1) as f64;
    for (gi, g) in groups.iter().enumerate() {
        let x0 = LEFT + gw * gi as f64 + gw * 0.1;
        let bw = gw * 0.8 / g.bars.len().max(1) as f64;
        for (bi, (_, v)) in g.bars.iter().enumerate() {
            let x = x0 + bw * bi as f64;
            match v {
                Some(v) => {
                    let _ = writeln!(
                        o,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                        y(*v),
                        bw * 0.9,
                        (y(0.0) - y(*v)).max(0.5),
                        COLORS[bi % COLORS.len()],
                        x + bw * 0.45,
                        y(*v) - 3.0,
                        fmt(*v)
                    );
                }
                None => {
                    let _ = writeln!(
                        o,
                        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#a00" font-size="10">n/a</text>"##,
                        x + bw * 0.45,
                        y(0.0) - 4.0
                    );
                }
            }
        }
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x0 + gw * 0.4,
            y(0.0) + 16.0,
            esc(&g.label)
        );
    }
    legend(
        &mut o,
        groups
            .first()
            .map(|g| g.bars.iter().map(|b| b.0.clone()).collect())
            .unwrap_or_default(),
    );
    o.push_str("</svg>\n");
    o
}

fn legend(o: &mut String, names: Vec<String>) {
    let ly = H - 22.0;
    for (i, n) in names.iter().enumerate() {
        let x = LEFT + 200.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<rect x="{x}" y="{}" width="14" height="10" fill="{}"/><text x="{}" y="{ly}">{}</text>"#,
            ly - 9.0,
            COLORS[i % COLORS.len()],
            x + 20.0,
            esc(n)
        );
    }
}

/// Lines over time (x in seconds), y from 0.
pub fn series_svg(
    title: &str,
    subtitle: &str,
    unit: &str,
    lines: &[(String, Vec<(f64, f64)>)],
) -> String {
    let pts = lines.iter().flat_map(|l| l.1.iter());
    let (xmax, ymax) = pts.fold((1e-9f64, 0.0f64), |(a, b), p| (a.max(p.0), b.max(p.1)));
    let ymax = nice_max(ymax);
    let mut o = String::new();
    let y = frame(&mut o, title, subtitle, unit, ymax);
    let x = |t: f64| LEFT + (W - LEFT - 20.0) * t / xmax;
    for (i, (_, l)) in lines.iter().enumerate() {
        let d: Vec<String> = l
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.8"/>"#,
            d.join(" "),
            COLORS[i % COLORS.len()]
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">time (s), 0 to {:.0}</text>"#,
        W / 2.0,
        y(0.0) + 18.0,
        xmax
    );
    legend(&mut o, lines.iter().map(|l| l.0.clone()).collect());
    o.push_str("</svg>\n");
    o
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// The LAN load's plot: routed against proxied, and detour setup idle
/// against under load.
pub fn lan_svg(doc: &Value) -> String {
    let (r, p) = (&doc["routed"], &doc["proxied"]);
    let pair = |label: &str, a: Option<f64>, b: Option<f64>| Group {
        label: label.into(),
        bars: vec![
            ("baseline (routed / idle)".into(), a),
            ("through the proxy / under load".into(), b),
        ],
    };
    let groups = vec![
        pair(
            "echo p50 ms",
            num(&r["load"]["echo_ms"]["median"]),
            num(&p["load"]["echo_ms"]["median"]),
        ),
        pair(
            "echo p99 ms",
            num(&r["load"]["echo_ms"]["p99"]),
            num(&p["load"]["echo_ms"]["p99"]),
        ),
        pair(
            "short conn p99 ms",
            num(&r["short"]["ms"]["p99"]),
            num(&p["short"]["ms"]["p99"]),
        ),
        pair(
            "detour setup p50 ms",
            num(&p["detour_setup_idle_ms"]["median"]),
            num(&p["load"]["detour_setup_under_load_ms"]["median"]),
        ),
        pair(
            "detour setup p99 ms",
            num(&p["detour_setup_idle_ms"]["p99"]),
            num(&p["load"]["detour_setup_under_load_ms"]["p99"]),
        ),
    ];
    let sub = format!(
        "{} connections ({} to the MPTCP server) held {} s; {} short connections",
        doc["conns"], doc["mptcp_conns"], doc["hold_s"], doc["short_conns"]
    );
    bars_svg("LAN proxy under load", &sub, "milliseconds", &groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_whole_documents() {
        let g = [Group {
            label: "a<b".into(),
            bars: vec![("x".into(), Some(2.0)), ("y".into(), None)],
        }];
        let s = bars_svg("t", "s", "ms", &g);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>") && s.contains("a&lt;b"));
        let s = series_svg("t", "s", "n", &[("m".into(), vec![(0.0, 1.0), (2.0, 3.0)])]);
        assert!(s.contains("polyline"));
        assert_eq!(nice_max(9.0), 10.0);
    }
}
