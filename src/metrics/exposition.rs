//! The Prometheus text exposition format, version 0.0.4.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::reader::Sample;
use super::series::{escape_help, parse_series};

/// The `Content-Type` of [`render`]'s output.
pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Appends `samples` to `out` in the text exposition format: for each metric family, in order of
/// first appearance, a `# HELP` line (the first non-empty help text in the family, escaped), a
/// `# TYPE` line (the first sample's kind), then every series of the family as `series value`.
///
/// A sample whose name is not well-formed series syntax is skipped, so a bad source cannot break
/// the output.
pub fn render(samples: &[Sample], out: &mut String) {
    let mut families: Vec<(&str, Vec<&Sample>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for sample in samples {
        let Ok(family) = parse_series(&sample.name) else { continue };
        let slot = *index.entry(family).or_insert_with(|| {
            families.push((family, Vec::new()));
            families.len() - 1
        });
        families[slot].1.push(sample);
    }
    for (family, members) in &families {
        if let Some(help) = members.iter().map(|s| s.help.as_str()).find(|h| !h.is_empty()) {
            out.push_str("# HELP ");
            out.push_str(family);
            out.push(' ');
            escape_help(help, out);
            out.push('\n');
        }
        // `families` only holds families with at least one member.
        let kind = members[0].kind;
        let _ = writeln!(out, "# TYPE {family} {}", kind.as_str());
        for sample in members {
            let _ = writeln!(out, "{} {}", sample.name, sample.value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{series_name, CounterKind};

    fn sample(name: &str, kind: CounterKind, help: &str, value: u64) -> Sample {
        Sample { name: name.into(), kind, help: help.into(), value }
    }

    #[test]
    fn groups_families_in_first_appearance_order() {
        let samples = [
            sample("b_total{lane=\"x\"}", CounterKind::Counter, "B things.", 1),
            sample("a", CounterKind::Gauge, "", 7),
            sample("b_total{lane=\"y\"}", CounterKind::Counter, "B things.", 2),
        ];
        let mut out = String::new();
        render(&samples, &mut out);
        assert_eq!(
            out,
            "# HELP b_total B things.\n# TYPE b_total counter\nb_total{lane=\"x\"} 1\n\
             b_total{lane=\"y\"} 2\n# TYPE a gauge\na 7\n"
        );
    }

    #[test]
    fn escapes_label_values_and_help() {
        let name = series_name("m", &[("path", "C:\\dir \"q\"\nnext")]).unwrap();
        let samples = [sample(&name, CounterKind::Gauge, "back\\slash", 3)];
        let mut out = String::new();
        render(&samples, &mut out);
        assert_eq!(
            out,
            "# HELP m back\\\\slash\n# TYPE m gauge\nm{path=\"C:\\\\dir \\\"q\\\"\\nnext\"} 3\n"
        );
        assert_eq!(out.lines().count(), 3, "an escaped newline must not break a line");
    }

    #[test]
    fn skips_malformed_names() {
        let samples = [
            sample("ok", CounterKind::Gauge, "", 1),
            sample("bad\nname 1\nevil", CounterKind::Gauge, "", 2),
        ];
        let mut out = String::new();
        render(&samples, &mut out);
        assert_eq!(out, "# TYPE ok gauge\nok 1\n");
    }
}
