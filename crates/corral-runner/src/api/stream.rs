//! Streaming responses: NDJSON (Ollama) and server-sent events (OpenAI).
//!
//! Each engine event is written as soon as it arrives. When the client disconnects, the
//! server drops the body, which drops the event receiver, which tells the engine to stop.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::{Event, Summary};
use crate::error::ApiError;

/// How often a non-streaming answer that is still being generated writes a space.
const HEARTBEAT: Duration = Duration::from_millis(250);

/// A non-streaming answer (a `whole` request), rendered by `render` from the text.
///
/// The server only notices that a client went away when a write fails, and a plain
/// response writes nothing until the end; a client that gave up would keep its slot busy
/// until the answer is complete. So once generation has started, the headers go out and
/// a space is written every [`HEARTBEAT`] (JSON allows leading whitespace): the first write
/// after a disconnect fails, the body is dropped, and the engine frees the slot.
/// Errors before the first token still get their own status code.
pub async fn whole_answer<F>(
    mut rx: UnboundedReceiver<Event>,
    error_body: fn(&ApiError) -> serde_json::Value,
    render: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(String, Summary) -> serde_json::Value + Send + 'static,
{
    let mut text = String::new();
    match rx.recv().await {
        Some(Event::Started) => {}
        Some(Event::Text(t)) => text.push_str(&t),
        Some(Event::Done(summary)) => return Ok(axum::Json(render(text, summary)).into_response()),
        Some(Event::Failed(message)) => return Err(ApiError::Engine(message)),
        None => return Err(ApiError::Engine(NO_ANSWER.to_owned())),
    }
    let tick = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let stream = futures::stream::unfold(Some((rx, text, render, tick)), move |state| async move {
        let (mut rx, mut text, render, mut tick) = state?;
        loop {
            tokio::select! {
                event = rx.recv() => {
                    let body = match event {
                        Some(Event::Started) => continue,
                        Some(Event::Text(t)) => {
                            text.push_str(&t);
                            continue;
                        }
                        Some(Event::Done(summary)) => render(text, summary),
                        Some(Event::Failed(message)) => error_body(&ApiError::Engine(message)),
                        None => error_body(&ApiError::Engine(NO_ANSWER.to_owned())),
                    };
                    return Some((Ok::<_, Infallible>(Bytes::from(body.to_string())), None));
                }
                _ = tick.tick() => {
                    return Some((Ok(Bytes::from_static(b" ")), Some((rx, text, render, tick))));
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

const NO_ANSWER: &str = "generation ended without an answer";

/// A body that renders each event with `render` and ends after the final one. Events
/// rendered as nothing are skipped.
pub fn event_body<F>(rx: UnboundedReceiver<Event>, render: F) -> Body
where
    F: FnMut(Event) -> String + Send + 'static,
{
    let stream = futures::stream::unfold(
        (rx, render, false),
        |(mut rx, mut render, finished)| async move {
            if finished {
                return None;
            }
            loop {
                let event = rx.recv().await?;
                let last = matches!(event, Event::Done(_) | Event::Failed(_));
                let chunk = render(event);
                if !chunk.is_empty() || last {
                    return Some((Ok::<_, Infallible>(Bytes::from(chunk)), (rx, render, last)));
                }
            }
        },
    );
    Body::from_stream(stream)
}

pub fn ndjson(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

pub fn sse(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// One NDJSON line.
pub fn line(value: &serde_json::Value) -> String {
    let mut s = value.to_string();
    s.push('\n');
    s
}

/// One server-sent event.
pub fn data(value: &serde_json::Value) -> String {
    format!("data: {value}\n\n")
}
