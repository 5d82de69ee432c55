//! Reading a service's `GET /metrics` the way Prometheus would.

use prometheus_parse::{Scrape, Value};

/// Fetches and parses `{base_url}/metrics`; fails the test if it is not valid Prometheus text.
pub async fn scrape(base_url: &str) -> Scrape {
    let response = reqwest::get(format!("{base_url}/metrics")).await.expect("GET /metrics");
    assert!(response.status().is_success(), "GET {base_url}/metrics: {}", response.status());
    let content_type = response.headers()["content-type"].to_str().unwrap_or_default().to_owned();
    assert!(content_type.starts_with("text/plain"), "content type {content_type}");
    let text = response.text().await.expect("metrics text");
    parse_strictly(&text)
}

/// Parses Prometheus text, failing on any sample line the parser would skip: prometheus-parse
/// ignores lines it does not understand, and a test must not pass on a half-read exposition.
///
/// One exception, a limitation of prometheus-parse 0.2 rather than of the text: it cannot read
/// a `}` inside a label value (its label pattern stops at the first `}`), so samples of routes
/// such as `http_route="/orders/{id}"` are left out of the [`Scrape`]. Such lines are still
/// checked for the shape `name{…} value`.
pub fn parse_strictly(text: &str) -> Scrape {
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let alone = Scrape::parse(std::iter::once(Ok(line.to_owned()))).expect("a line of text");
        if alone.samples.len() == 1 {
            continue;
        }
        let brace_in_a_label_value =
            line.split_once('{').zip(line.rsplit_once('}')).is_some_and(|((name, _), (labels, value))| {
                labels.contains('}')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    && value.trim().parse::<f64>().is_ok()
            });
        assert!(brace_in_a_label_value, "not a valid Prometheus sample line: {line:?}");
    }
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("valid Prometheus text format")
}

/// The sum of a counter's or gauge's samples whose labels include `labels`; `None` if no
/// sample matches.
pub fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// Whether a histogram with these labels has recorded at least one observation.
pub fn histogram_observed(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> bool {
    scrape.samples.iter().any(|s| {
        s.metric == metric
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            && matches!(&s.value, Value::Histogram(buckets) if buckets.iter().any(|b| b.count > 0.0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_exposition_parses() {
        let text = "# TYPE a_total counter\na_total{x=\"1\"} 3\n\nb 1.5\n";
        assert_eq!(parse_strictly(text).samples.len(), 2);
    }

    #[test]
    fn a_brace_in_a_label_value_is_valid_though_prometheus_parse_skips_it() {
        let text = "a_total{route=\"/orders/{id}\"} 3\nb 1\n";
        assert_eq!(parse_strictly(text).samples.len(), 1);
    }

    #[test]
    #[should_panic(expected = "not a valid Prometheus sample line")]
    fn a_line_the_parser_would_skip_fails() {
        parse_strictly("a_total 3\nthis is not a sample\n");
    }
}
