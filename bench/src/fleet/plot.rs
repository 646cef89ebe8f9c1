//! The latency plot: one connection-time histogram per phase, overlaid, on a log
//! time axis, as a self-contained SVG (hand-written: no plotting crate for a
//! few polylines).
use std::fmt::Write;

use super::report::PhaseReport;

const W: f64 = 900.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 40.0;
/// Height of the plot area itself.
const PH: f64 = 380.0;
const BOTTOM: f64 = 60.0;
const BINS: usize = 60;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// An SVG of the phases' connection-time distributions (share of each phase's
/// connections per log-spaced bin) with their p50/p99 in the legend.
pub fn latency_svg(title: &str, phases: &[PhaseReport]) -> String {
    let recorded = phases.iter().filter(|p| !p.histogram.is_empty());
    let lo_us = recorded
        .clone()
        .map(|p| p.histogram.min())
        .min()
        .unwrap_or(1)
        .max(1);
    let hi_us = recorded
        .map(|p| p.histogram.max())
        .max()
        .unwrap_or(10)
        .max(lo_us * 10);
    // Whole decades, so the axis ticks land on 1, 10, 100 ... ms.
    let lo = (lo_us as f64 / 1000.0).log10().floor();
    let hi = (hi_us as f64 / 1000.0).log10().ceil().max(lo + 1.0);
    let bin_of = |us: u64| {
        let x = ((us.max(1) as f64 / 1000.0).log10() - lo) / (hi - lo);
        ((x * BINS as f64) as usize).min(BINS - 1)
    };
    let shares: Vec<Vec<f64>> = phases
        .iter()
        .map(|p| {
            let mut bins = vec![0u64; BINS];
            for v in p.histogram.iter_recorded() {
                bins[bin_of(v.value_iterated_to())] += v.count_at_value();
            }
            let n = p.histogram.len().max(1) as f64;
            bins.iter().map(|&c| 100.0 * c as f64 / n).collect()
        })
        .collect();
    let ymax = shares.iter().flatten().fold(1.0f64, |m, &v| m.max(v));
    // Round up to a multiple of 4 so the four gridlines get whole percentages.
    let ymax = (ymax / 4.0).ceil() * 4.0;
    let pw = W - LEFT - RIGHT;
    // The legend sits between the title and the plot, one row per phase.
    let top = 44.0 + 16.0 * phases.len() as f64;
    let h = top + PH + BOTTOM;
    let ph = PH;
    let px = |bin: f64| LEFT + pw * bin / BINS as f64;
    let py = |share: f64| top + ph * (1.0 - share / ymax);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Axes, decade ticks and share gridlines.
    let _ = writeln!(
        s,
        r#"<path d="M{LEFT} {top} V{} H{}" stroke="black" fill="none"/>"#,
        top + ph,
        LEFT + pw
    );
    let decades = (hi - lo) as i32;
    for d in 0..=decades {
        let x = LEFT + pw * f64::from(d) / f64::from(decades);
        let ms = 10f64.powf(lo + f64::from(d));
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 16.0,
            fmt_ms(ms)
        );
    }
    for i in 0..=4 {
        let share = ymax * f64::from(i) / 4.0;
        let y = py(share);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{share:.0}%</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">connection time, ms (log scale)</text>"#,
        LEFT + pw / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">share of the phase's connections</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // One step line per phase.
    for (i, bins) in shares.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut d = format!("M{:.1} {:.1}", px(0.0), py(0.0));
        for (b, &v) in bins.iter().enumerate() {
            let _ = write!(
                d,
                " L{:.1} {:.1} L{:.1} {:.1}",
                px(b as f64),
                py(v),
                px(b as f64 + 1.0),
                py(v)
            );
        }
        let _ = write!(d, " L{:.1} {:.1}", px(BINS as f64), py(0.0));
        let _ = writeln!(
            s,
            r#"<path d="{d}" stroke="{color}" stroke-width="1.5" fill="{color}" fill-opacity="0.12"/>"#
        );
    }
    // The legend.
    let labels: Vec<String> = phases
        .iter()
        .map(|p| {
            format!(
                "{}{}: {} conns, {:.1}% resumed, p50 {} p99 {}",
                p.name,
                if p.after_restart {
                    " (after restart)"
                } else {
                    ""
                },
                p.connections,
                p.resumed_pct,
                fmt_ms(p.conn_time_ms.p50),
                fmt_ms(p.conn_time_ms.p99)
            )
        })
        .collect();
    for (i, label) in labels.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let ly = 48.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="10" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            LEFT + 14.0,
            ly - 9.0,
            LEFT + 32.0,
            ly,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else if ms >= 0.1 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.3} ms")
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
