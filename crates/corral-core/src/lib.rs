//! Domain types and rules shared by every part of Corral. Nothing here does I/O,
//! so the rules (roles, password policy, token formats, TOTP) are tested in isolation.

pub mod audit;
pub mod budget;
pub mod catalog;
pub mod compute;
pub mod instance;
pub mod password;
pub mod pricing;
pub mod quota;
pub mod role;
pub mod secret;
pub mod team;
pub mod totp;
pub mod user;
pub mod webhook;

pub use audit::{AuditEntry, AuditFilter, NewAuditEntry, Outcome};
pub use budget::{BudgetAction, BudgetLevel};
pub use catalog::{CatalogModel, ModelSource};
pub use compute::{ComputeOffer, ComputeSpec, ComputeType};
pub use instance::{
    Desired, Instance, InstanceEvent, InstanceSettings, Replica, ReplicaState, State, UsageRow,
    UsageSample,
};
pub use pricing::PriceTable;
pub use quota::{
    Admission, Allocation, LimitKind, Limits, Quota, Refusal, Resource, Subject, quota_subject,
};
pub use role::Role;
pub use team::{Membership, TEAM_NAME_MAX, Team, TeamMember, TeamRole, validate_team_name};
pub use user::{ApiKey, LoginFailures, OutboxMessage, RefreshSession, TokenPurpose, User};
pub use webhook::WebhookEvent;
