//! Is the machine idle enough to benchmark? Judged by what other work does now, on the cpus
//! the run pins to: a short sample of their per-cpu lines in `/proc/stat` (busy fraction of
//! each pinned cpu), taken before the run and again before every round ([`Gate`]).
//!
//! A busy machine does not just add noise: on a two-cpu box one other runnable thread
//! preempts one side of a ping-pong for whole scheduler ticks, and the table then measures the
//! scheduler. So a busy run is refused, or with `--allow-busy` flagged `"idle": false`.
//!
//! Two other looks are notes only, never a refusal: the 1-minute load average (history: right
//! after a run it still holds that run's own spinning, about 1.3 on two cpus, so refusing on
//! it refused every second run) and `procs_running` (runnable tasks right now besides the
//! checking thread, system-wide, so on a big machine mostly work on other cpus).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Most busy fraction of any pinned cpu over the sample that still counts as idle.
pub const MAX_BUSY_FRACTION: f64 = 0.10;
/// A 1-minute load average above this per usable cpu gets a note (never a refusal).
pub const NOTE_LOAD_PER_CPU: f64 = 0.5;
/// How long each idle sample lasts. /proc/stat counts in 10 ms ticks: 20 per cpu.
pub const SAMPLE: Duration = Duration::from_millis(200);
/// `--wait-idle` without a value: the longest wait, in seconds.
pub const DEFAULT_WAIT_S: u64 = 120;
/// Without `--wait-idle`, a busy sample before a round is retaken this many more times (a
/// cron job, the previous measurement's daemon exiting) before the run gives up.
const RETRIES: u32 = 2;

/// What the idle check saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    /// Usable cpus (for the load-average note).
    pub cpus: usize,
    /// 1-minute load average, if /proc/loadavg was readable (a note only).
    pub load1: Option<f64>,
    /// Busy fraction (0..=1) of the busiest pinned cpu over `sample`, if /proc/stat showed
    /// every pinned cpu.
    pub busy: Option<f64>,
    /// Each pinned cpu and its busy fraction over `sample` (empty if unreadable).
    pub per_cpu: Vec<(usize, f64)>,
    /// Runnable tasks besides the checking thread (`procs_running` - 1), the least seen
    /// across the sample (a note only).
    pub others_running: Option<u32>,
    pub sample: Duration,
}

impl Verdict {
    pub fn is_idle(&self) -> bool {
        self.reasons().is_empty()
    }

    /// What was busy, as one line (empty when idle).
    pub fn why(&self) -> String {
        self.reasons().join("; ")
    }

    /// What is worth knowing but refuses nothing, as one line (empty if nothing).
    pub fn notes(&self) -> String {
        let mut notes = Vec::new();
        let high = NOTE_LOAD_PER_CPU * self.cpus as f64;
        if let Some(load) = self.load1.filter(|&l| l > high) {
            notes.push(format!(
                "1-minute load average {load:.2} is above {high:.2} (history, e.g. an earlier \
                 run; not used to refuse)"
            ));
        }
        if let Some(n) = self.others_running.filter(|&n| n > 0) {
            notes.push(format!("{n} other runnable task(s) on the machine"));
        }
        notes.join("; ")
    }

