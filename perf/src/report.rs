//! A suite's results, as a table for people and as JSON for tools.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::machine::Facts;
use crate::summary::{Rounds, Summary};

/// Everything a suite measured.
#[derive(Debug)]
pub struct Report {
    pub suite: &'static str,
    /// The cross-core round trip over all rounds.
    pub floor: Option<Summary>,
    pub rows: Vec<Row>,
    /// Targets the suite judges its rows against (empty for most suites).
    pub goals: Vec<Goal>,
    /// What the suite ran with (rounds, sizes, capacity...), echoed in the table and the JSON.
    pub settings: Value,
}

#[derive(Debug)]
pub struct Row {
    pub imp: &'static str,
    pub case: &'static str,
    /// The calls this row measured, e.g. `push/pop` or `write_chunk/read_chunk, batch 32`.
    pub api: &'static str,
    pub measure: Measure,
}

#[derive(Debug)]
pub enum Measure {
    /// ns percentiles over all rounds, and the medians of the per-round ratios to `baseline`;
    /// `peers`: the same medians of this row's ratio to each peer's row of the case;
    /// `rounds`: the samples of all rounds and each round's percentiles (spread, plot).
    Latency {
        summary: Summary,
        rounds: Rounds,
        ratio_p50: Option<f64>,
        ratio_p99: Option<f64>,
        baseline: Baseline,
        peers: Vec<Peer>,
    },
    /// items/s: median, slowest and fastest round; with `bytes_per_item`, also bytes/s.
    Rate { median: f64, min: f64, max: f64, rounds: usize, bytes_per_item: Option<u64> },
    /// One measured quantity in `unit` (e.g. daemon RSS in kB).
    Value { value: u64, unit: &'static str },
}

/// A latency row's ratios to another implementation's row of the same case, round by round
/// (median over rounds of this row's p50 / the peer's p50 of the same round; same for p99).
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub imp: &'static str,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// A target a suite checks its result against: what, the value seen, and whether it was met.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub what: String,
    pub seen: String,
    pub met: bool,
}

impl Goal {
    /// Met if `value` is at most `limit`; an unmeasured value is not met.
    pub fn at_most(what: &str, value: Option<f64>, limit: f64, unit: &str) -> Self {
        let (seen, met) = match value {
            Some(v) => {
                (format!("{} (goal <= {})", number(v, unit), number(limit, unit)), v <= limit)
            }
            None => ("not measured".into(), false),
        };
        Self { what: what.into(), seen, met }
    }
}

impl Goal {
    /// Met if `value` is at least `limit`; an unmeasured value is not met.
    pub fn at_least(what: &str, value: Option<f64>, limit: f64, unit: &str) -> Self {
        let (seen, met) = match value {
            Some(v) => {
                (format!("{} (goal >= {})", number(v, unit), number(limit, unit)), v >= limit)
            }
            None => ("not measured".into(), false),
        };
        Self { what: what.into(), seen, met }
    }
}

fn number(v: f64, unit: &str) -> String {
    if unit == "x" {
        format!("{v:.2}x")
    } else if unit == " M/s" {
        format!("{v:.1} M/s")
    } else {
        format!("{v:.0}{unit}")
    }
}

/// What a latency row's ratios divide by, each round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// The floor of the same round (the bare cross-core cache-line round trip).
    Floor,
    /// The row of this implementation in the same case and round (e.g. `futex` for a wake-up
    /// case, where the floor is three orders of magnitude away and says little).
    Impl(&'static str),
}

impl Baseline {
    /// The word in the table's ratio headers (`p50/flr`) and the JSON keys
    /// (`ratio_to_floor_p50`).
    fn short(self) -> &'static str {
        match self {
            Baseline::Floor => "flr",
            Baseline::Impl(imp) => imp,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Baseline::Floor => "floor",
            Baseline::Impl(imp) => imp,
        }
    }
}

