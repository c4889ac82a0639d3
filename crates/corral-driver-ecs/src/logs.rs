//! An instance's logs across all its log streams, with FilterLogEvents.
//!
//! Every task of an instance writes to `<instance id>/model/<task id>` (the awslogs
//! stream prefix is the instance id), so one FilterLogEvents query with that prefix reads
//! every replica the instance has had, including tasks that stopped or were replaced
//! long ago, as long as their streams are kept. A replica's own `logs` (GetLogEvents on
//! its current task's stream) cannot see those.
//!
//! - Tail (no cursor): FilterLogEvents from an hour back, then a day, then 30 days,
//!   until `tail` lines are found (it reads forward only; most tails are recent).
//! - Follow: the cursor is the time of the newest line returned plus the ids of the
//!   lines at that millisecond (`<ms> <stream>@<event id>,…`); the next read starts at that
//!   millisecond and skips those. Lines that arrive later with an older time (a delayed
//!   batch) are not seen, as with `aws logs tail --follow`.
//! - Every page of a query is read (nextToken), up to [`MAX_READ`] events; a call
//!   returns at most [`MAX_EVENTS`] lines and following goes on from the last.
//! - A line's replica is the `corral:replica-id` tag of its task (DescribeTasks, then
//!   remembered); for a task ECS no longer knows it is the nil id.

use std::collections::{HashMap, HashSet};

use aws_sdk_cloudwatchlogs::types::FilteredLogEvent;
use chrono::{DateTime, Utc};
use corral_drivers::{Error, LogLine, LogPage, Result};
use uuid::Uuid;

use crate::{CONTAINER, DESCRIBE_BATCH, EcsDriver, TAG_REPLICA, provider, tag};

/// The most lines one call returns; following continues from there.
pub(crate) const MAX_EVENTS: usize = 10_000;
/// Tail looks an hour back first, then a day, then 30 days.
const TAIL_WINDOWS_MS: [i64; 3] = [3_600_000, 86_400_000, 30 * 86_400_000];
/// One query reads at most this many events (bounded memory for a chatty instance).
const MAX_READ: usize = 10 * MAX_EVENTS;

/// Where following resumes: a millisecond and the events already read at it.
#[derive(Debug, Default, PartialEq)]
struct Cursor {
    at_ms: i64,
    seen: HashSet<String>,
}

impl Cursor {
    fn parse(raw: &str) -> Result<Cursor> {
        let bad = || Error::Invalid(format!("not a log cursor of the ecs driver: {raw:?}"));
        let (at, seen) = raw.split_once(' ').unwrap_or((raw, ""));
        Ok(Cursor {
            at_ms: at.parse().map_err(|_| bad())?,
            seen: seen
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        })
    }

    fn render(&self) -> String {
        let mut seen: Vec<&str> = self.seen.iter().map(String::as_str).collect();
        seen.sort_unstable();
        format!("{} {}", self.at_ms, seen.join(","))
    }
}

/// An event's identity: stream and id (moto numbers events per stream; AWS's ids are
/// unique in the group, where the stream changes nothing).
fn key(e: &FilteredLogEvent) -> String {
    format!(
        "{}@{}",
        e.log_stream_name().unwrap_or_default(),
        e.event_id().unwrap_or_default()
    )
}

