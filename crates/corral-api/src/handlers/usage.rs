//! Metering: `GET /api/usage` rolls the gateway's hourly usage rows up per user, model
//! or instance, with what the instances cost from their running time and the price
//! table (`[prices]` in corral.toml). A user sees their own usage; admins everyone's.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use chrono::{DateTime, Utc};
use corral_core::{Instance, PriceTable, UsageRow};
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

/// What an instance has cost so far: its running time × the hourly price of its size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct Cost {
    /// USD so far; null when the price table has no price for the size (an unlisted
    /// GPU instance type).
    pub usd: Option<f64>,
    /// USD per hour per replica of this size.
    pub hourly_usd: Option<f64>,
    /// Seconds it has been serving (ready or scaling), including the current run.
    pub running_seconds: i64,
    /// `running_seconds` × its current target replicas: what is billed. An estimate
    /// when the replica count changed while it ran.
    pub replica_seconds: i64,
}

impl Cost {
    pub fn of(prices: &PriceTable, inst: &Instance, now: DateTime<Utc>) -> Cost {
        let running_seconds = inst.running_seconds
            + inst
                .running_since
                .map_or(0, |since| (now - since).num_seconds().max(0));
        let replica_seconds = running_seconds * i64::from(inst.target_replicas.max(1));
        Cost {
            usd: prices.cost(&inst.compute, replica_seconds),
            hourly_usd: prices.hourly(&inst.compute),
            running_seconds,
            replica_seconds,
        }
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
    /// RFC 3339 time; usage from the hour that contains it. Default: all time.
    since: Option<DateTime<Utc>>,
    /// RFC 3339 time; usage of hours that start before it. Default: now.
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
    /// Running cost so far of the group's instances that still exist, all time (running
    /// time is not kept per hour, so `since`/`until` do not narrow it).
    cost_usd: f64,
    /// Some of the group's instances have a size the price table does not price.
    cost_incomplete: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    group_by: GroupBy,
    /// Largest total tokens first.
    groups: Vec<UsageGroup>,
    total: UsageTotals,
    total_cost_usd: f64,
}

#[derive(Default)]
struct Acc {
    label: Option<String>,
    usage: UsageTotals,
    cost_usd: f64,
    cost_incomplete: bool,
}

/// Usage (requests, tokens) per user, model or instance over a time range, with the
/// instances' running cost. Users see their own; admins see everyone's.
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
    let rows = state.store.usage(scope, query.since, query.until).await?;
    let instances = state.store.list_instances(scope).await?;
    let now = Utc::now();

    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    let key = |owner: Uuid, model: &str, instance: Uuid| match group_by {
        GroupBy::User => owner.to_string(),
        GroupBy::Model => model.to_string(),
        GroupBy::Instance => instance.to_string(),
    };
    for row in &rows {
        let acc = groups
            .entry(key(row.owner_id, &row.model_id, row.instance_id))
            .or_default();
        acc.usage = acc.usage.add(row);
        if group_by == GroupBy::Instance {
            acc.label = Some(row.model_id.clone());
        }
    }
    // Every instance counts for cost, with or without traffic in the range.
    for inst in &instances {
        let acc = groups
            .entry(key(inst.owner_id, &inst.model_id, inst.id))
            .or_default();
        let cost = Cost::of(&state.settings.prices, inst, now);
        if group_by == GroupBy::Instance {
            acc.label = Some(inst.model_id.clone());
        }
        match cost.usd {
            Some(usd) => acc.cost_usd += usd,
            None if cost.replica_seconds > 0 => acc.cost_incomplete = true,
            None => {}
        }
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
    let total_cost_usd = groups.values().map(|a| a.cost_usd).sum();
    let mut groups: Vec<UsageGroup> = groups
        .into_iter()
        .map(|(key, acc)| UsageGroup {
            key,
            label: acc.label,
            usage: acc.usage,
            cost_usd: acc.cost_usd,
            cost_incomplete: acc.cost_incomplete,
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
    use corral_core::{ComputeSpec, ComputeType, Desired, InstanceSettings, State};

    #[test]
    fn cost_counts_the_current_run_and_every_replica() {
        let now = Utc::now();
        let inst = Instance {
            id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            model_id: "m".into(),
            driver: "ecs".into(),
            compute: ComputeSpec {
                compute_type: ComputeType::Fargate,
                cpu: 1.0,
                memory: 2048,
                gpu_count: 0,
                instance_type: None,
                spot: false,
            },
            settings: InstanceSettings::default(),
            desired: Desired::Running,
            state: State::Ready,
            state_reason: None,
            target_replicas: 2,
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            running_since: Some(now - chrono::Duration::seconds(600)),
            running_seconds: 1200,
        };
        let prices = PriceTable::default();
        let cost = Cost::of(&prices, &inst, now);
        assert_eq!(cost.running_seconds, 1800);
        assert_eq!(cost.replica_seconds, 3600);
        let hourly = prices.hourly(&inst.compute).unwrap();
        assert!(
            (cost.usd.unwrap() - hourly).abs() < 1e-12,
            "two replicas for half an hour"
        );
        let stopped = Instance {
            running_since: None,
            ..inst
        };
        assert_eq!(Cost::of(&prices, &stopped, now).running_seconds, 1200);
    }
}
