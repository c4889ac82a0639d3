//! Metering: `GET /api/usage` rolls the gateway's hourly usage rows up per user, model
//! or instance, with what the replicas cost in the same window: the time of every
//! replica run inside the window × the hourly price of the run's compute (`[prices]`
//! in corral.toml). Runs are kept after an instance or its owner is deleted, so a
//! cost, once incurred, never goes away. A user sees their own; admins everyone's.
//!
//! Billing starts when the driver launches a replica, not when it becomes ready, and
//! ends when it is stopped or found dead: that is how AWS bills Fargate tasks and EC2
//! instances (per second, from launch), so the figures match the bill.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use chrono::{DateTime, Utc};
use corral_core::{ComputeSpec, PriceTable, UsageRow};
use corral_store::ReplicaRun;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Query};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(usage))
}

/// Requests and tokens through the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct UsageTotals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl UsageTotals {
    pub fn add(mut self, row: &UsageRow) -> Self {
        self.requests += row.requests;
        self.prompt_tokens += row.prompt_tokens;
        self.completion_tokens += row.completion_tokens;
        self.total_tokens += row.prompt_tokens + row.completion_tokens;
        self
    }
}

/// What an instance has cost so far: every run of its replicas, from launch until it
/// stopped (or now), × the hourly price of that run's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct Cost {
    /// USD so far; null when a run's size has no price in the table (an unlisted GPU
    /// instance type).
    pub usd: Option<f64>,
    /// USD per hour per replica of the instance's current size.
    pub hourly_usd: Option<f64>,
    /// Seconds during which at least one replica ran (launched, not yet stopped).
    pub running_seconds: i64,
    /// Running seconds summed over replicas: what is billed. Exact when the replica
    /// count changed, since every replica's run is counted on its own.
    pub replica_seconds: i64,
}

impl Cost {
    /// From all of an instance's runs (`Store::runs_for_instance`), up to `now`.
    pub fn of(
        prices: &PriceTable,
        compute: &ComputeSpec,
        runs: &[ReplicaRun],
        now: DateTime<Utc>,
    ) -> Cost {
        let window = Window::new(None, None, now);
        let mut billed = Billed::default();
        for run in runs {
            billed.add(prices, run, &window);
        }
        Cost {
            usd: (!billed.unpriced).then_some(billed.usd),
            hourly_usd: prices.hourly(compute),
            running_seconds: billed.running_seconds(),
            replica_seconds: billed.replica_micros / 1_000_000,
        }
    }
}

/// The time range that is billed: `[since, until)`, never past now (an open run is
/// billed up to now, not up to a future `until`).
#[derive(Debug, Clone, Copy)]
struct Window {
    since: Option<DateTime<Utc>>,
    until: DateTime<Utc>,
}

impl Window {
    fn new(
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Window {
        Window {
            since,
            until: until.map_or(now, |u| u.min(now)),
        }
    }

    /// The part of `run` inside the window, if any.
    fn clip(&self, run: &ReplicaRun) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let start = self.since.map_or(run.started_at, |s| s.max(run.started_at));
        let end = run.ended_at.map_or(self.until, |e| e.min(self.until));
        (end > start).then_some((start, end))
    }
}

/// Runs priced inside a window.
#[derive(Debug, Default)]
struct Billed {
    usd: f64,
    /// A run with time in the window has a size the price table does not price.
    unpriced: bool,
    replica_micros: i64,
    /// The billed part of each run, for the time at least one replica ran.
    spans: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

impl Billed {
    fn add(&mut self, prices: &PriceTable, run: &ReplicaRun, window: &Window) {
        let Some((start, end)) = window.clip(run) else {
            return;
        };
        // Microseconds fit i64 for ±292,000 years; a run is far shorter.
        let micros = (end - start).num_microseconds().unwrap_or(i64::MAX);
        match prices.cost(&run.compute, micros as f64 / 1e6) {
            Some(usd) => self.usd += usd,
            None => self.unpriced = true,
        }
        self.replica_micros = self.replica_micros.saturating_add(micros);
        self.spans.push((start, end));
    }

