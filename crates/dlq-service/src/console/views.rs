//! The console's pages, as [maud](https://maud.lambda.xyz) templates.
//!
//! **Why maud:** the markup is Rust, checked when the crate compiles (a misspelt field is a build
//! error, not a blank page), and every `(value)` spliced into it is HTML-escaped unless wrapped in
//! `PreEscaped`, which this module never does with data. That matters here more than anywhere:
//! a dead letter's payload, headers, reason and error are whatever a client or a consumer sent.
//!
//! Pages work without JavaScript (there is none: the Content-Security-Policy forbids it) and are
//! styled by one stylesheet, `/console/style.css`, narrow enough for a phone.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use uuid::Uuid;

use super::{Links, session::Reviewer};
use crate::store::{DeadLetter, Filter, Status};

/// The statuses in the order the console shows them.
pub const STATUSES: [Status; 3] = [Status::Pending, Status::Replayed, Status::Discarded];

/// Every page: the header (with the sign-out button when someone is signed in) and `content`.
pub fn page(title: &str, reviewer: Option<&Reviewer>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · dead-letter review" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                header.top {
                    a.brand href="/console/" { "Dead-letter review" }
                    @if let Some(reviewer) = reviewer {
                        span.who { "Signed in as " strong { (reviewer.operator.name) } }
                        form.inline method="post" action="/console/sign-out" {
                            (csrf_field(reviewer))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { (content) }
            }
        }
    }
}

fn csrf_field(reviewer: &Reviewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(reviewer.csrf); }
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The sign-in form, with what went wrong last time, if anything.
pub fn sign_in(next: &str, error: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            p { "Paste your operator token (the one in " code { "OPERATOR_TOKENS" } " for your name)." }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.card method="post" action="/console/sign-in" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Operator token" }
                input #token type="password" name="token" required autocomplete="current-password";
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// What the list shows: one page of dead letters and where the others are.
#[derive(Debug)]
pub struct ListView<'a> {
    pub filter: &'a Filter,
    pub counts: &'a [(Status, i64)],
    pub letters: &'a [DeadLetter],
    /// The link to the next (older) page, when there may be one.
    pub older: Option<String>,
    pub first_page: bool,
}

pub fn list(reviewer: &Reviewer, view: &ListView<'_>) -> Markup {
    let total: i64 = view.counts.iter().map(|(_, n)| n).sum();
    let count = |status: Status| view.counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
    let text = view.filter.text.as_deref().unwrap_or("");
    page(
        "Dead letters",
        Some(reviewer),
        html! {
            h1 { "Dead letters" }
            nav.counts aria-label="Counts by status" {
                a href=(Links::list(None, view.filter.text.as_deref())) aria-current=[view.filter.status.is_none().then_some("page")] {
                    "All " span.count { (total) }
                }
                @for status in STATUSES {
                    a.(status) href=(Links::list(Some(status), view.filter.text.as_deref()))
                        aria-current=[(view.filter.status == Some(status)).then_some("page")] {
                        (status) " " span.count { (count(status)) }
                    }
                }
            }
            form.filter method="get" action="/console/" {
                label for="status" { "Status" }
                select #status name="status" {
                    option value="" selected[view.filter.status.is_none()] { "any" }
                    @for status in STATUSES {
                        option value=(status) selected[view.filter.status == Some(status)] { (status) }
                    }
                }
                label for="text" { "Reason or error contains" }
                input #text type="search" name="text" value=(text) maxlength="200";
                button type="submit" { "Filter" }
            }
            @if count(Status::Pending) > 0 {
                form.bulk method="get" action="/console/bulk" {
                    input type="hidden" name="text" value=(text);
                    span { "Every pending dead letter" @if !text.is_empty() { " whose reason or error contains “" (text) "”" } ": " }
                    button name="action" value="replay" type="submit" { "Replay…" }
                    button.danger name="action" value="discard" type="submit" { "Discard…" }
                }
            }
            @if view.letters.is_empty() {
                p.empty { "No dead letters match." }
            } @else {
                table.letters {
                    thead { tr { th { "When" } th { "Order" } th { "Kind" } th { "Reason and last error" } th { "Deliveries" } th { "Status" } } }
                    tbody {
                        @for letter in view.letters { (list_row(letter)) }
                    }
                }
            }
            nav.pager {
                @if !view.first_page { a href=(Links::list(view.filter.status, view.filter.text.as_deref())) { "← Newest" } }
                @if let Some(older) = &view.older { a rel="next" href=(older) { "Older →" } }
            }
        },
    )
}

