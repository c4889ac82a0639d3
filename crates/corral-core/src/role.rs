use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Corral's three roles. Permissions are checked through the methods below
/// rather than by comparing roles at call sites, so the matrix lives in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including user management.
    Admin,
    /// Manages their own resources (instances, API keys).
    User,
    /// Read-only: models and logs.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Viewer => "viewer",
        }
    }

    /// May create, change or delete platform resources (instances, API keys, models it owns).
    pub fn can_mutate(self) -> bool {
        matches!(self, Role::Admin | Role::User)
    }

    /// May manage users, the catalog, and read the audit log and outbox.
    pub fn is_admin(self) -> bool {
        self == Role::Admin
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "unknown role {other:?}: expected admin, user or viewer"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix() {
        assert!(Role::Admin.can_mutate() && Role::Admin.is_admin());
        assert!(Role::User.can_mutate() && !Role::User.is_admin());
        assert!(!Role::Viewer.can_mutate() && !Role::Viewer.is_admin());
    }

    #[test]
    fn round_trip() {
        for r in [Role::Admin, Role::User, Role::Viewer] {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
