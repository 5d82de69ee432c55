//! What a run saw: the [`Tally`] kept while it runs, and the [`Summary`] it ends with.

use std::{collections::BTreeMap, fmt, sync::Mutex, time::Duration};

use hdrhistogram::Histogram;

use crate::{mix::Kind, orders::Status};

/// Why a request failed. Ordered so a summary lists status codes first, then network errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// An answer with a status the request did not expect (a 503 only once loadgen has given up
    /// retrying it).
    Status(u16),
    /// No connection: nothing listening, refused, or the name does not resolve.
    Connect,
    /// No answer within the request timeout.
    Timeout,
    /// The answer could not be read: cut off, or not the JSON expected.
    BadResponse,
    /// Any other transport failure.
    Network,
}

impl From<&reqwest::Error> for ErrorKind {
    fn from(err: &reqwest::Error) -> Self {
        if err.is_timeout() {
            ErrorKind::Timeout
        } else if err.is_connect() {
            ErrorKind::Connect
        } else if err.is_decode() || err.is_body() {
            ErrorKind::BadResponse
        } else {
            ErrorKind::Network
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Status(code) => write!(f, "HTTP {code}"),
            ErrorKind::Connect => f.write_str("network: connect"),
            ErrorKind::Timeout => f.write_str("network: timeout"),
            ErrorKind::BadResponse => f.write_str("bad response"),
            ErrorKind::Network => f.write_str("network: other"),
        }
    }
}

/// End-to-end latency, from accepted to final status, over the orders that became final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// How many orders these figures are taken from.
    pub orders: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// From the first order sent to the last one placed.
    pub placing_time: Duration,
    /// From the first order sent to the end of the wait for final statuses.
    pub elapsed: Duration,
    /// How long loadgen waited for final statuses after the last order was placed.
    pub wait: Duration,
    /// Orders sent, per kind (a repeat counts once, although its request goes twice).
    pub sent: BTreeMap<Kind, u64>,
    /// Orders order-api accepted (202).
    pub placed: u64,
    /// Orders that were never accepted: their request failed (see `errors`).
    pub not_placed: u64,
    pub reserved: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
    /// Placed orders still not final when the wait ran out.
    pub pending: u64,
    /// Accepted to final status, by order-api's timestamps; `None` if no order became final.
    pub latency: Option<Latency>,
    /// Repeated requests whose second answer named the same order as the first.
    pub repeats_confirmed: u64,
    /// Repeated requests whose second answer named *another* order: a broken idempotency key.
    pub repeats_mismatched: u64,
    /// Requests answered 503 and sent again after their `Retry-After`.
    pub retried_after_503: u64,
    /// Failed requests (`POST` and `GET` alike) by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Summary {
    /// Orders sent, all kinds together.
    pub fn sent_total(&self) -> u64 {
        self.sent.values().sum()
    }

    /// Orders that reached a final status.
    pub fn finished(&self) -> u64 {
        self.reserved + self.rejected + self.dead_lettered
    }
}