fn list_row(letter: &DeadLetter) -> Markup {
    html! {
        tr {
            td data-label="When" { a href=(Links::detail(letter.id)) { time { (when(letter.failed_at)) } } }
            td data-label="Order" { code { (letter.order_id.map(|id| id.to_string()).unwrap_or_else(|| "—".into())) } }
            td data-label="Kind" { (letter.kind) }
            td data-label="Reason" {
                (letter.reason)
                @if let Some(error) = &letter.last_error { br; span.error-text { (error) } }
            }
            td data-label="Deliveries" { (letter.deliveries.map(|d| d.to_string()).unwrap_or_else(|| "—".into())) }
            td data-label="Status" { span.badge.(letter.status) { (letter.status) } }
        }
    }
}

/// A note shown above a dead letter after a review action.
#[derive(Debug, Clone, Copy)]
pub enum Notice<'a> {
    Done(Status),
    /// Someone else changed it first (the 409 page).
    ActedFirst,
    /// What was wrong with the form.
    Invalid(&'a str),
}

pub fn detail(reviewer: &Reviewer, letter: &DeadLetter, links: &Links, notice: Option<Notice<'_>>) -> Markup {
    page(
        "Dead letter",
        Some(reviewer),
        html! {
            p { a href="/console/" { "← All dead letters" } }
            h1 { "Dead letter " span.badge.(letter.status) { (letter.status) } }
            @if let Some(notice) = notice { (notice_box(letter, notice)) }
            @if letter.status == Status::Pending {
                p.actions {
                    a.button href=(format!("{}/replay", Links::detail(letter.id))) { "Replay…" }
                    a.button.danger href=(format!("{}/discard", Links::detail(letter.id))) { "Discard…" }
                }
            }
            dl.facts {
                dt { "ID" } dd { code { (letter.id) } }
                dt { "Kind" } dd { (letter.kind) }
                dt { "Order" } dd {
                    @match letter.order_id {
                        Some(order) => { code { (order) } " " a href=(links.order(order)) { "order status" } }
                        None => { "—" }
                    }
                }
                dt { "Trace" } dd {
                    @match letter.trace_id.as_deref().and_then(|t| links.trace(t)) {
                        Some(href) => { a href=(href) { "open in Jaeger" } " " code { (letter.trace_id.as_deref().unwrap_or("")) } }
                        None => { "—" }
                    }
                }
                dt { "Reason" } dd { (letter.reason) }
                dt { "Last error" } dd { (letter.last_error.as_deref().unwrap_or("—")) }
                dt { "Deliveries" } dd { (letter.deliveries.map(|d| d.to_string()).unwrap_or_else(|| "—".into())) }
                dt { "Subject" } dd { code { (letter.subject.as_deref().unwrap_or("—")) } }
                dt { "From" } dd { code { (letter.source_stream) " #" (letter.source_sequence) } " " (letter.consumer.as_deref().unwrap_or("")) }
                dt { "First stored" } dd { (letter.first_seen_at.map(when).unwrap_or_else(|| "—".into())) }
                dt { "Failed" } dd { (when(letter.failed_at)) }
            }
            h2 { "History" }
            ol.history {
                li { time { (when(letter.created_at)) } " captured by " strong { "dlq-service" } ": " (letter.reason) }
                @if letter.status != Status::Pending {
                    li {
                        time { (when(letter.updated_at)) } " " (letter.status) " by "
                        strong { (letter.status_changed_by.as_deref().unwrap_or("unknown")) } ": "
                        (letter.status_reason.as_deref().unwrap_or("no reason given"))
                    }
                }
            }
            h2 { "Payload" }
            (payload(letter))
            h2 { "Headers" }
            @if letter.headers.is_empty() { p { "None." } } @else {
                table.headers { tbody { @for (name, value) in &letter.headers { tr { th scope="row" { (name) } td { code { (value) } } } } } }
            }
        },
    )
}

