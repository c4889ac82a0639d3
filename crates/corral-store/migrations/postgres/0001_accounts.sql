-- Accounts, credentials, lockout, audit log and mail outbox.
--
-- Rows a user owns reference users(id) ON DELETE CASCADE, so deleting a user leaves
-- no credential behind. The audit log deliberately does not: it must outlive the user.

CREATE TABLE users (
    id             UUID        NOT NULL PRIMARY KEY,
    email          TEXT        NOT NULL UNIQUE,
    display_name   TEXT        NOT NULL,
    password_hash  TEXT        NOT NULL,
    role           TEXT        NOT NULL CHECK (role IN ('admin', 'user', 'viewer')),
    email_verified BOOLEAN     NOT NULL DEFAULT FALSE,
    disabled       BOOLEAN     NOT NULL DEFAULT FALSE,
    totp_secret    TEXT,
    totp_enabled   BOOLEAN     NOT NULL DEFAULT FALSE,
    totp_last_step BIGINT,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    last_login_at  TIMESTAMPTZ
);

CREATE INDEX users_created_at ON users (created_at, id);

-- Keyed by e-mail, not user: unknown addresses lock out exactly like known ones.
CREATE TABLE login_failures (
    email        TEXT        NOT NULL PRIMARY KEY,
    count        BIGINT      NOT NULL,
    locked_until TIMESTAMPTZ,
    updated_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE action_tokens (
    token_hash TEXT        NOT NULL PRIMARY KEY,
    user_id    UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT        NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);

CREATE INDEX action_tokens_user ON action_tokens (user_id);

CREATE TABLE refresh_sessions (
    id          UUID        NOT NULL PRIMARY KEY,
    user_id     UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   UUID        NOT NULL,
    token_hash  TEXT        NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    replaced_at TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ,
    ip          TEXT,
    user_agent  TEXT
);

CREATE INDEX refresh_sessions_user ON refresh_sessions (user_id);
CREATE INDEX refresh_sessions_family ON refresh_sessions (family_id);

CREATE TABLE api_keys (
    id           UUID        NOT NULL PRIMARY KEY,
    owner_id     UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT        NOT NULL,
    prefix       TEXT        NOT NULL,
    key_hash     TEXT        NOT NULL UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);

CREATE INDEX api_keys_owner ON api_keys (owner_id, created_at);

CREATE TABLE audit_log (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor_id    UUID,
    actor_email TEXT,
    action      TEXT        NOT NULL,
    target      TEXT,
    ip          TEXT,
    outcome     TEXT        NOT NULL CHECK (outcome IN ('success', 'failure')),
    detail      TEXT,
    at          TIMESTAMPTZ NOT NULL
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor_id, id);
-- text_pattern_ops lets `action LIKE 'auth.%'` use the index under any collation.
CREATE INDEX audit_log_action ON audit_log (action text_pattern_ops, id);

CREATE TABLE outbox (
    id         UUID        NOT NULL PRIMARY KEY,
    to_addr    TEXT        NOT NULL,
    subject    TEXT        NOT NULL,
    body       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX outbox_to ON outbox (to_addr, created_at);
CREATE INDEX outbox_created_at ON outbox (created_at);
