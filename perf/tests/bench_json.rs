//! The harness binary end to end: a quick spsc run's JSON shape (what `corelane bench` users
//! and CI read), `--no-peers`, `--plot`, and a bad plot name refused before the run.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_corelane-perf");

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("corelane-perf-test-{}-{name}", std::process::id()))
}

fn two_cpus() -> bool {
    std::thread::available_parallelism().map_or(0, |n| n.get()) >= 2
}

#[test]
fn a_quick_spsc_run_writes_the_agreed_json_and_plot() {
    if !two_cpus() {
        eprintln!("SKIPPED: fewer than two cpus, the harness pins two threads");
        return;
    }
    let (json, svg) = (temp("spsc.json"), temp("spsc.svg"));
    let out = Command::new(BIN)
        .args(["spsc", "--quick", "--allow-busy", "--no-peers", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("run corelane-perf");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(!stderr.contains('\r'), "no progress bar when stderr is not a terminal: {stderr:?}");

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    assert_eq!(doc["suite"], "spsc");
    for key in ["cpu", "cores", "kernel", "idle", "pinned_cpus", "clocksource", "timer_overhead_ns"]
    {
        assert!(!doc["machine"][key].is_null(), "machine.{key} missing: {}", doc["machine"]);
    }
    assert!(doc["floor_rtt_ns"]["p50"].as_u64().unwrap() > 0);
    assert_eq!(doc["settings"]["rounds"], 2, "--quick runs 2 rounds");

    let results = doc["results"].as_array().unwrap();
    let latencies: Vec<&Value> = results.iter().filter(|r| r["unit"] == "ns").collect();
    let cases: Vec<&str> = latencies.iter().map(|r| r["case"].as_str().unwrap()).collect();
    for case in ["rtt-8B", "rtt-64B", "wake-parked"] {
        assert!(cases.contains(&case), "no latency row for {case}: {cases:?}");
    }
    for r in &latencies {
        let what = format!("{} {}", r["impl"], r["case"]);
        for key in
            ["case", "impl", "p50", "p90", "p99", "p999", "max", "samples", "rounds", "spread"]
        {
            assert!(r.get(key).is_some(), "{what}: no {key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max", "samples"] {
            assert!(r[key].is_u64(), "{what}: {key} is not a whole number");
        }
        let rounds = r["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{what}: one entry per round");
        let per_round: u64 = rounds.iter().map(|x| x["samples"].as_u64().unwrap()).sum();
        assert_eq!(per_round, r["samples"].as_u64().unwrap(), "{what}: rounds add up");
        for at in ["p50", "p99"] {
            let spread = &r["spread"][at];
            assert!(spread.is_null() || spread.as_f64().unwrap() >= 0.0, "{what}: {spread}");
        }
        assert!(r["p50"].as_u64() <= r["p99"].as_u64() && r["p99"].as_u64() <= r["max"].as_u64());
    }
    // --no-peers: corelane's rows and the futex row its wake-up ratios divide by, no peers.
    let imps: Vec<&str> = results.iter().map(|r| r["impl"].as_str().unwrap()).collect();
    for imp in &imps {
        assert!(
            ["corelane", "corelane-shm", "corelane-link", "futex"].contains(imp),
            "a peer ran with --no-peers: {imp}"
        );
    }
    assert!(stdout.contains('±'), "the table shows the spread between rounds:\n{stdout}");

    let plot = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    // The series are 2 px polylines; the axes and ticks are 1 px ones.
    let lines =
        plot.matches("<polyline").count() - plot.matches("stroke-width=\"1\" points=").count();
    assert_eq!(lines, latencies.len(), "one line per latency row");
    assert!(plot.contains("rtt-8B") && plot.contains("99.9%"));
}

#[test]
fn a_bad_plot_name_is_refused_before_the_run() {
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["spsc", "--quick", "--allow-busy", "--plot", "spsc.jpg"])
        .output()
        .expect("run corelane-perf");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(".svg or .png") && stderr.contains("spsc.jpg"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("machine:"), "it ran first");
    assert!(started.elapsed() < Duration::from_secs(10));
}
