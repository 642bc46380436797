//! A run's report: `results.json` (every checker's verdict and the overall `valid`), two
//! SVG plots and an `index.html` that shows them with the verdicts.
//!
//! The SVG is written by hand: two simple charts do not justify a plotting crate's build
//! time on a shared two-core machine, and hand-written SVG stays readable in a diff.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkers::{check_all, CheckConfig, Verdict};
use crate::history::{History, LeaseStateRec, OpResult, Outcome, RunMeta};

/// Files of a run folder.
pub struct RunFiles {
    /// `history.jsonl`.
    pub history: PathBuf,
    /// `results.json`.
    pub results: PathBuf,
    /// `latency.svg`.
    pub latency_svg: PathBuf,
    /// `primary.svg`.
    pub primary_svg: PathBuf,
    /// `index.html`.
    pub index: PathBuf,
}

impl RunFiles {
    /// The files of the run folder `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            history: dir.join("history.jsonl"),
            results: dir.join("results.json"),
            latency_svg: dir.join("latency.svg"),
            primary_svg: dir.join("primary.svg"),
            index: dir.join("index.html"),
        }
    }
}

/// Counts that summarise a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Client operations.
    pub operations: usize,
    /// Of which `ok`.
    pub ok: usize,
    /// Of which `fail`.
    pub fail: usize,
    /// Of which unknown (`info` or never completed).
    pub info: usize,
    /// Faults injected.
    pub faults: usize,
    /// Scheduled faults that could not be applied here (`nemesis_skipped`).
    #[serde(default)]
    pub faults_skipped: usize,
    /// Records in the history.
    pub records: usize,
    /// Length of the run, seconds.
    pub duration_s: f64,
}

/// `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// True when every checker is valid.
    pub valid: bool,
    /// Run parameters, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<RunMeta>,
    /// Counts.
    pub summary: Summary,
    /// Every checker's verdict.
    pub checkers: Vec<Verdict>,
}

/// Summarises a history.
pub fn summarize(h: &History) -> Summary {
    let ops = h.operations();
    let mut s = Summary {
        operations: ops.len(),
        faults: h.nemesis_intervals().len(),
        faults_skipped: h
            .records
            .iter()
            .filter(|r| matches!(r.event, crate::history::Event::NemesisSkipped { .. }))
            .count(),
        records: h.records.len(),
        duration_s: h.end_ns() as f64 / 1e9,
        ..Summary::default()
    };
    for op in &ops {
        match op.outcome {
            Outcome::Ok(_) => s.ok += 1,
            Outcome::Fail(_) => s.fail += 1,
            Outcome::Info(_) | Outcome::Pending => s.info += 1,
        }
    }
    s
}

/// Runs every checker on `dir/history.jsonl` and writes the report into `dir`. `cfg`
/// overrides what the history's `meta` record says (`None` = use the record).
pub fn check_run(dir: &Path, cfg: Option<CheckConfig>) -> io::Result<Results> {
    let files = RunFiles::new(dir);
    let mut h = History::read(&files.history)?;
    // The real agents' hook files are the source of truth for their records.
    for bad in crate::agents::ingest(dir, &mut h) {
        eprintln!("warning: malformed hook line skipped: {bad}");
    }
    let cfg = cfg.unwrap_or_else(|| CheckConfig::from_history(&h));
    let verdicts = check_all(&h, &cfg);
    write_report(dir, &h, verdicts)
}

/// Writes `results.json`, the plots and `index.html` for `verdicts` on `h` into `dir`.
pub fn write_report(dir: &Path, h: &History, verdicts: Vec<Verdict>) -> io::Result<Results> {
    fs::create_dir_all(dir)?;
    let files = RunFiles::new(dir);
    let results = Results {
        valid: verdicts.iter().all(|v| v.valid),
        meta: h.meta().cloned(),
        summary: summarize(h),
        checkers: verdicts,
    };
    fs::write(&files.results, serde_json::to_vec_pretty(&results)?)?;
    fs::write(&files.latency_svg, latency_svg(h))?;
    fs::write(&files.primary_svg, primary_svg(h))?;
    fs::write(&files.index, index_html(&results))?;
    Ok(results)
}

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const W: f64 = 1000.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
];

