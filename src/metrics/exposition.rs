//! The Prometheus text exposition format, version 0.0.4, written by a typed [`Encoder`]: a
//! family's name, kind and help first, then its samples; one `# TYPE` and one `# HELP` per
//! name, as the official `prometheus-client` encoder enforces.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use super::reader::Sample;
use super::series::{escape_help, parse_series};
use super::{CounterKind, Unit};

/// The `Content-Type` of [`render`]'s output.
pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the [`Encoder`] refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum EncodeError {
    /// A second family of this name: a name has one `# TYPE` and one `# HELP`.
    SecondType(String),
    /// A sample of another family or kind than the open one (or with no family open).
    NotOfFamily(String),
}

/// Writes the exposition family by family: [`family`](Self::family) (name, kind, help), then
/// that family's [`sample`](Self::sample)s.
pub(super) struct Encoder<'a> {
    out: &'a mut String,
    declared: HashSet<String>,
    /// The open family and its `# TYPE` word.
    open: Option<(String, &'static str)>,
}

impl<'a> Encoder<'a> {
    pub(super) fn new(out: &'a mut String) -> Self {
        Self { out, declared: HashSet::new(), open: None }
    }

    /// Opens family `name` of `kind` (`counter`, `gauge` or `summary`, see
    /// [`CounterKind::as_str`]) with `help`: writes its `# HELP` and `# TYPE` lines.
    ///
    /// # Errors
    /// [`EncodeError::SecondType`] if `name` was opened before (a debug build panics: callers
    /// group their samples first).
    pub(super) fn family(
        &mut self,
        name: &str,
        kind: &'static str,
        help: &str,
    ) -> Result<(), EncodeError> {
        if !self.declared.insert(name.to_owned()) {
            debug_assert!(false, "a second # TYPE for {name}");
            self.open = None;
            return Err(EncodeError::SecondType(name.to_owned()));
        }
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        if !help.is_empty() {
            self.out.push(' ');
            escape_help(help, self.out);
        }
        self.out.push('\n');
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self.open = Some((name.to_owned(), kind));
        Ok(())
    }

    /// Writes `sample` (seconds for a value in nanoseconds) in the open family.
    ///
    /// # Errors
    /// [`EncodeError::NotOfFamily`] if it is not of the open family and kind.
    pub(super) fn sample(&mut self, sample: &Sample) -> Result<(), EncodeError> {
        let fits = self.open.as_ref().is_some_and(|(name, kind)| {
            sample.exposition_family() == name
                && sample.kind.as_str() == *kind
                && sample.kind != CounterKind::SummaryWindow
        });
        if !fits {
            return Err(EncodeError::NotOfFamily(sample.name.clone()));
        }
        let _ = match sample.unit {
            Unit::None => writeln!(self.out, "{} {}", sample.name, sample.value),
            Unit::Nanoseconds => writeln!(self.out, "{} {}", sample.name, sample.exposed()),
        };
        Ok(())
    }
}

