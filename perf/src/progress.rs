//! The progress bar on stderr while a suite runs: one line, redrawn in place with `\r`.
//!
//! Drawn only when stderr is a terminal and `--quiet` was not given, so logs and pipes get no
//! carriage returns. The suites call [`round`] as each round starts and [`done`] after the
//! last; [`line()`] is the text, kept apart so it can be tested.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether the bar is drawn (set once by `main`, before the suite runs).
static ENABLED: OnceLock<bool> = OnceLock::new();
/// When the first round started: what the estimate of the time left is from.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// The bar's cells.
const CELLS: usize = 24;
/// Every line is padded to this width, so a shorter line overwrites a longer one's tail.
const WIDTH: usize = 78;

/// Draws the bar from now on if stderr is a terminal and `quiet` is false.
pub fn enable(quiet: bool) {
    let _ = ENABLED.set(!quiet && std::io::stderr().is_terminal());
}

/// Suite `suite` starts round `round` (0-based) of `rounds`.
pub fn round(suite: &str, round: usize, rounds: u32) {
    if ENABLED.get() != Some(&true) {
        return;
    }
    let started = *STARTED.get_or_init(Instant::now);
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r{}", line(suite, round, rounds as usize, started.elapsed()));
    let _ = err.flush();
}

/// The suite's rounds are over: blanks the bar's line, so the table starts on a clean one.
pub fn done() {
    if ENABLED.get() == Some(&true) {
        eprint!("\r{:WIDTH$}\r", "");
    }
}

/// `spsc [######------------------] round 2/4, 12 s, about 36 s left`: `finished` rounds of
/// `rounds` are over, after `elapsed`. The estimate assumes the rounds left take as long as
/// the ones done (there is none before the first is over).
pub fn line(suite: &str, finished: usize, rounds: usize, elapsed: Duration) -> String {
    let rounds = rounds.max(1);
    let finished = finished.min(rounds);
    let full = CELLS * finished / rounds;
    let bar = format!("{}{}", "#".repeat(full), "-".repeat(CELLS - full));
    let secs = elapsed.as_secs_f64();
    let left = if finished == 0 {
        String::new()
    } else {
        let per_round = secs / finished as f64;
        format!(", about {:.0} s left", per_round * (rounds - finished) as f64)
    };
    let text =
        format!("{suite} [{bar}] round {}/{rounds}, {secs:.0} s{left}", (finished + 1).min(rounds));
    format!("{text:<WIDTH$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_rounds_bar_and_time_left() {
        let l = line("spsc", 0, 4, Duration::ZERO);
        assert_eq!(l.trim_end(), "spsc [------------------------] round 1/4, 0 s");
        let l = line("spsc", 1, 4, Duration::from_secs(12));
        assert_eq!(
            l.trim_end(),
            "spsc [######------------------] round 2/4, 12 s, about 36 s left"
        );
        let l = line("handoff", 3, 3, Duration::from_secs(30));
        assert!(l.starts_with("handoff [########################] round 3/3, 30 s, about 0 s left"));
    }

    #[test]
    fn every_line_has_the_same_width_and_no_newline() {
        for (finished, rounds) in [(0, 1), (1, 10), (9, 10), (5, 2), (0, 0)] {
            let l = line("ingest", finished, rounds, Duration::from_millis(1500));
            assert_eq!(l.len(), WIDTH, "{l:?}");
            assert!(!l.contains('\n') && !l.contains('\r'), "{l:?}");
        }
    }
}