/// One line of machine facts, printed before the results.
pub fn facts_line(f: &Facts) -> String {
    let idle = if f.idle.is_idle() { "yes" } else { "NO" };
    let load = f.idle.load1.map_or("?".into(), |l| format!("{l:.2}"));
    let busy = f.idle.busy.map_or("?".into(), |b| format!("{:.0}%", b * 100.0));
    format!(
        "machine: {} | {} cpus | kernel {} | clocksource {}, Instant::now() {} ns (taken out \
         of round-trip and fixed-rate samples) | pinned to \
         cpus {} and {}{} | idle: {idle} (busiest pinned cpu {busy} busy over {} ms; load1 \
         {load})",
        f.cpu,
        f.cores,
        f.kernel,
        f.clocksource,
        f.timer_ns,
        f.pair.a,
        f.pair.b,
        if f.pair.siblings { " (SMT siblings: same physical core!)" } else { "" },
        f.idle.sample.as_millis(),
    )
}

/// The human table: settings, floor, latencies, throughputs.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let settings = match &r.settings {
        Value::Object(map) => {
            map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        }
        other => other.to_string(),
    };
    let _ = writeln!(out, "suite {}: {settings}", r.suite);
    if let Some(f) = &r.floor {
        let _ = writeln!(
            out,
            "floor (bare cross-core cache-line round trip): p50 {} ns, p99 {} ns, p99.9 {} ns, \
             max {} ns, {} samples",
            f.p50, f.p99, f.p999, f.max, f.samples
        );
    }
    let latencies: Vec<&Row> =
        r.rows.iter().filter(|row| matches!(row.measure, Measure::Latency { .. })).collect();
    // One header per run of rows with the same baseline, so the ratio columns say what they
    // divide by.
    let mut header: Option<Baseline> = None;
    for row in latencies {
        if let Measure::Latency { summary: s, ratio_p50, ratio_p99, baseline, rounds, .. } =
            &row.measure
        {
            if header != Some(*baseline) {
                let short = baseline.short();
                let _ = writeln!(
                    out,
                    "\n{:<18} {:<22} {:>12} {:>7} {:>12} {:>7} {:>9} {:>9} {:>9} {:>9}",
                    "latency (ns)",
                    "case",
                    "p50",
                    "p90",
                    "p99",
                    "p99.9",
                    "max",
                    "samples",
                    format!("p50/{short}"),
                    format!("p99/{short}"),
                );
                header = Some(*baseline);
            }
            let _ = writeln!(
                out,
                "{:<18} {:<22} {:>12} {:>7} {:>12} {:>7} {:>9} {:>9} {:>9} {:>9}",
                row.imp,
                row.case,
                with_spread(s.p50, rounds.spread_p50()),
                s.p90,
                with_spread(s.p99, rounds.spread_p99()),
                s.p999,
                s.max,
                s.samples,
                ratio_text(*ratio_p50),
                ratio_text(*ratio_p99)
            );
        }
    }
    let mut peers_header = false;
    for row in &r.rows {
        if let Measure::Latency { peers, .. } = &row.measure {
            for peer in peers {
                if !peers_header {
                    let _ = writeln!(
                        out,
                        "\n{:<18} {:<22} {:<18} {:>9} {:>9}",
                        "against peers", "case", "peer", "p50/peer", "p99/peer"
                    );
                    peers_header = true;
                }
                let _ = writeln!(
                    out,
                    "{:<18} {:<22} {:<18} {:>9} {:>9}",
                    row.imp,
                    row.case,
                    peer.imp,
                    ratio_text(peer.p50),
                    ratio_text(peer.p99)
                );
            }
        }
    }
    let rates: Vec<&Row> =
        r.rows.iter().filter(|row| matches!(row.measure, Measure::Rate { .. })).collect();
    if !rates.is_empty() {
        let bytes = rates
            .iter()
            .any(|row| matches!(row.measure, Measure::Rate { bytes_per_item: Some(_), .. }));
        let _ = writeln!(
            out,
            "\n{:<18} {:<22} {:>9} {:>9} {:>9}{}   api",
            "throughput",
            "case",
            "Mitems/s",
            "slowest",
            "fastest",
            if bytes { format!(" {:>8}", "GB/s") } else { String::new() }
        );
        for row in rates {
            if let Measure::Rate { median, min, max, bytes_per_item, .. } = &row.measure {
                let gbps = match bytes_per_item {
                    Some(b) => format!(" {:>8.2}", median * *b as f64 / 1e9),
                    None if bytes => format!(" {:>8}", "-"),
                    None => String::new(),
                };
                let _ = writeln!(
                    out,
                    "{:<18} {:<22} {:>9} {:>9} {:>9}{gbps}   {}",
                    row.imp,
                    row.case,
                    millions(*median),
                    millions(*min),
                    millions(*max),
                    row.api
                );
            }
        }
    }
    let values: Vec<&Row> =
        r.rows.iter().filter(|row| matches!(row.measure, Measure::Value { .. })).collect();
    if !values.is_empty() {
        let _ = writeln!(out, "\n{:<18} {:<22} {:>12}   what", "value", "case", "");
        for row in values {
            if let Measure::Value { value, unit } = &row.measure {
                let _ = writeln!(
                    out,
                    "{:<18} {:<22} {:>9} {:<2}   {}",
                    row.imp, row.case, value, unit, row.api
                );
            }
        }
    }
    if !r.goals.is_empty() {
        let _ = writeln!(out, "\ngoals");
        for g in &r.goals {
            let verdict = if g.met { "met   " } else { "MISSED" };
            let _ = writeln!(out, "  {verdict} {}: {}", g.what, g.seen);
        }
    }
    out
}

