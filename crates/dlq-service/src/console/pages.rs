//! The console's handlers: read the request, call the store or [`crate::review`], render a view.

use axum::{
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use maud::Markup;
use serde::Deserialize;
use uuid::Uuid;

use super::{
    ConsoleError, CsrfForm, Links, Reviewer, parse_id, parse_status, query, refuse_cross_site, session,
    views::{self, Action, BulkOutcome, BulkView, ListView, Notice},
};
use crate::{
    AppState,
    review::{self, checked_reason},
    store::{self, DeadLetter, Filter, Review, ReviewError, Status},
};

/// Dead letters per page of the list.
pub const PAGE_SIZE: i64 = 25;
/// The most dead letters one bulk action handles (each is a transaction of its own).
pub const MAX_BULK: i64 = 500;
/// The longest text filter.
const MAX_TEXT_LEN: usize = 200;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    text: Option<String>,
    before: Option<String>,
}

/// `GET /console/`: newest first, filtered, with the counts per status.
pub async fn list(
    State(app): State<AppState>,
    reviewer: Reviewer,
    RawQuery(raw): RawQuery,
) -> Result<Markup, ConsoleError> {
    let params: ListQuery = query(raw.as_deref())?;
    let filter = Filter { status: parse_status(params.status.as_deref())?, text: text_filter(params.text)? };
    let before = params
        .before
        .filter(|b| !b.is_empty())
        .map(|b| Uuid::parse_str(&b))
        .transpose()
        .map_err(|_| ConsoleError::bad_input("before", "must be the ID a previous page linked to"))?;
    let letters = store::list_matching(&app.pool, &filter, before, PAGE_SIZE).await?;
    let counts = store::count_by_status(&app.pool).await?;
    // A full page may have a next one: it starts after the last ID shown.
    let older = (letters.len() as i64 == PAGE_SIZE)
        .then(|| {
            letters.last().map(|last| Links::list_page(filter.status, filter.text.as_deref(), Some(last.id)))
        })
        .flatten();
    let view =
        ListView { filter: &filter, counts: &counts, letters: &letters, older, first_page: before.is_none() };
    Ok(views::list(&reviewer, &view))
}

/// A text filter: trimmed, blank is none.
fn text_filter(text: Option<String>) -> Result<Option<String>, ConsoleError> {
    let text = text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    if text.as_ref().is_some_and(|t| t.chars().count() > MAX_TEXT_LEN) {
        return Err(ConsoleError::bad_input("text", format!("must be at most {MAX_TEXT_LEN} characters")));
    }
    Ok(text)
}

#[derive(Debug, Deserialize)]
pub struct DetailQuery {
    done: Option<String>,
}

