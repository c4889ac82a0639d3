-- Accounts, credentials, lockout, audit log and mail outbox.
--
-- Conventions for this backend:
-- * Ids are UUIDs as hyphenated TEXT, readable in the sqlite3 shell.
-- * Timestamps are INTEGER microseconds since the Unix epoch (UTC). They compare as
--   numbers (expiry checks, audit ranges) and have PostgreSQL's timestamptz precision,
--   so both backends round-trip exactly the same values.
-- * Booleans are INTEGER 0/1.
-- * Rows a user owns reference users(id) ON DELETE CASCADE, so deleting a user leaves
--   no credential behind. The audit log deliberately does not: it must outlive the user.

CREATE TABLE users (
    id             TEXT    NOT NULL PRIMARY KEY,
    email          TEXT    NOT NULL UNIQUE,
    display_name   TEXT    NOT NULL,
    password_hash  TEXT    NOT NULL,
    role           TEXT    NOT NULL CHECK (role IN ('admin', 'user', 'viewer')),
    email_verified INTEGER NOT NULL DEFAULT 0,
    disabled       INTEGER NOT NULL DEFAULT 0,
    totp_secret    TEXT,
    totp_enabled   INTEGER NOT NULL DEFAULT 0,
    totp_last_step INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    last_login_at  INTEGER
) STRICT;

CREATE INDEX users_created_at ON users (created_at, id);

-- Keyed by e-mail, not user: unknown addresses lock out exactly like known ones.
CREATE TABLE login_failures (
    email        TEXT    NOT NULL PRIMARY KEY,
    count        INTEGER NOT NULL,
    locked_until INTEGER,
    updated_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE action_tokens (
    token_hash TEXT    NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT    NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
) STRICT;

CREATE INDEX action_tokens_user ON action_tokens (user_id);

CREATE TABLE refresh_sessions (
    id          TEXT    NOT NULL PRIMARY KEY,
    user_id     TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    replaced_at INTEGER,
    revoked_at  INTEGER,
    ip          TEXT,
    user_agent  TEXT
) STRICT;

CREATE INDEX refresh_sessions_user ON refresh_sessions (user_id);
CREATE INDEX refresh_sessions_family ON refresh_sessions (family_id);

CREATE TABLE api_keys (
    id           TEXT    NOT NULL PRIMARY KEY,
    owner_id     TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    prefix       TEXT    NOT NULL,
    key_hash     TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER
) STRICT;

CREATE INDEX api_keys_owner ON api_keys (owner_id, created_at);

-- AUTOINCREMENT so ids are never reused after a delete: `before_id` paging and
-- external references to an entry stay unambiguous.
CREATE TABLE audit_log (
    id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    actor_id    TEXT,
    actor_email TEXT,
    action      TEXT    NOT NULL,
    target      TEXT,
    ip          TEXT,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('success', 'failure')),
    detail      TEXT,
    at          INTEGER NOT NULL
) STRICT;

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor_id, id);
CREATE INDEX audit_log_action ON audit_log (action, id);

CREATE TABLE outbox (
    id         TEXT    NOT NULL PRIMARY KEY,
    to_addr    TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE INDEX outbox_to ON outbox (to_addr, created_at);
CREATE INDEX outbox_created_at ON outbox (created_at);
