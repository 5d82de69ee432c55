//! What a run does ([`Config`]), and the command line that builds one ([`Cli`]).
//!
//! Every flag can also be set by an environment variable (clap's `env`), which is how compose
//! configures it: `ORDER_API_URL`, `LOADGEN_RATE`, `LOADGEN_DURATION`, `LOADGEN_COUNT`,
//! `LOADGEN_CONCURRENCY`, `LOADGEN_MIX`, `LOADGEN_WAIT`, `LOADGEN_QUIET`, `LOADGEN_RECORD`. A flag wins over
//! its variable.

use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use reqwest::Url;

use crate::mix::Mix;

/// How many orders a run places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// As many as `rate` allows until this much time has passed.
    For(Duration),
    /// Exactly this many, paced by `rate`.
    Count(u64),
}

/// One run of the load generator. Tests build it directly; [`Cli`] builds it from flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// order-api's base URL.
    pub url: Url,
    /// Orders started per second.
    pub rate: f64,
    pub load: Load,
    /// Most requests in flight at once. A request waiting out its `Retry-After` still counts,
    /// so an overloaded API slows loadgen down instead of collecting a pile of waiting requests.
    pub concurrency: usize,
    pub mix: Mix,
    /// How long to wait for final statuses once the last order is placed.
    pub wait: Duration,
    /// No progress display (CI, compose logs).
    pub quiet: bool,
}

impl Default for Config {
    /// The same defaults as the command line (a unit test checks they agree).
    fn default() -> Self {
        Self {
            url: Url::parse(DEFAULT_URL).expect("DEFAULT_URL is a valid URL"),
            rate: 20.0,
            load: Load::For(Duration::from_secs(30)),
            concurrency: 64,
            mix: Mix::default(),
            wait: Duration::from_secs(60),
            quiet: false,
        }
    }
}

const DEFAULT_URL: &str = "http://127.0.0.1:8080";

impl Config {
    /// Checks what the type system does not: for a `Config` built in code rather than by
    /// [`Cli`], whose parsers refuse the same values.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            bail!("rate is {}: it must be a number of orders per second above 0", self.rate);
        }
        if self.concurrency == 0 {
            bail!("concurrency is 0: at least one request must be allowed in flight");
        }
        if self.load == Load::Count(0) {
            bail!("count is 0: place at least one order");
        }
        Ok(())
    }

    /// How many orders the run is expected to send (for the progress bar).
    pub fn expected_orders(&self) -> u64 {
        match self.load {
            Load::Count(n) => n,
            Load::For(duration) => (self.rate * duration.as_secs_f64()).ceil() as u64,
        }
    }
}

/// Places orders on order-api at a steady rate, with a realistic mix, and reports what became of
/// them.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Cli {
    /// order-api's base URL.
    #[arg(long, env = "ORDER_API_URL", default_value = DEFAULT_URL, value_parser = parse_url)]
    pub url: Url,
    /// Orders per second.
    #[arg(long, env = "LOADGEN_RATE", default_value = "20", value_parser = parse_rate)]
    pub rate: f64,
    /// How long to place orders, e.g. 30s, 2m.
    #[arg(long, env = "LOADGEN_DURATION", default_value = "30s", value_parser = contract::duration::parse_duration)]
    pub duration: Duration,
    /// Place exactly this many orders instead (still paced by --rate).
    #[arg(long, env = "LOADGEN_COUNT", conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Most requests in flight at once.
    #[arg(long, env = "LOADGEN_CONCURRENCY", default_value = "64", value_parser = parse_concurrency)]
    pub concurrency: usize,
    /// Relative weights of the kinds of order: ordinary, scarce (runs out: rejected), flaky
    /// (retried once, then reserved), fail (dead-lettered), repeat (same Idempotency-Key twice).
    #[arg(long, env = "LOADGEN_MIX", default_value = Mix::DEFAULT)]
    pub mix: Mix,
    /// How long to wait for final statuses after the last order is placed.
    #[arg(long, env = "LOADGEN_WAIT", default_value = "60s", value_parser = contract::duration::parse_duration)]
    pub wait: Duration,
    /// No progress display, only the summary.
    // The variable takes 1/0, true/false, yes/no or on/off.
    #[arg(long, env = "LOADGEN_QUIET", value_parser = clap::builder::BoolishValueParser::new())]
    pub quiet: bool,
    /// Also append the summary's figures to this file, as one line of key=value words (for
    /// scripts/bench).
    #[arg(long, env = "LOADGEN_RECORD")]
    pub record: Option<std::path::PathBuf>,
}