/// A rate in millions: one decimal from 10 M on, more below (a 1 MiB stream moves thousands).
fn millions(rate: f64) -> String {
    let m = rate / 1e6;
    if m >= 10.0 {
        format!("{m:.1}")
    } else if m >= 0.1 {
        format!("{m:.3}")
    } else {
        format!("{m:.5}")
    }
}

/// A figure and the spread of its per-round values, e.g. `693 ±8%` (the figure alone for
/// a single round).
fn with_spread(ns: u64, spread: Option<f64>) -> String {
    match spread {
        Some(x) => format!("{ns} ±{:.0}%", x * 100.0),
        None => ns.to_string(),
    }
}

fn ratio_text(ratio: Option<f64>) -> String {
    ratio.map_or("-".into(), |r| format!("{r:.2}x"))
}

/// The JSON document: `suite`, `machine`, `floor_rtt_ns`, `results`, `settings`.
pub fn to_json(r: &Report, f: &Facts) -> Value {
    let results: Vec<Value> = r
        .rows
        .iter()
        .map(|row| match &row.measure {
            Measure::Latency { summary: s, ratio_p50, ratio_p99, baseline, peers, rounds } => {
                let mut v = json!({
                    "impl": row.imp, "case": row.case, "unit": "ns",
                    "p50": s.p50, "p90": s.p90, "p99": s.p99, "p999": s.p999, "max": s.max,
                    "samples": s.samples,
                    "rounds": rounds.each().iter().map(summary_json).collect::<Vec<_>>(),
                    "spread": {
                        "p50": rounds.spread_p50().map(round3),
                        "p99": rounds.spread_p99().map(round3),
                    },
                });
                // `ratio_to_floor_p50` for most rows; `ratio_to_futex_p50` for a row divided
                // by the futex row of its case.
                let key = baseline.key();
                v[format!("ratio_to_{key}_p50")] = json!(ratio_p50.map(round3));
                v[format!("ratio_to_{key}_p99")] = json!(ratio_p99.map(round3));
                for peer in peers {
                    v[format!("ratio_to_{}_p50", peer.imp)] = json!(peer.p50.map(round3));
                    v[format!("ratio_to_{}_p99", peer.imp)] = json!(peer.p99.map(round3));
                }
                v["api"] = json!(row.api);
                v
            }
            Measure::Value { value, unit } => json!({
                "impl": row.imp, "case": row.case, "unit": unit, "value": value, "api": row.api,
            }),
            Measure::Rate { median, min, max, rounds, bytes_per_item } => {
                let mut v = json!({
                    "impl": row.imp, "case": row.case, "unit": "items/s",
                    "value": median.round() as u64,
                    "min": min.round() as u64, "max": max.round() as u64, "rounds": rounds,
                });
                if let Some(b) = bytes_per_item {
                    v["bytes_per_item"] = json!(b);
                    v["bytes_per_s"] = json!((median * *b as f64).round() as u64);
                }
                v["api"] = json!(row.api);
                v
            }
        })
        .collect();
    let mut doc = json!({
        "suite": r.suite,
        "machine": {
            "cpu": f.cpu,
            "cores": f.cores,
            "kernel": f.kernel,
            "idle": f.idle.is_idle() && f.busy_rounds == 0,
            "idle_why": f.idle.why(),
            "load1": f.idle.load1,
            "busy_pct": f.idle.busy.map(|b| round3(b * 100.0)),
            "busy_pct_by_cpu": f.idle.per_cpu.iter()
                .map(|&(cpu, b)| (cpu.to_string(), json!(round3(b * 100.0))))
                .collect::<serde_json::Map<_, _>>(),
            "others_running": f.idle.others_running,
            "idle_notes": f.idle.notes(),
            "busy_rounds": f.busy_rounds,
            "cpu_ids": f.cpu_ids,
            "pinned_cpus": [f.pair.a, f.pair.b],
            "smt_siblings": f.pair.siblings,
            "clocksource": f.clocksource,
            "timer_overhead_ns": f.timer_ns,
            "timer_subtracted_ns": f.timer_ns,
        },
        "floor_rtt_ns": r.floor.as_ref().map(summary_json),
        "results": results,
        "settings": r.settings,
    });
    // Only suites with goals get the key, so the others' documents keep their shape.
    if !r.goals.is_empty() {
        doc["goals"] =
            r.goals.iter().map(|g| json!({"what": g.what, "seen": g.seen, "met": g.met})).collect();
    }
    doc
}