fn notice_box(letter: &DeadLetter, notice: Notice<'_>) -> Markup {
    let by = letter.status_changed_by.as_deref().unwrap_or("someone");
    html! {
        @match notice {
            Notice::Done(status) => { p.notice role="status" { "Done: this dead letter is " (status) "." } }
            Notice::ActedFirst => {
                p.error role="alert" {
                    "Someone acted first: it was already " (letter.status) " by " strong { (by) }
                    @if let Some(reason) = &letter.status_reason { " (" (reason) ")" }
                    ". Nothing was changed."
                }
            }
            Notice::Invalid(problem) => { p.error role="alert" { (problem) } }
        }
    }
}

/// The payload as pretty JSON, or else as [`printable`] text.
fn payload(letter: &DeadLetter) -> Markup {
    let pretty = letter.payload.as_ref().and_then(|json| serde_json::to_string_pretty(json).ok());
    html! {
        @match (pretty, &letter.payload_raw) {
            (Some(json), _) => { pre.payload { code { (json) } } }
            (None, Some(raw)) => {
                p.hint { "Not JSON: its " (raw.len()) " bytes as text, with bytes that are not UTF-8 as \\xNN and control characters as \\u{…}." }
                pre.payload { code { (printable(raw)) } }
            }
            (None, None) => { p { "None: the original message was gone from the stream." } }
        }
    }
}

/// Bytes as text a person can read: UTF-8 as it is (line breaks and tabs kept), control
/// characters as `\u{…}`, bytes that are not UTF-8 as `\xNN`. (HTML escaping is the template's.)
pub fn printable(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && c != '\n' && c != '\t' {
                text.push_str(&c.escape_unicode().to_string());
            } else {
                text.push(c);
            }
        }
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

/// Replay or discard, one dead letter: what it will do, and the form that does it.
pub fn confirm(reviewer: &Reviewer, letter: &DeadLetter, action: Action, problem: Option<&str>) -> Markup {
    let target = format!("{}/{}", Links::detail(letter.id), action.path());
    page(
        action.title(),
        Some(reviewer),
        html! {
            p { a href=(Links::detail(letter.id)) { "← Back to the dead letter" } }
            h1 { (action.title()) "?" }
            p { (action.explain()) }
            dl.facts {
                dt { "Order" } dd { code { (letter.order_id.map(|o| o.to_string()).unwrap_or_else(|| "—".into())) } }
                dt { "Reason" } dd { (letter.reason) }
                dt { "Last error" } dd { (letter.last_error.as_deref().unwrap_or("—")) }
            }
            @if let Some(problem) = problem { p.error role="alert" { (problem) } }
            form.card method="post" action=(target) {
                (csrf_field(reviewer))
                (reason_field(action))
                button.danger[action == Action::Discard] type="submit" { (action.verb()) }
                " " a href=(Links::detail(letter.id)) { "Cancel" }
            }
        },
    )
}

fn reason_field(action: Action) -> Markup {
    html! {
        @if action == Action::Discard {
            label for="reason" { "Why discard it? (required, recorded with your name)" }
            textarea #reason name="reason" required maxlength=(crate::review::MAX_REASON_LEN) rows="3" {}
        } @else {
            label for="reason" { "Why? (optional, recorded with your name)" }
            input #reason type="text" name="reason" maxlength=(crate::review::MAX_REASON_LEN);
        }
    }
}

/// A review action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Replay,
    Discard,
}

