//! The sweep: dead letters whose MAX_DELIVERIES advisory never arrived.
//!
//! Advisories are best effort: a server restart or a failover can lose one, and then nothing
//! would ever record its message, and its order would stay `pending` forever. Every
//! `DLQ_SWEEP_INTERVAL` (default a minute) the sweep looks for such messages and captures them
//! as if their advisory had come (same row, same deletion, idempotent with a late advisory).
//!
//! # What it checks, and why that is correct
//! `orders_stream` is a work queue: a message leaves it when acknowledged (or terminated). A
//! message of a consumer's subjects at or below the consumer's last *delivered* stream
//! sequence that is still in the stream was delivered and not finished with: either it is in
//! flight (ack pending, or waiting for its redelivery), or the consumer gave up on it, or (on a
//! replicated stream, below) it was acknowledged and its removal is late. JetStream does not
//! say which, per message (and the consumer's ack floor stops *below* a max-delivered message,
//! it does not step over it: measured on nats-server 2.15.1), so:
//! - when the consumer has **nothing ack pending**, no such message is in flight;
//! - otherwise such a message becomes a *candidate*, remembered with when it was first seen;
//!   a message in flight is finished with (acknowledged, terminated or given up on) within its
//!   consumer's whole redelivery schedule (the sum of its BackOff over `max_deliver`
//!   deliveries: about 23 s by default) after its first delivery, which was before it was
//!   seen, **provided some worker keeps pulling** (a redelivery happens only on a pull). So the
//!   clock of a candidate runs only between rounds in which its consumer was live (a pull is
//!   waiting, or it delivered something since the previous round), and stands still
//!   otherwise: with every worker stopped, nothing is captured. A candidate still there after
//!   twice its schedule of live time is no longer in flight. This relies on no message being
//!   kept in progress for longer than its schedule (the consumer's cap on in-progress time).
//!
//! A message that is not in flight is dead, or, on a replicated stream, it may have been
//! acknowledged and not removed yet (below). Its consumer knows which: it records every
//! message it applied. So the sweep **asks the consumer** ([`shared::messaging::consumer::applied`],
//! NATS request/reply, answered by one of its processes from `processed_messages`):
//! - "applied": its work is committed; it is removed from the stream, not dead-lettered;
//! - "not applied": it is dead, and captured;
//! - no answer in time ([`ASK_DEADLINE`]), or "cannot say" (its database is down): asked
//!   again next round. One unanswered question ends the questions to that consumer for the
//!   round, so a hung consumer costs one deadline per round, not one per message;
//! - no process answers (none runs, or the consumer takes no such questions): the sweep
//!   decides from the consumer's figures alone. On a single server the message is dead. On a
//!   replicated stream it is taken as dead only once seen for [`REPLICATED_REMOVAL_LAG`], and
//!   removed instead when the consumer reports nothing ack pending and nothing redelivered.
//!
//! A message acknowledged without being applied (an event type the consumer ignores) is "not
//! applied": one left behind in a failover is captured. A poison message left behind that way
//! was already recorded from its copy: capture finds its row and adds none.
//!
//! # A replicated work queue can remove an acknowledged message minutes late
//! On one server an ack removes its message at once. On a replicated stream the removal is a
//! second step: the consumer's replicas apply the ack, then the stream's *leader* proposes the
//! deletion. If the stream has no leader at that moment (its leader has just been lost), no
//! deletion is proposed, and the message stays, acknowledged, in every replica until the
//! stream's leader re-checks its consumers' acks: when a replica becomes leader (for the acks
//! it has applied by then), and every 2 to 2.5 minutes (nats-server's `checkInterestState`,
//! 2 minutes plus up to 30 s of jitter, since 2.11). Such a message looks exactly like a dead
//! one: delivered, nothing pending, above the ack floor, still in the stream. Taken as dead,
//! its order, reserved, would be dead-lettered too, and `order_events.dead_lettered` would tell
//! every reader that a reserved order failed.
//!
//! That happened in the failover test on three nodes under load (`e2e/tests/cluster.rs`, 6 runs
//! of 18 on busy cores): one to four orders reserved and acknowledged just as `orders_stream`'s
//! leader was killed were swept 15 to 20 s later, read from the new leader, with the consumer
//! reporting nothing ack pending and its ack floor below them. Two answers were tried from the
//! broker's side, and are kept for consumers that do not answer:
//! - waiting [`REPLICATED_REMOVAL_LAG`] (3 minutes, longer than the re-check period) before
//!   taking a message as dead. Not always enough: in a later run a message acknowledged in a
//!   failover was still there after 181 s;
//! - the consumer's figures: it keeps the delivery count of every message it gave up on
//!   (nats-server's `rdc`, counted by `num_redelivered`) and forgets it on an ack, so with
//!   nothing ack pending and nothing redelivered, a message still there was acknowledged. But
//!   with some messages given up on and others acknowledged at once, both counts are above
//!   zero, and they say nothing about which message is which.
//!
//! JetStream has no per-message answer; the consumer's own record is one, hence the question.
//! With it, a lost advisory costs nothing more on a cluster than on one server.
//!
//! Every message is read from the stream's leader (`STREAM.MSG.GET`), not by a direct get,
//! although `orders_stream` allows those: any replica answers a direct get, and one that is
//! catching up after a restart can still hold messages the leader has removed.
//!
//! Normally capture deletes a dead message within moments of its advisory, so the sweep finds
//! nothing to capture. Cost per round: one consumer-info request per consumer, plus one get
//! (from the leader) per message delivered and not finished with (at most the consumer's `max_ack_pending`,
//! normally a handful), and one more answered "none"; and one question to the consumer per
//! such message that is not in flight.
//!
//! Not swept: `order_events`, a limits stream, keeps every message whether or not the
//! projection processed it, so "still in the stream" says nothing there; JetStream exposes no
//! cheap per-message delivery state to tell a dead event from a processed one. That is why the
//! projection does not leave giving up to JetStream: its consumer has no delivery limit, and
//! on its last attempt it copies the event to the dead-letter stream itself, then terminates
//! it ([`shared::messaging::consumer::GivesUp::Consumer`]), so there is no advisory to lose. (A consumer of
//! `order_events` that does leave it to JetStream has its advisories captured too, but one
//! lost there is not recovered: do as the projection does.)
//!
//! The same round prunes last-error notes that no dead letter claimed
//! ([`store::prune_last_errors`]).

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream::stream::RawMessageErrorKind;
use chrono::Utc;
use contract::streams::ORDERS_STREAM;
use futures::TryStreamExt;
use shared::messaging::consumer::applied::{self, Asked};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    capture::{self, Capture, CaptureError, Captured, MAX_DELIVERIES_TYPE, MaxDeliveriesAdvisory},
    store,
};

