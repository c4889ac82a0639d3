-- Leases: one row per named lease (the control-plane leader's is 'leader'). `holder`
-- is the holding process's id, `token` the fencing token (up by one at each change of
-- holder), `expires_at` when others may take it over.
CREATE TABLE leases (
    name       TEXT        NOT NULL PRIMARY KEY,
    holder     TEXT        NOT NULL,
    token      BIGINT      NOT NULL CHECK (token >= 1),
    expires_at TIMESTAMPTZ NOT NULL
);
