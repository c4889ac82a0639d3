//! The audit log: one row per auth event and per mutating API call.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    /// The acting user, when known (a failed login for an unknown address has none).
    pub actor_id: Option<Uuid>,
    /// E-mail of the actor or of the address a login was attempted for.
    pub actor_email: Option<String>,
    /// What happened, e.g. `auth.login`, `keys.create`, `PUT /api/admin/users/{id}/role`.
    pub action: String,
    /// What it happened to, e.g. a user or key id.
    pub target: Option<String>,
    pub ip: Option<String>,
    pub outcome: Outcome,
    /// HTTP status or a short reason; never a secret.
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub actor_id: Option<Uuid>,
    pub actor_email: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub outcome: Outcome,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

/// Filters for reading the log, newest first. `before_id` pages backwards.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::IntoParams)]
pub struct AuditFilter {
    pub actor_id: Option<Uuid>,
    /// Prefix match, e.g. `auth.` for every auth event.
    pub action: Option<String>,
    pub outcome: Option<Outcome>,
    pub since: Option<DateTime<Utc>>,
    pub before_id: Option<i64>,
    /// 1..=500, default 100.
    pub limit: Option<u32>,
}

impl AuditFilter {
    pub fn effective_limit(&self) -> u32 {
        self.limit.unwrap_or(100).clamp(1, 500)
    }
}