    /// The busiest pinned cpu that is over the limit, and its busy fraction.
    pub fn busiest(&self) -> Option<(usize, f64)> {
        self.per_cpu
            .iter()
            .copied()
            .filter(|&(_, b)| b > MAX_BUSY_FRACTION)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    fn reasons(&self) -> Vec<String> {
        if self.per_cpu.is_empty() {
            return vec!["cannot read the pinned cpus' lines of /proc/stat".into()];
        }
        self.per_cpu
            .iter()
            .filter(|&&(_, busy)| busy > MAX_BUSY_FRACTION)
            .map(|&(cpu, busy)| {
                format!(
                    "cpu {cpu} was {:.0}% busy over {} ms, expected at most {:.0}%",
                    busy * 100.0,
                    self.sample.as_millis(),
                    MAX_BUSY_FRACTION * 100.0
                )
            })
            .collect()
    }
}

/// Samples the pinned cpus over `sample`: /proc/stat before and after, `procs_running` a few
/// times in between, and /proc/loadavg for the note.
pub fn check(cpus: usize, pinned: &[usize], sample: Duration) -> Verdict {
    let load1 = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| parse_loadavg(&s));
    let before = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut least_running: Option<u32> = None;
    let steps = 4;
    for _ in 0..steps {
        std::thread::sleep(sample / steps);
        let now = std::fs::read_to_string("/proc/stat").ok().and_then(|s| parse_procs_running(&s));
        least_running = match (least_running, now) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let after = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut v = judge(cpus, pinned, &before, &after, load1, sample);
    // The reading thread is itself running when it reads procs_running.
    v.others_running = least_running.map(|n| n.saturating_sub(1));
    v
}

/// The verdict from two /proc/stat texts taken `sample` apart (pure: the tests feed it
/// synthetic texts).
pub fn judge(
    cpus: usize,
    pinned: &[usize],
    before: &str,
    after: &str,
    load1: Option<f64>,
    sample: Duration,
) -> Verdict {
    let per_cpu: Option<Vec<(usize, f64)>> = pinned
        .iter()
        .map(|&cpu| {
            let b = parse_cpu(before, cpu)?;
            let a = parse_cpu(after, cpu)?;
            // No tick passed on that cpu (a tickless idle cpu accounts lazily): idle.
            Some((cpu, busy_fraction(b, a).unwrap_or(0.0)))
        })
        .collect();
    let per_cpu = per_cpu.unwrap_or_default();
    let busy = per_cpu.iter().map(|&(_, b)| b).reduce(f64::max);
    Verdict { cpus, load1, busy, per_cpu, others_running: None, sample }
}

/// Busy rounds a run with `--allow-busy` went on with (for the JSON).
static BUSY_ROUNDS: AtomicU32 = AtomicU32::new(0);

/// Busy rounds so far that `--allow-busy` let run.
pub fn busy_rounds() -> u32 {
    BUSY_ROUNDS.load(Ordering::Relaxed)
}

/// The idle policy of a run, applied before the run and before every round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gate {
    /// Usable cpus.
    pub cpus: usize,
    /// The two cpus the run pins to.
    pub pinned: [usize; 2],
    /// `--allow-busy`: go on when busy, and count the round.
    pub allow_busy: bool,
    /// `--wait-idle[=SECS]`: wait up to this long for the pinned cpus to go idle.
    pub wait: Option<Duration>,
}

impl Gate {
    /// Checks the pinned cpus; if busy, waits (`--wait-idle`) or retakes the sample a couple
    /// of times. Returns the last verdict; the caller decides what a busy one means.
    pub fn settle(&self) -> Verdict {
        let started = Instant::now();
        let mut v = check(self.cpus, &self.pinned, SAMPLE);
        let mut retries = 0;
        let mut waited = false;
        while !v.is_idle() {
            match self.wait {
                Some(limit) if started.elapsed() < limit => {
                    eprint!("\r{}   ", progress_line(&v, started.elapsed()));
                    waited = true;
                }
                None if retries < RETRIES => retries += 1,
                _ => break,
            }
            v = check(self.cpus, &self.pinned, SAMPLE);
        }
        if waited {
            eprintln!();
        }
        v
    }

    /// Before round `round` (0-based) of a suite: a busy machine ends the run (exit 2, the
    /// reason names the cpu) unless `--allow-busy`, which counts the round as busy.
    pub fn before_round(&self, round: usize) {
        let v = self.settle();
        if v.is_idle() {
            return;
        }
        if self.allow_busy {
            BUSY_ROUNDS.fetch_add(1, Ordering::Relaxed);
            eprintln!("\nwarning: round {} starts busy: {}", round + 1, v.why());
        } else {
            eprintln!(
                "\nerror: machine became busy before round {}: {}. {}",
                round + 1,
                v.why(),
                ADVICE
            );
            std::process::exit(2);
        }
    }
}

/// What a refused run suggests.
pub const ADVICE: &str = "Numbers taken now would measure the other work, not the code. Rerun \
when idle, pass --wait-idle[=SECS] to wait for it, or --allow-busy to run anyway and flag the \
result.";

/// `waiting for cpu 1 to go idle: 37% busy, 12 s`.
pub fn progress_line(v: &Verdict, waited: Duration) -> String {
    match v.busiest() {
        Some((cpu, busy)) => format!(
            "waiting for cpu {cpu} to go idle: {:.0}% busy, {} s",
            busy * 100.0,
            waited.as_secs()
        ),
        None => format!("waiting for idle: {}, {} s", v.why(), waited.as_secs()),
    }
}

/// The 1-minute load average: the first field of `/proc/loadavg`
/// (`0.32 0.29 0.16 2/103 4846`).
pub fn parse_loadavg(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

/// `procs_running N` of `/proc/stat`: tasks runnable right now, the reader included.
pub fn parse_procs_running(s: &str) -> Option<u32> {
    s.lines().find_map(|l| l.strip_prefix("procs_running ")?.trim().parse().ok())
}

/// Cumulative time of one cpu, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    /// Everything but idle and iowait (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    pub total: u64,
}

/// The line `cpu<N> user nice system idle iowait irq softirq steal guest guest_nice` of
/// `/proc/stat`. Guest time is already counted in user and nice, so only the first eight
/// fields are summed. Steal (another VM ran on our cpu) counts as busy.
pub fn parse_cpu(s: &str, cpu: usize) -> Option<CpuTimes> {
    let name = format!("cpu{cpu}");
    let line = s.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let fields: Vec<u64> =
        line.split_whitespace().skip(1).take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes { busy: total - idle, total })
}

