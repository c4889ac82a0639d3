-- The outbound job queue: work that leaves Corral (mail now, webhook deliveries later),
-- done by a background worker rather than inside a request, retried with back-off, and
-- claimed with a lease so that servers sharing the store never run a job twice at once.
CREATE TABLE outbound_jobs (
    id              TEXT    NOT NULL PRIMARY KEY,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL
                    CHECK (status IN ('pending', 'claimed', 'sent', 'failed', 'dropped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    claim_id        TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;

-- What `claim_jobs` looks for: due jobs of one kind.
CREATE INDEX outbound_jobs_due ON outbound_jobs (kind, status, next_attempt_at);
CREATE INDEX outbound_jobs_kind ON outbound_jobs (kind, created_at);