impl Action {
    pub fn path(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Discard => "discard",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Replay => "Replay",
            Self::Discard => "Discard",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Replay => "Replay this dead letter",
            Self::Discard => "Discard this dead letter",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Self::Replay => {
                "The original message is published again, with its own ID (so it is processed at most once) \
                 and its trace. Do it once the cause is fixed."
            }
            Self::Discard => {
                "It stays here, marked discarded, and is never processed. Say why: the reason is kept."
            }
        }
    }
}

/// What a bulk review will touch, shown before it is confirmed.
#[derive(Debug)]
pub struct BulkView<'a> {
    pub action: Action,
    pub text: Option<&'a str>,
    pub matching: i64,
    /// The newest dead letter counted: the selection ends there.
    pub upto: Option<Uuid>,
    pub limit: i64,
}

pub fn bulk_confirm(reviewer: &Reviewer, view: &BulkView<'_>, problem: Option<&str>) -> Markup {
    page(
        "Bulk review",
        Some(reviewer),
        html! {
            p { a href=(Links::list(Some(Status::Pending), view.text)) { "← Back to the list" } }
            h1 { (view.action.verb()) " every pending dead letter" @if let Some(text) = view.text { " whose reason or error contains “" (text) "”" } "?" }
            @match view.upto {
                None => { p.empty { "No pending dead letter matches: there is nothing to do." } }
                Some(upto) => {
                    p.count-line { strong.count { (view.matching) } " pending dead letters match." }
                    @if view.matching > view.limit { p.hint { "Only the oldest " (view.limit) " are handled at a time; run it again for the rest." } }
                    p { (view.action.explain()) " Dead letters recorded after this page was shown are left alone." }
                    @if let Some(problem) = problem { p.error role="alert" { (problem) } }
                    form.card method="post" action="/console/bulk" {
                        (csrf_field(reviewer))
                        input type="hidden" name="action" value=(view.action.path());
                        input type="hidden" name="text" value=(view.text.unwrap_or(""));
                        input type="hidden" name="upto" value=(upto);
                        (reason_field(view.action))
                        button.danger[view.action == Action::Discard] type="submit" { (view.action.verb()) " " (view.matching.min(view.limit)) }
                    }
                }
            }
        },
    )
}

/// What a bulk review did.
#[derive(Debug, Default)]
pub struct BulkOutcome {
    pub done: usize,
    /// Changed by someone else between the count and the action.
    pub acted_first: usize,
    /// Replays asked for of dead letters whose original message was gone.
    pub not_replayable: usize,
}

pub fn bulk_done(reviewer: &Reviewer, action: Action, outcome: &BulkOutcome) -> Markup {
    let status = match action {
        Action::Replay => Status::Replayed,
        Action::Discard => Status::Discarded,
    };
    page(
        "Bulk review",
        Some(reviewer),
        html! {
            h1 { "Done" }
            p.notice role="status" { (outcome.done) " dead letters " (status) "." }
            @if outcome.acted_first > 0 {
                p.error role="alert" { (outcome.acted_first) " were no longer pending: someone acted first, and they were left as they were." }
            }
            @if outcome.not_replayable > 0 {
                p.error role="alert" { (outcome.not_replayable) " had no original message to replay, and were left pending." }
            }
            p { a href=(Links::list(Some(status), None)) { "See them" } " · " a href="/console/" { "All dead letters" } }
        },
    )
}

/// An error page: what was wrong, in words, and a way back.
pub fn error(title: &str, detail: &str) -> Markup {
    page(
        title,
        None,
        html! {
            h1 { (title) }
            p.error role="alert" { (detail) }
            p { a href="/console/" { "Back to the dead letters" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_text_are_shown_escaped_and_text_as_it_is() {
        assert_eq!(printable(b"<a href='x'>\n\tok</a>"), "<a href='x'>\n\tok</a>");
        assert_eq!(printable(b"\x00\xff caf\xc3\xa9 \x1b[31m"), "\\u{0}\\xff caf\u{e9} \\u{1b}[31m");
    }
}
