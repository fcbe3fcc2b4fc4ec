//! Is the machine idle enough to benchmark? Two looks: the 1-minute load average
//! (`/proc/loadavg`, recent history) and a short sample of `/proc/stat` (right now).
//!
//! A busy machine does not just add noise: on a two-cpu box one other runnable thread
//! preempts one side of a ping-pong for whole scheduler ticks, and the table then measures the
//! scheduler. So a busy run is refused, or with `--allow-busy` flagged `"idle": false`.

use std::time::Duration;

/// Most load (1-minute average) per usable cpu that still counts as idle.
pub const MAX_LOAD_PER_CPU: f64 = 0.5;
/// Most busy fraction of all cpus over the sample that still counts as idle.
pub const MAX_BUSY_FRACTION: f64 = 0.10;

/// What the idle check saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub cpus: usize,
    /// 1-minute load average, if /proc/loadavg was readable.
    pub load1: Option<f64>,
    /// Busy fraction of all cpus (0..=1) over `sample`, if /proc/stat was readable.
    pub busy: Option<f64>,
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

    fn reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        let max_load = MAX_LOAD_PER_CPU * self.cpus as f64;
        match self.load1 {
            Some(load) if load > max_load => reasons.push(format!(
                "1-minute load average is {load:.2}, expected at most {max_load:.2} (half of {} cpus)",
                self.cpus
            )),
            None => reasons.push("cannot read /proc/loadavg".into()),
            Some(_) => {}
        }
        match self.busy {
            Some(busy) if busy > MAX_BUSY_FRACTION => reasons.push(format!(
                "cpus were {:.0}% busy over {} ms, expected at most {:.0}%",
                busy * 100.0,
                self.sample.as_millis(),
                MAX_BUSY_FRACTION * 100.0
            )),
            None => reasons.push("cannot read /proc/stat".into()),
            Some(_) => {}
        }
        reasons
    }
}

/// Reads /proc/loadavg, then samples /proc/stat over `sample`.
pub fn check(cpus: usize, sample: Duration) -> Verdict {
    let load1 = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| parse_loadavg(&s));
    let before = read_stat();
    std::thread::sleep(sample);
    let after = read_stat();
    let busy = match (before, after) {
        (Some(before), Some(after)) => busy_fraction(before, after),
        _ => None,
    };
    Verdict { cpus, load1, busy, sample }
}

fn read_stat() -> Option<CpuTimes> {
    std::fs::read_to_string("/proc/stat").ok().and_then(|s| parse_stat(&s))
}

/// The 1-minute load average: the first field of `/proc/loadavg`
/// (`0.32 0.29 0.16 2/103 4846`).
pub fn parse_loadavg(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

/// Cumulative time of all cpus, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    /// Everything but idle and iowait (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    pub total: u64,
}

/// The aggregate `cpu` line of `/proc/stat`: `cpu user nice system idle iowait irq softirq
/// steal guest guest_nice`. Guest time is already counted in user and nice, so only the first
/// eight fields are summed. Steal (another VM ran on our cpu) counts as busy.
pub fn parse_stat(s: &str) -> Option<CpuTimes> {
    let line = s.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
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
                        intr 123 0\n";

    #[test]
    fn loadavg_first_field() {
        assert_eq!(parse_loadavg("0.32 0.29 0.16 2/103 4846\n"), Some(0.32));
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn stat_aggregate_line() {
        let t = parse_stat(STAT).unwrap();
        assert_eq!(t.total, 22196 + 5875 + 87095 + 584 + 82 + 1146);
        assert_eq!(t.busy, 22196 + 5875 + 82 + 1146, "idle and iowait excluded, guest not added");
        assert_eq!(parse_stat("cpu0 1 2 3 4\n"), None, "per-cpu lines are not the aggregate");
    }

    #[test]
    fn busy_fraction_of_deltas() {
        let a = CpuTimes { busy: 100, total: 1000 };
        let b = CpuTimes { busy: 130, total: 1100 };
        assert_eq!(busy_fraction(a, b), Some(0.3));
        assert_eq!(busy_fraction(a, a), None);
    }

    #[test]
    fn verdict_names_what_was_busy() {
        let sample = Duration::from_millis(200);
        let idle = Verdict { cpus: 2, load1: Some(0.3), busy: Some(0.02), sample };
        assert!(idle.is_idle());
        let busy = Verdict { load1: Some(1.7), busy: Some(0.5), ..idle };
        assert!(!busy.is_idle());
        assert_eq!(
            busy.why(),
            "1-minute load average is 1.70, expected at most 1.00 (half of 2 cpus); \
             cpus were 50% busy over 200 ms, expected at most 10%"
        );
    }
}
