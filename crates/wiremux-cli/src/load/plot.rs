//! `--report FILE.svg|FILE.html`: a latency-over-time plot and a
//! latency-distribution plot, drawn as plain SVG (no plotting library).

use super::run::Outcome;
use std::fmt::Write;

const WIDTH: f64 = 760.0;
const PANEL: f64 = 300.0;
const MARGIN: f64 = 60.0;
/// Room right of the panels: the last percentile tick (`99.99%`) is
/// centred on the edge and must not be cut off.
const RIGHT: f64 = 40.0;
/// Space above each panel for its title and legend.
const HEADROOM: f64 = 70.0;

/// A named run to draw, with its colour.
pub struct Series<'a> {
    pub label: &'a str,
    pub outcome: &'a Outcome,
    pub colour: &'a str,
}

/// Both plots as one SVG document.
pub fn svg(title: &str, series: &[Series<'_>]) -> String {
    let height = 2.0 * (HEADROOM + PANEL) + MARGIN + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{MARGIN}" y="20" font-size="15">{}</text>"#,
        escape(title)
    );
    over_time(&mut out, series, HEADROOM);
    distribution(&mut out, series, 2.0 * HEADROOM + PANEL + 20.0);
    out.push_str("</svg>\n");
    out
}

/// An HTML page around the SVG.
pub fn html(title: &str, series: &[Series<'_>]) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body>\n{}</body></html>\n",
        svg(title, series),
        t = escape(title)
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Axis frame with a title and labelled y ticks (microseconds, log scale).
fn frame(out: &mut String, top: f64, title: &str, x_label: &str, max_us: f64) {
    let (left, right, bottom) = (MARGIN, WIDTH - RIGHT, top + PANEL);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="{}" font-size="13">{}</text>"#,
        top - 34.0,
        escape(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{}" height="{PANEL}" fill="none" stroke="#888"/>"##,
        right - left
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        (left + right) / 2.0,
        bottom + 34.0
    );
    let mut tick = 1.0;
    while tick <= max_us * 1.0001 {
        let y = y_of(tick, top, max_us);
        let label = if tick >= 1000.0 {
            format!("{} ms", tick / 1000.0)
        } else {
            format!("{tick} µs")
        };
        let _ = writeln!(
            out,
            r##"<line x1="{left}" x2="{right}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{label}</text>"#,
            left - 4.0,
            y + 4.0
        );
        tick *= 10.0;
    }
}

/// Log-scale y position of a latency.
fn y_of(us: f64, top: f64, max_us: f64) -> f64 {
    let span = max_us.max(10.0).log10();
    top + PANEL - (us.max(1.0).log10() / span) * PANEL
}

fn max_latency(series: &[Series<'_>]) -> f64 {
    let max = series
        .iter()
        .map(|s| s.outcome.measured.all.max())
        .max()
        .unwrap_or(1) as f64;
    10f64.powf(max.max(10.0).log10().ceil())
}

fn legend(out: &mut String, series: &[Series<'_>], top: f64, styles: &[(&str, &str)]) {
    let mut x = WIDTH - RIGHT - 170.0 * (series.len() * styles.len()) as f64;
    for s in series {
        for (suffix, dash) in styles {
            let _ = writeln!(
                out,
                r#"<line x1="{x}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                x + 24.0,
                top - 12.0,
                top - 12.0,
                s.colour
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}">{} {suffix}</text>"#,
                x + 28.0,
                top - 8.0,
                escape(s.label)
            );
            x += 170.0;
        }
    }
}

/// p50 and p99 latency for every second of the run.
fn over_time(out: &mut String, series: &[Series<'_>], top: f64) {
    let max_us = max_latency(series);
    frame(
        out,
        top,
        "latency over time (p50 solid, p99 dashed)",
        "seconds into the measured run",
        max_us,
    );
    let seconds = series
        .iter()
        .map(|s| s.outcome.measured.timeline.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let x_of = |second: f64| MARGIN + (second + 0.5) / seconds as f64 * (WIDTH - RIGHT - MARGIN);
    for second in 0..seconds {
        if seconds <= 20 || second % (seconds / 10).max(1) == 0 {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{second}</text>"#,
                x_of(second as f64),
                top + PANEL + 16.0
            );
        }
    }
    for s in series {
        for (quantile, dash) in [(0.5, ""), (0.99, "6 4")] {
            let points: Vec<String> = s
                .outcome
                .measured
                .timeline
                .iter()
                .enumerate()
                .filter(|(_, h)| !h.is_empty())
                .map(|(i, h)| {
                    format!(
                        "{:.1},{:.1}",
                        x_of(i as f64),
                        y_of(h.value_at_quantile(quantile) as f64, top, max_us)
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/>"#,
                s.colour,
                points.join(" ")
            );
        }
    }
    legend(out, series, top, &[("p50", ""), ("p99", "6 4")]);
}

/// Latency against percentile, with the percentile axis in "nines"
/// (50%, 90%, 99%, 99.9%, …) as HDR histograms are usually shown.
fn distribution(out: &mut String, series: &[Series<'_>], top: f64) {
    let max_us = max_latency(series);
    frame(out, top, "latency distribution", "percentile", max_us);
    let nines_max = 4.0; // up to 99.99 %
    let x_of = |nines: f64| MARGIN + nines / nines_max * (WIDTH - RIGHT - MARGIN);
    for (label, nines) in [
        ("0%", 0.0),
        ("90%", 1.0),
        ("99%", 2.0),
        ("99.9%", 3.0),
        ("99.99%", 4.0),
    ] {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            x_of(nines),
            top + PANEL + 16.0
        );
    }
    for s in series {
        let h = &s.outcome.measured.all;
        if h.is_empty() {
            continue;
        }
        let points: Vec<String> = (0..=200)
            .map(|i| {
                let nines = i as f64 / 200.0 * nines_max;
                let quantile = 1.0 - 10f64.powf(-nines);
                format!(
                    "{:.1},{:.1}",
                    x_of(nines),
                    y_of(h.value_at_quantile(quantile) as f64, top, max_us)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            s.colour,
            points.join(" ")
        );
    }
    legend(out, series, top, &[("", "")]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::run::{histogram, Measured};
    use std::time::Duration;

    #[test]
    fn svg_has_both_plots_and_a_line_per_series() {
        let mut m = Measured::empty(1);
        for us in [5, 50, 500] {
            m.all.record(us).unwrap();
        }
        m.timeline = vec![histogram(), histogram()];
        m.timeline[0].record(7).unwrap();
        m.timeline[1].record(70).unwrap();
        let outcome = Outcome {
            measured: m,
            elapsed: Duration::from_secs(2),
            started: std::time::SystemTime::now(),
            busy: Default::default(),
            server_cpu_seconds: None,
        };
        let doc = svg(
            "a <test>",
            &[Series {
                label: "run",
                outcome: &outcome,
                colour: "#1f77b4",
            }],
        );
        assert!(doc.starts_with("<svg "));
        assert!(doc.contains("a &lt;test&gt;"));
        assert!(doc.contains("latency over time"));
        assert!(doc.contains("latency distribution"));
        assert_eq!(
            doc.matches("<polyline").count(),
            3,
            "p50 and p99 over time, and the distribution"
        );
        let page = html(
            "t",
            &[Series {
                label: "run",
                outcome: &outcome,
                colour: "red",
            }],
        );
        assert!(page.starts_with("<!doctype html>") && page.contains("<svg "));
        // Every label fits in the picture: the last tick, `99.99%`, is
        // centred at least 25 px (half its width) inside the right edge.
        let tick = doc
            .lines()
            .find(|l| l.contains(">99.99%<"))
            .expect("the 99.99% tick");
        let x: f64 = tick.split('"').nth(1).unwrap().parse().unwrap();
        assert!(x + 25.0 <= WIDTH, "{tick}");
    }
}
