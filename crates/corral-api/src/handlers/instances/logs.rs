//! `GET /api/instances/{id}/logs`: the log lines of an instance's replicas, the running
//! ones and the latest runs that ended (stopped, slept, crashed and replaced), read
//! through the compute driver (log files for local replicas, CloudWatch for ECS) with
//! the `driver_ref` each run recorded. So a failed deploy, a crash loop or a sleeping
//! instance still shows what its replicas wrote.
//!
//! A driver that can read all of an instance's logs in one call (ECS: one CloudWatch
//! FilterLogEvents over the instance's streams, instead of a GetLogEvents per run)
//! is read that way, and its lines are matched to runs by replica and time.
//!
//! `?follow=true` keeps the connection open as Server-Sent Events: every source's
//! driver cursor is polled every half second, runs that start later (a restart, a
//! wake from sleep, a scale-out) are picked up, and the stream ends when the client
//! disconnects or the instance is deleted.

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

use super::instance_with;
use crate::access::Access;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

const DEFAULT_TAIL: usize = 200;
const MAX_TAIL: usize = 5000;
/// Runs that ended are read back this many at most, the latest: enough to see a crash
/// loop's last attempts or the previous wake, without reading a long history each time.
const ENDED_RUNS: usize = 10;
/// How often a follow asks the driver for new lines: quick enough to feel live, slow
/// enough that a few open log views cost nothing.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// A run that ended can still gain lines for a while (CloudWatch delivers a stopped
/// task's last lines late); after this, once a read finds nothing new, a follow stops
/// asking for it.
const LATE_LINES: chrono::Duration = chrono::Duration::seconds(30);
/// A comment this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// The last lines of all runs together, 1 to 5000; default 200.
    tail: Option<usize>,
    /// Stream the tail and then each new line as a Server-Sent Event (`data:` is one
    /// line's JSON) until the client disconnects; also on a stopped or sleeping
    /// instance, whose new lines appear once it runs again.
    follow: Option<bool>,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LogLineView {
    /// When it was written, where the line says.
    at: Option<DateTime<Utc>>,
    replica_id: Uuid,
    /// The run (one launch of the replica) that wrote it; null for a replica launched
    /// before runs were recorded.
    run_id: Option<Uuid>,
    line: String,
}

/// A run whose lines are in the page.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LogRunView {
    /// Null for a replica launched before runs were recorded.
    run_id: Option<Uuid>,
    replica_id: Uuid,
    started_at: DateTime<Utc>,
    /// Null while it runs.
    ended_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogsPage {
    /// Oldest first, runs interleaved by time.
    lines: Vec<LogLineView>,
    /// The runs read: the running ones and the latest ten that ended, oldest first.
    runs: Vec<LogRunView>,
}

/// The last lines of an instance's replicas, running and recently ended, or
/// (`follow=true`) a live stream of them.
#[utoipa::path(get, path = "/api/instances/{id}/logs", tag = "instances",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "instance id"), LogsQuery),
    responses(
        (status = 200, body = LogsPage, description = "JSON, or `text/event-stream` with `follow=true`"),
        (status = 400, description = "tail out of range"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 404, description = "no such instance among the caller's"),
        (status = 503, description = "the instance's compute driver is not configured here"),
    ))]