fn family_color(f: &str) -> &'static str {
    match f {
        "partition" => "#d62728",
        "kill" => "#9467bd",
        "pause" => "#ff7f0e",
        "clock" => "#17becf",
        "disk" => "#8c564b",
        _ => "#7f7f7f",
    }
}

/// A plot area mapping seconds to x.
struct Frame {
    end_s: f64,
    plot_w: f64,
}

impl Frame {
    fn new(h: &History) -> Self {
        Self {
            end_s: (h.end_ns() as f64 / 1e9).max(1e-3),
            plot_w: W - LEFT - RIGHT,
        }
    }

    fn x(&self, t_ns: u64) -> f64 {
        LEFT + (t_ns as f64 / 1e9) / self.end_s * self.plot_w
    }

    /// Nemesis intervals as translucent bands over `[y0, y0 + height]`, plus time ticks.
    fn background(&self, h: &History, out: &mut String, y0: f64, height: f64) {
        for (family, s, e) in h.nemesis_intervals() {
            let (x0, x1) = (self.x(s), self.x(e));
            let _ = write!(
                out,
                r#"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{height:.1}" fill="{}" fill-opacity="0.15"><title>{} {:.1}s–{:.1}s</title></rect>"#,
                (x1 - x0).max(1.0),
                family_color(&family),
                escape(&family),
                s as f64 / 1e9,
                e as f64 / 1e9,
            );
        }
        let step = nice_step(self.end_s / 8.0);
        let mut t = 0.0;
        while t <= self.end_s + 1e-9 {
            let x = LEFT + t / self.end_s * self.plot_w;
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
                y0 + height,
                y0 + height + 14.0,
                trim_float(t),
            );
            t += step;
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">time (s)</text>"#,
            LEFT + self.plot_w / 2.0,
            y0 + height + 30.0
        );
    }

    fn nemesis_legend(&self, h: &History, out: &mut String, mut y: f64) -> f64 {
        let mut seen: Vec<String> = h.nemesis_intervals().into_iter().map(|i| i.0).collect();
        seen.sort();
        seen.dedup();
        for f in seen {
            let x = W - RIGHT + 15.0;
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}" fill-opacity="0.3"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                y - 10.0,
                family_color(&f),
                x + 18.0,
                y,
                escape(&f)
            );
            y += 16.0;
        }
        y
    }
}

fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= raw {
            return m * mag;
        }
    }
    10.0 * mag
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn svg_open(height: f64, title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    )
}

/// Operation latency over time (log scale), coloured by outcome, with nemesis intervals
/// shaded. Long runs are thinned to at most 20 000 `ok` points (every failure and unknown
/// outcome is kept: those are what a reader looks for).
pub fn latency_svg(h: &History) -> String {
    let frame = Frame::new(h);
    let plot_h = 320.0;
    let mut out = svg_open(plot_h + TOP + 50.0, "Operation latency");
    frame.background(h, &mut out, TOP, plot_h);
    let ops = h.operations();
    let end = h.end_ns();
    let lat_ms = |o: &crate::history::Operation| {
        (o.complete_ns.unwrap_or(end).saturating_sub(o.invoke_ns)) as f64 / 1e6
    };
    let max_ms = ops.iter().map(lat_ms).fold(1.0f64, f64::max);
    let (lo, hi) = (0.1f64.log10(), (max_ms * 1.5).log10().max(1.0));
    let y = |ms: f64| TOP + plot_h - (ms.max(0.1).log10() - lo) / (hi - lo) * plot_h;
    let mut decade = 0.1f64;
    while decade.log10() <= hi + 1e-9 {
        let yy = y(decade);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 5.0,
            yy + 4.0,
            trim_float(decade)
        );
        decade *= 10.0;
    }
    let _ = write!(
        out,
        r#"<text x="15" y="{:.1}" font-size="12" transform="rotate(-90 15 {:.1})" text-anchor="middle">latency (ms)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    let ok_count = ops.iter().filter(|o| o.ok().is_some()).count();
    let stride = ok_count.div_ceil(20_000).max(1);
    let mut k = 0usize;
    for o in &ops {
        let (color, r) = match o.outcome {
            Outcome::Ok(_) => {
                k += 1;
                if !k.is_multiple_of(stride) {
                    continue;
                }
                ("#2ca02c", 1.5)
            }
            Outcome::Fail(_) => ("#d62728", 2.5),
            Outcome::Info(_) | Outcome::Pending => ("#ff7f0e", 2.5),
        };
        let _ = write!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="{r}" fill="{color}" fill-opacity="0.6"/>"#,
            frame.x(o.invoke_ns),
            y(lat_ms(o))
        );
    }
    let mut ly = TOP + 10.0;
    for (label, color) in [
        ("ok", "#2ca02c"),
        ("fail", "#d62728"),
        ("unknown", "#ff7f0e"),
    ] {
        let x = W - RIGHT + 15.0;
        let _ = write!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"/><text x="{:.1}" y="{ly:.1}" font-size="11">{label}</text>"#,
            x + 6.0,
            ly - 4.0,
            x + 18.0
        );
        ly += 16.0;
    }
    frame.nemesis_legend(h, &mut out, ly + 8.0);
    out.push_str("</svg>\n");
    out
}

