-- Teams: named groups of users that own instances together (issue 14). Same
-- conventions as 0001-0003.
--
-- `name_key` is the name lower-cased by the store (Rust's Unicode lower-casing, the
-- same on every backend), so uniqueness ignores case without relying on SQLite's
-- ASCII-only NOCASE.
CREATE TABLE teams (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    name_key   TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
) STRICT;

-- Memberships go with their team and with their user.
CREATE TABLE team_members (
    team_id  TEXT    NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id  TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role     TEXT    NOT NULL CHECK (role IN ('owner', 'member')),
    added_at INTEGER NOT NULL,
    PRIMARY KEY (team_id, user_id)
) STRICT;

CREATE INDEX team_members_user ON team_members (user_id);

-- An instance deployed for a team. RESTRICT, as for owners: a team that owns compute
-- cannot be deleted until its instances are.
ALTER TABLE instances ADD COLUMN team_id TEXT REFERENCES teams (id) ON DELETE RESTRICT;

CREATE INDEX instances_team ON instances (team_id, created_at);