/// Appends `samples` to `out` in the text exposition format: for each metric family, in order of
/// first appearance, a `# HELP` line (the first non-empty help text in the family, escaped), a
/// `# TYPE` line (the first sample's kind), then every series of the family, in order. A
/// summary's `_sum` and `_count` belong to its family; values in nanoseconds are written in
/// seconds.
///
/// Skipped, so a bad source cannot break the output: a sample whose name is not well-formed
/// series syntax, and one whose kind differs from its family's first sample (a name has one
/// kind).
pub fn render(samples: &[Sample], out: &mut String) {
    let mut families: Vec<(&str, Vec<&Sample>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for sample in samples {
        if parse_series(&sample.name).is_err() || sample.kind == CounterKind::SummaryWindow {
            continue;
        }
        let family = sample.exposition_family();
        let slot = *index.entry(family).or_insert_with(|| {
            families.push((family, Vec::new()));
            families.len() - 1
        });
        families[slot].1.push(sample);
    }
    let mut encoder = Encoder::new(out);
    for (family, members) in &families {
        // `families` only holds families with at least one member.
        let kind = members[0].kind.as_str();
        let help = members.iter().map(|s| s.help.as_str()).find(|h| !h.is_empty()).unwrap_or("");
        if encoder.family(family, kind, help).is_err() {
            continue;
        }
        for sample in members {
            if let Err(e) = encoder.sample(sample) {
                tracing::debug!(?e, "sample left out of /metrics: another kind than its family");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{series_name, CounterKind, Registry, QUANTILES};

    fn sample(name: &str, kind: CounterKind, help: &str, value: u64) -> Sample {
        Sample::new(name.into(), kind, help, value)
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
             b_total{lane=\"y\"} 2\n# HELP a\n# TYPE a gauge\na 7\n"
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
        assert_eq!(out, "# HELP ok\n# TYPE ok gauge\nok 1\n");
    }

    /// Issue 11: one kind per name. A source that gives a name two kinds gets one `# TYPE`
    /// (the first kind) and its other samples left out.
    #[test]
    fn a_name_with_two_kinds_gets_one_type() {
        let samples = [
            sample("x_total{a=\"1\"}", CounterKind::Counter, "X.", 1),
            sample("x_total{a=\"2\"}", CounterKind::Gauge, "X.", 2),
        ];
        let mut out = String::new();
        render(&samples, &mut out);
        assert_eq!(out, "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\"} 1\n");
    }

    /// Issue 11: the encoder refuses a second `# TYPE` for a name (a debug build panics).
    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "a second # TYPE for x"))]
    fn the_encoder_refuses_a_second_type_for_a_name() {
        let mut out = String::new();
        let mut encoder = Encoder::new(&mut out);
        encoder.family("x", "gauge", "X.").unwrap();
        encoder.sample(&sample("x", CounterKind::Gauge, "X.", 1)).unwrap();
        let second = encoder.family("x", "counter", "X again.");
        assert_eq!(second, Err(EncodeError::SecondType("x".into())));
        assert!(encoder.sample(&sample("x", CounterKind::Counter, "", 2)).is_err());
        assert_eq!(out, "# HELP x X.\n# TYPE x gauge\nx 1\n");
    }

    #[test]
    fn the_encoder_refuses_a_sample_of_another_family() {
        let mut out = String::new();
        let mut encoder = Encoder::new(&mut out);
        let stray = sample("y", CounterKind::Gauge, "", 1);
        assert!(matches!(encoder.sample(&stray), Err(EncodeError::NotOfFamily(_))));
        encoder.family("x", "gauge", "").unwrap();
        assert!(matches!(encoder.sample(&stray), Err(EncodeError::NotOfFamily(_))));
    }

    /// Issue 11: a summary is one family (quantiles, `_sum`, `_count`) in seconds.
    #[test]
    fn a_summary_is_one_family_in_seconds() {
        let mut registry = Registry::new();
        let ids = registry
            .register_summary("lat_seconds", &[("lane", "m")], "Latency.", &QUANTILES)
            .unwrap();
        let file = registry.create_in_memory().unwrap();
        file.summary(ids).publish(&[1_500, 2_000_000, 3_000_000_000, 4_000_000_000], 10_500, 7);
        let mut out = String::new();
        render(&file.reader().snapshot(), &mut out);
        assert_eq!(
            out,
            "# HELP lat_seconds Latency.\n# TYPE lat_seconds summary\n\
             lat_seconds{lane=\"m\",quantile=\"0.5\"} 0.0000015\n\
             lat_seconds{lane=\"m\",quantile=\"0.99\"} 0.002\n\
             lat_seconds{lane=\"m\",quantile=\"0.999\"} 3\n\
             lat_seconds{lane=\"m\",quantile=\"1\"} 4\n\
             lat_seconds_sum{lane=\"m\"} 0.0000105\n\
             lat_seconds_count{lane=\"m\"} 7\n"
        );
    }
}
