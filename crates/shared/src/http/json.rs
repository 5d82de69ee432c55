//! [`JsonBody`]: a JSON request body whose every failure is answered as a [`Problem`] naming what
//! is wrong, never axum's plain-text rejection.

use axum::{
    extract::{FromRequest, OptionalFromRequest, Request, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header},
};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::{FieldError, Problem};

/// A JSON request body, with every failure answered as a [`Problem`]:
/// wrong content type → 415, body too large → 413, malformed JSON → 400, a value of the wrong
/// type → 422 naming the field.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "about:blank",
                "Unsupported Media Type",
                "Send the body as JSON with Content-Type: application/json.",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// An optional JSON body: a request without `Content-Type` has none.
impl<T, S> OptionalFromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if req.headers().get(header::CONTENT_TYPE).is_none() {
            return Ok(None);
        }
        <Self as FromRequest<S>>::from_request(req, state).await.map(Some)
    }
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn body_rejection(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "about:blank",
            "Content Too Large",
            "The request body is larger than this endpoint accepts.",
        )
    } else {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "about:blank",
            "Bad Request",
            "The request body could not be read.",
        )
    }
}

/// Parses a JSON object, naming the field when a value has the wrong type. Only an object is
/// a request body here: serde would also read a struct from an array (`["c-1", [...]]`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(Problem::validation(vec![FieldError::pointer("#", "expected an object, not an array")]));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        if err.inner().is_data() {
            let field = FieldError::pointer(json_pointer(err.path()), data_error_message(err.inner()));
            Problem::validation(vec![field])
        } else {
            malformed_json(err.inner())
        }
    })?;
    deserializer.end().map_err(|err| malformed_json(&err))?; // Trailing characters.
    Ok(value)
}

fn malformed_json(err: &serde_json::Error) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "/problems/malformed-json",
        "Malformed JSON",
        format!("The body is not valid JSON: {err}"),
    )
}

/// `items[0].quantity` → `#/items/0/quantity` (RFC 6901, in URI fragment form).
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::from("#");
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } => pointer.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Segment::Enum { variant } => pointer.push_str(variant),
            Segment::Unknown => pointer.push('?'),
        }
    }
    pointer
}

/// serde's message in JSON terms ("expected an integer", not "expected i64"), without its
/// " at line 1 column 42" suffix, which means nothing to a client that is told the field.
fn data_error_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let text = text.rfind(" at line ").map_or(text.as_str(), |at| &text[..at]);
    let mut message = text.to_owned();
    for (rust, json) in [
        ("expected i64", "expected an integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected a sequence", "expected an array"),
        ("expected struct ", "expected an object: "),
        ("expected a borrowed string", "expected a string"),
    ] {
        message = message.replace(rust, json);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    struct Body {
        name: Option<String>,
        items: Option<Vec<Item>>,
    }
    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    struct Item {
        quantity: Option<i64>,
    }

    #[test]
    fn a_wrong_type_is_named_by_a_json_pointer() {
        let problem =
            parse_json::<Body>(br#"{"items": [{"quantity": 1}, {"quantity": "two"}]}"#).unwrap_err();
        assert_eq!(problem.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem.errors[0].pointer.as_deref(), Some("#/items/1/quantity"));
        assert_eq!(problem.errors[0].detail, r#"invalid type: string "two", expected an integer"#);
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let problem = parse_json::<Body>(br#"{"name": "#).unwrap_err();
        assert_eq!(problem.status, StatusCode::BAD_REQUEST);
        assert_eq!(problem.problem_type, "/problems/malformed-json");
        let problem = parse_json::<Body>(br#"{"name": "a"} trailing"#).unwrap_err();
        assert_eq!(problem.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_body_that_is_not_an_object_points_at_the_root() {
        let problem = parse_json::<Body>(br#""an order, please""#).unwrap_err();
        assert_eq!(problem.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem.errors[0].pointer.as_deref(), Some("#"));
    }

    #[test]
    fn an_array_is_not_an_object_even_where_serde_would_read_one() {
        let problem = parse_json::<Body>(br#" [[{"quantity": 1}]]"#).unwrap_err();
        assert_eq!(problem.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem.errors[0].pointer.as_deref(), Some("#"));
    }

    #[test]
    fn content_types_with_parameters_and_suffixes_are_json() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "application/merge-patch+json",
            "Application/JSON",
        ] {
            assert!(is_json(Some(&HeaderValue::from_static(ok))), "{ok}");
        }
        for bad in ["text/plain", "application/jsonp", "multipart/form-data"] {
            assert!(!is_json(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_json(None));
    }
}