pub(super) async fn instance_logs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(query): Query<LogsQuery>,
) -> ApiResult<Response> {
    let inst = instance_with(&state, &principal, id, Access::Read).await?;
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
        sources: HashMap::new(),
        whole: None,
    };
    let lines = tailer.read(tail).await?;
    if !query.follow.unwrap_or(false) {
        return Ok(Json(LogsPage {
            lines,
            runs: tailer.runs(),
        })
        .into_response());
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

/// One log to read: a run, or a replica that has no run recorded.
#[derive(Debug, Clone)]
struct Source {
    view: LogRunView,
    replica: ReplicaRef,
    /// The driver's cursor once read.
    cursor: Option<String>,
    /// Ended long enough ago and read to the end: not asked again.
    done: bool,
}

/// Reads an instance's logs, remembering where each source's log ended.
struct Tailer {
    store: Arc<dyn Store>,
    driver: Arc<dyn ComputeDriver>,
    instance_id: Uuid,
    /// By replica id and driver reference (one per launch).
    sources: HashMap<(Uuid, String), Source>,
    /// `Some` once the driver has answered an instance-wide read: then every later read
    /// is one too, from this cursor (None: nothing to continue from yet).
    whole: Option<Option<String>>,
}

impl Tailer {
    /// The sources of the last read, oldest first.
    fn runs(&self) -> Vec<LogRunView> {
        let mut runs: Vec<LogRunView> = self.sources.values().map(|s| s.view.clone()).collect();
        runs.sort_by_key(|r| (r.started_at, r.replica_id));
        runs
    }

    /// The running replicas' runs and the latest `ENDED_RUNS` that ended, plus any
    /// launched replica that has no run recorded.
    async fn current_sources(&self) -> ApiResult<Vec<(LogRunView, ReplicaRef)>> {
        let runs = self.store.runs_for_instance(self.instance_id).await?;
        let replicas = self.store.list_replicas(self.instance_id).await?;
        let ended = runs.iter().filter(|r| r.ended_at.is_some()).count();
        let mut skip_ended = ended.saturating_sub(ENDED_RUNS);
        let mut out = Vec::new();
        for run in runs {
            if run.ended_at.is_some() && skip_ended > 0 {
                skip_ended -= 1;
                continue;
            }
            out.push((
                LogRunView {
                    run_id: Some(run.id),
                    replica_id: run.replica_id,
                    started_at: run.started_at,
                    ended_at: run.ended_at,
                },
                ReplicaRef {
                    instance_id: run.instance_id,
                    replica_id: run.replica_id,
                    driver_ref: run.driver_ref,
                },
            ));
        }
        for r in replicas {
            let recorded = out
                .iter()
                .any(|(_, rr)| rr.replica_id == r.id && rr.driver_ref == r.driver_ref);
            // An empty reference: not launched (yet), nothing to read.
            if recorded || r.driver_ref.is_empty() {
                continue;
            }
            out.push((
                LogRunView {
                    run_id: None,
                    replica_id: r.id,
                    started_at: r.started_at,
                    ended_at: None,
                },
                ReplicaRef {
                    instance_id: r.instance_id,
                    replica_id: r.id,
                    driver_ref: r.driver_ref,
                },
            ));
        }
        Ok(out)
    }

    /// New lines since the last call: the last `tail` lines of sources not seen before
    /// (all of them on the first call), everything after the cursor of the others.
    /// `NotFound` once the instance is gone. A source the driver cannot read is
    /// skipped (logged) so that one lost old log does not hide the others; if none
    /// could be read, the error is returned.
    async fn read(&mut self, tail: usize) -> ApiResult<Vec<LogLineView>> {
        if self.store.instance(self.instance_id).await?.is_none() {
            return Err(ApiError::NotFound("instance"));
        }
        let current = self.current_sources().await?;
        let mut next: HashMap<(Uuid, String), Source> = HashMap::with_capacity(current.len());
        for (view, replica) in current {
            let key = (replica.replica_id, replica.driver_ref.clone());
            let source = match self.sources.remove(&key) {
                Some(mut known) => {
                    // A run that ended since the last read: read it to its end again.
                    known.done &= known.view.ended_at == view.ended_at;
                    known.view = view;
                    known
                }
                None => Source {
                    view,
                    replica,
                    cursor: None,
                    done: false,
                },
            };
            next.insert(key, source);
        }
        self.sources = next;
        if let Some(lines) = self.read_whole(tail).await? {
            return Ok(lines);
        }

        let now = Utc::now();
        let (mut lines, mut failed, mut read) = (Vec::new(), None, 0usize);
        let mut order: Vec<&mut Source> = self.sources.values_mut().collect();
        order.sort_by_key(|s| (s.view.started_at, s.view.replica_id));
        for source in order.into_iter().filter(|s| !s.done) {
            let page = match self
                .driver
                .logs(&source.replica, source.cursor.as_deref(), tail)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(instance = %self.instance_id, replica = %source.replica.replica_id, error = %e, "reading a run's log failed");
                    failed.get_or_insert(e);
                    continue;
                }
            };
            read += 1;
            if page.lines.is_empty()
                && source.cursor.is_some()
                && source.view.ended_at.is_some_and(|e| now - e > LATE_LINES)
            {
                source.done = true;
            }
            source.cursor = page.next.or(source.cursor.take());
            lines.push((source.view.run_id, page.lines));
        }
        if read == 0
            && let Some(e) = failed
        {
            return Err(ApiError::internal(e));
        }
        let mut merged = interleave(lines);
        if merged.len() > tail {
            merged.drain(..merged.len() - tail);
        }
        Ok(merged)
    }
}

