-- Leases: one row per named lease (the control-plane leader's is 'leader'). `holder`
-- is the holding process's id, `token` the fencing token (up by one at each change of
-- holder), `expires_at` when others may take it over. Same conventions as 0001.
CREATE TABLE leases (
    name       TEXT    NOT NULL PRIMARY KEY,
    holder     TEXT    NOT NULL,
    token      INTEGER NOT NULL CHECK (token >= 1),
    expires_at INTEGER NOT NULL
) STRICT;
