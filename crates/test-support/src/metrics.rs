//! Reading a service's `GET /metrics` the way Prometheus would.

use prometheus_parse::{Scrape, Value};

/// Fetches and parses `{base_url}/metrics`; fails the test if it is not valid Prometheus text.
pub async fn scrape(base_url: &str) -> Scrape {
    let response = reqwest::get(format!("{base_url}/metrics")).await.expect("GET /metrics");
    assert!(response.status().is_success(), "GET {base_url}/metrics: {}", response.status());
    let content_type = response.headers()["content-type"].to_str().unwrap_or_default().to_owned();
    assert!(content_type.starts_with("text/plain"), "content type {content_type}");
    let text = response.text().await.expect("metrics text");
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