/// Busy fraction between two samples; `None` if no tick passed.
pub fn busy_fraction(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let busy = after.busy.checked_sub(before.busy)?;
    (total > 0).then(|| busy as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  22196 0 5875 87095 584 0 82 1146 7 0\n\
                        cpu0 10541 0 2735 44522 112 0 13 556 0 0\n\
                        cpu1 11655 0 3140 42573 472 0 69 590 7 0\n\
                        intr 123 0\n\
                        procs_running 3\n";

    /// `/proc/stat` with the given (user, idle) ticks per cpu.
    fn stat(cpus: &[(u64, u64)], running: u32) -> String {
        let mut s = String::from("cpu  1 0 1 1 0 0 0 0 0 0\n");
        for (i, (user, idle)) in cpus.iter().enumerate() {
            s.push_str(&format!("cpu{i} {user} 0 0 {idle} 0 0 0 0 0 0\n"));
        }
        s.push_str(&format!("ctxt 99\nprocs_running {running}\nprocs_blocked 0\n"));
        s
    }

    #[test]
    fn loadavg_and_procs_running() {
        assert_eq!(parse_loadavg("0.32 0.29 0.16 2/103 4846\n"), Some(0.32));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_procs_running(STAT), Some(3));
        assert_eq!(parse_procs_running("cpu 1 2 3 4\n"), None);
    }

    #[test]
    fn stat_per_cpu_line() {
        let t = parse_cpu(STAT, 1).unwrap();
        assert_eq!(t.total, 11655 + 3140 + 42573 + 472 + 69 + 590);
        assert_eq!(t.busy, 11655 + 3140 + 69 + 590, "idle and iowait excluded, guest not added");
        assert_eq!(parse_cpu(STAT, 0).unwrap().busy, 10541 + 2735 + 13 + 556);
        assert_eq!(parse_cpu(STAT, 2), None, "no such cpu");
        assert_eq!(parse_cpu("cpu10 1 2 3 4\n", 1), None, "cpu10 is not cpu1");
    }

    #[test]
    fn busy_fraction_of_deltas() {
        let a = CpuTimes { busy: 100, total: 1000 };
        let b = CpuTimes { busy: 130, total: 1100 };
        assert_eq!(busy_fraction(a, b), Some(0.3));
        assert_eq!(busy_fraction(a, a), None);
    }

    #[test]
    fn own_previous_run_in_the_load_average_is_not_a_refusal() {
        // Right after a run on 2 cpus: the 1-minute load average still holds the run's two
        // spinning threads (1.3), but both cpus are idle now (1 tick busy of 20).
        let before = stat(&[(500, 1000), (600, 900)], 1);
        let after = stat(&[(501, 1019), (600, 920)], 1);
        let v = judge(2, &[0, 1], &before, &after, Some(1.3), SAMPLE);
        assert!(v.is_idle(), "refused: {}", v.why());
        assert_eq!(v.per_cpu, vec![(0, 0.05), (1, 0.0)]);
        assert!(v.notes().contains("load average 1.30"), "{}", v.notes());
    }

    #[test]
    fn only_the_pinned_cpus_count_and_the_busy_one_is_named() {
        // 16 cpus, cpu 1 spinning (20 of 20 ticks), the others idle: 6% busy over all cpus,
        // under the old all-cpu limit, but cpu 1 is where the run pins.
        let mut before: Vec<(u64, u64)> = vec![(100, 100); 16];
        let mut after: Vec<(u64, u64)> = vec![(100, 120); 16];
        before[1] = (100, 100);
        after[1] = (120, 100);
        let (before, after) = (stat(&before, 2), stat(&after, 2));
        let v = judge(16, &[1, 2], &before, &after, Some(0.1), SAMPLE);
        assert!(!v.is_idle());
        assert_eq!(v.why(), "cpu 1 was 100% busy over 200 ms, expected at most 10%");
        assert_eq!(v.busiest(), Some((1, 1.0)));
        // The same machine pinned to two idle cpus is idle.
        assert!(judge(16, &[2, 3], &before, &after, Some(0.1), SAMPLE).is_idle());
    }

    #[test]
    fn unreadable_cpu_lines_refuse() {
        let v = judge(2, &[0, 5], STAT, STAT, None, SAMPLE);
        assert!(!v.is_idle());
        assert!(v.why().contains("cannot read"), "{}", v.why());
    }

    #[test]
    fn progress_line_names_the_cpu() {
        let v =
            Verdict { per_cpu: vec![(0, 0.02), (1, 0.37)], sample: SAMPLE, ..Verdict::default() };
        assert_eq!(
            progress_line(&v, Duration::from_millis(12_400)),
            "waiting for cpu 1 to go idle: 37% busy, 12 s"
        );
    }
}