impl Summary {
    /// The figures `scripts/bench` reads, as one line of `key=value` words (`loadgen --record`):
    /// the rate offered, orders placed and placed per second of placing time, latency
    /// percentiles in milliseconds (0 when no order became final), and what was left undone.
    pub fn record_line(&self, offered_per_s: f64) -> String {
        let placing = self.placing_time.as_secs_f64();
        let placed_per_s = if placing > 0.0 { self.placed as f64 / placing } else { 0.0 };
        let ms = |pick: fn(&Latency) -> Duration| {
            self.latency.as_ref().map_or(0.0, |l| pick(l).as_secs_f64() * 1000.0)
        };
        format!(
            "kind=step offered={offered_per_s} placed={} placed_per_s={placed_per_s:.1} p50_ms={:.1} \
             p90_ms={:.1} p99_ms={:.1} max_ms={:.1} pending={} not_placed={}",
            self.placed,
            ms(|l| l.p50),
            ms(|l| l.p90),
            ms(|l| l.p99),
            ms(|l| l.max),
            self.pending,
            self.not_placed,
        )
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let placing = self.placing_time.as_secs_f64();
        let rate = if placing > 0.0 { self.sent_total() as f64 / placing } else { 0.0 };
        writeln!(
            f,
            "loadgen: {} orders sent in {placing:.1}s ({rate:.1}/s), followed for {:.1}s in all",
            self.sent_total(),
            self.elapsed.as_secs_f64()
        )?;
        let mix: Vec<String> = self.sent.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
        writeln!(f, "  sent           {}", if mix.is_empty() { "none".to_owned() } else { mix.join(", ") })?;
        writeln!(f, "  placed         {:>6}   accepted (202)", self.placed)?;
        if self.not_placed > 0 {
            writeln!(f, "  not placed     {:>6}   their request failed, see errors", self.not_placed)?;
        }
        writeln!(f, "  reserved       {:>6}", self.reserved)?;
        writeln!(f, "  rejected       {:>6}", self.rejected)?;
        writeln!(f, "  dead-lettered  {:>6}", self.dead_lettered)?;
        writeln!(
            f,
            "  still pending  {:>6}   not final after waiting up to {}s",
            self.pending,
            self.wait.as_secs()
        )?;
        match &self.latency {
            Some(l) => writeln!(
                f,
                "  latency        p50 {}, p90 {}, p99 {}, max {}   accepted to final, {} orders",
                millis(l.p50),
                millis(l.p90),
                millis(l.p99),
                millis(l.max),
                l.orders
            )?,
            None => writeln!(f, "  latency        none: no order became final")?,
        }
        if self.repeats_confirmed + self.repeats_mismatched > 0 {
            writeln!(
                f,
                "  repeated keys  {:>6}   same order both times; {} named another order",
                self.repeats_confirmed, self.repeats_mismatched
            )?;
        }
        writeln!(f, "  503 retried    {:>6}   sent again after Retry-After", self.retried_after_503)?;
        if self.errors.is_empty() {
            write!(f, "  errors           none")
        } else {
            let errors: Vec<String> = self.errors.iter().map(|(kind, n)| format!("{kind}: {n}")).collect();
            write!(f, "  errors         {}", errors.join(", "))
        }
    }
}

/// `12.3ms`, or `23.02s` from one second up.
fn millis(duration: Duration) -> String {
    if duration >= Duration::from_secs(1) {
        format!("{:.2}s", duration.as_secs_f64())
    } else {
        format!("{:.1}ms", duration.as_secs_f64() * 1000.0)
    }
}

/// The running counts, shared by the tasks that place orders, the one that follows their
/// statuses, and the progress display. One lock around plain numbers: updates are a few per
/// order, far from contended, and the lock is never held across an `.await`.
#[derive(Debug)]
pub struct Tally {
    inner: Mutex<Counts>,
}

/// A copy of the counts at one moment.
#[derive(Debug, Clone)]
pub struct Counts {
    pub sent: BTreeMap<Kind, u64>,
    pub placed: u64,
    pub not_placed: u64,
    pub reserved: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
    pub repeats_confirmed: u64,
    pub repeats_mismatched: u64,
    pub retried_after_503: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Microseconds from accepted to final status.
    latency_us: Histogram<u64>,
}

impl Counts {
    /// Orders whose placing is over, accepted or not.
    pub fn placing_done(&self) -> u64 {
        self.placed + self.not_placed
    }

