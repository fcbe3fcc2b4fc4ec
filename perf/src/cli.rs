//! Command line: `<suite> [--quick] [--json FILE] [--rounds N] [--allow-busy]
//! [--wait-idle[=SECS]] [--cores A,B]`.

use std::fmt;
use std::path::PathBuf;

use crate::idle;
use crate::suites;

pub const USAGE: &str = "usage: cargo run --release -p corelane-perf -- <SUITE> [--quick] \
[--json FILE] [--plot FILE.svg|.png]\n       [--rounds N] [--allow-busy] [--wait-idle[=SECS]] [--cores A,B] [--no-peers] [--quiet]\n       (--help for what each flag \
and case means)";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Help,
    Run(Args),
}

/// A run's options, as given (defaults are applied by `main`).
#[derive(Debug, Default, PartialEq)]
pub struct Args {
    pub suite: String,
    pub quick: bool,
    pub json: Option<PathBuf>,
    pub rounds: Option<u32>,
    pub allow_busy: bool,
    /// `--wait-idle[=SECS]`: wait up to SECS (default [`idle::DEFAULT_WAIT_S`]) for the pinned
    /// cpus to go idle, before the run and before each round.
    pub wait_idle: Option<u64>,
    pub cores: Option<(usize, usize)>,
    /// Only the cases whose name contains this.
    pub only: Option<String>,
    /// `--no-peers`: corelane's own rows only (what `corelane bench` runs).
    pub no_peers: bool,
    /// `--plot FILE.svg|FILE.png`: the percentile plot's file.
    pub plot: Option<PathBuf>,
    /// `--quiet`: no progress bar.
    pub quiet: bool,
}

#[derive(Debug, PartialEq)]
pub enum CliError {
    MissingSuite,
    ExtraArgument(String),
    UnknownFlag(String),
    MissingValue(&'static str),
    BadValue { flag: &'static str, expected: &'static str, seen: String },
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::MissingSuite => {
                write!(f, "expected a suite name ({}), saw none", suites::names())
            }
            CliError::ExtraArgument(arg) => {
                write!(f, "expected one suite name, saw a second argument {arg:?}")
            }
            CliError::UnknownFlag(flag) => write!(f, "unknown flag {flag:?}"),
            CliError::MissingValue(flag) => write!(f, "{flag} expects a value, saw none"),
            CliError::BadValue { flag, expected, seen } => {
                write!(f, "{flag} expects {expected}, saw {seen:?}")
            }
        }
    }
}

impl std::error::Error for CliError {}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, CliError> {
    let mut out = Args::default();
    let mut suite = None;
    let mut args = args.into_iter();
    // A flag's value never starts with `--`: `--json --no-peers` is a forgotten file name, not
    // a file called `--no-peers`.
    let value = |flag: &'static str, args: &mut dyn Iterator<Item = String>| {
        args.next().filter(|v| !v.starts_with("--")).ok_or(CliError::MissingValue(flag))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--quick" => out.quick = true,
            "--allow-busy" => out.allow_busy = true,
            "--no-peers" => out.no_peers = true,
            "--quiet" => out.quiet = true,
            "--plot" => out.plot = Some(PathBuf::from(value("--plot", &mut args)?)),
            "--json" => out.json = Some(PathBuf::from(value("--json", &mut args)?)),
            "--rounds" => {
                let value = value("--rounds", &mut args)?;
                match value.parse::<u32>() {
                    Ok(n) if n >= 1 => out.rounds = Some(n),
                    _ => {
                        return Err(CliError::BadValue {
                            flag: "--rounds",
                            expected: "a whole number >= 1",
                            seen: value,
                        })
                    }
                }
            }
            "--cores" => {
                let value = value("--cores", &mut args)?;
                out.cores = Some(parse_core_pair(&value).ok_or(CliError::BadValue {
                    flag: "--cores",
                    expected: "two different cpu numbers as A,B",
                    seen: value,
                })?);
            }
            "--only" => out.only = Some(value("--only", &mut args)?),
            "--wait-idle" => out.wait_idle = Some(idle::DEFAULT_WAIT_S),
            flag if flag.starts_with("--wait-idle=") => {
                let value = &flag["--wait-idle=".len()..];
                match value.parse::<u64>() {
                    Ok(s) if s >= 1 => out.wait_idle = Some(s),
                    _ => {
                        return Err(CliError::BadValue {
                            flag: "--wait-idle",
                            expected: "a whole number of seconds >= 1",
                            seen: value.into(),
                        })
                    }
                }
            }
            flag if flag.starts_with('-') => return Err(CliError::UnknownFlag(arg)),
            _ if suite.is_none() => suite = Some(arg),
            _ => return Err(CliError::ExtraArgument(arg)),
        }
    }
    out.suite = suite.ok_or(CliError::MissingSuite)?;
    Ok(Command::Run(out))
}

