//! The facts printed with every result: a number without its machine is not a result.

use crate::idle::Verdict;
use crate::pin::{Cores, Pair};

#[derive(Clone, Debug)]
pub struct Facts {
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// Cpus this process may use (its affinity mask at start).
    pub cores: usize,
    pub cpu_ids: Vec<usize>,
    /// /proc/sys/kernel/osrelease.
    pub kernel: String,
    /// The kernel clock source behind `Instant::now()`; anything but `tsc` (on x86) makes each
    /// timestamp a slow syscall or hypercall.
    pub clocksource: String,
    /// Median cost of one `Instant::now()`, in ns ([`crate::timer::calibrate`], at start):
    /// the fixed overhead inside every raw latency sample, subtracted from each.
    pub timer_ns: u64,
    pub pair: Pair,
    /// The idle check before the run.
    pub idle: Verdict,
    /// Rounds that started busy and ran anyway (`--allow-busy`); set after the run.
    pub busy_rounds: u32,
}

impl Facts {
    pub fn read(cores: &Cores, pair: Pair, idle: Verdict) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| cpu_model(&s))
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpu,
            cores: cores.len(),
            cpu_ids: cores.ids().to_vec(),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            clocksource: read_trimmed(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            ),
            timer_ns: crate::timer::cost_ns(),
            pair,
            idle,
            busy_rounds: 0,
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// The cpu model from /proc/cpuinfo: `model name` on x86, else `Hardware` or `Processor`
/// (some arm kernels), else the first `CPU part`.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Hardware", "Processor", "CPU part"].iter().find_map(|key| {
        cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_from_cpuinfo() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\n\
                   model name\t: AMD EPYC 7B13\nstepping\t: 1\n\nprocessor\t: 1\n\
                   model name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(x86).as_deref(), Some("AMD EPYC 7B13"));
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n";
        assert_eq!(cpu_model(arm).as_deref(), Some("0xd0c"));
        assert_eq!(cpu_model("processor\t: 0\n"), None);
    }
}
