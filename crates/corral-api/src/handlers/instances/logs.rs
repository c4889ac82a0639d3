//! `GET /api/instances/{id}/logs`: the log lines of every replica of an instance,
//! read through its compute driver (log files for local replicas, CloudWatch for ECS).
//! `?follow=true` keeps the connection open as Server-Sent Events: the driver's cursor
//! of each replica is polled every half second, replicas that appear are picked up,
//! and the stream ends when the client disconnects or the instance is deleted.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use corral_drivers::{ComputeDriver, LogLine, ReplicaRef};
use corral_store::Store;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::visible;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

const DEFAULT_TAIL: usize = 200;
const MAX_TAIL: usize = 5000;
/// How often a follow asks the driver for new lines: quick enough to feel live, slow
/// enough that a few open log views cost nothing.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// A comment this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// The last lines of all replicas together, 1 to 5000; default 200.
    tail: Option<usize>,
    /// Stream the tail and then each new line as a Server-Sent Event (`data:` is one
    /// line's JSON) until the client disconnects.
    follow: Option<bool>,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LogLineView {
    /// When it was written, where the line says.
    at: Option<DateTime<Utc>>,
    replica_id: Uuid,
    line: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogsPage {
    /// Oldest first, replicas interleaved by time.
    lines: Vec<LogLineView>,
}

/// The last lines of an instance's replicas, or (`follow=true`) a live stream of them.
/// Logs are kept while a replica exists; a stopped instance has none to show.
#[utoipa::path(get, path = "/api/instances/{id}/logs", tag = "instances",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "instance id"), LogsQuery),
    responses(
        (status = 200, body = LogsPage, description = "JSON, or `text/event-stream` with `follow=true`"),
        (status = 400, description = "tail out of range"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 404, description = "no such instance among the caller's"),
    ))]
pub(super) async fn instance_logs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(query): Query<LogsQuery>,
) -> ApiResult<Response> {
    let inst = visible(&state, &principal, id).await?;
    let tail = query.tail.unwrap_or(DEFAULT_TAIL);
    if !(1..=MAX_TAIL).contains(&tail) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("tail must be 1 to {MAX_TAIL}"),
        ));
    }
    let driver = state.control.driver(&inst.driver).ok_or_else(|| {
        ApiError::Unavailable(format!(
            "the {} driver is not configured on this server, so its logs cannot be read",
            inst.driver
        ))
    })?;
    let mut tailer = Tailer {
        store: state.store.clone(),
        driver,
        instance_id: id,
        cursors: HashMap::new(),
    };
    let lines = tailer.read(tail).await?;
    if !query.follow.unwrap_or(false) {
        return Ok(Json(LogsPage { lines }).into_response());
    }
    let pending: VecDeque<Event> = lines.iter().map(event).collect();
    // The stream is dropped when the client goes away, which ends the polling with it.
    let stream = futures_util::stream::unfold(
        (tailer, pending, false),
        |(mut tailer, mut pending, mut ended)| async move {
            loop {
                if let Some(ev) = pending.pop_front() {
                    return Some((Ok::<_, Infallible>(ev), (tailer, pending, ended)));
                }
                if ended {
                    return None;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
                match tailer.read(MAX_TAIL).await {
                    Ok(lines) => pending.extend(lines.iter().map(event)),
                    Err(ApiError::NotFound(_)) => {
                        pending.push_back(Event::default().event("end").data("instance deleted"));
                        ended = true;
                    }
                    Err(e) => {
                        tracing::warn!(instance = %tailer.instance_id, error = %e, "following logs")
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

fn event(line: &LogLineView) -> Event {
    Event::default()
        .json_data(line)
        .unwrap_or_else(|_| Event::default().data(&line.line))
}

/// Reads an instance's replicas' logs, remembering where each replica's log ended.
struct Tailer {
    store: Arc<dyn Store>,
    driver: Arc<dyn ComputeDriver>,
    instance_id: Uuid,
    /// The driver's cursor per replica seen so far.
    cursors: HashMap<Uuid, Option<String>>,
}

impl Tailer {
    /// New lines since the last call: the last `tail` lines of replicas not seen before
    /// (all of them on the first call), everything after the cursor of the others.
    /// `NotFound` once the instance is gone.
    async fn read(&mut self, tail: usize) -> ApiResult<Vec<LogLineView>> {
        let replicas = self.store.list_replicas(self.instance_id).await?;
        if replicas.is_empty() && self.store.instance(self.instance_id).await?.is_none() {
            return Err(ApiError::NotFound("instance"));
        }
        self.cursors
            .retain(|id, _| replicas.iter().any(|r| r.id == *id));
        let mut lines = Vec::new();
        for r in replicas {
            let replica = ReplicaRef {
                instance_id: r.instance_id,
                replica_id: r.id,
                driver_ref: r.driver_ref,
            };
            let cursor = self.cursors.get(&r.id).cloned().flatten();
            let page = self
                .driver
                .logs(&replica, cursor.as_deref(), tail)
                .await
                .map_err(ApiError::internal)?;
            self.cursors.insert(r.id, page.next.or(cursor));
            lines.push(page.lines);
        }
        let mut merged = interleave(lines);
        if merged.len() > tail {
            merged.drain(..merged.len() - tail);
        }
        Ok(merged)
    }
}

/// Merges replicas' lines by time, keeping each replica's order. A line without a time
/// of its own (a panic's continuation, a wrapped message) goes with the line before it.
fn interleave(per_replica: Vec<Vec<LogLine>>) -> Vec<LogLineView> {
    let mut keyed: Vec<(Option<DateTime<Utc>>, usize, usize, LogLine)> = Vec::new();
    for (r, lines) in per_replica.into_iter().enumerate() {
        let mut last = None;
        for (i, line) in lines.into_iter().enumerate() {
            last = line.at.or(last);
            keyed.push((last, r, i, line));
        }
    }
    keyed.sort_by_key(|k| (k.0, k.1, k.2));
    keyed
        .into_iter()
        .map(|(_, _, _, l)| LogLineView {
            at: l.at,
            replica_id: l.replica_id,
            line: l.line,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(replica: Uuid, secs: Option<i64>, text: &str) -> LogLine {
        LogLine {
            at: secs.map(|s| DateTime::from_timestamp(s, 0).unwrap()),
            replica_id: replica,
            line: text.into(),
        }
    }

    #[test]
    fn interleaves_by_time_keeping_continuations_with_their_line() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let merged = interleave(vec![
            vec![
                line(a, Some(10), "a1"),
                line(a, None, "a1 continued"),
                line(a, Some(30), "a2"),
            ],
            vec![line(b, Some(20), "b1"), line(b, Some(30), "b2")],
        ]);
        let text: Vec<&str> = merged.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(text, ["a1", "a1 continued", "b1", "a2", "b2"]);
    }
}
