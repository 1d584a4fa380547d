//! Statistics of trials and hand-written SVG box plots, one per network
//! configuration, like the paper's figures: one box per scenario (quartiles,
//! median line, whiskers to the last point within 1.5 IQR, outliers as
//! circles), the paper's median as a red mark beside it.

use std::fmt::Write as _;

/// Quantile `q` (0..=1) of sorted `v`, linearly interpolated (numpy's default,
/// which the paper's matplotlib box plots used).
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

/// The median of `v` (any order).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    quantile(&s, 0.5)
}

/// A box of a box plot.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxStats {
    /// First quartile.
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// Lowest point within 1.5 IQR below q1.
    pub lo: f64,
    /// Highest point within 1.5 IQR above q3.
    pub hi: f64,
    /// Points beyond the whiskers.
    pub outliers: Vec<f64>,
}

impl BoxStats {
    /// Tukey's box of `v`; `None` when empty.
    pub fn of(v: &[f64]) -> Option<BoxStats> {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let (q1, median, q3) = (quantile(&s, 0.25)?, quantile(&s, 0.5)?, quantile(&s, 0.75)?);
        let iqr = q3 - q1;
        let (lim_lo, lim_hi) = (q1 - 1.5 * iqr, q3 + 1.5 * iqr);
        let inside: Vec<f64> = s
            .iter()
            .copied()
            .filter(|x| *x >= lim_lo && *x <= lim_hi)
            .collect();
        Some(BoxStats {
            q1,
            median,
            q3,
            lo: inside.first().copied().unwrap_or(q1),
            hi: inside.last().copied().unwrap_or(q3),
            outliers: s
                .iter()
                .copied()
                .filter(|x| *x < lim_lo || *x > lim_hi)
                .collect(),
        })
    }
}

/// One box of a plot: its label, the trials, the paper's median if any.
#[derive(Debug, Clone)]
pub struct Series {
    /// Label under the box.
    pub label: String,
    /// Throughput of each trial (Mbit/s).
    pub values: Vec<f64>,
    /// The paper's median (Mbit/s).
    pub reference: Option<f64>,
}

const W: f64 = 760.0;
const H: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 80.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A tick step giving 4-10 ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let mut step = 1.0;
    for s in [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0] {
        step = s;
        if max / s <= 10.0 {
            break;
        }
    }
    step
}

/// The SVG of a box plot titled `title` (Mbit/s on the y axis, from 0).
pub fn box_plot_svg(title: &str, subtitle: &str, series: &[Series]) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied().chain(s.reference))
        .fold(1.0f64, f64::max);
    let step = tick_step(max * 1.08);
    let ymax = ((max * 1.08) / step).ceil() * step;
    let plot_h = H - TOP - BOTTOM;
    let plot_w = W - LEFT - RIGHT;
    let y = |v: f64| TOP + plot_h * (1.0 - v / ymax);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    let _ = writeln!(
        o,
        r##"<text x="{}" y="40" text-anchor="middle" font-size="11" fill="#444">{}</text>"##,
        W / 2.0,
        esc(subtitle)
    );
    // Grid and y axis.
    let mut t = 0.0;
    while t <= ymax + 1e-9 {
        let yy = y(t);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            if step < 1.0 {
                format!("{t:.1}")
            } else {
                format!("{t:.0}")
            }
        );
        t += step;
    }
    let _ = writeln!(
        o,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/><line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        H - BOTTOM,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM
    );
    let _ = writeln!(
        o,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">Throughput (Mbit/s)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    let slot = plot_w / series.len().max(1) as f64;
    for (i, s) in series.iter().enumerate() {
        let cx = LEFT + slot * (i as f64 + 0.5);
        let bw = slot * 0.42;
        let (x0, x1) = (cx - bw / 2.0, cx + bw / 2.0);
        let _ = writeln!(
            o,
            r##"<text x="{cx:.1}" y="{}" text-anchor="middle">{}</text><text x="{cx:.1}" y="{}" text-anchor="middle" font-size="10" fill="#555">n={}</text>"##,
            H - BOTTOM + 18.0,
            esc(&s.label),
            H - BOTTOM + 32.0,
            s.values.len()
        );
        match BoxStats::of(&s.values) {
            Some(b) => {
                let _ = writeln!(
                    o,
                    r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/><line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/>"##,
                    y(b.hi),
                    y(b.q3),
                    y(b.q1),
                    y(b.lo)
                );
                for w in [b.hi, b.lo] {
                    let _ = writeln!(
                        o,
                        r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
                        cx - bw / 4.0,
                        y(w),
                        cx + bw / 4.0,
                        y(w)
                    );
                }
                let _ = writeln!(
                    o,
                    r##"<rect x="{x0:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="#cfe0f3" stroke="black"/>"##,
                    y(b.q3),
                    (y(b.q1) - y(b.q3)).max(1.0)
                );
                let _ = writeln!(
                    o,
                    r##"<line x1="{x0:.1}" y1="{:.1}" x2="{x1:.1}" y2="{:.1}" stroke="#e07b00" stroke-width="2.5"/>"##,
                    y(b.median),
                    y(b.median)
                );
                for p in &b.outliers {
                    let _ = writeln!(
                        o,
                        r#"<circle cx="{cx:.1}" cy="{:.1}" r="3.5" fill="none" stroke="black"/>"#,
                        y(*p)
                    );
                }
                let _ = writeln!(
                    o,
                    r#"<text x="{:.1}" y="{:.1}" font-size="10">{:.2}</text>"#,
                    x1 + 3.0,
                    y(b.median) + 3.5,
                    b.median
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#a00">no data</text>"##,
                    y(ymax / 2.0)
                );
            }
        }
        if let Some(r) = s.reference {
            let _ = writeln!(
                o,
                r##"<path d="M {:.1} {:.1} l 6 -5 l 6 5 l -6 5 z" fill="#d62728"/>"##,
                x0 - 14.0,
                y(r)
            );
        }
    }
    // Legend.
    let ly = H - 22.0;
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{}" width="18" height="10" fill="#cfe0f3" stroke="black"/><text x="{}" y="{ly}">this lab: quartiles, median (orange), whiskers 1.5 IQR, outliers (circles)</text>"##,
        ly - 9.0,
        LEFT + 24.0
    );
    let _ = writeln!(
        o,
        r##"<path d="M {} {} l 6 -5 l 6 5 l -6 5 z" fill="#d62728"/><text x="{}" y="{ly}">paper's median</text>"##,
        W - 190.0,
        ly - 4.0,
        W - 172.0
    );
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.25), Some(1.75));
        assert_eq!(quantile(&v, 0.5), Some(2.5));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn outliers_beyond_one_and_a_half_iqr() {
        let b = BoxStats::of(&[9.0, 9.1, 9.2, 9.3, 2.0]).expect("box");
        assert_eq!(b.outliers, vec![2.0]);
        assert_eq!(b.lo, 9.0);
    }

    #[test]
    fn svg_is_one_document_with_every_label() {
        let s = box_plot_svg(
            "T & t",
            "sub",
            &[
                Series {
                    label: "TCP".into(),
                    values: vec![9.5],
                    reference: Some(9.56),
                },
                Series {
                    label: "DCol".into(),
                    values: vec![],
                    reference: None,
                },
            ],
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("T &amp; t") && s.contains(">TCP<") && s.contains("no data"));
    }
}
