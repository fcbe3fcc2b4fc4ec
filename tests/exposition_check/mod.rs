//! A strict checker of the Prometheus text exposition format (version 0.0.4), with the rules
//! the official `prometheus-client` encoder enforces and the naming rules of the Prometheus
//! documentation, for tests that scrape a `/metrics` endpoint.
//!
//! Rules checked (each violation is one line of the returned error):
//! - every sample's family has exactly one `# TYPE` and exactly one `# HELP`, both before its
//!   first sample; a family's samples are contiguous (no other family in between);
//! - no name has two kinds (a second `# TYPE` for a name is an error, whatever its kind);
//! - a counter's name ends in `_total`;
//! - a name that measures time is in seconds: no `_ns`, `_us`, `_ms` (or spelled out) unit;
//! - a summary has, for every label set, `quantile` samples plus `_sum` and `_count`; a
//!   `quantile` label appears only on a summary's own samples;
//! - a summary's quantiles do not decrease as `quantile` grows (per label set);
//! - a gauge or counter has no `_sum`/`_count` companion posing as a summary;
//! - values parse as floats, label syntax is well formed.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A parsed sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// The sample's own name (`x_sum`, `x`, ...).
    pub name: String,
    /// Labels in order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Line {
    /// The label's value, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The labels other than `quantile`, as a comparable key.
    fn base_labels(&self) -> Vec<(String, String)> {
        self.labels.iter().filter(|(k, _)| k != "quantile").cloned().collect()
    }
}

/// A family: its kind, help and samples.
#[derive(Clone, Debug, Default)]
pub struct Family {
    /// `counter`, `gauge`, `summary`, `histogram` or `untyped`.
    pub kind: String,
    /// The help text (escaped as on the wire).
    pub help: String,
    /// Its samples, in order.
    pub samples: Vec<Line>,
}

/// A label set, in order.
type Labels = Vec<(String, String)>;

/// The families of an exposition, by name.
pub type Families = BTreeMap<String, Family>;

