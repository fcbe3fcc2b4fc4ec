//! The cpu list, taken once, and pinning threads to it.
//!
//! Fact learned on Linux: `core_affinity::get_core_ids()` reads the calling thread's affinity
//! mask, so once a thread is pinned it returns only that one cpu. [`Cores::discover`] must run
//! first, on the unpinned main thread; the main thread itself is never pinned (benchmark
//! threads pin themselves with [`pin_current`]).

use core_affinity::CoreId;

/// The cpus this process may run on, as seen at start.
#[derive(Debug)]
pub struct Cores {
    ids: Vec<usize>,
}

/// The two cpus a suite's two threads run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub a: usize,
    pub b: usize,
    /// Whether `a` and `b` are SMT siblings (share a physical core): their round trip then
    /// never leaves the core's L1/L2 and is far cheaper than a real cross-core one.
    pub siblings: bool,
}

impl Cores {
    pub fn discover() -> Result<Self, String> {
        let ids: Vec<usize> = core_affinity::get_core_ids()
            .ok_or("cannot read the cpu list (core_affinity::get_core_ids failed)")?
            .into_iter()
            .map(|c| c.id)
            .collect();
        Ok(Self { ids })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn ids(&self) -> &[usize] {
        &self.ids
    }

    /// The requested pair if both cpus are usable, else [`choose_pair`] over sysfs topology.
    pub fn pick_pair(&self, wanted: Option<(usize, usize)>) -> Result<Pair, String> {
        if let Some((a, b)) = wanted {
            for cpu in [a, b] {
                if !self.ids.contains(&cpu) {
                    return Err(format!(
                        "--cores asks for cpu {cpu}, but this process may only use cpus {:?}",
                        self.ids
                    ));
                }
            }
            return Ok(Pair { a, b, siblings: smt_siblings(a).contains(&b) });
        }
        choose_pair(&self.ids, smt_siblings).ok_or_else(|| {
            format!(
                "need two cpus for a cross-core benchmark, but this process may only use {:?}",
                self.ids
            )
        })
    }
}

/// Picks two cpus from `ids`: skips cpu 0 (timer and device interrupts land there) when more
/// than two are available, and prefers a second cpu that is not an SMT sibling of the first.
pub fn choose_pair(ids: &[usize], siblings_of: impl Fn(usize) -> Vec<usize>) -> Option<Pair> {
    let candidates: Vec<usize> = if ids.len() > 2 {
        ids.iter().copied().filter(|&c| c != 0).collect()
    } else {
        ids.to_vec()
    };
    let (&a, rest) = candidates.split_first()?;
    let siblings = siblings_of(a);
    let apart = rest.iter().copied().find(|c| !siblings.contains(c));
    match apart {
        Some(b) => Some(Pair { a, b, siblings: false }),
        None => rest.first().map(|&b| Pair { a, b, siblings: true }),
    }
}

/// The other hardware threads on `cpu`'s physical core, from sysfs (empty if unknown).
fn smt_siblings(cpu: usize) -> Vec<usize> {
    let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| parse_cpu_list(&s))
        .map(|list| list.into_iter().filter(|&c| c != cpu).collect())
        .unwrap_or_default()
}

/// Parses a kernel cpu list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (usize, usize) = (lo.parse().ok()?, hi.parse().ok()?);
                if lo > hi {
                    return None;
                }
                out.extend(lo..=hi);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// Pins the calling thread to `cpu`; a thread that cannot be pinned ends the run (exit 2),
/// since its numbers would not mean what the table says.
pub fn pin_current(cpu: usize) {
    if !core_affinity::set_for_current(CoreId { id: cpu }) {
        eprintln!("error: cannot pin a benchmark thread to cpu {cpu}");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn pair_avoids_cpu0_and_smt_siblings() {
        // 4 cpus, siblings (0,2) and (1,3): cpu 0 skipped, 1's sibling 3 skipped.
        let sib = |c: usize| vec![(c + 2) % 4];
        assert_eq!(choose_pair(&[0, 1, 2, 3], sib), Some(Pair { a: 1, b: 2, siblings: false }));
        // Two cpus: both used, cpu 0 included.
        assert_eq!(choose_pair(&[0, 1], |_| vec![]), Some(Pair { a: 0, b: 1, siblings: false }));
        // Only siblings left: taken, and said so.
        assert_eq!(choose_pair(&[0, 1], |_| vec![0, 1]), Some(Pair { a: 0, b: 1, siblings: true }));
        assert_eq!(choose_pair(&[3], |_| vec![]), None);
    }
}
