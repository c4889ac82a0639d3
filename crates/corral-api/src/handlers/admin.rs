//! Administration under `/api/admin`: users (list, create, role, lock, delete), the
//! audit log and the mail outbox. Every route needs the admin role. An admin cannot
//! demote, lock or delete themselves, so the platform always keeps at least one admin.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use corral_core::{AuditEntry, AuditFilter, OutboxMessage, Role, User, user};
use corral_store::UserPatch;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::profile::{check_new_password, validate_display_name};
use crate::audit::Audit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use crate::views::UserView;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(update_user, delete_user))
        .routes(routes!(lock_user))
        .routes(routes!(unlock_user))
        .routes(routes!(list_audit))
        .routes(routes!(list_outbox))
}

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

/// Checks the admin role. Mutations are audited anyway; for reads, only a refused
/// attempt is worth a row (a non-admin probing admin routes), so `read_action` names it.
fn require_admin(principal: &Principal, audit: &Audit, read_action: &str) -> ApiResult<()> {
    principal.require_admin().inspect_err(|_| {
        audit.action(read_action);
    })
}

/// `self_change` when an admin tries to take away their own admin access.
fn refuse_self(principal: &Principal, id: Uuid, what: &str) -> ApiResult<()> {
    if principal.user.id == id {
        return Err(ApiError::bad_request(
            "self_change",
            format!("you cannot {what} your own account; ask another admin"),
        ));
    }
    Ok(())
}

/// No stored value contains control characters, and PostgreSQL cannot even compare
/// text with a NUL in it (it would fail as a 500), so such a filter is a bad request.
fn refuse_control_chars(name: &str, value: Option<&str>) -> ApiResult<()> {
    if value.is_some_and(|v| v.chars().any(char::is_control)) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("{name} must not contain control characters"),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// Users to skip (oldest first); default 0.
    offset: Option<u32>,
    /// Page size, 1 to 500; default 50.
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsersPage {
    users: Vec<UserView>,
    /// All users, for paging.
    total: u64,
}

/// Lists users, oldest first.
#[utoipa::path(get, path = "/api/admin/users", tag = "admin",
    security(("bearer" = [])),
    params(UsersQuery),
    responses(
        (status = 200, body = UsersPage),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
    ))]
async fn list_users(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Query(query): Query<UsersQuery>,
) -> ApiResult<Json<UsersPage>> {
    require_admin(&principal, &audit, "admin.users.list")?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let users = state
        .store
        .list_users(query.offset.unwrap_or(0), limit)
        .await?;
    Ok(Json(UsersPage {
        users: users.iter().map(UserView::from).collect(),
        total: state.store.count_users().await?,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    email: String,
    /// Must meet the password policy.
    password: String,
    role: Role,
    /// Defaults to the part of the e-mail before `@`.
    display_name: Option<String>,
}

/// Creates an account, already verified (the admin vouches for the address).
#[utoipa::path(post, path = "/api/admin/users", tag = "admin",
    security(("bearer" = [])),
    request_body = CreateUser,
    responses(
        (status = 201, body = UserView),
        (status = 400, description = "invalid_email, weak_password (details.failed_rules) or invalid_display_name"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 409, description = "the e-mail is taken; `users_managed_by_provider` in auth mode cognito, where users are added to the pool"),
    ))]
async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Json(body): Json<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    audit.action("admin.users.create");
    principal.require_admin()?;
    // A built-in account could not sign in: login goes to the user pool in this mode.
    if state.cognito.is_some() {
        return Err(ApiError::denied(
            StatusCode::CONFLICT,
            "users_managed_by_provider",
            "auth mode is cognito: add the user to the Amazon Cognito user pool (and to \
             the group of its role); their Corral account is made at their first sign-in",
        ));
    }
    if !user::is_valid_email(&body.email) {
        return Err(ApiError::bad_request(
            "invalid_email",
            "email is not a valid e-mail address",
        ));
    }
    // Until the account exists its address is the only name for the target.
    audit.target(user::normalize_email(&body.email));
    let display_name = body
        .display_name
        .as_deref()
        .map(validate_display_name)
        .transpose()?;
    check_new_password(&body.password)?;
    let hash = state.passwords.hash(body.password).await?;
    let mut new = User::new(&body.email, hash, body.role, Utc::now());
    new.email_verified = true;
    if let Some(name) = display_name {
        new.display_name = name;
    }
    state.store.create_user(&new).await?;
    audit.target(new.id);
    audit.detail(&format!("role={}", new.role));
    Ok((StatusCode::CREATED, Json(UserView::from(&new))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    role: Option<Role>,
    /// `true` locks the account (its sessions are revoked and its tokens and keys stop
    /// working); `false` unlocks it, also clearing any failed-login lockout.
    disabled: Option<bool>,
}

/// Changes a user's role and/or locks or unlocks them. Takes effect at once, even
/// for access tokens already issued.
#[utoipa::path(put, path = "/api/admin/users/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "user id")),
    request_body = UpdateUser,
    responses(
        (status = 200, body = UserView),
        (status = 400, description = "self_change: an admin cannot demote or lock themselves"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such user"),
        (status = 409, description = "`role_managed_by_provider`: auth mode cognito, where the role of a pool account follows its Cognito groups; `last_admin`: the last active admin cannot be demoted or locked"),
    ))]
async fn update_user(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateUser>,
) -> ApiResult<Json<UserView>> {
    audit.action("admin.users.update");
    audit.target(id);
    principal.require_admin()?;
    let mut changes = Vec::new();
    if let Some(role) = body.role {
        changes.push(format!("role={role}"));
    }
    if let Some(disabled) = body.disabled {
        changes.push(format!("disabled={disabled}"));
    }
    audit.detail(&changes.join(" "));
    if let Some(role) = body.role {
        refuse_provider_role(&state, id, role).await?;
    }
    apply(&state, &principal, id, body.role, body.disabled).await
}

/// In auth mode cognito a pool account's role is recomputed from its Cognito groups at
/// every sign-in and request, so a role set here would silently revert: refuse it and
/// say where roles are managed. Setting the role it already has changes nothing and
/// passes, as do accounts that are Corral's own.
async fn refuse_provider_role(state: &AppState, id: Uuid, role: Role) -> ApiResult<()> {
    let Some(cognito) = &state.cognito else {
        return Ok(());
    };
    let target = state
        .store
        .user_by_id(id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    if !crate::auth::oidc::is_external(&target) || target.role == role {
        return Ok(());
    }
    let groups = cognito.roles();
    Err(ApiError::denied(
        StatusCode::CONFLICT,
        "role_managed_by_provider",
        format!(
            "this account signs in through Amazon Cognito and its role follows its groups \
             in the user pool: put it in the {:?} group there (the highest of {:?}, \
             {:?} and {:?} wins); the new role applies at its next request",
            groups.group_for(role),
            groups.admin_group,
            groups.user_group,
            groups.viewer_group,
        ),
    ))
}

/// Locks a user: shortcut for `PUT {"disabled": true}`.
#[utoipa::path(post, path = "/api/admin/users/{id}/lock", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "user id")),
    responses(
        (status = 200, body = UserView),
        (status = 400, description = "self_change: an admin cannot lock themselves"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such user"),
        (status = 409, description = "`last_admin`: the last active admin cannot be locked"),
    ))]
async fn lock_user(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<UserView>> {
    audit.action("admin.users.lock");
    audit.target(id);
    principal.require_admin()?;
    apply(&state, &principal, id, None, Some(true)).await
}

/// Unlocks a user, including a failed-login lockout: shortcut for `PUT {"disabled": false}`.
#[utoipa::path(post, path = "/api/admin/users/{id}/unlock", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "user id")),
    responses(
        (status = 200, body = UserView),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such user"),
    ))]