/// `GET /console/dead-letters/{id}`.
pub async fn detail(
    State(app): State<AppState>,
    reviewer: Reviewer,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, ConsoleError> {
    let id = parse_id(&id)?;
    let DetailQuery { done } = query(raw.as_deref())?;
    let letter = load(&app, id).await?;
    // The redirect after an action says what was done; anything else in `done` is ignored.
    let notice =
        done.and_then(|d| d.parse::<Status>().ok()).filter(|s| *s == letter.status).map(Notice::Done);
    Ok(views::detail(&reviewer, &letter, &Links::new(&app.console), notice))
}

async fn load(app: &AppState, id: Uuid) -> Result<DeadLetter, ConsoleError> {
    store::get(&app.pool, id).await?.ok_or(ConsoleError::NotFound(id))
}

/// `GET /console/dead-letters/{id}/replay`: what a replay does, and its button.
pub async fn confirm_replay(
    State(app): State<AppState>,
    reviewer: Reviewer,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    confirm(app, reviewer, &id, Action::Replay).await
}

/// `GET /console/dead-letters/{id}/discard`: the reason to give, and the button.
pub async fn confirm_discard(
    State(app): State<AppState>,
    reviewer: Reviewer,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    confirm(app, reviewer, &id, Action::Discard).await
}

async fn confirm(
    app: AppState,
    reviewer: Reviewer,
    id: &str,
    action: Action,
) -> Result<Response, ConsoleError> {
    let letter = load(&app, parse_id(id)?).await?;
    if letter.status != Status::Pending {
        return Ok(acted_first(&app, &reviewer, &letter));
    }
    Ok(views::confirm(&reviewer, &letter, action, None).into_response())
}

/// The 409 page: the dead letter as it is now, and who changed it.
fn acted_first(app: &AppState, reviewer: &Reviewer, letter: &DeadLetter) -> Response {
    let page = views::detail(reviewer, letter, &Links::new(&app.console), Some(Notice::ActedFirst));
    (StatusCode::CONFLICT, page).into_response()
}

#[derive(Debug, Deserialize)]
pub struct ReasonForm {
    reason: Option<String>,
}

/// `POST /console/dead-letters/{id}/replay`.
pub async fn replay(
    State(app): State<AppState>,
    Path(id): Path<String>,
    form: CsrfForm<ReasonForm>,
) -> Result<Response, ConsoleError> {
    act(app, &id, form, Action::Replay).await
}

/// `POST /console/dead-letters/{id}/discard`: a reason is required.
pub async fn discard(
    State(app): State<AppState>,
    Path(id): Path<String>,
    form: CsrfForm<ReasonForm>,
) -> Result<Response, ConsoleError> {
    act(app, &id, form, Action::Discard).await
}

async fn act(
    app: AppState,
    id: &str,
    CsrfForm { reviewer, form }: CsrfForm<ReasonForm>,
    action: Action,
) -> Result<Response, ConsoleError> {
    let id = parse_id(id)?;
    let reason = match checked_reason(form.reason.as_deref(), action == Action::Discard) {
        Ok(reason) => reason,
        Err(rule) => {
            let letter = load(&app, id).await?;
            let page = views::confirm(&reviewer, &letter, action, Some(&format!("The reason {rule}.")));
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response());
        }
    };
    let review = Review { by: reviewer.operator.name.clone(), reason };
    match take(&app, id, action, &review).await {
        Ok(letter) => {
            Ok(Redirect::to(&format!("{}?done={}", Links::detail(id), letter.status)).into_response())
        }
        Err(ReviewError::NotPending { .. }) => Ok(acted_first(&app, &reviewer, &load(&app, id).await?)),
        Err(ReviewError::NothingToReplay(_)) => {
            let letter = load(&app, id).await?;
            let problem =
                Notice::Invalid("This dead letter has no original message to replay: discard it instead.");
            let page = views::detail(&reviewer, &letter, &Links::new(&app.console), Some(problem));
            Ok((StatusCode::CONFLICT, page).into_response())
        }
        Err(ReviewError::NotFound(id)) => Err(ConsoleError::NotFound(id)),
        Err(ReviewError::Database(err)) => Err(ConsoleError::Database(err)),
    }
}

/// One review action, through the path the JSON API takes too.
async fn take(app: &AppState, id: Uuid, action: Action, review: &Review) -> Result<DeadLetter, ReviewError> {
    match action {
        Action::Replay => review::replay(app, id, review).await,
        Action::Discard => review::discard(app, id, review).await,
    }
}

fn parse_action(action: Option<&str>) -> Result<Action, ConsoleError> {
    match action {
        Some("replay") => Ok(Action::Replay),
        Some("discard") => Ok(Action::Discard),
        _ => Err(ConsoleError::bad_input("action", "must be replay or discard")),
    }
}

#[derive(Debug, Deserialize)]
pub struct BulkQuery {
    action: Option<String>,
    text: Option<String>,
}

/// `GET /console/bulk?action=&text=`: how many pending dead letters match, before anything is done.
pub async fn confirm_bulk(
    State(app): State<AppState>,
    reviewer: Reviewer,
    RawQuery(raw): RawQuery,
) -> Result<Markup, ConsoleError> {
    let params: BulkQuery = query(raw.as_deref())?;
    let action = parse_action(params.action.as_deref())?;
    let text = text_filter(params.text)?;
    bulk_confirm_page(&app, &reviewer, action, text.as_deref(), None).await
}

async fn bulk_confirm_page(
    app: &AppState,
    reviewer: &Reviewer,
    action: Action,
    text: Option<&str>,
    problem: Option<&str>,
) -> Result<Markup, ConsoleError> {
    let (matching, upto) = store::count_pending_matching(&app.pool, text).await?;
    let view = BulkView { action, text, matching, upto, limit: MAX_BULK };
    Ok(views::bulk_confirm(reviewer, &view, problem))
}

#[derive(Debug, Deserialize)]
pub struct BulkForm {
    action: Option<String>,
    text: Option<String>,
    upto: Option<String>,
    reason: Option<String>,
}