    /// Whole seconds covered by at least one span (overlapping replicas count once).
    fn running_seconds(&self) -> i64 {
        let mut spans = self.spans.clone();
        spans.sort();
        let mut micros = 0i64;
        let mut current: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        for (start, end) in spans {
            current = match current {
                Some((s, e)) if start <= e => Some((s, e.max(end))),
                Some((s, e)) => {
                    micros += (e - s).num_microseconds().unwrap_or(i64::MAX);
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((s, e)) = current {
            micros += (e - s).num_microseconds().unwrap_or(i64::MAX);
        }
        micros / 1_000_000
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    User,
    Model,
    #[default]
    Instance,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// RFC 3339 time. Usage: hours that start at or after it; cost: replica time
    /// from it on. Default: all time.
    since: Option<DateTime<Utc>>,
    /// RFC 3339 time. Usage: hours that start before it; cost: replica time before
    /// it (and never past now). Default: now.
    until: Option<DateTime<Utc>>,
    /// `user`, `model` or `instance` (default).
    group_by: Option<GroupBy>,
}

/// One group's usage and cost.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageGroup {
    /// The user id, the model id, or the instance id.
    key: String,
    /// The user's e-mail (admins), or the instance's model.
    label: Option<String>,
    #[serde(flatten)]
    usage: UsageTotals,
    /// What the group's replicas cost between `since` and `until`: each replica run's
    /// time in that window (from launch, as AWS bills) × the hourly price of its size.
    /// Deleted instances and users keep their cost.
    cost_usd: f64,
    /// Replica running seconds in the window, summed over replicas (what is billed).
    replica_seconds: i64,
    /// Some of the group's runs have a size the price table does not price (left out
    /// of `cost_usd`).
    cost_incomplete: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    group_by: GroupBy,
    /// Largest total tokens first, then largest cost. Every instance of the caller's
    /// (all, for admins) that still exists has a group, with or without usage or cost
    /// in the window; deleted ones only when they have some.
    groups: Vec<UsageGroup>,
    total: UsageTotals,
    total_cost_usd: f64,
}

#[derive(Default)]
struct Acc {
    label: Option<String>,
    usage: UsageTotals,
    billed: Billed,
}

/// The group a row, run or instance belongs to, made on first use.
fn group_of<'a>(
    groups: &'a mut BTreeMap<String, Acc>,
    group_by: GroupBy,
    owner: Uuid,
    model: &str,
    instance: Uuid,
) -> &'a mut Acc {
    let key = match group_by {
        GroupBy::User => owner.to_string(),
        GroupBy::Model => model.to_string(),
        GroupBy::Instance => instance.to_string(),
    };
    let acc = groups.entry(key).or_default();
    if group_by == GroupBy::Instance {
        acc.label = Some(model.to_string());
    }
    acc
}

/// Usage (requests, tokens) per user, model or instance over a time range, with what
/// the replicas cost in that range: each replica is billed per second from its launch
/// (not from ready) until it stopped, as AWS bills Fargate tasks and EC2 instances, at
/// the hourly price of its size. Deleted instances and users keep their cost. Users
/// see their own; admins see everyone's.
#[utoipa::path(get, path = "/api/usage", tag = "usage",
    security(("bearer" = [])),
    params(UsageQuery),
    responses(
        (status = 200, body = UsageReport),
        (status = 400, description = "a bound is not an RFC 3339 time, or since is not before until"),
        (status = 401, description = "missing or invalid credentials"),
    ))]
