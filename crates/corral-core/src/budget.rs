//! Monthly spend limits: where an owner's month-to-date spend stands against its
//! budget, which alerts are due, and what the month is. The spend itself is metered
//! elsewhere (replica run time × prices); these are the decisions on top of it.
//!
//! The level is always recomputed from the stored spend and the *current* budget, so
//! an admin raising a budget lifts the refusal at once, without waiting for the next
//! periodic evaluation of spend.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::webhook::WebhookEvent;

/// Alert threshold when an owner's quota document names none, in percent of the budget.
pub const DEFAULT_ALERT_PERCENT: u8 = 80;

/// Where spend stands; ordered, so "at least the threshold" is a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetLevel {
    Under,
    Threshold,
    Exceeded,
}

/// What happens to an owner's running instances once the budget is spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    /// Put them to sleep (they wake on the next request once the budget allows).
    #[default]
    Sleep,
    /// Leave them running; only new deploys, starts and gateway calls are refused.
    Keep,
}

impl std::str::FromStr for BudgetAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sleep" => Ok(BudgetAction::Sleep),
            "keep" => Ok(BudgetAction::Keep),
            _ => Err(format!("budget_action must be sleep or keep, not {s:?}")),
        }
    }
}

/// The level of `spend_usd` against `budget_usd` (`None`: no budget, never over).
/// A budget of 0 allows no spending, as a quota of 0 allows nothing. An alert percent
/// of 0 or ≥ 100 means no early alert, only the one at 100 %.
pub fn level(spend_usd: f64, budget_usd: Option<f64>, alert_percent: Option<u8>) -> BudgetLevel {
    let Some(budget) = budget_usd else {
        return BudgetLevel::Under;
    };
    if spend_usd >= budget {
        return BudgetLevel::Exceeded;
    }
    let percent = alert_percent.unwrap_or(DEFAULT_ALERT_PERCENT);
    if (1..100).contains(&percent) && spend_usd >= budget * f64::from(percent) / 100.0 {
        BudgetLevel::Threshold
    } else {
        BudgetLevel::Under
    }
}

/// Alerts due when spend reaches `now`, given the highest level already alerted this
/// month (`None`: none yet). Each level alerts once a month; jumping straight past
/// 100 % sends both, so a receiver that only watches the threshold still hears.
pub fn alerts_due(now: BudgetLevel, alerted: Option<BudgetLevel>) -> Vec<WebhookEvent> {
    [
        (BudgetLevel::Threshold, WebhookEvent::BudgetThreshold),
        (BudgetLevel::Exceeded, WebhookEvent::BudgetExceeded),
    ]
    .into_iter()
    .filter(|(l, _)| now >= *l && alerted.is_none_or(|a| a < *l))
    .map(|(_, e)| e)
    .collect()
}

/// The month spend is counted in, as stored with each subject's state ("2026-12"):
/// a new key starts the month's spend and alerts afresh.
pub fn month_key(now: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", now.year(), now.month())
}

/// Midnight UTC on the first of `now`'s month: where month-to-date spend starts.
pub fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use BudgetLevel::*;

    #[test]
    fn levels() {
        assert_eq!(level(1e9, None, None), Under);
        assert_eq!(level(79.99, Some(100.0), None), Under);
        assert_eq!(level(80.0, Some(100.0), None), Threshold);
        assert_eq!(level(99.99, Some(100.0), None), Threshold);
        assert_eq!(level(100.0, Some(100.0), None), Exceeded);
        assert_eq!(level(50.0, Some(100.0), Some(50)), Threshold);
        assert_eq!(level(99.0, Some(100.0), Some(0)), Under);
        assert_eq!(level(99.0, Some(100.0), Some(100)), Under);
        assert_eq!(level(0.0, Some(0.0), None), Exceeded);
    }

    #[test]
    fn raising_the_budget_lifts_the_level_for_the_same_spend() {
        assert_eq!(level(120.0, Some(100.0), None), Exceeded);
        assert_eq!(level(120.0, Some(200.0), None), Under);
    }

    #[test]
    fn each_level_alerts_once() {
        assert!(alerts_due(Under, None).is_empty());
        assert_eq!(alerts_due(Threshold, None), [WebhookEvent::BudgetThreshold]);
        assert!(alerts_due(Threshold, Some(Threshold)).is_empty());
        assert_eq!(
            alerts_due(Exceeded, Some(Threshold)),
            [WebhookEvent::BudgetExceeded]
        );
        assert_eq!(
            alerts_due(Exceeded, None),
            [WebhookEvent::BudgetThreshold, WebhookEvent::BudgetExceeded]
        );
        assert!(alerts_due(Exceeded, Some(Exceeded)).is_empty());
        // Falling back (budget raised) sends nothing and keeps the record.
        assert!(alerts_due(Under, Some(Exceeded)).is_empty());
    }

    #[test]
    fn months() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(month_key(t), "2026-12");
        assert_eq!(
            month_start(t),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
        let jan = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(month_key(jan), "2027-01");
        assert_eq!(month_start(jan), jan);
    }

    #[test]
    fn budget_action_parses() {
        assert_eq!("sleep".parse::<BudgetAction>(), Ok(BudgetAction::Sleep));
        assert_eq!("keep".parse::<BudgetAction>(), Ok(BudgetAction::Keep));
        assert!("off".parse::<BudgetAction>().is_err());
        assert_eq!(BudgetAction::default(), BudgetAction::Sleep);
    }
}
