//! Teams: admins create, rename and delete them and manage their members under
//! `/api/admin/teams`; `GET /api/teams` lists the caller's own teams with their role.
//! What membership allows on instances is decided in `crate::access`.
//!
//! A team is deleted only while it owns no instances (409 otherwise: delete them
//! first); its memberships go with it, since they grant nothing without the team.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use corral_core::{Team, TeamMember, TeamRole, validate_team_name};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::audit::Audit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_teams))
        .routes(routes!(list_teams, create_team))
        .routes(routes!(get_team, rename_team, delete_team))
        .routes(routes!(set_member, remove_member))
}

/// A team as admins see it, with its members.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeamView {
    id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
    /// In the order they were added.
    members: Vec<MemberView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    user_id: Uuid,
    /// None if the account is gone (a deleted user's memberships go with it).
    email: Option<String>,
    display_name: Option<String>,
    /// `owner` (manages the team's instances) or `member` (uses them).
    role: TeamRole,
    added_at: DateTime<Utc>,
}

/// One of the caller's teams.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyTeamView {
    id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
    /// The caller's role in it.
    role: TeamRole,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamName {
    /// 1 to 64 characters (trimmed), unique among teams ignoring case.
    name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRole {
    role: TeamRole,
}

fn team_name(raw: &str) -> ApiResult<String> {
    validate_team_name(raw).map_err(|m| ApiError::bad_request("invalid_team_name", m))
}

async fn member_view(state: &AppState, m: TeamMember) -> ApiResult<MemberView> {
    let user = state.store.user_by_id(m.user_id).await?;
    Ok(MemberView {
        user_id: m.user_id,
        email: user.as_ref().map(|u| u.email.clone()),
        display_name: user.map(|u| u.display_name),
        role: m.role,
        added_at: m.added_at,
    })
}

async fn team_view(state: &AppState, team: Team) -> ApiResult<TeamView> {
    let mut members = Vec::new();
    for m in state.store.team_members(team.id).await? {
        members.push(member_view(state, m).await?);
    }
    Ok(TeamView {
        id: team.id,
        name: team.name,
        created_at: team.created_at,
        members,
    })
}

async fn existing_team(state: &AppState, id: Uuid) -> ApiResult<Team> {
    state
        .store
        .team(id)
        .await?
        .ok_or(ApiError::NotFound("team"))
}

/// The caller's teams with their role in each, by name.
#[utoipa::path(get, path = "/api/teams", tag = "teams",
    security(("bearer" = [])),
    responses(
        (status = 200, body = [MyTeamView]),
        (status = 401, description = "missing or invalid credentials"),
    ))]
async fn my_teams(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<MyTeamView>>> {
    let teams = state.store.user_teams(principal.user.id).await?;
    Ok(Json(
        teams
            .into_iter()
            .map(|m| MyTeamView {
                id: m.team.id,
                name: m.team.name,
                created_at: m.team.created_at,
                role: m.role,
            })
            .collect(),
    ))
}

/// Every team with its members, by name.
#[utoipa::path(get, path = "/api/admin/teams", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, body = [TeamView]),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
    ))]
async fn list_teams(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
) -> ApiResult<Json<Vec<TeamView>>> {
    principal
        .require_admin()
        .inspect_err(|_| audit.action("admin.teams.list"))?;
    let mut views = Vec::new();
    for team in state.store.list_teams().await? {
        views.push(team_view(&state, team).await?);
    }
    Ok(Json(views))
}

/// Creates a team (no members yet: add them with `PUT .../members/{user_id}`).
#[utoipa::path(post, path = "/api/admin/teams", tag = "admin",
    security(("bearer" = [])),
    request_body = TeamName,
    responses(
        (status = 201, body = TeamView),
        (status = 400, description = "invalid_team_name: empty, over 64 characters or with control characters"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 409, description = "a team has that name (ignoring case)"),
    ))]