/// `POST /console/bulk`: the confirmed action, on the pending dead letters that matched (up to
/// the newest one counted), each in a transaction of its own.
pub async fn bulk(State(app): State<AppState>, form: CsrfForm<BulkForm>) -> Result<Response, ConsoleError> {
    let CsrfForm { reviewer, form } = form;
    let action = parse_action(form.action.as_deref())?;
    let text = text_filter(form.text)?;
    let upto = form
        .upto
        .as_deref()
        .and_then(|u| Uuid::parse_str(u).ok())
        .ok_or_else(|| ConsoleError::bad_input("upto", "must be the ID the confirmation page gave"))?;
    let reason = match checked_reason(form.reason.as_deref(), action == Action::Discard) {
        Ok(reason) => reason,
        Err(rule) => {
            let problem = format!("The reason {rule}.");
            let page = bulk_confirm_page(&app, &reviewer, action, text.as_deref(), Some(&problem)).await?;
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response());
        }
    };
    let review = Review { by: reviewer.operator.name.clone(), reason };
    let ids = store::pending_matching(&app.pool, text.as_deref(), upto, MAX_BULK).await?;
    let mut outcome = BulkOutcome::default();
    for id in ids {
        match take(&app, id, action, &review).await {
            Ok(_) => outcome.done += 1,
            Err(ReviewError::NotPending { .. } | ReviewError::NotFound(_)) => outcome.acted_first += 1,
            Err(ReviewError::NothingToReplay(_)) => outcome.not_replayable += 1,
            Err(ReviewError::Database(err)) => return Err(ConsoleError::Database(err)),
        }
    }
    tracing::info!(action = action.path(), by = %review.by, done = outcome.done, "bulk review");
    Ok(views::bulk_done(&reviewer, action, &outcome).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct SignInQuery {
    next: Option<String>,
}

/// `GET /console/sign-in?next=`.
pub async fn sign_in_form(RawQuery(raw): RawQuery) -> Markup {
    let SignInQuery { next } = query(raw.as_deref()).unwrap_or_default();
    views::sign_in(&safe_next(next.as_deref()), None)
}

/// Where to go after signing in: a console page, never another site (`//evil.example`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if next.starts_with("/console/")
                && !next.contains("//")
                && !next.contains('\\')
                && !next.chars().any(char::is_control) =>
        {
            next.to_owned()
        }
        _ => "/console/".to_owned(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct SignInForm {
    token: Option<String>,
    next: Option<String>,
}

/// `POST /console/sign-in`: an operator token in, a session cookie out.
pub async fn sign_in(State(app): State<AppState>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    if let Err(refused) = refuse_cross_site(&parts) {
        return refused.into_response();
    }
    let form: SignInForm = match axum::body::to_bytes(body, crate::routes::MAX_BODY_BYTES).await {
        Ok(bytes) => serde_urlencoded::from_bytes(&bytes).unwrap_or_default(),
        Err(_) => SignInForm::default(),
    };
    let next = safe_next(form.next.as_deref());
    let operator =
        form.token.as_deref().and_then(|token| session::operator_of_token(token, &app.operator_auth));
    let Some(operator) = operator else {
        tracing::info!("console sign-in refused: not an operator token");
        let page = views::sign_in(&next, Some("That is not an operator token."));
        return (StatusCode::UNAUTHORIZED, page).into_response();
    };
    let settings = &app.console;
    let session = session::Session::start(&operator.name, settings.session_ttl);
    let secure = settings.secure_cookie || session::arrived_over_tls(&parts.headers);
    let cookie = session::set_cookie(&session, &settings.session_key, settings.session_ttl, secure);
    tracing::info!(operator = %operator.name, "console sign-in");
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

/// A form whose only field is its CSRF token.
#[derive(Debug, Deserialize)]
pub struct NoFields {}

/// `POST /console/sign-out`: the cookie is deleted.
pub async fn sign_out(State(app): State<AppState>, headers: HeaderMap, form: CsrfForm<NoFields>) -> Response {
    let secure = app.console.secure_cookie || session::arrived_over_tls(&headers);
    tracing::info!(operator = %form.reviewer.operator.name, "console sign-out");
    ([(header::SET_COOKIE, session::clear_cookie(secure))], Redirect::to("/console/sign-in")).into_response()
}
