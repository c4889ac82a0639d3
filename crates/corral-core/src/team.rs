//! Teams: a named group of users that can own instances together. A member's role in
//! a team (`TeamRole`) is separate from their platform role (`Role`): a team owner
//! who is a platform viewer stays read-only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Longest team name, in characters.
pub const TEAM_NAME_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Team {
    pub id: Uuid,
    /// Unique among teams, ignoring case.
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl Team {
    /// The form in which names are compared for uniqueness: two names that differ only
    /// in case (Unicode lower-casing, the same on every store) name the same team.
    pub fn name_key(name: &str) -> String {
        name.to_lowercase()
    }
}

/// Checks and normalises a team name: trimmed, 1 to `TEAM_NAME_MAX` characters, no
/// control characters. Returns the name to store.
pub fn validate_team_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("the team name is empty".into());
    }
    if name.chars().count() > TEAM_NAME_MAX {
        return Err(format!(
            "the team name is longer than {TEAM_NAME_MAX} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the team name contains control characters".into());
    }
    Ok(name.to_string())
}

/// A member's role within one team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TeamRole {
    /// Deploys for the team and manages (stops, starts, changes, deletes) its instances.
    Owner,
    /// Deploys for the team and uses its instances.
    Member,
}

impl TeamRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Owner => "owner",
            TeamRole::Member => "member",
        }
    }
}

impl std::str::FromStr for TeamRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(TeamRole::Owner),
            "member" => Ok(TeamRole::Member),
            other => Err(format!(
                "unknown team role {other:?}: expected owner or member"
            )),
        }
    }
}

/// One user's membership of one team.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TeamMember {
    pub team_id: Uuid,
    pub user_id: Uuid,
    pub role: TeamRole,
    pub added_at: DateTime<Utc>,
}

/// A team seen from one of its members: the team and the member's role in it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Membership {
    pub team: Team,
    pub role: TeamRole,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_team_name("  ML Platform ").unwrap(), "ML Platform");
        assert!(validate_team_name("   ").is_err());
        assert!(validate_team_name(&"x".repeat(TEAM_NAME_MAX)).is_ok());
        assert!(validate_team_name(&"é".repeat(TEAM_NAME_MAX + 1)).is_err());
        assert!(validate_team_name("a\nb").is_err());
        assert_eq!(Team::name_key("Équipe ML"), Team::name_key("éQUIPE ml"));
    }

    #[test]
    fn roles_round_trip() {
        for r in [TeamRole::Owner, TeamRole::Member] {
            assert_eq!(r.as_str().parse::<TeamRole>().unwrap(), r);
        }
        assert!("admin".parse::<TeamRole>().is_err());
    }
}
