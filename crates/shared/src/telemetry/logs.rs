//! How a log line is written: as usual, plus the trace it belongs to; and an error with its
//! causes on one line.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Formats a log line as usual, then adds the `trace_id` and `span_id` of the span it was
/// written in.
pub(super) struct WithTraceIds<F> {
    pub(super) inner: F,
    pub(super) json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let ids = ctx.lookup_current().and_then(|_| {
            let cx = tracing::Span::current().context();
            let span = cx.span();
            let span_context = span.span_context();
            span_context
                .is_valid()
                .then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
        });
        let line = line.trim_end_matches('\n');
        // JSON escapes by itself; in text, one event must stay one line, so that a value a
        // client sent (a reason, a header) cannot start a forged log line.
        let line = if self.json { std::borrow::Cow::Borrowed(line) } else { one_line(line) };
        match ids {
            None => writeln!(writer, "{line}"),
            Some((trace_id, span_id)) if self.json => match line.strip_suffix('}') {
                Some(object) => {
                    writeln!(writer, r#"{object},"trace_id":"{trace_id}","span_id":"{span_id}"}}"#)
                }
                None => writeln!(writer, "{line}"),
            },
            Some((trace_id, span_id)) => writeln!(writer, "{line} trace_id={trace_id} span_id={span_id}"),
        }
    }
}

/// An error and its causes on one line, `outer: cause: root cause`, leaving out a cause whose
/// message the one before it already includes (many errors print their source in their own
/// message, and `{:#}` would repeat it: `Connection refused (os error 111): Connection refused
/// (os error 111)`).
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if !parts.last().is_some_and(|previous| previous.contains(&message)) {
            parts.push(message);
        }
    }
    parts.join(": ")
}

/// `text` with line breaks and other control characters (tab aside) escaped as `\n`, `\r`,
/// `\u{1b}`, …
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push('\t'),
            c if c.is_control() => escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    std::borrow::Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::fmt::format;

    use super::*;

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let io =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        #[derive(Debug, thiserror::Error)]
        #[error("error communicating with database: {0}")]
        struct Talk(#[source] std::io::Error);
        let err = anyhow::Error::new(Talk(io)).context("could not connect to Postgres");
        assert_eq!(
            error_chain(&err),
            "could not connect to Postgres: error communicating with database: Connection refused (os error 111)"
        );
    }

    #[test]
    fn a_value_with_line_breaks_cannot_forge_a_log_line() {
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = written.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .event_format(WithTraceIds { inner: format::format(), json: false })
            .with_writer(move || WriteTo(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let reason = "out of stock\n2026-11-30T00:00:00Z  INFO forged: all good\r\u{1b}[2J";
            tracing::info!(%reason, "discarded");
        });
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(r"out of stock\n2026-11-30T00:00:00Z  INFO forged: all good\r\u{1b}[2J"),
            "{text}"
        );
    }

    struct WriteTo(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for WriteTo {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
