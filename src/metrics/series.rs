//! Series names in Prometheus exposition syntax: building them from a family and labels (with
//! label values escaped), and checking text read from outside before it is served.

use super::MetricsError;

/// Builds the series text `family{k1="v1",k2="v2"}` (just `family` without labels), escaping
/// each label value with [`escape_label_value`].
///
/// # Errors
/// [`MetricsError::InvalidMetricName`], [`MetricsError::InvalidLabelName`] or
/// [`MetricsError::DuplicateLabel`].
pub fn series_name(family: &str, labels: &[(&str, &str)]) -> Result<String, MetricsError> {
    if !is_metric_name(family) {
        return Err(MetricsError::InvalidMetricName { name: family.to_owned() });
    }
    let mut out = String::with_capacity(family.len() + 16 * labels.len());
    out.push_str(family);
    for (i, (key, value)) in labels.iter().enumerate() {
        if !is_label_name(key) {
            return Err(MetricsError::InvalidLabelName {
                metric: family.to_owned(),
                label: (*key).to_owned(),
            });
        }
        if labels[..i].iter().any(|(k, _)| k == key) {
            return Err(MetricsError::DuplicateLabel {
                metric: family.to_owned(),
                label: (*key).to_owned(),
            });
        }
        out.push(if i == 0 { '{' } else { ',' });
        out.push_str(key);
        out.push_str("=\"");
        escape_label_value(value, &mut out);
        out.push('"');
    }
    if !labels.is_empty() {
        out.push('}');
    }
    Ok(out)
}

/// Appends `value` to `out` escaped for a label value in the text exposition format: backslash
/// as `\\`, double quote as `\"`, line feed as `\n`.
pub fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends `help` to `out` escaped for a `# HELP` line: backslash as `\\`, line feed as `\n`.
pub(super) fn escape_help(help: &str, out: &mut String) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Whether `name` is a metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub(super) fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Whether `name` is a label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with the reserved `__`.
fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    !name.starts_with("__")
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks that `series` is well-formed exposition syntax as [`series_name`] writes it and returns
/// its family (the part before `{`), or says what is wrong.
///
/// This is what stands between bytes from a file and the `/metrics` output: a series that passes
/// cannot break a line or the label syntax.
pub(super) fn parse_series(series: &str) -> Result<&str, &'static str> {
    let (family, labels) = match series.find('{') {
        Some(brace) => (&series[..brace], Some(&series[brace + 1..])),
        None => (series, None),
    };
    if !is_metric_name(family) {
        return Err("metric name is not [a-zA-Z_:][a-zA-Z0-9_:]*");
    }
    let Some(labels) = labels else { return Ok(family) };
    let Some(mut rest) = labels.strip_suffix('}') else {
        return Err("label set does not end with }");
    };
    if rest.is_empty() {
        return Err("label set is empty");
    }
    loop {
        let Some(eq) = rest.find("=\"") else { return Err("label without =\"") };
        if !is_label_name(&rest[..eq]) {
            return Err("label name is not [a-zA-Z_][a-zA-Z0-9_]*");
        }
        rest = &rest[eq + 2..];
        // The value runs to the first unescaped quote; only \\, \" and \n are escapes.
        let bytes = rest.as_bytes();
        let mut i = 0;
        loop {
            match bytes.get(i) {
                None => return Err("label value is not closed by \""),
                Some(b'"') => break,
                Some(b'\\') => match bytes.get(i + 1) {
                    Some(b'\\' | b'"' | b'n') => i += 2,
                    _ => return Err("label value has an escape other than \\\\, \\\" or \\n"),
                },
                Some(&b) if b.is_ascii_control() => {
                    return Err("label value contains a control character")
                }
                Some(_) => i += 1,
            }
        }
        rest = &rest[i + 1..];
        if rest.is_empty() {
            return Ok(family);
        }
        let Some(next) = rest.strip_prefix(',') else {
            return Err("labels are not separated by ,");
        };
        rest = next;
    }
}

/// Whether `help` can be stored: no control characters (a `# HELP` line stays one line).
pub(super) fn is_valid_help(help: &str) -> bool {
    !help.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_series_with_escaped_label_values() {
        let s =
            series_name("corelane_x_total", &[("lane", "main"), ("path", "a\"b\\c\nd")]).unwrap();
        assert_eq!(s, r#"corelane_x_total{lane="main",path="a\"b\\c\nd"}"#);
        assert_eq!(parse_series(&s), Ok("corelane_x_total"));
        assert_eq!(series_name("up", &[]).unwrap(), "up");
        assert_eq!(parse_series("up"), Ok("up"));
    }

    #[test]
    fn rejects_bad_names_and_labels() {
        assert!(matches!(series_name("1abc", &[]), Err(MetricsError::InvalidMetricName { .. })));
        assert!(matches!(series_name("a-b", &[]), Err(MetricsError::InvalidMetricName { .. })));
        assert!(matches!(series_name("", &[]), Err(MetricsError::InvalidMetricName { .. })));
        assert!(matches!(
            series_name("a", &[("__x", "v")]),
            Err(MetricsError::InvalidLabelName { .. })
        ));
        assert!(matches!(
            series_name("a", &[("a:b", "v")]),
            Err(MetricsError::InvalidLabelName { .. })
        ));
        assert!(matches!(
            series_name("a", &[("k", "1"), ("k", "2")]),
            Err(MetricsError::DuplicateLabel { .. })
        ));
    }

    #[test]
    fn parse_rejects_malformed_series() {
        for bad in [
            "",
            "a{",
            "a{}",
            "a{k=\"v\"",
            "a{k=\"v}",
            "a{k=v}",
            "a{k=\"v\"x}",
            "a{k=\"v\",}",
            "a{k=\"\\x\"}",
            "a{k=\"line\nbreak\"}",
            "a b",
            "a{1k=\"v\"}",
        ] {
            assert!(parse_series(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_series(r#"a:b{k="\\\"\n",l="{}"}"#), Ok("a:b"));
    }

    #[test]
    fn help_escaping() {
        let mut out = String::new();
        escape_help("a\\b\nc\"d", &mut out);
        assert_eq!(out, "a\\\\b\\nc\"d");
        assert!(is_valid_help("plain text, with \"quotes\""));
        assert!(!is_valid_help("two\nlines"));
    }
}
