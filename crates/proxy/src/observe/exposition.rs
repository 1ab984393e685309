//! The two exposition formats `/metrics` serves, and the choice between them.
//!
//! prometheus-client encodes OpenMetrics only. Scrapers that do not ask for it (no `Accept`,
//! `text/plain`, `*/*`, promtool) get the Prometheus text format 0.0.4, converted from the
//! OpenMetrics text by [`to_text`], as the Prometheus client libraries negotiate it.

/// The two formats and their content types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
    /// The Prometheus text exposition format 0.0.4.
    Text,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when an
    /// `application/openmetrics-text` range (version 1.0.0, 0.0.1 or none) has the highest
    /// quality of the ranges linger can serve; the text format otherwise, including when
    /// there is no `Accept` or nothing in it matches.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let mut best: Option<(f32, Self)> = None;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0_f32;
            let mut version = None;
            for param in parts {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "version" => version = Some(v),
                    _ => {}
                }
            }
            let format = match media.as_str() {
                "application/openmetrics-text"
                    if matches!(version, None | Some("1.0.0" | "0.0.1")) =>
                {
                    Self::OpenMetrics
                }
                "text/plain" if matches!(version, None | Some("0.0.4")) => Self::Text,
                "text/*" | "*/*" => Self::Text,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, format));
            }
        }
        best.map_or(Self::Text, |(_, f)| f)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// One metric family's metadata, as read from the OpenMetrics text.
struct Family<'a> {
    name: &'a str,
    kind: &'a str,
    help: Option<&'a str>,
    /// Have its `# HELP` and `# TYPE` lines been written?
    written: bool,
}

impl Family<'_> {
    /// The family's name and type in the text format: a counter is named for its `_total`
    /// samples, an info metric is a gauge named for its `_info` samples, and a type the text
    /// format lacks is `untyped`.
    fn text_name_and_type(&self) -> (String, &'static str) {
        match self.kind {
            "counter" => (format!("{}_total", self.name), "counter"),
            "info" => (format!("{}_info", self.name), "gauge"),
            "gauge" | "stateset" => (self.name.to_owned(), "gauge"),
            "histogram" => (self.name.to_owned(), "histogram"),
            "summary" => (self.name.to_owned(), "summary"),
            _ => (self.name.to_owned(), "untyped"),
        }
    }

    fn write_header(&mut self, out: &mut String) {
        if self.written {
            return;
        }
        self.written = true;
        let (name, kind) = self.text_name_and_type();
        if let Some(help) = self.help {
            out.push_str("# HELP ");
            out.push_str(&name);
            out.push(' ');
            push_text_help(out, help);
            out.push('\n');
        }
        out.push_str("# TYPE ");
        out.push_str(&name);
        out.push(' ');
        out.push_str(kind);
        out.push('\n');
    }

    /// Is `sample` this family's `_created` sample, which the text format lacks?
    fn is_created(&self, sample: &str) -> bool {
        matches!(
            self.kind,
            "counter" | "histogram" | "summary" | "gaugehistogram"
        ) && sample.strip_prefix(self.name) == Some("_created")
    }
}

/// Converts OpenMetrics text to the Prometheus text format 0.0.4: `# HELP` and `# TYPE` name
/// what the samples are called (`x_total` for a counter `x`, `x_info` for an info metric
/// `x`, which becomes a gauge); `# UNIT`, `_created` samples, exemplars and `# EOF` are
/// dropped; timestamps go from seconds to milliseconds. Label sets are copied as they are
/// (both formats escape `\`, `"` and newline the same way).
pub fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut family: Option<Family> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" {
            break;
        }
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let (Some(keyword @ ("HELP" | "TYPE" | "UNIT")), Some(name)) =
                (words.next(), words.next())
            else {
                continue;
            };
            let rest = words.next().unwrap_or("");
            if family.as_ref().is_none_or(|f| f.name != name) {
                if let Some(mut done) = family.take() {
                    done.write_header(&mut out);
                }
                family = Some(Family {
                    name,
                    kind: "unknown",
                    help: None,
                    written: false,
                });
            }
            let f = family.as_mut().expect("set just above");
            match keyword {
                "HELP" => f.help = Some(rest),
                "TYPE" => f.kind = rest.trim(),
                _ => {}
            }
            continue;
        }
        let (series, value, timestamp) = split_sample(line);
        if let Some(f) = family.as_mut() {
            if f.is_created(sample_name(series)) {
                continue;
            }
            f.write_header(&mut out);
        }
        out.push_str(series);
        out.push(' ');
        out.push_str(value);
        if let Some(ms) = timestamp.and_then(seconds_to_millis) {
            out.push(' ');
            out.push_str(&ms.to_string());
        }
        out.push('\n');
    }
    if let Some(mut f) = family {
        f.write_header(&mut out);
    }
    out
}