/// Checks `text`; returns its families, or every violation found.
pub fn check(text: &str) -> Result<Families, String> {
    let mut errors = Vec::new();
    let mut families: Families = BTreeMap::new();
    let mut helps: HashMap<String, usize> = HashMap::new();
    let mut types: HashMap<String, usize> = HashMap::new();
    // Families whose samples have started, and the one whose samples come now.
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = n + 1;
        if line.is_empty() {
            errors.push(format!("line {at}: empty line"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if helps.insert(name.to_owned(), at).is_some() {
                errors.push(format!("line {at}: second # HELP for {name}"));
            }
            if started.contains(name) {
                errors.push(format!("line {at}: # HELP for {name} after its samples"));
            }
            families.entry(name.to_owned()).or_default().help = help.to_owned();
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let Some((name, kind)) = rest.split_once(' ') else {
                errors.push(format!("line {at}: # TYPE without a kind: {line:?}"));
                continue;
            };
            if !["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind) {
                errors.push(format!("line {at}: unknown kind {kind:?} for {name}"));
            }
            if types.insert(name.to_owned(), at).is_some() {
                errors.push(format!("line {at}: second # TYPE for {name} (a name has one kind)"));
            }
            if started.contains(name) {
                errors.push(format!("line {at}: # TYPE for {name} after its samples"));
            }
            families.entry(name.to_owned()).or_default().kind = kind.to_owned();
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = match parse_sample(line) {
            Ok(sample) => sample,
            Err(why) => {
                errors.push(format!("line {at}: {why}: {line:?}"));
                continue;
            }
        };
        let family = family_of(&sample.name, &families);
        let Some(family) = family else {
            errors.push(format!("line {at}: sample {} has no # TYPE before it", sample.name));
            continue;
        };
        if !helps.contains_key(&family) {
            errors.push(format!("line {at}: family {family} has no # HELP before its samples"));
        }
        if current.as_deref() != Some(family.as_str()) {
            if started.contains(&family) {
                errors.push(format!("line {at}: samples of {family} are not contiguous"));
            }
            started.insert(family.clone());
            current = Some(family.clone());
        }
        if let Some(f) = families.get_mut(&family) {
            f.samples.push(sample);
        }
    }
    for (name, family) in &families {
        check_family(name, family, &mut errors);
    }
    if errors.is_empty() {
        Ok(families)
    } else {
        Err(errors.join("\n"))
    }
}

/// The family `name` belongs to: itself if it has a `# TYPE`, else the summary or histogram
/// whose `_sum`/`_count`/`_bucket` it is.
fn family_of(name: &str, families: &Families) -> Option<String> {
    if families.get(name).is_some_and(|f| !f.kind.is_empty()) {
        return Some(name.to_owned());
    }
    for suffix in ["_sum", "_count", "_bucket"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if families.get(base).is_some_and(|f| f.kind == "summary" || (f.kind == "histogram")) {
                return Some(base.to_owned());
            }
        }
    }
    None
}

/// Whether `name` carries a time unit other than seconds.
pub fn has_non_second_time_unit(name: &str) -> bool {
    let tokens: Vec<&str> = name.split('_').collect();
    tokens.iter().any(|t| {
        matches!(
            *t,
            "ns" | "us"
                | "ms"
                | "nanoseconds"
                | "microseconds"
                | "milliseconds"
                | "nanos"
                | "micros"
        )
    })
}

fn check_family(name: &str, family: &Family, errors: &mut Vec<String>) {
    if family.kind.is_empty() {
        errors.push(format!("family {name} has # HELP but no # TYPE"));
    }
    if family.samples.is_empty() {
        errors.push(format!("family {name} has no samples"));
    }
    if has_non_second_time_unit(name) {
        errors.push(format!("family {name} measures time in a unit other than seconds"));
    }
    match family.kind.as_str() {
        "counter" if !name.ends_with("_total") => {
            errors.push(format!("counter {name} does not end in _total"));
        }
        "summary" => {
            // Per label set (without quantile): quantiles, one _sum, one _count.
            let mut sets: BTreeMap<Vec<(String, String)>, (usize, usize, usize)> = BTreeMap::new();
            for s in &family.samples {
                let entry = sets.entry(s.base_labels()).or_default();
                if s.name == name {
                    match s.label("quantile") {
                        Some(q) if q.parse::<f64>().is_ok_and(|q| (0.0..=1.0).contains(&q)) => {
                            entry.0 += 1;
                        }
                        _ => errors.push(format!("summary {name}: sample without a quantile")),
                    }
                } else if s.name.ends_with("_sum") {
                    entry.1 += 1;
                } else if s.name.ends_with("_count") {
                    entry.2 += 1;
                }
            }
            let mut by_set: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
            for s in family.samples.iter().filter(|s| s.name == name) {
                if let Some(q) = s.label("quantile").and_then(|q| q.parse::<f64>().ok()) {
                    by_set.entry(s.base_labels()).or_default().push((q, s.value));
                }
            }
            for (labels, mut points) in by_set {
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                if points.windows(2).any(|w| w[1].1 < w[0].1) {
                    errors
                        .push(format!("summary {name}{labels:?}: quantiles decrease: {points:?}"));
                }
            }
            for (labels, (q, sum, count)) in sets {
                if q == 0 || sum != 1 || count != 1 {
                    errors.push(format!(
                        "summary {name}{labels:?}: {q} quantiles, {sum} _sum, {count} _count \
                         (want quantiles, one _sum and one _count)"
                    ));
                }
            }
        }
        _ => {}
    }
    if family.kind != "summary" && family.kind != "histogram" {
        for s in &family.samples {
            if s.label("quantile").is_some() {
                errors
                    .push(format!("{} {name} has a quantile label: a broken summary", family.kind));
                break;
            }
        }
    }
}

/// Parses `name{k="v",...} value`.
pub fn parse_sample(line: &str) -> Result<Line, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            let eq = rest.find("=\"").ok_or("label without =\"")?;
            let key = &rest[..eq];
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("bad label name {key:?}"));
            }
            rest = &rest[eq + 2..];
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err("bad escape in label value".into()),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((key.to_owned(), value));
            rest = &rest[end + 1..];
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            } else {
                return Err("labels not separated by , or closed by }".into());
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = value.split(' ').next().unwrap_or("");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    Ok(Line { name: name.to_owned(), labels, value })
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Sends `GET /metrics` to `addr` and returns the body of a 200 answer.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn the_checker_catches_what_it_claims_to() {
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
                    # HELP l_seconds L.\n# TYPE l_seconds summary\n\
                    l_seconds{quantile=\"0.5\"} 0.1\nl_seconds_sum 2.5\nl_seconds_count 7\n";
        check(good).unwrap();
        for (bad, want) in [
            ("# TYPE a gauge\na 1\n", "no # HELP"),
            ("# HELP a A.\na 1\n", "no # TYPE"),
            ("# HELP a A.\n# TYPE a gauge\n# TYPE a counter\na 1\n", "second # TYPE"),
            ("# HELP a A.\n# HELP a B.\n# TYPE a gauge\na 1\n", "second # HELP"),
            ("# HELP a A.\n# TYPE a counter\na 1\n", "does not end in _total"),
            ("# HELP a_ns A.\n# TYPE a_ns gauge\na_ns 1\n", "other than seconds"),
            ("# HELP a A.\n# TYPE a gauge\na{quantile=\"0.5\"} 1\n", "broken summary"),
            ("# HELP a A.\n# TYPE a summary\na{quantile=\"0.5\"} 1\n", "0 _sum"),
            (
                "# HELP a A.\n# TYPE a summary\na{quantile=\"0.5\"} 2\na{quantile=\"1\"} 1\n\
                 a_sum 3\na_count 2\n",
                "quantiles decrease",
            ),
            (
                "# HELP a A.\n# TYPE a gauge\na 1\n# HELP b B.\n# TYPE b gauge\nb 1\na 2\n",
                "not contiguous",
            ),
        ] {
            let err = check(bad).expect_err(bad);
            assert!(err.contains(want), "{bad:?}: {err}");
        }
    }
}