    pub fn finished(&self) -> u64 {
        self.reserved + self.rejected + self.dead_lettered
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl Tally {
    pub fn new() -> anyhow::Result<Self> {
        // From 1 µs to an hour, with 3 significant digits: 0.1% precision at every scale.
        let latency_us = Histogram::new_with_bounds(1, 3_600_000_000, 3)?;
        Ok(Self {
            inner: Mutex::new(Counts {
                sent: BTreeMap::new(),
                placed: 0,
                not_placed: 0,
                reserved: 0,
                rejected: 0,
                dead_lettered: 0,
                repeats_confirmed: 0,
                repeats_mismatched: 0,
                retried_after_503: 0,
                errors: BTreeMap::new(),
                latency_us,
            }),
        })
    }

    /// Runs `f` on the counts. A task that panicked while holding the lock cannot leave the
    /// counts half-updated in a way that matters (each update is one field), so a poisoned lock
    /// is used as it is rather than turned into a second panic.
    fn update<R>(&self, f: impl FnOnce(&mut Counts) -> R) -> R {
        let mut counts = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut counts)
    }

    pub fn snapshot(&self) -> Counts {
        self.update(|c| c.clone())
    }

    pub fn sent(&self, kind: Kind) {
        self.update(|c| *c.sent.entry(kind).or_default() += 1);
    }

    pub fn placed(&self) {
        self.update(|c| c.placed += 1);
    }

    pub fn not_placed(&self) {
        self.update(|c| c.not_placed += 1);
    }

    pub fn retried_after_503(&self, times: u32) {
        self.update(|c| c.retried_after_503 += u64::from(times));
    }

    pub fn error(&self, kind: ErrorKind) {
        self.update(|c| *c.errors.entry(kind).or_default() += 1);
    }

    pub fn repeat(&self, same_order: bool) {
        self.update(|c| {
            if same_order {
                c.repeats_confirmed += 1;
            } else {
                c.repeats_mismatched += 1;
            }
        });
    }

    /// An order reached `status` (final) `latency` after it was accepted.
    pub fn finished(&self, status: Status, latency: Duration) {
        self.update(|c| {
            match status {
                Status::Reserved => c.reserved += 1,
                Status::Rejected => c.rejected += 1,
                Status::DeadLettered => c.dead_lettered += 1,
                Status::Pending => return,
            }
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            // Values beyond the histogram's range are recorded as its highest value.
            c.latency_us.saturating_record(micros);
        });
    }

    /// The summary of the run so far; `pending` is what the caller knows is still not final.
    pub fn summary(
        &self,
        placing_time: Duration,
        elapsed: Duration,
        wait: Duration,
        pending: u64,
    ) -> Summary {
        self.update(|c| {
            let us = |value: u64| Duration::from_micros(value);
            let latency = (!c.latency_us.is_empty()).then(|| Latency {
                p50: us(c.latency_us.value_at_quantile(0.50)),
                p90: us(c.latency_us.value_at_quantile(0.90)),
                p99: us(c.latency_us.value_at_quantile(0.99)),
                max: us(c.latency_us.max()),
                orders: c.latency_us.len(),
            });
            Summary {
                placing_time,
                elapsed,
                wait,
                sent: c.sent.clone(),
                placed: c.placed,
                not_placed: c.not_placed,
                reserved: c.reserved,
                rejected: c.rejected,
                dead_lettered: c.dead_lettered,
                pending,
                latency,
                repeats_confirmed: c.repeats_confirmed,
                repeats_mismatched: c.repeats_mismatched,
                retried_after_503: c.retried_after_503,
                errors: c.errors.clone(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_come_from_the_recorded_orders_and_are_ordered() {
        let tally = Tally::new().unwrap();
        for ms in 1..=100 {
            tally.finished(Status::Reserved, Duration::from_millis(ms));
        }
        tally.finished(Status::DeadLettered, Duration::from_secs(23));
        let summary =
            tally.summary(Duration::from_secs(30), Duration::from_secs(30), Duration::from_secs(60), 0);
        let latency = summary.latency.unwrap();
        assert_eq!(latency.orders, 101);
        // hdrhistogram keeps 3 significant digits: values are exact to 0.1%.
        let near = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() <= ms * 0.001;
        assert!(near(latency.p50, 51.0), "{latency:?}");
        assert!(near(latency.p90, 91.0), "{latency:?}");
        assert!(near(latency.max, 23_000.0), "{latency:?}");
        assert!(latency.p50 <= latency.p90 && latency.p90 <= latency.p99 && latency.p99 <= latency.max);
        assert_eq!((summary.reserved, summary.dead_lettered, summary.finished()), (100, 1, 101));
    }

    #[test]
    fn without_final_orders_there_is_no_latency() {
        let tally = Tally::new().unwrap();
        tally.placed();
        let summary =
            tally.summary(Duration::from_secs(1), Duration::from_secs(1), Duration::from_secs(60), 1);
        assert_eq!(summary.latency, None);
        assert!(summary.to_string().contains("latency        none"), "{summary}");
    }

    #[test]
    fn the_record_line_gives_the_rate_placed_and_latency_in_milliseconds() {
        let tally = Tally::new().unwrap();
        for _ in 0..50 {
            tally.placed();
            tally.finished(Status::Reserved, Duration::from_millis(20));
        }
        let line = tally
            .summary(Duration::from_secs(2), Duration::from_secs(3), Duration::from_secs(60), 0)
            .record_line(25.0);
        assert!(line.starts_with("kind=step offered=25 placed=50 placed_per_s=25.0 p50_ms=20.0 "), "{line}");
        assert!(line.ends_with(" pending=0 not_placed=0"), "{line}");
    }

    #[test]
    fn the_summary_names_errors_by_kind() {
        let tally = Tally::new().unwrap();
        tally.error(ErrorKind::Connect);
        tally.error(ErrorKind::Status(500));
        tally.error(ErrorKind::Status(500));
        tally.error(ErrorKind::Status(422));
        let text = tally.summary(Duration::ZERO, Duration::ZERO, Duration::ZERO, 0).to_string();
        assert!(text.ends_with("errors         HTTP 422: 1, HTTP 500: 2, network: connect: 1"), "{text}");
    }
}