fn parse_core_pair(s: &str) -> Option<(usize, usize)> {
    let (a, b) = s.split_once(',')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a != b).then_some((a, b))
}

/// The `--help` text: the flags, how a run works, the floor, and each suite's cases.
pub fn help() -> String {
    let mut text = String::from(HELP_HEAD);
    text.push_str("\nSUITES\n");
    for suite in suites::ALL {
        text.push_str(&format!("    {:<8}{}\n", suite.name, suite.summary));
    }
    text.push_str(HELP_RUN);
    for suite in suites::ALL {
        text.push_str(&format!("\nSUITE {}\n{}", suite.name, suite.help));
    }
    text.push_str(HELP_TAIL);
    text
}

const HELP_HEAD: &str = "\
corelane-perf: corelane against peer crates, side by side, in one run on one machine.

USAGE
    cargo run --release -p corelane-perf -- <SUITE> [--quick] [--json FILE] [--rounds N]
                                                    [--allow-busy] [--wait-idle[=SECS]]
                                                    [--cores A,B] [--only TEXT]
                                                    [--no-peers] [--plot FILE.svg|FILE.png]
                                                    [--quiet]

FLAGS
    --quick        Smoke-test sizes: 2 rounds, a few thousand latency samples and 100k streamed
                   items per measurement; finishes in a few seconds. For CI (\"does it run, are
                   the items in order\"), not for comparing numbers.
    --json FILE    Also write the results to FILE as JSON (shape at the end of this text).
    --plot FILE    Also draw the latency rows as an HDR percentile plot into FILE, an SVG or
                   a PNG by its extension (anything else is refused before the run): one
                   panel per case, one line per implementation, latency (log axis) against
                   percentile on the HDR axis 1/(1-q) (0%, 90%, 99%, 99.9%, 99.99%, ...),
                   from all rounds' samples; each line ends at the max.
    --quiet        No progress bar. The bar (one line on stderr, redrawn in place) is drawn
                   only when stderr is a terminal, so logs and pipes never get it.
    --rounds N     How many interleaved rounds (default 10; 2 with --quick). Cross-core cost
                   drifts by 2-3x between runs and over minutes, so each round measures the floor
                   and then every implementation in turn, and results accumulate over rounds.
                   More rounds: steadier medians, longer run.
    --only TEXT    Run only the cases whose name contains TEXT (e.g. rtt-8B, throughput), for
                   a quick look at one number; a full run is what goes in reports.
    --allow-busy   Run even if the machine is not idle, and mark the result \"idle\": false
                   (the JSON's busy_rounds counts the rounds that started busy). Without it, a
                   busy machine makes the run stop with exit status 2 and a message naming the
                   busy cpu.
    --wait-idle[=SECS]
                   When the pinned cpus are busy (before the run or before a round), wait for
                   them to go idle, up to SECS (default 120), with a progress line on stderr
                   (\"waiting for cpu 1 to go idle: 37% busy, 12 s\"); still busy after SECS:
                   as without it (stop, or go on with --allow-busy).
    --cores A,B    Pin the two benchmark threads to cpus A and B. Default: two cpus that are not
                   SMT siblings of each other, avoiding cpu 0 when there are more than two.
    --no-peers     corelane's own rows only: skip the peer crates and hand-written
                   alternatives each suite compares against (rtrb, crossbeam, eventfd,
                   iceoryx2, unix sockets, raw TCP). Rows that corelane's ratios or goals
                   divide by still run (spsc's futex, ingest's baseline server), as does the
                   floor. `corelane bench SUITE` passes it.
    -h, --help     This text.
";

const HELP_RUN: &str = "
HOW A RUN WORKS
    1. The list of usable cpus is read once, before anything is pinned (after pinning, the OS
       reports only the pinned cpu), and two cpus are chosen.
    2. Idle check, judged by what other work does now on the two pinned cpus: a 200 ms
       sample of their lines in /proc/stat must show each at most 10% busy. It runs before
       the run and again before every round (the rounds' own threads have ended by then, so
       they are not counted). A busy sample is retaken twice (or, with --wait-idle, until
       idle or SECS); still busy, the run stops (exit 2) naming the cpu, or with --allow-busy
       goes on flagged. The 1-minute load average and the runnable-task count
       (procs_running) are printed as notes only: the load average still holds the previous
       run's spinning for minutes, so it would refuse every second run.
    3. The machine facts line: cpu model (/proc/cpuinfo), cpus, kernel (/proc/sys/kernel/
       osrelease), clock source, the cost of one Instant::now(), the pinned cpus, idle.
    4. Rounds. Each round measures the floor, then every case, running the implementations in
       an order rotated by one each round so none always goes first or last. Every measurement
       starts two fresh threads pinned to the two cpus (a cross-process case: one fresh
       thread and one child process, forked, or for handoff started afresh from this binary
       with `__child`), builds fresh queues, warms up, then measures.
       Each (implementation, case) accumulates its samples over all rounds into one HDR
       histogram (1 ns to 60 s, 3 significant digits); each throughput case keeps one rate
       per round and reports the median.
    5. Every consumer checks that it received exactly the values sent, in order. A wrong or
       missing item aborts the run with exit status 3 and names the implementation and case.
    6. No allocation inside timed loops: buffers and queues are made before timing starts.
       Waiting is a busy spin (no pause, no yield), the same loop for every implementation
       (a cross-process case also counts the turns of each wait, to look at the other
       process after 65,536 of them). The exception is what wake-parked measures: there the
       consumer sleeps in the kernel on purpose, and only the producer spins.

THE FLOOR AND HOW TO READ THE RATIO
    Every round first measures the floor: two threads on the same two cpus, each storing to
    its own 128-byte-aligned cache line and spinning on the other's (pure ping-pong). One round
    trip there moves one cache line each way and nothing else: it is what the hardware charges
    for a cross-core round trip, the least any queue can cost. It is timed exactly like the
    queue round trips (one Instant::now() per iteration, consecutive differences, less the
    timer's cost).
    floor_rtt_ns p50/p99 are over all rounds.

    For every latency result, ratio_to_floor_p50 is the median over rounds of
    (implementation p50 in that round / floor p50 in the same round), and ratio_to_floor_p99
    the same for p99. Dividing by the floor measured minutes apart would mix in the drift;
    dividing round by round cancels most of it, so ratios compare across runs and machines
    better than nanoseconds do. Lower is better; 1.0 is the bound (the queue costs no more
    than one bare cache-line transfer each way). Each extra cache line a queue moves per
    hand-off (index, slot, a shared counter) and each extra instruction on the path shows up
    above it. The cost of one Instant::now() (median of 1,000 back-to-back reads at start,
    on the facts line and in the JSON as timer_subtracted_ns) is subtracted from every
    round-trip and fixed-rate sample, floor included (saturating at 0): the percentiles
    show the code, not the clock. The one-way samples (wake-parked, handoff oneway) and the
    daemon-side and client-cost samples of ingest and frames still hold it.

    Rows whose ratio columns are headed otherwise divide by another row of their case, round
    by round in the same way: spsc wake-parked divides by its futex row (p50/futex, JSON
    ratio_to_futex_p50), since a wake-up through the kernel is thousands of floors.
";

const HELP_TAIL: &str = r#"
JSON (--json FILE)
    {"suite": "spsc",
     "machine": {"cpu": "...", "cores": 2, "kernel": "...", "idle": true, ...},
     "floor_rtt_ns": {"p50": 0, "p99": 0, ...},
     "results": [
       {"impl": "corelane", "case": "rtt-8B", "unit": "ns", "p50": 0, "p90": 0, "p99": 0,
        "p999": 0, "max": 0, "samples": 0,
        "rounds": [{"p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "samples": 0}, ...],
        "spread": {"p50": 0.0, "p99": 0.0}, "ratio_to_floor_p50": 0.0,
        "ratio_to_floor_p99": 0.0, ...},
       {"impl": "eventfd", "case": "wake-parked", "unit": "ns", "p50": 0, ...,
        "ratio_to_futex_p50": 0.0, "ratio_to_futex_p99": 0.0, ...},
       {"impl": "rtrb", "case": "throughput-8B-batch", "unit": "items/s", "value": 0, ...},
       {"impl": "futex", "case": "wake-parked-skipped", "unit": "wakes", "value": 0, ...}],
     "settings": {...}}
    Latencies are in ns. "rounds" holds each round's percentiles, "spread" (max - min) /
    median of the per-round p50s and p99s (null for a single round; shown as ±% in the
    table). "value" is the median over rounds (items/s); "min"/"max" are the
    slowest and fastest round; or a count or size in "unit". "api" names the calls each row
    measured (for a value row: what it counts).

EXIT STATUS
    0 done; 1 could not write the JSON file or the plot (or --plot with no latency rows
    among the cases run); 2 bad arguments (a --plot file not ending in .svg or .png is
    refused before the run), machine busy (without
    --allow-busy), a thread or child process could not be pinned, or a wake-parked consumer
    could not be set up (eventfd, lane, /proc/self/task); 3 an item arrived out of order, a
    shared-memory ring reported its peer corrupt, or (wake-parked) a wake-up was lost or a
    consumer never went to sleep (a bug in the implementation under test or in the
    harness); 4 the child process of a cross-process case failed, died or hung (killed after
    60 s), or its shared memory could not be set up.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_every_flag() {
        let cmd = parse_strs(&[
            "spsc",
            "--quick",
            "--json",
            "/tmp/x.json",
            "--rounds",
            "3",
            "--allow-busy",
            "--wait-idle=30",
            "--cores",
            "2,5",
            "--only",
            "rtt",
            "--no-peers",
            "--plot",
            "/tmp/x.svg",
            "--quiet",
        ]);
        assert_eq!(
            cmd,
            Ok(Command::Run(Args {
                suite: "spsc".into(),
                quick: true,
                json: Some("/tmp/x.json".into()),
                rounds: Some(3),
                allow_busy: true,
                wait_idle: Some(30),
                cores: Some((2, 5)),
                only: Some("rtt".into()),
                no_peers: true,
                plot: Some("/tmp/x.svg".into()),
                quiet: true,
            }))
        );
    }

    #[test]
    fn help_wins_and_errors_say_what_was_seen() {
        assert_eq!(parse_strs(&["spsc", "--help"]), Ok(Command::Help));
        assert_eq!(parse_strs(&[]), Err(CliError::MissingSuite));
        assert_eq!(parse_strs(&["spsc", "--rounds"]), Err(CliError::MissingValue("--rounds")));
        assert!(matches!(parse_strs(&["spsc", "--rounds", "0"]), Err(CliError::BadValue { .. })));
        assert!(matches!(parse_strs(&["spsc", "--cores", "1,1"]), Err(CliError::BadValue { .. })));
        assert_eq!(parse_strs(&["spsc", "--fast"]), Err(CliError::UnknownFlag("--fast".into())));
        assert_eq!(parse_strs(&["spsc", "x"]), Err(CliError::ExtraArgument("x".into())));
        let wait = |args: &[&str]| match parse_strs(args) {
            Ok(Command::Run(a)) => a.wait_idle,
            other => panic!("{other:?}"),
        };
        assert_eq!(wait(&["spsc", "--wait-idle"]), Some(idle::DEFAULT_WAIT_S));
        assert_eq!(wait(&["spsc"]), None);
        assert!(matches!(
            parse_strs(&["spsc", "--wait-idle=0"]),
            Err(CliError::BadValue { flag: "--wait-idle", .. })
        ));
        let e = parse_strs(&["spsc", "--rounds", "ten"]).unwrap_err().to_string();
        assert_eq!(e, "--rounds expects a whole number >= 1, saw \"ten\"");
    }

    #[test]
    fn help_names_every_flag_and_suite() {
        let text = help();
        for word in [
            "--quick",
            "--json",
            "--rounds",
            "--allow-busy",
            "--wait-idle",
            "--cores",
            "--no-peers",
            "--plot",
            "--quiet",
            "--help",
        ] {
            assert!(text.contains(word), "help misses {word}");
        }
        for suite in suites::ALL {
            assert!(text.contains(&format!("SUITE {}", suite.name)));
        }
    }
}

#[cfg(test)]
mod value_tests {
    use super::*;

    /// `corelane bench spsc --json` (the value forgotten) must not take the `--no-peers` that
    /// follows as the file name: the peers would run and a file `--no-peers` be written.
    #[test]
    fn a_flag_without_its_value_does_not_eat_the_next_flag() {
        for flag in ["--json", "--plot", "--only", "--rounds", "--cores"] {
            let argv = ["spsc", flag, "--no-peers"].map(String::from);
            match parse(argv) {
                Err(CliError::MissingValue(f)) => assert_eq!(f, flag),
                other => panic!("{flag} --no-peers: {other:?}"),
            }
        }
        // And through `corelane bench`, which passes the user's flags on.
        for flag in ["--json", "--plot", "--only"] {
            let args =
                corelane::cli::bench::BenchArgs { suite: "spsc".into(), flags: vec![flag.into()] };
            match parse(corelane::cli::bench::harness_args(&args)) {
                Ok(Command::Run(a)) => assert!(a.no_peers, "{flag}: --no-peers was its value"),
                Err(CliError::MissingValue(_)) => {}
                other => panic!("{flag}: {other:?}"),
            }
        }
    }
}