async fn usage(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<UsageQuery>,
) -> ApiResult<Json<UsageReport>> {
    if let (Some(since), Some(until)) = (query.since, query.until)
        && since >= until
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            "since must be before until",
        ));
    }
    let group_by = query.group_by.unwrap_or_default();
    let admin = principal.user.role.is_admin();
    let scope = (!admin).then_some(principal.user.id);
    let now = Utc::now();
    let window = Window::new(query.since, query.until, now);
    let rows = state.store.usage(scope, query.since, query.until).await?;
    let runs = state
        .store
        .runs_overlapping(scope, window.since, Some(window.until))
        .await?;
    let instances = state.store.list_instances(scope).await?;

    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    for row in &rows {
        let acc = group_of(
            &mut groups,
            group_by,
            row.owner_id,
            &row.model_id,
            row.instance_id,
        );
        acc.usage = acc.usage.add(row);
    }
    for run in &runs {
        group_of(
            &mut groups,
            group_by,
            run.owner_id,
            &run.model_id,
            run.instance_id,
        )
        .billed
        .add(&state.settings.prices, run, &window);
    }
    // Every existing instance is listed, with or without traffic or cost in the range.
    for inst in &instances {
        group_of(
            &mut groups,
            group_by,
            inst.owner_id,
            &inst.model_id,
            inst.id,
        );
    }
    if group_by == GroupBy::User {
        let mut emails = HashMap::new();
        for (owner, acc) in groups.iter_mut() {
            let Ok(id) = owner.parse::<Uuid>() else {
                continue;
            };
            if id == principal.user.id {
                acc.label = Some(principal.user.email.clone());
            } else if admin {
                acc.label = match emails.get(&id) {
                    Some(email) => Option::clone(email),
                    None => {
                        let email = state.store.user_by_id(id).await?.map(|u| u.email);
                        emails.insert(id, email.clone());
                        email
                    }
                };
            }
        }
    }

    let total = rows.iter().fold(UsageTotals::default(), |t, r| t.add(r));
    let total_cost_usd = groups.values().map(|a| a.billed.usd).sum();
    let mut groups: Vec<UsageGroup> = groups
        .into_iter()
        .map(|(key, acc)| UsageGroup {
            key,
            label: acc.label,
            usage: acc.usage,
            cost_usd: acc.billed.usd,
            replica_seconds: acc.billed.replica_micros / 1_000_000,
            cost_incomplete: acc.billed.unpriced,
        })
        .collect();
    groups.sort_by(|a, b| {
        b.usage
            .total_tokens
            .cmp(&a.usage.total_tokens)
            .then(b.cost_usd.total_cmp(&a.cost_usd))
            .then(a.key.cmp(&b.key))
    });
    Ok(Json(UsageReport {
        since: query.since,
        until: query.until,
        group_by,
        groups,
        total,
        total_cost_usd,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use corral_core::ComputeType;

    fn fargate() -> ComputeSpec {
        ComputeSpec {
            compute_type: ComputeType::Fargate,
            cpu: 1.0,
            memory: 2048,
            gpu_count: 0,
            instance_type: None,
            spot: false,
        }
    }

    fn run(
        compute: ComputeSpec,
        started_at: DateTime<Utc>,
        ended_at: Option<DateTime<Utc>>,
    ) -> ReplicaRun {
        ReplicaRun {
            id: Uuid::now_v7(),
            replica_id: Uuid::now_v7(),
            instance_id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            model_id: "m".into(),
            driver: "ecs".into(),
            driver_ref: "arn:aws:ecs:us-east-1:000000000000:task/c/t".into(),
            compute,
            started_at,
            ended_at,
        }
    }

    #[test]
    fn cost_counts_every_replica_run_and_the_open_one_up_to_now() {
        let now = Utc::now();
        let at = |mins: i64| now - Duration::minutes(mins);
        // Two replicas overlapping for 10 minutes, then one open for 20 more.
        let runs = [
            run(fargate(), at(60), Some(at(30))),
            run(fargate(), at(40), Some(at(20))),
            run(fargate(), at(20), None),
        ];
        let prices = PriceTable::default();
        let cost = Cost::of(&prices, &fargate(), &runs, now);
        assert_eq!(cost.replica_seconds, (30 + 20 + 20) * 60);
        assert_eq!(cost.running_seconds, 60 * 60, "overlap counted once");
        let hourly = prices.hourly(&fargate()).unwrap();
        assert_eq!(cost.hourly_usd, Some(hourly));
        assert!((cost.usd.unwrap() - hourly * 70.0 / 60.0).abs() < 1e-9);

        // A run of an unpriced size makes the total unknown.
        let mut gpu = fargate();
        gpu.compute_type = ComputeType::Gpu;
        gpu.instance_type = Some("x9.unlisted".into());
        let with_gpu = [runs[0].clone(), run(gpu, at(5), Some(at(1)))];
        assert_eq!(Cost::of(&prices, &fargate(), &with_gpu, now).usd, None);
        assert_eq!(Cost::of(&prices, &fargate(), &[], now).usd, Some(0.0));
    }

    #[test]
    fn windows_clip_runs_and_never_bill_the_future() {
        let now = Utc::now();
        let at = |mins: i64| now - Duration::minutes(mins);
        let window = Window::new(Some(at(50)), Some(at(35)), now);
        assert_eq!(
            window.clip(&run(fargate(), at(60), Some(at(30)))),
            Some((at(50), at(35)))
        );
        assert_eq!(
            window.clip(&run(fargate(), at(35), None)),
            None,
            "starts at until"
        );
        assert_eq!(
            window.clip(&run(fargate(), at(70), Some(at(50)))),
            None,
            "ends at since"
        );
        let future = Window::new(None, Some(now + Duration::hours(5)), now);
        assert_eq!(
            future.clip(&run(fargate(), at(10), None)),
            Some((at(10), now))
        );
    }
}
