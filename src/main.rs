//! The `corelane` command. The daemon (`corelane run`) and its services come with the runtime
//! issue; today the binary reports what this build contains.

use std::process::ExitCode;

const HELP: &str = "\
corelane: a synchronous thread-per-core runtime for accelerator hosts.

USAGE
    corelane [--help | --version]

This build contains the foundation only: the `corelane-rings` library (SPSC queues, the
tensor-pool seqlock, byte-exact shared-memory layouts) and its benchmark harness. The daemon
(`corelane run`) and its services are not in this build yet.

Benchmark the rings against rtrb and crossbeam, side by side:
    cargo run --release -p corelane-perf -- spsc --help
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None | Some("-h" | "--help" | "help") => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("corelane {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!(
                "error: unknown command or flag '{other}': this build has no daemon yet; \
                 see `corelane --help`"
            );
            ExitCode::from(2)
        }
    }
}