impl EcsDriver {
    /// Every event of the instance's streams from `start_ms` on, in time order.
    async fn filter_events(
        &self,
        instance_id: Uuid,
        start_ms: i64,
    ) -> Result<Vec<FilteredLogEvent>> {
        let prefix = format!("{instance_id}/{CONTAINER}/");
        let mut events = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .logs
                .filter_log_events()
                .log_group_name(&self.cfg.log_group)
                .log_stream_name_prefix(&prefix)
                .start_time(start_ms)
                .set_next_token(next.take())
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                // No group yet (the first task has not logged): nothing to read.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) =>
                {
                    return Ok(vec![]);
                }
                Err(e) => return Err(provider("FilterLogEvents")(e)),
            };
            events.extend(
                out.events()
                    .iter()
                    // moto's later pages forget the prefix; AWS never strays from it.
                    .filter(|e| e.log_stream_name().is_some_and(|s| s.starts_with(&prefix)))
                    .cloned(),
            );
            match out.next_token() {
                Some(token) if events.len() < MAX_READ => next = Some(token.to_string()),
                Some(_) => {
                    tracing::warn!(%instance_id, "more than {MAX_READ} log events; read the first");
                    break;
                }
                None => break,
            }
        }
        // Pages come stream by stream, not in time order; stable, so each stream keeps
        // its own order within a millisecond.
        events.sort_by_key(|e| e.timestamp().unwrap_or_default());
        Ok(events)
    }

    /// The replica of each task id, from the tasks' tags (remembered: it never changes).
    async fn replicas_of(&self, task_ids: HashSet<String>) -> Result<HashMap<String, Uuid>> {
        let mut known = self
            .task_replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let missing: Vec<String> = task_ids
            .into_iter()
            .filter(|id| !known.contains_key(id))
            .collect();
        for batch in missing.chunks(DESCRIBE_BATCH) {
            for task in self.describe(batch.to_vec()).await? {
                if let (Some(arn), Some(replica)) = (
                    task.task_arn(),
                    tag(&task, TAG_REPLICA).and_then(|r| r.parse().ok()),
                ) {
                    known.insert(crate::task_id(arn).to_string(), replica);
                }
            }
        }
        self.task_replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(known.clone());
        Ok(known)
    }

    pub(crate) async fn read_instance_logs(
        &self,
        instance_id: Uuid,
        cursor: Option<&str>,
        tail: usize,
    ) -> Result<LogPage> {
        let tail = tail.clamp(1, MAX_EVENTS);
        let (events, before) = match cursor {
            Some(raw) => {
                let cursor = Cursor::parse(raw)?;
                let mut events = self.filter_events(instance_id, cursor.at_ms).await?;
                events.retain(|e| {
                    e.timestamp() != Some(cursor.at_ms) || !cursor.seen.contains(&key(e))
                });
                events.truncate(MAX_EVENTS);
                (events, Some(cursor))
            }
            None => {
                let now = Utc::now().timestamp_millis();
                let mut events = Vec::new();
                for window in TAIL_WINDOWS_MS {
                    events = self.filter_events(instance_id, now - window).await?;
                    if events.len() >= tail {
                        break;
                    }
                }
                events.drain(..events.len().saturating_sub(tail));
                (events, None)
            }
        };
        let next = match events.last().and_then(|e| e.timestamp()) {
            Some(at_ms) => {
                let mut seen: HashSet<String> = events
                    .iter()
                    .filter(|e| e.timestamp() == Some(at_ms))
                    .map(key)
                    .collect();
                // Lines of that millisecond read by an earlier call stay skipped.
                if let Some(before) = before.filter(|b| b.at_ms == at_ms) {
                    seen.extend(before.seen);
                }
                Some(Cursor { at_ms, seen }.render())
            }
            None => before
                .map(|b| b.render())
                // Nothing yet: follow from now on.
                .or_else(|| {
                    Some(
                        Cursor {
                            at_ms: Utc::now().timestamp_millis(),
                            seen: HashSet::new(),
                        }
                        .render(),
                    )
                }),
        };
        let tasks: HashSet<String> = events
            .iter()
            .filter_map(|e| e.log_stream_name())
            .filter_map(|s| s.rsplit('/').next())
            .map(String::from)
            .collect();
        let replicas = self.replicas_of(tasks).await?;
        let lines = events
            .iter()
            .map(|e| LogLine {
                at: e.timestamp().and_then(DateTime::from_timestamp_millis),
                replica_id: e
                    .log_stream_name()
                    .and_then(|s| s.rsplit('/').next())
                    .and_then(|t| replicas.get(t).copied())
                    .unwrap_or(Uuid::nil()),
                line: e.message().unwrap_or_default().trim_end().to_string(),
            })
            .collect();
        Ok(LogPage { lines, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c = Cursor {
            at_ms: 1_700_000_000_123,
            seen: ["a/model/t@2".to_string(), "a/model/t@1".to_string()].into(),
        };
        assert_eq!(c.render(), "1700000000123 a/model/t@1,a/model/t@2");
        assert_eq!(Cursor::parse(&c.render()).unwrap(), c);
        assert_eq!(Cursor::parse("5").unwrap().at_ms, 5);
        assert!(matches!(Cursor::parse("x y"), Err(Error::Invalid(_))));
    }
}
