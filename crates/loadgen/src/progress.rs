//! The live display: two bars on stderr, one for placing orders and one for their outcomes.
//!
//! indicatif draws nothing when stderr is not a terminal, and `--quiet` hides the bars
//! everywhere, so CI and compose logs get only the summary.

use std::{sync::Arc, time::Duration};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::{Counts, Tally};

/// How often the bars are redrawn from the tally.
const REFRESH_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Progress {
    /// Orders sent, out of those planned; with accepted, retried and failed requests.
    placing: ProgressBar,
    /// Orders final, out of those accepted; with the outcomes.
    outcomes: ProgressBar,
    expected: u64,
}

impl Progress {
    /// Bars on stderr, or hidden ones when `quiet`.
    pub fn new(quiet: bool, expected: u64) -> Self {
        let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let multi = MultiProgress::with_draw_target(target);
        // The templates are constants; a mistake in one shows plain bars rather than failing a run.
        let style = |template: &str| {
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
        };
        let placing = multi.add(
            ProgressBar::new(expected)
                .with_style(style("{prefix:>8} {elapsed:>4} [{bar:30}] {pos}/{len} {msg}"))
                .with_prefix("placing"),
        );
        let outcomes = multi.add(
            ProgressBar::new(0)
                .with_style(style("{prefix:>8}      [{bar:30}] {pos}/{len} {msg}"))
                .with_prefix("final"),
        );
        Self { placing, outcomes, expected }
    }

    /// Redraws the bars from the tally until the task is aborted.
    pub async fn refresh(self, tally: Arc<Tally>) {
        let mut ticks = tokio::time::interval(REFRESH_INTERVAL);
        loop {
            ticks.tick().await;
            self.show(&tally.snapshot());
        }
    }

    fn show(&self, counts: &Counts) {
        let sent: u64 = counts.sent.values().sum();
        // A timed run may send fewer orders than planned (the API slowed it down), never more
        // than one extra: the bar's length follows what actually happened.
        self.placing.set_length(self.expected.max(sent));
        self.placing.set_position(counts.placing_done());
        self.placing.set_message(format!(
            "placed {} · 503 retried {} · errors {}",
            counts.placed,
            counts.retried_after_503,
            counts.errors_total()
        ));
        self.outcomes.set_length(counts.placed);
        self.outcomes.set_position(counts.finished());
        self.outcomes.set_message(format!(
            "reserved {} · rejected {} · dead-lettered {}",
            counts.reserved, counts.rejected, counts.dead_lettered
        ));
    }

    /// Draws the last figures and removes the bars, so the summary follows on a clean screen.
    pub fn finish(&self, counts: &Counts) {
        self.show(counts);
        self.placing.finish_and_clear();
        self.outcomes.finish_and_clear();
    }
}
