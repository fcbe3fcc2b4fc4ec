//! The `corelane` binary: see `corelane --help`.

fn main() -> std::process::ExitCode {
    corelane::cli::main()
}