/// Why such a row is there, in its `reason`.
pub const FOUND_BY_SWEEP: &str = "found by the sweep: its advisory never arrived";

/// Sweeps every `every` until `shutdown`, first at start-up (the moment after a restart is
/// when an advisory is most likely to have been lost).
pub async fn run(
    capture: Capture,
    every: Duration,
    last_error_retention: Duration,
    shutdown: CancellationToken,
) {
    let mut sweep = Sweep::new(capture);
    while !shutdown.is_cancelled() {
        match sweep.once().await {
            Ok(0) => {}
            Ok(found) => tracing::warn!(found, "sweep recorded dead letters whose advisory was lost"),
            Err(err) => tracing::warn!(error = %err, "sweep failed; next round in {every:?}"),
        }
        match store::prune_last_errors(&sweep.capture.pool, last_error_retention).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned unclaimed last-error notes"),
            Err(err) => tracing::warn!(error = %err, "could not prune last-error notes"),
        }
        shared::shutdown::sleep_or_cancel(every, &shutdown).await;
    }
}

/// When no process of its consumer answers, how long a message must have been seen on a
/// replicated work queue before the sweep takes it as dead: longer than the stream's leader
/// takes to remove most messages acknowledged while the stream had no leader (2 to 2.5
/// minutes, see the module docs).
pub const REPLICATED_REMOVAL_LAG: Duration = Duration::from_secs(180);

/// How long the sweep waits for a consumer to say whether it applied a message.
pub const ASK_DEADLINE: Duration = Duration::from_secs(5);

/// A message seen delivered and not finished with.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// The round it was first seen in.
    first_seen: Instant,
    /// For how long it has been seen while its consumer was live.
    live: Duration,
}

