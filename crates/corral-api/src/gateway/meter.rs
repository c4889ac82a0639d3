//! Metering without buffering: the replica's response body passes through `Metered`
//! frame by frame, while a small lexer picks the token counts out of the bytes as they go
//! by. It works the same on every shape the replicas answer in:
//!
//! * Ollama NDJSON streams: the final `"done":true` line has `prompt_eval_count` and
//!   `eval_count`;
//! * OpenAI SSE streams: a `data:` event with `usage` (`prompt_tokens`,
//!   `completion_tokens`), which the gateway asks for (see `UsageFilter`);
//! * whole JSON answers: the same fields.
//!
//! When the body ends, or is dropped because the client went away, the request is
//! accounted once: the replica slot is released, the tokens are charged to the user's
//! limit, the metrics are updated and the usage is added to the write-behind buffer
//! (`writeback`), which the store sees within about a second.

use axum::body::Bytes;
use bytes::BytesMut;
use chrono::Utc;
use corral_control::InFlight;
use corral_core::UsageSample;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::metrics::instance::Sample;
use crate::state::AppState;

/// While a stream runs, the instance's activity time is moved on at most this often (see
/// `touch_activity`).
const ACTIVITY_EVERY: Duration = Duration::from_secs(30);

/// The longest key the lexer looks for (`prompt_eval_count`, `completion_tokens`).
const KEY_MAX: usize = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Ollama's prompt tokens.
    PromptEvalCount,
    /// Ollama's generated tokens.
    EvalCount,
    PromptTokens,
    CompletionTokens,
}