async fn unlock_user(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<UserView>> {
    audit.action("admin.users.unlock");
    audit.target(id);
    principal.require_admin()?;
    apply(&state, &principal, id, None, Some(false)).await
}

/// The shared part of update, lock and unlock.
async fn apply(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    role: Option<Role>,
    disabled: Option<bool>,
) -> ApiResult<Json<UserView>> {
    if role.is_some_and(|r| r != Role::Admin) {
        refuse_self(principal, id, "demote")?;
    }
    if disabled == Some(true) {
        refuse_self(principal, id, "lock")?;
    }
    let now = Utc::now();
    let patch = UserPatch {
        role,
        disabled,
        ..UserPatch::default()
    };
    let user = state
        .store
        .update_user(id, &patch, now)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    match disabled {
        // Refresh tokens would otherwise mint new access tokens the moment the account
        // is unlocked; a locked user starts over with a fresh login.
        Some(true) => {
            state.store.revoke_user_sessions(id, now).await?;
        }
        // Unlocking also lifts a lockout from failed logins.
        Some(false) => state.store.clear_login_failures(&user.email).await?,
        None => {}
    }
    Ok(Json(UserView::from(&user)))
}

/// Deletes a user with their sessions and API keys; their tokens stop working at once.
/// Refused while they own instances (compute would be orphaned). The audit log keeps
/// their past actions.
#[utoipa::path(delete, path = "/api/admin/users/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "user id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "self_change: an admin cannot delete themselves"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such user"),
        (status = 409, description = "the user still owns instances; delete those first, or `last_admin`: the last active admin cannot be deleted"),
    ))]
async fn delete_user(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    audit.action("admin.users.delete");
    audit.target(id);
    principal.require_admin()?;
    refuse_self(&principal, id, "delete")?;
    if state.store.delete_user(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("user"))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first; pass the last entry's `id` as `before_id` for the next page.
    entries: Vec<AuditEntry>,
}

/// Reads the audit log, newest first, with optional filters.
#[utoipa::path(get, path = "/api/admin/audit", tag = "admin",
    security(("bearer" = [])),
    params(AuditFilter),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, description = "a filter is malformed"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
    ))]
async fn list_audit(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Query(filter): Query<AuditFilter>,
) -> ApiResult<Json<AuditPage>> {
    require_admin(&principal, &audit, "admin.audit.read")?;
    refuse_control_chars("action", filter.action.as_deref())?;
    Ok(Json(AuditPage {
        entries: state.store.list_audit(&filter).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    /// Only mail to this address.
    to: Option<String>,
    /// 1 to 500; default 50.
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxPage {
    /// Newest first.
    messages: Vec<OutboxMessage>,
}

/// Mail written to the outbox (every message when no SMTP server is configured):
/// verification and reset links on installs without a mail server.
#[utoipa::path(get, path = "/api/admin/outbox", tag = "admin",
    security(("bearer" = [])),
    params(OutboxQuery),
    responses(
        (status = 200, body = OutboxPage),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
    ))]
async fn list_outbox(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Query(query): Query<OutboxQuery>,
) -> ApiResult<Json<OutboxPage>> {
    require_admin(&principal, &audit, "admin.outbox.read")?;
    refuse_control_chars("to", query.to.as_deref())?;
    let to = query.to.as_deref().map(user::normalize_email);
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    Ok(Json(OutboxPage {
        messages: state.store.list_outbox(to.as_deref(), limit).await?,
    }))
}