/// One observed lease: (completion time, token, holder, state).
type Point = (u64, u64, Option<String>, LeaseStateRec);

/// Primary region and token over time, per service: the token as a step line (top panel)
/// and the holder region as coloured lanes (bottom panel), from every successful
/// linearizable answer, with nemesis intervals shaded.
pub fn primary_svg(h: &History) -> String {
    let frame = Frame::new(h);
    // service -> [(t, token, region, state)]
    let mut series: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for o in h.operations() {
        let (Some(r), Some(c)) = (o.ok(), o.complete_ns) else {
            continue;
        };
        if !o.call.is_linearizable() {
            continue;
        }
        let l = match r {
            OpResult::GetPrimary { lease, .. }
            | OpResult::Failover { lease, .. }
            | OpResult::ValidateToken { lease, .. } => lease,
        };
        series
            .entry(o.call.service().to_string())
            .or_default()
            .push((c, l.token, l.region.clone(), l.state));
    }
    for s in series.values_mut() {
        s.sort_by_key(|p| p.0);
    }
    let lanes = series.len().max(1) as f64;
    let token_h = 220.0;
    let lane_h = 18.0;
    let lanes_top = TOP + token_h + 45.0;
    let height = lanes_top + lanes * lane_h + 50.0;
    let mut out = svg_open(height, "Primary region and fencing token");
    frame.background(h, &mut out, TOP, token_h);
    let max_token = series
        .values()
        .flat_map(|s| s.iter().map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y = |tok: u64| TOP + token_h - tok as f64 / (max_token * 1.05) * token_h;
    for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let v = (max_token * frac).round() as u64;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{v}</text>"#,
            LEFT - 5.0,
            y(v) + 4.0
        );
    }
    let _ = write!(
        out,
        r#"<text x="15" y="{:.1}" font-size="12" transform="rotate(-90 15 {:.1})" text-anchor="middle">token</text>"#,
        TOP + token_h / 2.0,
        TOP + token_h / 2.0
    );
    let mut region_colors: BTreeMap<String, &str> = BTreeMap::new();
    for s in series.values() {
        for p in s {
            if let Some(r) = &p.2 {
                let n = region_colors.len();
                region_colors
                    .entry(r.clone())
                    .or_insert(PALETTE[n % PALETTE.len()]);
            }
        }
    }
    let end = h.end_ns();
    let mut line_legend: Vec<(String, &str)> = Vec::new();
    for (i, (svc, pts)) in series.iter().enumerate() {
        let color = PALETTE[(i + 3) % PALETTE.len()];
        line_legend.push((svc.clone(), color));
        let mut d = String::new();
        let mut last_y = None;
        for p in pts {
            let (x, yy) = (frame.x(p.0), y(p.1));
            match last_y {
                None => {
                    let _ = write!(d, "M{x:.1},{yy:.1}");
                }
                Some(ly) => {
                    let _ = write!(d, " L{x:.1},{ly:.1} L{x:.1},{yy:.1}");
                }
            }
            last_y = Some(yy);
        }
        if let Some(ly) = last_y {
            let _ = write!(d, " L{:.1},{ly:.1}", frame.x(end));
            let _ = write!(
                out,
                r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5"><title>{}</title></path>"#,
                escape(svc)
            );
        }
        // The holder lane.
        let ly = lanes_top + i as f64 * lane_h;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
            LEFT - 5.0,
            ly + 12.0,
            escape(svc)
        );
        for (k, p) in pts.iter().enumerate() {
            let x0 = frame.x(p.0);
            let x1 = pts.get(k + 1).map(|n| frame.x(n.0)).unwrap_or(frame.x(end));
            let fill = match (&p.2, p.3) {
                (Some(r), LeaseStateRec::Held) => region_colors.get(r).copied().unwrap_or("#999"),
                _ => "#ccc",
            };
            let _ = write!(
                out,
                r#"<rect x="{x0:.1}" y="{ly:.1}" width="{:.2}" height="{:.1}" fill="{fill}" shape-rendering="crispEdges"><title>{} token {} {:?}</title></rect>"#,
                (x1 - x0).max(0.5),
                lane_h - 4.0,
                escape(p.2.as_deref().unwrap_or("none")),
                p.1,
                p.3
            );
        }
    }
    let mut ly = TOP + 10.0;
    for (svc, color) in &line_legend {
        let x = W - RIGHT + 15.0;
        let _ = write!(
            out,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{ly:.1}" font-size="11">{} token</text>"#,
            ly - 4.0,
            x + 12.0,
            ly - 4.0,
            x + 18.0,
            escape(svc)
        );
        ly += 16.0;
    }
    ly += 8.0;
    for (region, color) in &region_colors {
        let x = W - RIGHT + 15.0;
        let _ = write!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{ly:.1}" font-size="11">{}</text>"#,
            ly - 10.0,
            x + 18.0,
            escape(region)
        );
        ly += 16.0;
    }
    let x = W - RIGHT + 15.0;
    let _ = write!(
        out,
        r##"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="#ccc"/><text x="{:.1}" y="{ly:.1}" font-size="11">revoking / vacant</text>"##,
        ly - 10.0,
        x + 18.0
    );
    frame.nemesis_legend(h, &mut out, ly + 24.0);
    out.push_str("</svg>\n");
    out
}

