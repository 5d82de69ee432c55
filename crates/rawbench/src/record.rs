//! A bench run's figures as lines of `key=value` words, one line per measurement.
//!
//! Plain text so that every part of the bench can write it (`rawbench`, `loadgen --record`, and
//! `scripts/bench` itself, which adds each step's CPU times with `echo`), and a person can read
//! it. A line's `kind` says what it measured: `raw` (the machine's limits), `step` (one rate of
//! the project, from a fixed ladder or from the search for the sustained rate), `memory` (each
//! service's resident MiB, sampled during the soak).

use std::collections::BTreeMap;

use anyhow::{Context, bail};

/// One line: its words by key, in key order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    fields: BTreeMap<String, String>,
}

impl Record {
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let mut fields = BTreeMap::new();
        for word in line.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                bail!("{word:?} is not key=value");
            };
            fields.insert(key.to_owned(), value.to_owned());
        }
        Ok(Self { fields })
    }

    /// Every line of `text` that is not blank.
    pub fn parse_all(text: &str) -> anyhow::Result<Vec<Self>> {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| Self::parse(line).with_context(|| format!("line {}", n + 1)))
            .collect()
    }

    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.fields.insert(key.to_owned(), value.to_string());
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// The number under `key`; an error naming the key when it is missing or not a number.
    pub fn number(&self, key: &str) -> anyhow::Result<f64> {
        let text = self.get(key).with_context(|| format!("no {key}= in {self}"))?;
        text.parse().with_context(|| format!("{key}={text} is not a number"))
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }

    pub fn is(&self, kind: &str) -> bool {
        self.get("kind") == Some(kind)
    }
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let words: Vec<String> = self.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&words.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_what_it_wrote() {
        let record = Record::default().with("kind", "raw").with("pipeline_per_s", 24000.5);
        let text = record.to_string();
        assert_eq!(text, "kind=raw pipeline_per_s=24000.5");
        let again = Record::parse(&text).unwrap();
        assert!(again.is("raw"));
        assert_eq!(again.number("pipeline_per_s").unwrap(), 24000.5);
    }

    #[test]
    fn a_missing_or_bad_number_names_its_key() {
        let record = Record::parse("kind=step p99_ms=fast").unwrap();
        assert!(record.number("offered").unwrap_err().to_string().contains("no offered="));
        assert!(record.number("p99_ms").unwrap_err().to_string().contains("p99_ms=fast"));
        assert!(Record::parse("kind=step loose").unwrap_err().to_string().contains("\"loose\""));
    }

    #[test]
    fn blank_lines_are_skipped_and_a_bad_line_is_named_by_number() {
        assert_eq!(Record::parse_all("kind=raw\n\nkind=step\n").unwrap().len(), 2);
        let err = Record::parse_all("kind=raw\nnonsense\n").unwrap_err();
        assert_eq!(err.to_string(), "line 2");
    }
}
