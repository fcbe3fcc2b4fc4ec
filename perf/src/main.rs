//! `corelane-perf`: side-by-side benchmarks of corelane against peer crates, in one run.
//!
//! `cargo run --release -p corelane-perf -- <suite> [--quick] [--json FILE] [--rounds N]
//! [--allow-busy] [--wait-idle[=SECS]] [--cores A,B]`; `--help` explains every flag and every case.
//!
//! Layout: [`suites`] holds one file per suite (what is measured); the other modules are the
//! shared harness every suite uses: [`pin`] (the cpu list, taken once, and pinning),
//! [`idle`] (refuse, wait for or flag a busy machine, before the run and each round), [`machine`] (the facts printed with every result),
//! [`pair`] (two pinned threads and the checks they share), [`fork`] (a pinned child process
//! for the cross-process cases, the only module with unsafe code: `fork` and `_exit`),
//! [`spawn`] (a pinned child process started afresh from this binary, for cross-process cases
//! whose child maps files or starts a library: `__child <suite> ...` on the command line),
//! [`floor`] (the cross-core round trip every latency is divided by), [`timer`] (the cost of
//! one clock read, measured at start and taken out of every sample), [`summary`] (HDR
//! histograms to percentiles, per-round spread), [`report`] (the table and the JSON),
//! [`plot`] (`--plot`: the HDR percentile plot, SVG or PNG) and [`progress`] (the bar on
//! stderr while the rounds run).
#![deny(unsafe_code)]

mod cli;
mod daemon_bin;
mod floor;
mod fork;
mod idle;
mod machine;
mod pair;
mod pin;
mod plot;
mod progress;
mod report;
mod spawn;
mod suites;
mod summary;
mod timer;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cli::Command;

fn main() -> ExitCode {
    // The floor of the rss-idle case: a Rust process that does nothing but sleep.
    if std::env::args_os().nth(1).is_some_and(|a| a == suites::control::RSS_FLOOR_ARG) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some(spawn::CHILD_ARG) {
        return spawn::child_main(&argv[1..], suites::child);
    }
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", cli::help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(args)) => args,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let Some(suite) = suites::find(&args.suite) else {
        eprintln!("error: unknown suite {:?}; known suites: {}", args.suite, suites::names());
        return ExitCode::from(2);
    };
    // A plot file the run could not write is found now, not after minutes of measuring.
    let plot = match args.plot.as_deref().map(plot::Format::of).transpose() {
        Ok(format) => args.plot.clone().zip(format),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    progress::enable(args.quiet);

    // Before any thread exists: every latency sample is taken net of this (timer.rs).
    timer::calibrate();
    // The cpu list must be read before any thread is pinned: once the calling thread is pinned,
    // `core_affinity::get_core_ids()` returns only that one core.
    let cores = match pin::Cores::discover() {
        Ok(cores) => cores,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let pair = match cores.pick_pair(args.cores) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };

    // The same check runs again before every round (Plan::before_round).
    let gate = idle::Gate {
        cpus: cores.len(),
        pinned: [pair.a, pair.b],
        allow_busy: args.allow_busy,
        wait: args.wait_idle.map(Duration::from_secs),
    };
    let idle = gate.settle();
    if !idle.is_idle() {
        if args.allow_busy {
            eprintln!(
                "warning: machine is not idle ({}); results flagged \"idle\": false",
                idle.why()
            );
        } else {
            eprintln!("error: machine is not idle: {}. {}", idle.why(), idle::ADVICE);
            return ExitCode::from(2);
        }
    }
    if !idle.notes().is_empty() {
        eprintln!("note: {}", idle.notes());
    }
    let mut facts = machine::Facts::read(&cores, pair, idle);
    println!("{}", report::facts_line(&facts));

    let plan = suites::Plan {
        rounds: args.rounds.unwrap_or(if args.quick { 2 } else { 10 }),
        quick: args.quick,
        pair,
        // Leaked once per process: the plan is Copy and lives for the whole run.
        only: args.only.map(|s| &*Box::leak(s.into_boxed_str())),
        peers: !args.no_peers,
        idle: Some(gate),
    };
    let started = Instant::now();
    let result = (suite.run)(&plan);
    let took = started.elapsed();
    facts.busy_rounds = idle::busy_rounds();

    print!("{}", report::table(&result));
    println!("took {:.1} s", took.as_secs_f64());
    if let Some(path) = &args.json {
        let json = report::to_json(&result, &facts);
        if let Err(e) = report::write_json(path, &json) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
        println!("wrote {}", path.display());
    }
    if let Some((path, format)) = &plot {
        let title = format!(
            "{}: latency by percentile, {} rounds ({} | cpus {} and {} | kernel {})",
            result.suite, plan.rounds, facts.cpu, facts.pair.a, facts.pair.b, facts.kernel
        );
        if let Err(e) = plot::write(path, *format, &title, &plot::series(&result)) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
