//! The review actions, one path for every way of taking them: the JSON API ([`crate::routes`])
//! and the browser console ([`crate::console`]) both replay and discard through here, so they
//! cannot drift apart (the command line, a process of its own, calls the same store functions).
//!
//! A replay's message waits in the outbox, committed with the status change; waking the relay
//! only makes it go now rather than at the next poll.

use uuid::Uuid;

use crate::{
    AppState,
    store::{self, DeadLetter, Review, ReviewError},
};

/// The longest reason a reviewer may give.
pub const MAX_REASON_LEN: usize = 500;

/// Republishes the dead letter's original message and marks it replayed (see [`store::replay`]).
pub async fn replay(app: &AppState, id: Uuid, review: &Review) -> Result<DeadLetter, ReviewError> {
    let letter = store::replay(&app.pool, id, review).await?;
    app.outbox.wake();
    tracing::info!(dead_letter = %id, by = %review.by, "replayed");
    Ok(letter)
}

/// Marks the dead letter discarded: reviewed, and deliberately not processed.
pub async fn discard(app: &AppState, id: Uuid, review: &Review) -> Result<DeadLetter, ReviewError> {
    let letter = store::discard(&app.pool, id, review).await?;
    tracing::info!(dead_letter = %id, by = %review.by, reason = review.reason.as_deref().unwrap_or(""), "discarded");
    Ok(letter)
}

/// A reviewer's reason, trimmed (blank is none), or what is wrong with it.
pub fn checked_reason(reason: Option<&str>, required: bool) -> Result<Option<String>, String> {
    // Valid in JSON and in a form, but Postgres text cannot hold it: refused here rather than
    // failing there.
    if reason.is_some_and(|r| r.contains('\0')) {
        return Err("must not contain the NUL character (\\u0000)".to_owned());
    }
    match reason.map(str::trim).filter(|r| !r.is_empty()) {
        None if required => Err("is required: say why".to_owned()),
        Some(r) if r.chars().count() > MAX_REASON_LEN => {
            Err(format!("must be at most {MAX_REASON_LEN} characters"))
        }
        reason => Ok(reason.map(str::to_owned)),
    }
}