impl Cli {
    pub fn into_config(self) -> Config {
        Config {
            url: self.url,
            rate: self.rate,
            load: self.count.map_or(Load::For(self.duration), Load::Count),
            concurrency: self.concurrency,
            mix: self.mix,
            wait: self.wait,
            quiet: self.quiet,
        }
    }
}

fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("not a URL ({err}), e.g. http://127.0.0.1:8080"))?;
    if url.scheme() != "http" {
        return Err(format!("the scheme is {:?}: only http:// is supported", url.scheme()));
    }
    Ok(url)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("expected orders per second, a number above 0 (e.g. 20 or 0.5)".to_owned()),
    }
}

fn parse_concurrency(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of requests, 1 or more".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied())).map(Cli::into_config)
    }

    /// The error text clap prints, without its colours.
    fn error(args: &[&str]) -> String {
        parse(args).unwrap_err().to_string()
    }

    // These tests assume none of loadgen's variables is set in the test's environment.

    #[test]
    fn the_command_line_defaults_are_config_default() {
        assert_eq!(parse(&[]).unwrap(), Config::default());
    }

    #[test]
    fn every_flag_is_read() {
        let config = parse(&[
            "--url=http://order-api:8080",
            "--rate=0.5",
            "--count=7",
            "--concurrency=3",
            "--mix=ordinary=1,fail=1",
            "--wait=2m",
            "--quiet",
        ])
        .unwrap();
        assert_eq!(config.url.as_str(), "http://order-api:8080/");
        assert_eq!(config.rate, 0.5);
        assert_eq!(config.load, Load::Count(7));
        assert_eq!(config.concurrency, 3);
        assert_eq!(config.mix.to_string(), "ordinary=1,fail=1");
        assert_eq!(config.wait, Duration::from_secs(120));
        assert!(config.quiet);
        assert_eq!(parse(&["--duration=5s"]).unwrap().load, Load::For(Duration::from_secs(5)));
    }

    #[test]
    fn a_bad_mix_is_refused_with_the_flag_and_the_reason() {
        let message = error(&["--mix", "ordinary=70,bogus=5"]);
        assert!(message.contains("--mix"), "{message}");
        assert!(message.contains("unknown kind \"bogus\""), "{message}");
        let message = error(&["--mix", "ordinary=0"]);
        assert!(message.contains("--mix") && message.contains("every weight is 0"), "{message}");
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (&["--rate", "0"][..], "--rate"),
            (&["--rate", "fast"], "--rate"),
            (&["--duration", "30"], "--duration"),
            (&["--count", "0"], "--count"),
            (&["--concurrency", "0"], "--concurrency"),
            (&["--wait", "1y"], "--wait"),
            (&["--url", "localhost:8080"], "--url"),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn count_and_duration_together_are_refused() {
        let err = parse(&["--count", "5", "--duration", "5s"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn a_config_built_in_code_is_checked_too() {
        let bad = |config: Config| config.validate().unwrap_err().to_string();
        assert!(bad(Config { rate: 0.0, ..Config::default() }).starts_with("rate is 0"));
        assert!(bad(Config { concurrency: 0, ..Config::default() }).starts_with("concurrency is 0"));
        assert!(bad(Config { load: Load::Count(0), ..Config::default() }).starts_with("count is 0"));
        assert!(Config::default().validate().is_ok());
        assert_eq!(Config { rate: 2.5, ..Config::default() }.expected_orders(), 75);
    }
}