/// The sweep and its candidates (see the module docs).
#[derive(Debug)]
pub struct Sweep {
    capture: Capture,
    /// (consumer, stream sequence) → when and for how long it was seen.
    candidates: HashMap<(String, u64), Candidate>,
    last_round: Option<Instant>,
    /// consumer → its delivery count at the previous round (to tell whether it is live).
    deliveries: HashMap<String, u64>,
}

impl Sweep {
    pub fn new(capture: Capture) -> Self {
        Self { capture, candidates: HashMap::new(), deliveries: HashMap::new(), last_round: None }
    }

    /// One round over the consumers of `orders_stream`: returns how many dead letters it
    /// recorded.
    pub async fn once(&mut self) -> Result<usize, CaptureError> {
        let stream =
            self.capture.jetstream.get_stream(ORDERS_STREAM).await.map_err(async_nats::Error::from)?;
        let replicated = stream.cached_info().config.num_replicas > 1;
        let client = self.capture.jetstream.client();
        let consumers: Vec<_> =
            stream.consumers().try_collect().await.map_err(|e| CaptureError::Nats(e.into()))?;
        let now = Instant::now();
        let since_last_round = self.last_round.replace(now).map(|last| now - last).unwrap_or_default();
        let mut still = HashMap::new();
        let mut found = 0;
        for info in consumers {
            // A consumer without a delivery limit never gives up on a message.
            let Ok(max_deliver @ 1..) = u64::try_from(info.config.max_deliver) else { continue };
            let filter = match info.config.filter_subject.as_str() {
                "" => ">",
                filter => filter,
            };
            let settle = 2 * schedule(&info.config.backoff, info.config.ack_wait, max_deliver);
            let delivered = info.delivered.stream_sequence;
            let previous = self.deliveries.insert(info.name.clone(), info.delivered.consumer_sequence);
            let live =
                info.num_waiting > 0 || previous.is_some_and(|p| p != info.delivered.consumer_sequence);
            let mut next = 1;
            let mut silent = false;
            while next <= delivered {
                // From the stream's leader, not by a direct get: any replica answers those, and
                // one that is catching up after a restart can still hold removed messages.
                let message = match stream.get_first_raw_message_by_subject(filter, next).await {
                    Ok(message) => message,
                    Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => break,
                    Err(err) => return Err(CaptureError::Nats(err.into())),
                };
                if message.sequence > delivered {
                    break;
                }
                next = message.sequence + 1;
                let key = (info.name.clone(), message.sequence);
                let candidate = match self.candidates.get(&key) {
                    Some(c) if live => Candidate { live: c.live + since_last_round, ..*c },
                    Some(c) => *c,
                    None => Candidate { first_seen: now, live: Duration::ZERO },
                };
                if info.num_ack_pending > 0 && candidate.live < settle {
                    still.insert(key, candidate); // Maybe in flight.
                    continue;
                }
                let seen_for = now - candidate.first_seen;
                let asked = match capture::ce_id(&message.headers) {
                    // One question unanswered is enough for this round: a consumer that does
                    // not answer would otherwise cost the deadline once per message.
                    Some(_) if silent => {
                        Asked::NoAnswer("it did not answer earlier in this round".to_owned())
                    }
                    Some(id) => applied::ask(&client, ORDERS_STREAM, &info.name, id, ASK_DEADLINE).await,
                    None => Asked::NoOne,
                };
                if let Asked::NoAnswer(reason) = &asked
                    && !std::mem::replace(&mut silent, true)
                {
                    tracing::warn!(
                        consumer = %info.name,
                        stream_sequence = message.sequence,
                        %reason,
                        "sweep: its consumer did not say whether it applied the message; asking again next round"
                    );
                }
                // With a single delivery allowed nothing is ever redelivered: the count says nothing.
                let nothing_counted =
                    max_deliver > 1 && info.num_ack_pending == 0 && info.num_redelivered == 0;
                let why = match fate(&asked, replicated, seen_for, nothing_counted) {
                    Fate::Wait(why) => {
                        tracing::debug!(consumer = %info.name, stream_sequence = message.sequence, why, "sweep: not yet");
                        still.insert(key, candidate);
                        continue;
                    }
                    Fate::Remove(why) => {
                        tracing::warn!(
                            consumer = %info.name,
                            stream_sequence = message.sequence,
                            ?seen_for,
                            "sweep: {why}: removed from the stream, not a dead letter"
                        );
                        stream.delete_message(message.sequence).await.map_err(async_nats::Error::from)?;
                        continue;
                    }
                    Fate::Dead(why) => why,
                };
                // What the consumer said, for whoever reviews a dead letter the sweep found.
                tracing::warn!(
                    consumer = %info.name,
                    stream_sequence = message.sequence,
                    ack_pending = info.num_ack_pending,
                    ack_floor = info.ack_floor.stream_sequence,
                    delivered,
                    redelivered = info.num_redelivered,
                    ?seen_for,
                    live_for = ?candidate.live,
                    "sweep: a message delivered and not finished with, taken as dead: {why}"
                );
                let advisory = MaxDeliveriesAdvisory {
                    kind: MAX_DELIVERIES_TYPE.to_owned(),
                    timestamp: Utc::now(),
                    stream: ORDERS_STREAM.to_owned(),
                    consumer: info.name.clone(),
                    stream_seq: message.sequence,
                    deliveries: max_deliver,
                };
                if let Captured::Recorded(_) =
                    self.capture.exhausted(&advisory, None, Some(FOUND_BY_SWEEP)).await?
                {
                    found += 1;
                }
            }
        }
        self.candidates = still;
        Ok(found)
    }
}

