//! What a timeline shows to whom: the events that name the user who acted ("deployed by
//! …", "settings changed by …") carry their e-mail address, which only admins may see
//! (as with an instance's `owner_email`), besides the user themselves: others see
//! "another user". Stored events keep the address, so that admins see who it was.

use corral_core::{InstanceEvent, User};

/// The beginnings of the events that name the acting user, followed by `<email>: …`.
const BY_USER: &[&str] = &["deployed by ", "settings changed by "];

/// `message` as `viewer` may see it.
pub fn message_for(message: &str, viewer: &User) -> String {
    if viewer.role.is_admin() {
        return message.to_string();
    }
    for prefix in BY_USER {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some((actor, tail)) = rest.split_once(": ") else {
            continue;
        };
        if actor.eq_ignore_ascii_case(&viewer.email) {
            break;
        }
        return format!("{prefix}another user: {tail}");
    }
    message.to_string()
}

/// The timeline as `viewer` may see it.
pub fn for_viewer(events: Vec<InstanceEvent>, viewer: &User) -> Vec<InstanceEvent> {
    events
        .into_iter()
        .map(|mut e| {
            e.message = message_for(&e.message, viewer);
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use corral_core::Role;

    fn user(email: &str, role: Role) -> User {
        User::new(email, "x".into(), role, Utc::now())
    }

    #[test]
    fn addresses_are_for_admins_only() {
        let deployed = "deployed by owner@example.com: smollm2:135m on cpu (1 vCPU, 1024 MiB)";
        let changed = "settings changed by Owner@Example.com: idle_timeout_seconds=60";
        let admin = user("admin@example.com", Role::Admin);
        let owner = user("owner@example.com", Role::User);
        let viewer = user("viewer@example.com", Role::Viewer);
        assert_eq!(message_for(deployed, &admin), deployed);
        assert_eq!(message_for(deployed, &owner), deployed, "their own address");
        assert_eq!(
            message_for(deployed, &viewer),
            "deployed by another user: smollm2:135m on cpu (1 vCPU, 1024 MiB)"
        );
        assert_eq!(message_for(changed, &owner), changed);
        assert_eq!(
            message_for(changed, &viewer),
            "settings changed by another user: idle_timeout_seconds=60"
        );
        for other in ["woken by a request", "replica 0190 is serving again", ""] {
            assert_eq!(message_for(other, &viewer), other);
        }
    }
}