impl Field {
    fn from_key(key: &[u8]) -> Option<Field> {
        match key {
            b"prompt_eval_count" => Some(Field::PromptEvalCount),
            b"eval_count" => Some(Field::EvalCount),
            b"prompt_tokens" => Some(Field::PromptTokens),
            b"completion_tokens" => Some(Field::CompletionTokens),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    Outside,
    /// Inside a JSON string; `candidate` while it may still be one of the keys.
    InString {
        escaped: bool,
        candidate: bool,
    },
    /// After a key, before its `:`.
    AfterKey(Field),
    /// After `key:`, before the number.
    AfterColon(Field),
    Number(Field, u64),
}

/// Finds `"key": <integer>` for the usage keys in a byte stream split anywhere. JSON
/// strings are lexed (quotes, escapes), so generated text that mentions a key is never
/// mistaken for one; a value that is not an integer is ignored.
#[derive(Debug)]
pub struct UsageScanner {
    lex: Lex,
    key: [u8; KEY_MAX],
    key_len: usize,
    values: [Option<u64>; 4],
    /// Lines that held a JSON object: one per streamed chunk, which for corral-runner and
    /// Ollama is one per generated token. The estimate for a stream cut before its end.
    json_lines: u64,
    line_has_json: bool,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

impl Default for UsageScanner {
    fn default() -> Self {
        UsageScanner {
            lex: Lex::Outside,
            key: [0; KEY_MAX],
            key_len: 0,
            values: [None; 4],
            json_lines: 0,
            line_has_json: false,
        }
    }
}

impl UsageScanner {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        match self.lex {
            Lex::Outside => self.outside(b),
            Lex::InString { escaped: true, .. } => {
                // No key of interest has an escape in it.
                self.lex = Lex::InString {
                    escaped: false,
                    candidate: false,
                };
            }
            Lex::InString { candidate, .. } => match b {
                b'\\' => {
                    self.lex = Lex::InString {
                        escaped: true,
                        candidate: false,
                    }
                }
                b'"' => {
                    let key = &self.key[..self.key_len];
                    self.lex = match Field::from_key(key).filter(|_| candidate) {
                        Some(field) => Lex::AfterKey(field),
                        None => Lex::Outside,
                    };
                }
                // A raw newline cannot be inside a JSON string: the line was cut short.
                b'\n' => {
                    self.lex = Lex::Outside;
                    self.outside(b);
                }
                _ if candidate && self.key_len < KEY_MAX => {
                    self.key[self.key_len] = b;
                    self.key_len += 1;
                }
                _ => {
                    self.lex = Lex::InString {
                        escaped: false,
                        candidate: false,
                    }
                }
            },
            Lex::AfterKey(field) => match b {
                b' ' | b'\t' | b'\r' => {}
                b':' => self.lex = Lex::AfterColon(field),
                _ => {
                    self.lex = Lex::Outside;
                    self.outside(b);
                }
            },
            Lex::AfterColon(field) => match b {
                b' ' | b'\t' | b'\r' => {}
                b'0'..=b'9' => self.lex = Lex::Number(field, u64::from(b - b'0')),
                _ => {
                    self.lex = Lex::Outside;
                    self.outside(b);
                }
            },
            Lex::Number(field, n) => match b {
                b'0'..=b'9' => {
                    let n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
                    self.lex = Lex::Number(field, n);
                }
                _ => {
                    self.values[field as usize] = Some(n);
                    self.lex = Lex::Outside;
                    self.outside(b);
                }
            },
        }
    }

    fn outside(&mut self, b: u8) {
        match b {
            b'"' => {
                self.line_has_json = true;
                self.key_len = 0;
                self.lex = Lex::InString {
                    escaped: false,
                    candidate: true,
                };
            }
            b'\n' => {
                self.json_lines += u64::from(self.line_has_json);
                self.line_has_json = false;
            }
            _ => {}
        }
    }

    fn value(&self, field: Field) -> Option<u64> {
        self.values[field as usize]
    }

    /// The counts the body reported (the last value of each field wins: the final chunk).
    /// Without them, a stream that was cut short counts one completion token per chunk.
    pub fn usage(&self, streamed: bool) -> Usage {
        let prompt = self
            .value(Field::PromptEvalCount)
            .or(self.value(Field::PromptTokens))
            .unwrap_or(0);
        let completion = self
            .value(Field::EvalCount)
            .or(self.value(Field::CompletionTokens));
        let estimate = || {
            if streamed {
                self.json_lines + u64::from(self.line_has_json)
            } else {
                0
            }
        };
        Usage {
            prompt,
            completion: completion.unwrap_or_else(estimate),
        }
    }
}

/// For OpenAI streams whose client did not ask for usage: the gateway asks the replica
/// for it (`stream_options.include_usage`) so it can meter the request, and this filter
/// takes the usage-only event (`"choices":[]` with `usage`) back out, so the client sees
/// the stream it asked for. Complete events pass at once; only an event split across
/// frames waits for its end.
#[derive(Debug, Default)]
pub struct UsageFilter {
    pending: BytesMut,
}

impl UsageFilter {
    /// What to send on of `chunk`; may be empty.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.pending.is_empty()
            && chunk.ends_with(b"\n\n")
            && find(&chunk, b"\"usage\"").is_none()
        {
            return chunk;
        }
        self.pending.extend_from_slice(&chunk);
        let mut out = BytesMut::new();
        while let Some(end) = find(&self.pending, b"\n\n") {
            let event = self.pending.split_to(end + 2);
            if !is_usage_only(&event) {
                out.extend_from_slice(&event);
            }
        }
        out.freeze()
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn finish(&mut self) -> Bytes {
        self.pending.split().freeze()
    }
}

fn is_usage_only(event: &[u8]) -> bool {
    find(event, b"\"choices\":[]").is_some() && find(event, b"\"usage\"").is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Everything needed to account for a request once its body is done.
pub struct Accounting {
    pub state: AppState,
    /// The replica slot (least-outstanding-requests); released when the body ends.
    pub slot: InFlight,
    pub gauge: InFlightGauge,
    pub user_id: Uuid,
    pub instance_id: Uuid,
    pub model_id: String,
    /// A generation or embedding: shown in the instance's request statistics.
    pub inference: bool,
    /// Successful too: recorded as usage.
    pub record: bool,
    /// The replica answered with a server error.
    pub failed: bool,
    /// NDJSON or SSE: time to first token and a per-chunk estimate apply.
    pub streamed: bool,
    /// When the gateway received the request.
    pub received: Instant,
    /// When it was sent to the replica.
    pub sent: Instant,
    /// The caller's place among their requests in flight, freed with the body.
    pub _permit: super::concurrency::Permit,
}

/// The gateway's in-flight gauge, held for the life of a proxied request.
pub struct InFlightGauge(AppState);

impl InFlightGauge {
    pub fn new(state: &AppState) -> Self {
        state.metrics.gateway.in_flight.fetch_add(1, Relaxed);
        InFlightGauge(state.clone())
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.metrics.gateway.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The replica's response body on its way to the client.
pub struct Metered {
    inner: Incoming,
    scanner: UsageScanner,
    filter: Option<UsageFilter>,
    first_data: Option<Instant>,
    last_data: Option<Instant>,
    /// When the instance's activity time was last moved on.
    touched: Instant,
    /// The replica's body broke off.
    broken: bool,
    accounting: Option<Accounting>,
}

impl Metered {
    pub fn new(inner: Incoming, filter: Option<UsageFilter>, accounting: Accounting) -> Self {
        Metered {
            inner,
            scanner: UsageScanner::default(),
            filter,
            first_data: None,
            last_data: None,
            touched: Instant::now(),
            broken: false,
            accounting: Some(accounting),
        }
    }

    fn on_data(&mut self, data: &[u8]) {
        let now = Instant::now();
        if self.first_data.is_none() {
            self.first_data = Some(now);
            if let Some(a) = self.accounting.as_ref().filter(|a| a.streamed) {
                let ttft = now.duration_since(a.received).as_secs_f64();
                a.state.metrics.gateway.first_token_seconds.observe(ttft);
            }
        }
        self.last_data = Some(now);
        self.scanner.feed(data);
        if now.duration_since(self.touched) >= ACTIVITY_EVERY
            && let Some(a) = &self.accounting
        {
            touch_activity(&a.state, a.instance_id);
            self.touched = now;
        }
    }

    /// Accounts for the request, once: at the end of the body, or when it is dropped.
    fn finish(&mut self) {
        let Some(a) = self.accounting.take() else {
            return;
        };
        let Accounting {
            state,
            slot,
            gauge,
            user_id,
            instance_id,
            model_id,
            inference,
            record,
            failed,
            streamed,
            received,
            sent,
            _permit: _,
        } = a;
        // The end of a request is activity too; stamped while the slot still counts as
        // in flight, so the idle check never sees the request gone but not yet stamped.
        touch_activity(&state, instance_id);
        // Free the replica for the next request before anything else.
        drop(slot);
        let usage = self.scanner.usage(streamed);
        let metrics = &state.metrics.gateway;
        metrics
            .upstream_seconds
            .observe(sent.elapsed().as_secs_f64());
        metrics.prompt_tokens.fetch_add(usage.prompt, Relaxed);
        metrics
            .completion_tokens
            .fetch_add(usage.completion, Relaxed);
        // Generation speed: between the first and the last chunk of a stream (the first
        // token's latency is the TTFT histogram's), over the whole call otherwise.
        let generating = match (streamed, self.first_data, self.last_data) {
            (true, Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
            _ => sent.elapsed().as_secs_f64(),
        };
        let counted = if streamed {
            usage.completion.saturating_sub(1)
        } else {
            usage.completion
        };
        if counted > 0 && generating > 0.0 {
            metrics
                .tokens_per_second
                .observe(counted as f64 / generating);
        }
        state
            .gateway
            .limits
            .charge(user_id, usage.prompt + usage.completion);
        drop(gauge);
        if inference {
            state.metrics.instances.record(
                instance_id,
                Sample {
                    latency: received.elapsed(),
                    first_token: self
                        .first_data
                        .filter(|_| streamed)
                        .map(|first| first.duration_since(received)),
                    tokens_out: usage.completion,
                    error: failed || self.broken,
                },
            );
        }
        if !record {
            return;
        }
        let sample = UsageSample {
            owner_id: user_id,
            instance_id,
            model_id,
            at: Utc::now(),
            requests: 1,
            prompt_tokens: usage.prompt,
            completion_tokens: usage.completion,
        };
        state.gateway.writeback.usage(sample);
    }
}

/// Moves the instance's activity time (for idle shutdown) on to now. Through the routing
/// table rather than the route the request started on, which a change of replicas may
/// have replaced since.
fn touch_activity(state: &AppState, instance_id: Uuid) {
    if let Some(route) = state.routing.get(instance_id) {
        route.touch();
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    this.on_data(&data);
                    let data = match &mut this.filter {
                        Some(filter) => filter.push(data),
                        None => data,
                    };
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Some(Err(e)) => {
                    this.broken = true;
                    this.finish();
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    let rest = this
                        .filter
                        .as_mut()
                        .map(UsageFilter::finish)
                        .unwrap_or_default();
                    this.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        // A filtered stream's length is not the replica's.
        match self.filter {
            Some(_) => SizeHint::default(),
            None => self.inner.size_hint(),
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_split(body: &[u8], streamed: bool) -> Usage {
        // Every split point must give the same answer as one piece.
        let whole = {
            let mut s = UsageScanner::default();
            s.feed(body);
            s.usage(streamed)
        };
        for at in 0..body.len() {
            let mut s = UsageScanner::default();
            s.feed(&body[..at]);
            s.feed(&body[at..]);
            assert_eq!(s.usage(streamed), whole, "split at {at}");
        }
        whole
    }

    #[test]
    fn ollama_ndjson_final_chunk() {
        let body = br#"{"model":"m","response":"Hi","done":false}
{"model":"m","response":"","done":true,"done_reason":"stop","total_duration":123,"prompt_eval_count":31,"prompt_eval_duration":5,"eval_count":7,"eval_duration":9,"context":[1,2,3]}
"#;
        assert_eq!(
            scan_split(body, true),
            Usage {
                prompt: 31,
                completion: 7
            }
        );
    }

    #[test]
    fn openai_sse_usage_event_and_whole_json() {
        let body = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\n\
data: [DONE]\n\n";
        assert_eq!(
            scan_split(body, true),
            Usage {
                prompt: 12,
                completion: 3
            }
        );
        let json = br#"{"id":"x","choices":[{"message":{"content":"hi"}}], "usage": {"prompt_tokens": 4, "completion_tokens" : 2}}"#;
        assert_eq!(
            scan_split(json, false),
            Usage {
                prompt: 4,
                completion: 2
            }
        );
    }

    #[test]
    fn keys_inside_generated_text_are_not_counted() {
        // The model wrote `"eval_count": 999` in its answer: escaped quotes in a string.
        let body = br#"{"response":"say \"eval_count\": 999 and eval_count\":5","done":false}
{"done":true,"prompt_eval_count":2,"eval_count":1,"model":"prompt_tokens"}
"#;
        assert_eq!(
            scan_split(body, true),
            Usage {
                prompt: 2,
                completion: 1
            }
        );
    }

    #[test]
    fn a_cut_stream_counts_its_chunks() {
        let body = br#"{"response":"a","done":false}
{"response":"b","done":false}
{"response":"c","#;
        assert_eq!(
            scan_split(body, true),
            Usage {
                prompt: 0,
                completion: 3
            }
        );
        assert_eq!(scan_split(br#"{"models":[]}"#, false), Usage::default());
    }

    #[test]
    fn filter_drops_only_the_usage_event() {
        let mut f = UsageFilter::default();
        let token =
            Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        // Passed through as is, without copying.
        assert_eq!(f.push(token.clone()).as_ptr(), token.as_ptr());
        let last = b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n\
data: [DONE]\n\n";
        let mut out = Vec::new();
        // Split inside the usage event: nothing of it may leak out.
        let cut = find(last, b"usage").unwrap();
        out.extend_from_slice(&f.push(Bytes::copy_from_slice(&last[..cut])));
        out.extend_from_slice(&f.push(Bytes::copy_from_slice(&last[cut..])));
        out.extend_from_slice(&f.finish());
        assert_eq!(
            out,
            b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
        );
    }
}