/// The run's `index.html`: verdicts, parameters, plots, and links to the raw files.
pub fn index_html(r: &Results) -> String {
    let mut out = String::new();
    let verdict = if r.valid { "VALID" } else { "INVALID" };
    let color = if r.valid { "#2ca02c" } else { "#d62728" };
    let _ = write!(
        out,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>baton-jepsen: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.ok{{color:#2ca02c}}.bad{{color:#d62728}}pre{{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}}</style></head><body>
<h1>baton-jepsen run: <span style="color:{color}">{verdict}</span></h1>"#
    );
    out.push_str("<table>");
    if let Some(m) = &r.meta {
        for (k, v) in [
            ("seed", m.seed.to_string()),
            ("nemesis", m.nemesis.clone()),
            ("nodes", m.nodes.to_string()),
            ("time limit", format!("{} s", m.time_limit_s)),
            ("lease TTL", format!("{} ms", m.lease_ttl_ms)),
        ] {
            let _ = write!(out, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
        }
    }
    let s = &r.summary;
    let _ = write!(
        out,
        "<tr><th>operations</th><td>{} ({} ok, {} fail, {} unknown)</td></tr><tr><th>faults</th><td>{} ({} skipped)</td></tr><tr><th>duration</th><td>{:.1} s</td></tr></table>",
        s.operations, s.ok, s.fail, s.info, s.faults, s.faults_skipped, s.duration_s
    );
    out.push_str("<h2>Checkers</h2><table><tr><th>checker</th><th>verdict</th><th>checked</th><th>anomalies</th></tr>");
    for v in &r.checkers {
        let (class, word) = match (&v.skipped, v.valid) {
            (Some(_), _) => ("ok", "skipped"),
            (None, true) => ("ok", "valid"),
            (None, false) => ("bad", "INVALID"),
        };
        let _ = write!(
            out,
            r##"<tr><td><a href="#{name}">{name}</a></td><td class="{class}">{word}</td><td>{}</td><td>{}</td></tr>"##,
            v.checked_ops,
            v.anomalies.len(),
            name = escape(&v.name)
        );
    }
    out.push_str("</table>");
    out.push_str(r#"<h2>Plots</h2><p><img src="latency.svg" alt="latency over time"></p><p><img src="primary.svg" alt="primary region and token over time"></p>"#);
    for v in &r.checkers {
        let _ = write!(out, r#"<h3 id="{0}">{0}</h3>"#, escape(&v.name));
        if let Some(why) = &v.skipped {
            let _ = write!(out, "<p>Skipped: {}</p>", escape(why));
        } else if v.anomalies.is_empty() {
            let _ = write!(
                out,
                "<p class=\"ok\">No anomaly in {} checked.</p>",
                v.checked_ops
            );
        } else {
            let _ = write!(
                out,
                "<details open><summary>{} anomalies</summary>",
                v.anomalies.len()
            );
            for a in &v.anomalies {
                let _ = write!(
                    out,
                    "<pre>{}</pre>",
                    escape(&serde_json::to_string_pretty(a).unwrap_or_default())
                );
            }
            out.push_str("</details>");
        }
    }
    out.push_str(r#"<h2>Files</h2><ul><li><a href="history.jsonl">history.jsonl</a></li><li><a href="results.json">results.json</a></li><li><a href="latency.svg">latency.svg</a></li><li><a href="primary.svg">primary.svg</a></li></ul></body></html>
"#);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::testkit::*;
    use crate::history::{Event, RunMeta};

    fn sample() -> History {
        let mut h = H::new();
        h.at(
            0,
            Event::Meta(RunMeta {
                seed: 7,
                nemesis: "partition".into(),
                nodes: 3,
                time_limit_s: 1,
                lease_ttl_ms: 1_000,
                drift: 0.05,
                liveness_bound_ms: 60_000,
                automation: false,
                regions: [("1".to_string(), "us".to_string())].into(),
                services: vec!["s<&>".into()],
                margin_ms: 50,
            }),
        );
        h.nemesis("partition", 200_000_000, 500_000_000);
        h.read("c", 10_000_000, 20_000_000, "s<&>", held("us", 5, 5));
        h.failover(
            "c",
            30_000_000,
            330_000_000,
            "s<&>",
            "eu",
            5,
            held("eu", 9, 9),
        );
        h.read_fail("c", 400_000_000, 900_000_000, "s<&>");
        h.read_ext(
            "c",
            950_000_000,
            960_000_000,
            "s<&>",
            held("eu", 9, 9),
            true,
        );
        h.history()
    }

    #[test]
    fn report_files_are_written_and_well_formed() {
        let dir = std::env::temp_dir().join(format!("baton-jepsen-report-{}", std::process::id()));
        let h = sample();
        let files = RunFiles::new(&dir);
        fs::create_dir_all(&dir).unwrap();
        h.write_to(fs::File::create(&files.history).unwrap())
            .unwrap();
        let r = check_run(&dir, None).unwrap();
        assert_eq!(r.summary.operations, 4);
        assert_eq!(r.summary.fail, 1);
        let parsed: Results =
            serde_json::from_str(&fs::read_to_string(&files.results).unwrap()).unwrap();
        assert_eq!(parsed.valid, r.valid);
        assert_eq!(parsed.checkers.len(), 8);
        for svg in [&files.latency_svg, &files.primary_svg] {
            let s = fs::read_to_string(svg).unwrap();
            assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
            assert!(s.contains("fill-opacity=\"0.15\""), "nemesis band missing");
            assert!(!s.contains("s<&>"), "unescaped text");
        }
        let html = fs::read_to_string(&files.index).unwrap();
        assert!(html.contains("latency.svg") && html.contains("primary.svg"));
        assert!(html.contains("linearizability"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_verdict_makes_results_invalid() {
        let v = vec![
            Verdict::new("a", 1, vec![]),
            Verdict::new("b", 1, vec![serde_json::json!({"kind": "x"})]),
        ];
        let dir = std::env::temp_dir().join(format!("baton-jepsen-invalid-{}", std::process::id()));
        let r = write_report(&dir, &sample(), v).unwrap();
        assert!(!r.valid);
        assert!(fs::read_to_string(dir.join("index.html"))
            .unwrap()
            .contains("INVALID"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(12.0), 20.0);
        assert_eq!(trim_float(2.5), "2.5");
        assert_eq!(trim_float(3.0), "3");
    }
}
