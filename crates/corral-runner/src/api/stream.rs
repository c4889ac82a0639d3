//! Streaming responses: NDJSON (Ollama) and server-sent events (OpenAI).
//!
//! Each engine event is written as soon as it arrives. When the client disconnects, the
//! server drops the body, which drops the event receiver, which tells the engine to stop.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::Event;

/// A body that renders each event with `render` and ends after the final one.
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
            let event = rx.recv().await?;
            let last = matches!(event, Event::Done(_) | Event::Failed(_));
            let chunk = Bytes::from(render(event));
            Some((Ok::<_, Infallible>(chunk), (rx, render, last)))
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