impl Tailer {
    /// The instance-wide read, where the driver offers one: None if it does not (the
    /// per-run reads are used). Lines get the run of their replica that had started
    /// by then.
    async fn read_whole(&mut self, tail: usize) -> ApiResult<Option<Vec<LogLineView>>> {
        let cursor = self.whole.clone().flatten();
        let Some(page) = self
            .driver
            .instance_logs(self.instance_id, cursor.as_deref(), tail)
            .await
            .map_err(ApiError::internal)?
        else {
            return Ok(None);
        };
        self.whole = Some(page.next.or(cursor));
        let runs = self.runs();
        let mut lines: Vec<LogLineView> = page
            .lines
            .into_iter()
            .map(|l| LogLineView {
                run_id: run_of(&runs, l.replica_id, l.at),
                at: l.at,
                replica_id: l.replica_id,
                line: l.line,
            })
            .collect();
        if lines.len() > tail {
            lines.drain(..lines.len() - tail);
        }
        Ok(Some(lines))
    }
}

/// The run of `replica` a line written at `at` belongs to: the latest that started
/// by then (the first run when the line has no time). None for a line of no known run.
fn run_of(runs: &[LogRunView], replica: Uuid, at: Option<DateTime<Utc>>) -> Option<Uuid> {
    let mut mine = runs.iter().filter(|r| r.replica_id == replica);
    let run = match at {
        // `runs` is ordered by start.
        Some(at) => mine.rfind(|r| r.started_at <= at),
        None => mine.next(),
    };
    run.and_then(|r| r.run_id)
}

/// Where a line goes: its time (or that of the line before it), its run, its position
/// in the run.
type MergeKey = (Option<DateTime<Utc>>, usize, usize);

/// Merges runs' lines by time, keeping each run's order. A line without a time of its
/// own (a panic's continuation, a wrapped message) goes with the line before it.
fn interleave(per_run: Vec<(Option<Uuid>, Vec<LogLine>)>) -> Vec<LogLineView> {
    let mut keyed: Vec<(MergeKey, LogLineView)> = Vec::new();
    for (r, (run_id, lines)) in per_run.into_iter().enumerate() {
        let mut last = None;
        for (i, line) in lines.into_iter().enumerate() {
            last = line.at.or(last);
            let view = LogLineView {
                at: line.at,
                replica_id: line.replica_id,
                run_id,
                line: line.line,
            };
            keyed.push(((last, r, i), view));
        }
    }
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, view)| view).collect()
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
    fn instance_wide_lines_go_to_the_run_of_their_replica_started_by_then() {
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (a1, a2, b1) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let run = |run: Uuid, replica, start, end: Option<i64>| LogRunView {
            run_id: Some(run),
            replica_id: replica,
            started_at: t(start),
            ended_at: end.map(t),
        };
        let runs = [
            run(a1, a, 10, Some(20)),
            run(b1, b, 15, None),
            run(a2, a, 30, None),
        ];
        assert_eq!(run_of(&runs, a, Some(t(12))), Some(a1));
        assert_eq!(run_of(&runs, a, Some(t(25))), Some(a1), "late lines of a1");
        assert_eq!(run_of(&runs, a, Some(t(31))), Some(a2));
        assert_eq!(run_of(&runs, b, Some(t(40))), Some(b1));
        assert_eq!(run_of(&runs, a, None), Some(a1));
        assert_eq!(run_of(&runs, Uuid::nil(), Some(t(40))), None);
    }

    #[test]
    fn interleaves_by_time_keeping_continuations_with_their_line() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let run_b = Uuid::now_v7();
        let merged = interleave(vec![
            (
                None,
                vec![
                    line(a, Some(10), "a1"),
                    line(a, None, "a1 continued"),
                    line(a, Some(30), "a2"),
                ],
            ),
            (
                Some(run_b),
                vec![line(b, Some(20), "b1"), line(b, Some(30), "b2")],
            ),
        ]);
        let text: Vec<&str> = merged.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(text, ["a1", "a1 continued", "b1", "a2", "b2"]);
        let runs: Vec<Option<Uuid>> = merged.iter().map(|l| l.run_id).collect();
        assert_eq!(runs, [None, None, Some(run_b), None, Some(run_b)]);
    }
}