/// The metric name of a sample's series (`name` or `name{labels}`).
fn sample_name(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// Splits a sample line into its series (name and label set, verbatim), its value, and its
/// timestamp if any; an exemplar (`# {...} v`) after them is left out.
fn split_sample(line: &str) -> (&str, &str, Option<&str>) {
    let series_end = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => label_set_end(line, i),
        Some(i) => i,
        None => line.len(),
    };
    let (series, rest) = line.split_at(series_end);
    let rest = rest.split(" # ").next().unwrap_or("");
    let mut tokens = rest.split_whitespace();
    let value = tokens.next().unwrap_or("");
    (series, value, tokens.next())
}

/// The index just after the `}` that closes the label set opened at `open`, skipping
/// quoted label values (which may hold `}`, `"` escaped as `\"`, and ` # `).
fn label_set_end(line: &str, open: usize) -> usize {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return open + i + 1,
            _ => {}
        }
    }
    line.len()
}

/// An OpenMetrics timestamp (seconds, maybe fractional) as text-format milliseconds.
fn seconds_to_millis(ts: &str) -> Option<i64> {
    let s: f64 = ts.parse().ok()?;
    s.is_finite().then(|| (s * 1000.0).round() as i64)
}

/// Writes HELP text escaped for the text format, which knows `\\` and `\n` only:
/// OpenMetrics' `\"` becomes a plain `"`.
fn push_text_help(out: &mut String, help: &str) {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some(next) => {
                out.push('\\');
                out.push(next);
            }
            None => out.push_str("\\\\"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_is_typed_and_helped_under_its_total_name_and_loses_created() {
        let om = "\
# HELP linger_requests Requests by listener.
# TYPE linger_requests counter
linger_requests_total{listener=\"main\"} 5
linger_requests_created{listener=\"main\"} 1700000000.5
# EOF
";
        assert_eq!(
            to_text(om),
            "\
# HELP linger_requests_total Requests by listener.
# TYPE linger_requests_total counter
linger_requests_total{listener=\"main\"} 5
"
        );
    }

    #[test]
    fn a_gauge_is_copied_as_it_is() {
        let om = "\
# HELP up_now Open now.
# TYPE up_now gauge
up_now{side=\"a\"} 3
up_now{side=\"b\"} -1.5
# EOF
";
        assert_eq!(to_text(om), om.trim_end_matches("# EOF\n"));
    }

    #[test]
    fn a_histogram_keeps_buckets_sum_and_count_and_loses_unit_and_created() {
        let om = "\
# HELP d_seconds Duration.
# TYPE d_seconds histogram
# UNIT d_seconds seconds
d_seconds_sum{l=\"x\"} 0.25
d_seconds_count{l=\"x\"} 2
d_seconds_bucket{l=\"x\",le=\"0.1\"} 1
d_seconds_bucket{l=\"x\",le=\"+Inf\"} 2
d_seconds_created{l=\"x\"} 1700000000.0
# EOF
";
        assert_eq!(
            to_text(om),
            "\
# HELP d_seconds Duration.
# TYPE d_seconds histogram
d_seconds_sum{l=\"x\"} 0.25
d_seconds_count{l=\"x\"} 2
d_seconds_bucket{l=\"x\",le=\"0.1\"} 1
d_seconds_bucket{l=\"x\",le=\"+Inf\"} 2
"
        );
    }

    #[test]
    fn an_info_metric_becomes_a_gauge_named_for_its_info_sample() {
        let om = "\
# HELP linger_build Version.
# TYPE linger_build info
linger_build_info{version=\"0.1.0\"} 1
# EOF
";
        assert_eq!(
            to_text(om),
            "\
# HELP linger_build_info Version.
# TYPE linger_build_info gauge
linger_build_info{version=\"0.1.0\"} 1
"
        );
    }

    #[test]
    fn unknown_and_unlisted_types_become_untyped() {
        let om = "\
# HELP a Something.
# TYPE a unknown
a 1
# TYPE b gaugehistogram
b_gcount 1
# EOF
";
        let text = to_text(om);
        assert!(text.contains("# TYPE a untyped\na 1\n"), "{text}");
        assert!(text.contains("# TYPE b untyped\nb_gcount 1\n"), "{text}");
        assert!(!text.contains("unknown"), "{text}");
    }

    #[test]
    fn a_family_without_samples_keeps_its_help_and_type() {
        let om = "\
# HELP r Retries.
# TYPE r counter
# HELP g Gauge.
# TYPE g gauge
# EOF
";
        assert_eq!(
            to_text(om),
            "# HELP r_total Retries.\n# TYPE r_total counter\n# HELP g Gauge.\n# TYPE g gauge\n"
        );
    }

    #[test]
    fn label_values_are_copied_verbatim_even_when_they_look_like_syntax() {
        let om = "\
# HELP c C.
# TYPE c counter
c_total{path=\"/a} # {b\\\"\\\\\\n\",x=\"y\"} 7 # {trace=\"1\"} 1.0 1700000000.0
# EOF
";
        assert_eq!(
            to_text(om),
            "\
# HELP c_total C.
# TYPE c_total counter
c_total{path=\"/a} # {b\\\"\\\\\\n\",x=\"y\"} 7
"
        );
    }

    #[test]
    fn timestamps_go_from_seconds_to_milliseconds() {
        let om = "# TYPE g gauge\ng 1 1700000000.25\ng{a=\"b\"} 2 12\n# EOF\n";
        assert_eq!(
            to_text(om),
            "# TYPE g gauge\ng 1 1700000000250\ng{a=\"b\"} 2 12000\n"
        );
    }

    #[test]
    fn help_escapes_are_those_of_the_text_format() {
        let om = "# HELP g Say \\\"hi\\\" \\\\ then\\nmore.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_text(om),
            "# HELP g Say \"hi\" \\\\ then\\nmore.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn a_gauge_named_like_a_created_sample_is_kept() {
        let om = "# TYPE jobs_created gauge\njobs_created 4\n# EOF\n";
        assert_eq!(to_text(om), "# TYPE jobs_created gauge\njobs_created 4\n");
    }

    #[test]
    fn nothing_after_eof_is_kept() {
        let om = "# TYPE g gauge\ng 1\n# EOF\ng 2\n";
        assert_eq!(to_text(om), "# TYPE g gauge\ng 1\n");
    }

    #[test]
    fn openmetrics_only_when_asked_for_first() {
        use Format::*;
        let cases: &[(Option<&str>, Format)] = &[
            (None, Text),
            (Some(""), Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some("text/plain;version=0.0.4"), Text),
            (Some("application/json"), Text),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; version=1.0.0"),
                OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;version=0.0.1"),
                OpenMetrics,
            ),
            // An OpenMetrics version linger cannot write.
            (Some("application/openmetrics-text;version=2.0.0"), Text),
            // Prometheus's own scrape Accept.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,\
                     application/openmetrics-text;version=0.0.1;q=0.75,\
                     text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            // Prometheus configured for the text format first.
            (
                Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"),
                Text,
            ),
            (Some("application/openmetrics-text;q=0"), Text),
            (
                Some("text/plain;q=0.2, application/openmetrics-text;q=0.3"),
                OpenMetrics,
            ),
            // Equal quality: the first listed wins.
            (Some("text/plain, application/openmetrics-text"), Text),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(*accept), *want, "Accept: {accept:?}");
        }
    }

    #[test]
    fn content_types_name_each_format_and_version() {
        assert_eq!(
            Format::Text.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            Format::OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }
}