/// A summary's percentiles as a JSON object.
fn summary_json(s: &Summary) -> Value {
    json!({
        "p50": s.p50, "p90": s.p90, "p99": s.p99, "p999": s.p999, "max": s.max,
        "samples": s.samples,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Writes `json` to `path` through `path.tmp` and a rename, so a reader never sees half a file.
pub fn write_json(path: &Path, json: &Value) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let text = serde_json::to_string_pretty(json).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle::Verdict;
    use crate::pin::Pair;
    use crate::summary::histogram;
    use std::time::Duration;

    fn facts() -> Facts {
        Facts {
            cpu: "Test CPU".into(),
            cores: 2,
            cpu_ids: vec![0, 1],
            kernel: "6.1.0".into(),
            clocksource: "tsc".into(),
            timer_ns: 20,
            pair: Pair { a: 0, b: 1, siblings: false },
            idle: Verdict {
                cpus: 2,
                load1: Some(0.1),
                busy: Some(0.01),
                per_cpu: vec![(0, 0.01), (1, 0.0)],
                others_running: Some(0),
                sample: Duration::from_millis(200),
            },
            busy_rounds: 0,
        }
    }

    fn report() -> Report {
        let s = Summary { p50: 300, p90: 350, p99: 500, p999: 900, max: 4000, samples: 1000 };
        Report {
            suite: "spsc",
            floor: Some(Summary { p50: 150, p99: 200, ..s }),
            rows: vec![
                Row {
                    imp: "corelane",
                    case: "rtt-8B",
                    api: "push/pop",
                    measure: Measure::Latency {
                        summary: s,
                        rounds: Rounds::new(
                            histogram(),
                            vec![Summary { p50: 290, p99: 480, ..s }, Summary { p50: 316, ..s }],
                        ),
                        ratio_p50: Some(2.0),
                        ratio_p99: Some(2.5),
                        baseline: Baseline::Floor,
                        peers: vec![Peer { imp: "rtrb", p50: Some(0.5), p99: None }],
                    },
                },
                Row {
                    imp: "eventfd",
                    case: "wake-parked",
                    api: "write / blocking read",
                    measure: Measure::Latency {
                        summary: Summary { p50: 9000, ..s },
                        rounds: Rounds::default(),
                        ratio_p50: Some(1.5),
                        ratio_p99: None,
                        baseline: Baseline::Impl("futex"),
                        peers: Vec::new(),
                    },
                },
                Row {
                    imp: "rtrb",
                    case: "throughput-8B-batch",
                    api: "chunks",
                    measure: Measure::Rate {
                        median: 1.5e8,
                        min: 1e8,
                        max: 2e8,
                        rounds: 3,
                        bytes_per_item: Some(8),
                    },
                },
            ],
            goals: vec![Goal::at_most("p99 of rtt-8B (ns)", Some(500.0), 1999.0, " ns")],
            settings: json!({"rounds": 3}),
        }
    }

    #[test]
    fn json_has_the_agreed_shape() {
        let v = to_json(&report(), &facts());
        assert_eq!(v["suite"], "spsc");
        for key in ["cpu", "cores", "kernel", "idle"] {
            assert!(!v["machine"][key].is_null(), "machine.{key} missing");
        }
        assert_eq!(v["machine"]["cores"], 2);
        assert_eq!(v["machine"]["idle"], true);
        assert_eq!(v["floor_rtt_ns"]["p50"], 150);
        assert_eq!(v["floor_rtt_ns"]["p99"], 200);
        let lat = &v["results"][0];
        assert_eq!(lat["impl"], "corelane");
        assert_eq!(lat["case"], "rtt-8B");
        assert_eq!(lat["unit"], "ns");
        for key in ["p50", "p90", "p99", "p999", "max", "samples"] {
            assert!(lat[key].is_u64(), "{key} not an integer");
        }
        // Two rounds: p50s 290 and 316 around a median of 303; p99s 480 and 500.
        assert_eq!(lat["rounds"].as_array().map(Vec::len), Some(2));
        assert_eq!(lat["rounds"][0]["p50"], 290);
        assert_eq!(lat["rounds"][1]["p99"], 500);
        assert_eq!(lat["spread"]["p50"], round3(26.0 / 303.0));
        assert_eq!(lat["spread"]["p99"], round3(20.0 / 490.0));
        assert!(v["results"][1]["spread"]["p50"].is_null(), "no rounds, no spread");
        assert_eq!(lat["ratio_to_floor_p50"], 2.0);
        assert_eq!(lat["ratio_to_floor_p99"], 2.5);
        assert_eq!(lat["ratio_to_rtrb_p50"], 0.5);
        assert!(lat["ratio_to_rtrb_p99"].is_null());
        let wake = &v["results"][1];
        assert_eq!(wake["ratio_to_futex_p50"], 1.5);
        assert!(wake["ratio_to_futex_p99"].is_null());
        assert!(wake.get("ratio_to_floor_p50").is_none(), "one baseline per row");
        let keys: Vec<&str> = wake.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.last(), Some(&"api"), "keys in the order written");
        let rate = &v["results"][2];
        assert_eq!(rate["unit"], "items/s");
        assert_eq!(rate["value"], 150_000_000);
        assert_eq!(rate["bytes_per_s"], 1_200_000_000u64);
        assert_eq!(v["goals"][0]["met"], true);
        assert_eq!(v["results"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn table_shows_every_row_and_the_floor() {
        let t = table(&report());
        assert!(t.contains("floor (bare cross-core cache-line round trip): p50 150 ns"));
        assert!(t.contains("corelane") && t.contains("rtt-8B") && t.contains("2.00x"));
        // The spread between rounds next to p50 and p99: 26/303 and 20/490.
        assert!(t.contains("300 ±9%") && t.contains("500 ±4%"), "{t}");
        assert!(t.contains("p50/flr") && t.contains("p99/flr"));
        // A row with another baseline gets its own header naming it.
        assert!(t.contains("p50/futex") && t.contains("1.50x"));
        let futex_header = t.find("p50/futex").unwrap();
        assert!(t.find("wake-parked").unwrap() > futex_header);
        assert!(t.contains("throughput-8B-batch") && t.contains("150.0") && t.contains("1.20"));
        assert!(t.contains("against peers") && t.contains("0.50x"));
        assert!(t.contains("met    p99 of rtt-8B (ns): 500 ns (goal <= 1999 ns)"));
        let line = facts_line(&facts());
        assert!(
            line.contains("Test CPU")
                && line.contains("kernel 6.1.0")
                && line.contains("idle: yes")
        );
    }

    #[test]
    fn json_file_round_trips() {
        let path = std::env::temp_dir().join(format!("corelane-perf-{}.json", std::process::id()));
        let v = to_json(&report(), &facts());
        write_json(&path, &v).unwrap();
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back, v);
    }
}
