-- The outbound job queue: work that leaves Corral (mail now, webhook deliveries later),
-- done by a background worker rather than inside a request, retried with back-off, and
-- claimed with a lease so that servers sharing the store never run a job twice at once.
CREATE TABLE outbound_jobs (
    id              UUID        NOT NULL PRIMARY KEY,
    kind            TEXT        NOT NULL,
    payload         TEXT        NOT NULL,
    status          TEXT        NOT NULL
                    CHECK (status IN ('pending', 'claimed', 'sent', 'failed', 'dropped')),
    attempts        BIGINT      NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    lease_until     TIMESTAMPTZ,
    claim_id        UUID,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

-- What `claim_jobs` looks for: due jobs of one kind.
CREATE INDEX outbound_jobs_due ON outbound_jobs (kind, status, next_attempt_at);
CREATE INDEX outbound_jobs_kind ON outbound_jobs (kind, created_at);