/// What the sweep does with a message delivered, not finished with and not in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Look again next round.
    Wait(&'static str),
    /// Its work is done and the stream kept it: delete it.
    Remove(&'static str),
    /// Its consumer gave up on it: capture it.
    Dead(&'static str),
}

/// The consumer's answer decides; without one, the time the message was seen and whether the
/// consumer counts nothing ack pending or redelivered (see the module docs).
fn fate(asked: &Asked, replicated: bool, seen_for: Duration, nothing_counted: bool) -> Fate {
    match asked {
        Asked::Applied(true) => Fate::Remove("its consumer applied it"),
        Asked::Applied(false) => Fate::Dead("its consumer did not apply it"),
        Asked::NoAnswer(_) => Fate::Wait("its consumer did not say whether it applied it"),
        Asked::NoOne if replicated && seen_for < REPLICATED_REMOVAL_LAG => {
            Fate::Wait("on a replicated stream, its removal may be late")
        }
        Asked::NoOne if nothing_counted => {
            Fate::Remove("nothing ack pending or redelivered: an acknowledged message the stream kept")
        }
        Asked::NoOne => Fate::Dead("no one answers for its consumer, and its figures say it gave up"),
    }
}

/// How long a consumer can keep trying one message: its redelivery waits over `max_deliver`
/// deliveries (the last BackOff value repeats; without BackOff, the ack wait each time).
pub fn schedule(backoff: &[Duration], ack_wait: Duration, max_deliver: u64) -> Duration {
    (0..max_deliver.min(10_000) as usize)
        .map(|i| backoff.get(i).or(backoff.last()).copied().unwrap_or(ack_wait))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumers_answer_decides_and_without_one_its_figures_after_the_wait() {
        let (minute, lag) = (Duration::from_secs(60), REPLICATED_REMOVAL_LAG);
        for replicated in [false, true] {
            assert!(matches!(fate(&Asked::Applied(true), replicated, minute, false), Fate::Remove(_)));
            assert!(matches!(fate(&Asked::Applied(false), replicated, minute, true), Fate::Dead(_)));
            assert!(matches!(
                fate(&Asked::NoAnswer("timed out".into()), replicated, lag, false),
                Fate::Wait(_)
            ));
        }
        assert!(matches!(fate(&Asked::NoOne, false, Duration::ZERO, false), Fate::Dead(_)));
        assert!(matches!(fate(&Asked::NoOne, true, minute, false), Fate::Wait(_)));
        assert!(matches!(fate(&Asked::NoOne, true, lag, false), Fate::Dead(_)));
        assert!(matches!(fate(&Asked::NoOne, true, lag, true), Fate::Remove(_)));
    }

    #[test]
    fn the_schedule_is_the_sum_of_the_waits_the_last_repeating() {
        let secs = Duration::from_secs;
        assert_eq!(schedule(&[1, 2, 4, 8].map(secs), secs(1), 5), secs(23));
        assert_eq!(schedule(&[], secs(30), 3), secs(90));
    }
}