async fn create_team(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Json(body): Json<TeamName>,
) -> ApiResult<(StatusCode, Json<TeamView>)> {
    audit.action("admin.teams.create");
    principal.require_admin()?;
    let team = Team {
        id: Uuid::now_v7(),
        name: team_name(&body.name)?,
        created_at: Utc::now(),
    };
    state.store.create_team(&team).await?;
    audit.target(team.id);
    audit.detail(&format!("name={}", team.name));
    Ok((StatusCode::CREATED, Json(team_view(&state, team).await?)))
}

/// One team with its members.
#[utoipa::path(get, path = "/api/admin/teams/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "team id")),
    responses(
        (status = 200, body = TeamView),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such team"),
    ))]
async fn get_team(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<TeamView>> {
    principal
        .require_admin()
        .inspect_err(|_| audit.action("admin.teams.show"))?;
    let team = existing_team(&state, id).await?;
    Ok(Json(team_view(&state, team).await?))
}

/// Renames a team.
#[utoipa::path(put, path = "/api/admin/teams/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "team id")),
    request_body = TeamName,
    responses(
        (status = 200, body = TeamView),
        (status = 400, description = "invalid_team_name"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such team"),
        (status = 409, description = "another team has that name (ignoring case)"),
    ))]
async fn rename_team(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
    Json(body): Json<TeamName>,
) -> ApiResult<Json<TeamView>> {
    audit.action("admin.teams.rename");
    audit.target(id);
    principal.require_admin()?;
    let name = team_name(&body.name)?;
    let team = state
        .store
        .rename_team(id, &name)
        .await?
        .ok_or(ApiError::NotFound("team"))?;
    audit.detail(&format!("name={name}"));
    Ok(Json(team_view(&state, team).await?))
}

/// Deletes a team and its memberships. Refused (409) while it owns instances, in any
/// state: delete them first.
#[utoipa::path(delete, path = "/api/admin/teams/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "team id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such team"),
        (status = 409, description = "the team still owns instances"),
    ))]
async fn delete_team(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    audit.action("admin.teams.delete");
    audit.target(id);
    principal.require_admin()?;
    if state.store.delete_team(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("team"))
    }
}

/// Adds a user to a team with a role, or changes their role. A member whose platform
/// role is viewer stays read-only whatever their team role.
#[utoipa::path(put, path = "/api/admin/teams/{id}/members/{user_id}", tag = "admin",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "team id"),
        ("user_id" = Uuid, Path, description = "user id"),
    ),
    request_body = MemberRole,
    responses(
        (status = 200, body = MemberView),
        (status = 400, description = "role is not owner or member"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such team or user"),
    ))]
async fn set_member(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path((id, user_id)): Path<(Uuid, Uuid)>,
    Json(body): Json<MemberRole>,
) -> ApiResult<Json<MemberView>> {
    audit.action("admin.teams.members.set");
    audit.target(format!("{id}/{user_id}"));
    principal.require_admin()?;
    existing_team(&state, id).await?;
    if state.store.user_by_id(user_id).await?.is_none() {
        return Err(ApiError::NotFound("user"));
    }
    let member = state
        .store
        .set_team_member(&TeamMember {
            team_id: id,
            user_id,
            role: body.role,
            added_at: Utc::now(),
        })
        .await?;
    audit.detail(&format!("role={}", member.role.as_str()));
    Ok(Json(member_view(&state, member).await?))
}

/// Removes a user from a team. Instances they deployed for it stay the team's.
#[utoipa::path(delete, path = "/api/admin/teams/{id}/members/{user_id}", tag = "admin",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "team id"),
        ("user_id" = Uuid, Path, description = "user id"),
    ),
    responses(
        (status = 204, description = "removed"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "the user is not a member of that team"),
    ))]
async fn remove_member(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path((id, user_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    audit.action("admin.teams.members.remove");
    audit.target(format!("{id}/{user_id}"));
    principal.require_admin()?;
    if state.store.remove_team_member(id, user_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("team member"))
    }
}
