//! Who may do what with an instance, decided in one place: a pure function of the
//! caller's platform role and id, their team memberships and the instance.
//!
//! * Admins manage every instance.
//! * Viewers read every instance (status, timeline, logs) and nothing more: they
//!   neither change nor use any, whatever their team role.
//! * An instance without a team is its deployer's: they manage it; nobody else (but
//!   admins and viewers) sees it.
//! * A team's instance belongs to the team: its owners manage it, its members use it
//!   (see it, read its logs and timeline, call it through the gateway). Its deployer
//!   has no other rights than their membership, so leaving the team leaves the
//!   instance behind.
//!
//! The API answers 404 where the access is `None` (the same as for an instance that
//! does not exist), and 403 where the caller sees the instance but may not do what they
//! asked (a member stopping a team instance, a viewer changing anything).

use corral_core::{Instance, Membership, Role, TeamRole};
use uuid::Uuid;

/// What a caller may do with one instance; each level includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Not even know it exists.
    None,
    /// See it, its timeline and logs.
    Read,
    /// Also call it through the gateway.
    Use,
    /// Also stop, start, change and delete it.
    Manage,
}

/// The caller's access to `inst`. `teams` are the caller's memberships (only those of
/// the instance's team matter).
pub fn instance_access(role: Role, user_id: Uuid, teams: &[Membership], inst: &Instance) -> Access {
    access(role, user_id, teams, inst.owner_id, inst.team_id)
}

/// `instance_access` for an instance known by its deployer and team only (the
/// gateway's routing table).
pub fn access(
    role: Role,
    user_id: Uuid,
    teams: &[Membership],
    owner_id: Uuid,
    team_id: Option<Uuid>,
) -> Access {
    match role {
        Role::Admin => Access::Manage,
        Role::Viewer => Access::Read,
        Role::User => match team_id {
            Some(team_id) => match teams.iter().find(|m| m.team.id == team_id) {
                Some(m) if m.role == TeamRole::Owner => Access::Manage,
                Some(_) => Access::Use,
                None => Access::None,
            },
            None if owner_id == user_id => Access::Manage,
            None => Access::None,
        },
    }
}

/// Which instances routing by `model` (`/v1`, `/ollama/api`) may pick for a caller who
/// may run models, in order of preference: their own first, then their teams'. Admins
/// route by model like users (they reach other people's instances by id only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModelRoute {
    Own,
    Team,
}

pub fn model_route(
    user_id: Uuid,
    teams: &[Membership],
    owner_id: Uuid,
    team_id: Option<Uuid>,
) -> Option<ModelRoute> {
    if access(Role::User, user_id, teams, owner_id, team_id) < Access::Use {
        return None;
    }
    Some(match team_id {
        None => ModelRoute::Own,
        Some(_) => ModelRoute::Team,
    })
}

/// Whether a caller with this role needs their memberships to decide: admins and
/// viewers do not, so their requests skip the lookup.
pub fn needs_memberships(role: Role) -> bool {
    role == Role::User
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use corral_core::{ComputeSpec, ComputeType, Desired, InstanceSettings, State, Team};

    fn inst(owner: Uuid, team: Option<Uuid>) -> Instance {
        let now = Utc::now();
        Instance {
            id: Uuid::now_v7(),
            owner_id: owner,
            team_id: team,
            model_id: "m".into(),
            driver: "local".into(),
            compute: ComputeSpec {
                compute_type: ComputeType::Local,
                cpu: 1.0,
                memory: 512,
                gpu_count: 0,
                instance_type: None,
                spot: false,
            },
            settings: InstanceSettings::default(),
            desired: Desired::Running,
            state: State::Ready,
            state_reason: None,
            target_replicas: 1,
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            running_since: None,
            running_seconds: 0,
        }
    }

    fn membership(team: Uuid, role: TeamRole) -> Membership {
        Membership {
            team: Team {
                id: team,
                name: "t".into(),
                created_at: Utc::now(),
            },
            role,
        }
    }

    #[test]
    fn personal_instances() {
        let (me, other) = (Uuid::now_v7(), Uuid::now_v7());
        let mine = inst(me, None);
        assert_eq!(instance_access(Role::User, me, &[], &mine), Access::Manage);
        assert_eq!(instance_access(Role::User, other, &[], &mine), Access::None);
        assert_eq!(
            instance_access(Role::Admin, other, &[], &mine),
            Access::Manage
        );
        assert_eq!(
            instance_access(Role::Viewer, other, &[], &mine),
            Access::Read
        );
        // A demoted owner keeps only a viewer's read access.
        assert_eq!(instance_access(Role::Viewer, me, &[], &mine), Access::Read);
    }

    #[test]
    fn team_instances() {
        let (deployer, me, team, other_team) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let shared = inst(deployer, Some(team));
        let owner = [membership(team, TeamRole::Owner)];
        let member = [membership(team, TeamRole::Member)];
        let elsewhere = [membership(other_team, TeamRole::Owner)];
        assert_eq!(
            instance_access(Role::User, me, &owner, &shared),
            Access::Manage
        );
        assert_eq!(
            instance_access(Role::User, me, &member, &shared),
            Access::Use
        );
        assert_eq!(
            instance_access(Role::User, me, &elsewhere, &shared),
            Access::None
        );
        assert_eq!(instance_access(Role::User, me, &[], &shared), Access::None);
        // The deployer's rights are their membership's, and go when they leave.
        assert_eq!(
            instance_access(Role::User, deployer, &member, &shared),
            Access::Use
        );
        assert_eq!(
            instance_access(Role::User, deployer, &[], &shared),
            Access::None
        );
        // A viewer who owns the team still only reads.
        assert_eq!(
            instance_access(Role::Viewer, me, &owner, &shared),
            Access::Read
        );
        assert_eq!(
            instance_access(Role::Admin, me, &[], &shared),
            Access::Manage
        );
    }

    #[test]
    fn routing_by_model_prefers_own_then_teams() {
        let (me, other, team, stranger_team) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let teams = [membership(team, TeamRole::Member)];
        assert_eq!(model_route(me, &teams, me, None), Some(ModelRoute::Own));
        assert_eq!(
            model_route(me, &teams, other, Some(team)),
            Some(ModelRoute::Team)
        );
        // What I deployed for a team is the team's, not mine.
        assert_eq!(
            model_route(me, &teams, me, Some(team)),
            Some(ModelRoute::Team)
        );
        assert_eq!(model_route(me, &teams, other, None), None);
        assert_eq!(model_route(me, &teams, other, Some(stranger_team)), None);
        assert_eq!(model_route(me, &[], me, Some(team)), None);
        assert!(ModelRoute::Own < ModelRoute::Team);
    }

    #[test]
    fn levels_are_ordered() {
        assert!(Access::None < Access::Read);
        assert!(Access::Read < Access::Use);
        assert!(Access::Use < Access::Manage);
        assert!(!needs_memberships(Role::Admin) && !needs_memberships(Role::Viewer));
        assert!(needs_memberships(Role::User));
    }
}
