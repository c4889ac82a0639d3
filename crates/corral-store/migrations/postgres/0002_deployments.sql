-- Deployments: the model catalog, instances, their replicas and timeline, and usage
-- rolled up per hour.
--
-- Ownership: an instance's owner is `ON DELETE RESTRICT`, not CASCADE. Deleting a
-- user must not silently drop rows that stand for running compute: the instances are
-- stopped and deleted first (by the reconciler), then the user can go. Replicas and
-- events belong to their instance and go with it. Usage has no foreign keys at all,
-- like the audit log: billing history outlives users, instances and models.
--
-- Unsigned counts (u32/u64 in Rust) are BIGINT with a `>= 0` CHECK.

-- The catalog. `source` is the JSON of corral_core::ModelSource, e.g.
-- {"kind":"ollama","name":"library/llama2:7b"}, kept as text like the SQLite backend.
CREATE TABLE models (
    id                      TEXT    NOT NULL PRIMARY KEY,
    family                  TEXT    NOT NULL,
    size                    TEXT    NOT NULL,
    cpu_supported           BOOLEAN NOT NULL,
    gpu_supported           BOOLEAN NOT NULL,
    memory_required         BIGINT  NOT NULL CHECK (memory_required >= 0),
    expected_deploy_seconds BIGINT  NOT NULL CHECK (expected_deploy_seconds >= 0),
    source                  TEXT    NOT NULL,
    weights_bytes           BIGINT  CHECK (weights_bytes >= 0),
    builtin                 BOOLEAN NOT NULL
);

-- The launch spec (corral_core::ComputeSpec) and settings (InstanceSettings) are
-- columns, not JSON, so they can be queried and checked.
-- `running_since` is set while the instance is ready or scaling; `running_seconds`
-- accumulates finished runs (cost = seconds x price).
CREATE TABLE instances (
    id                   UUID             NOT NULL PRIMARY KEY,
    owner_id             UUID             NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    model_id             TEXT             NOT NULL REFERENCES models (id) ON DELETE RESTRICT,
    driver               TEXT             NOT NULL,
    compute_type         TEXT             NOT NULL
        CHECK (compute_type IN ('local', 'fargate', 'gpu')),
    cpu                  DOUBLE PRECISION NOT NULL CHECK (cpu >= 0),
    memory               BIGINT           NOT NULL CHECK (memory >= 0),
    gpu_count            BIGINT           NOT NULL CHECK (gpu_count >= 0),
    instance_type        TEXT,
    spot                 BOOLEAN          NOT NULL,
    idle_timeout_seconds BIGINT           NOT NULL CHECK (idle_timeout_seconds >= 0),
    min_replicas         BIGINT           NOT NULL CHECK (min_replicas >= 0),
    max_replicas         BIGINT           NOT NULL CHECK (max_replicas >= min_replicas),
    wake_on_request      BOOLEAN          NOT NULL,
    desired              TEXT             NOT NULL
        CHECK (desired IN ('running', 'sleeping', 'stopped', 'deleted')),
    state                TEXT             NOT NULL
        CHECK (state IN ('pending', 'provisioning', 'starting', 'ready', 'scaling',
                         'stopping', 'stopped', 'sleeping', 'failed')),
    state_reason         TEXT,
    target_replicas      BIGINT           NOT NULL CHECK (target_replicas >= 0),
    created_at           TIMESTAMPTZ      NOT NULL,
    updated_at           TIMESTAMPTZ      NOT NULL,
    last_activity_at     TIMESTAMPTZ      NOT NULL,
    running_since        TIMESTAMPTZ,
    running_seconds      BIGINT           NOT NULL CHECK (running_seconds >= 0)
);

CREATE INDEX instances_owner ON instances (owner_id, created_at);
CREATE INDEX instances_created_at ON instances (created_at);
-- Also makes the RESTRICT check on deleting a model or a user an index lookup.
CREATE INDEX instances_model ON instances (model_id);
-- The reconciler's scan: instances whose state differs from what is desired.
CREATE INDEX instances_desired_state ON instances (desired, state);

-- The timeline. A transition has both states; a note (a restarted replica) neither.
CREATE TABLE instance_events (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id UUID        NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    from_state  TEXT
        CHECK (from_state IN ('pending', 'provisioning', 'starting', 'ready', 'scaling',
                              'stopping', 'stopped', 'sleeping', 'failed')),
    to_state    TEXT
        CHECK (to_state IN ('pending', 'provisioning', 'starting', 'ready', 'scaling',
                            'stopping', 'stopped', 'sleeping', 'failed')),
    message     TEXT        NOT NULL,
    at          TIMESTAMPTZ NOT NULL
);

CREATE INDEX instance_events_instance ON instance_events (instance_id, id);

CREATE TABLE replicas (
    id          UUID        NOT NULL PRIMARY KEY,
    instance_id UUID        NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    driver_ref  TEXT        NOT NULL,
    endpoint    TEXT,
    state       TEXT        NOT NULL
        CHECK (state IN ('starting', 'ready', 'unhealthy', 'stopping', 'exited', 'lost')),
    restarts    BIGINT      NOT NULL CHECK (restarts >= 0),
    started_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE INDEX replicas_instance ON replicas (instance_id, started_at);

-- One row per owner, instance, model and hour (`hour` is the start of the hour).
-- Requests add to it with an upsert, so concurrent requests never lose a count.
CREATE TABLE usage_hourly (
    owner_id          UUID        NOT NULL,
    instance_id       UUID        NOT NULL,
    model_id          TEXT        NOT NULL,
    hour              TIMESTAMPTZ NOT NULL,
    requests          BIGINT      NOT NULL CHECK (requests >= 0),
    prompt_tokens     BIGINT      NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens BIGINT      NOT NULL CHECK (completion_tokens >= 0),
    PRIMARY KEY (owner_id, instance_id, model_id, hour)
);

-- The primary key serves owner-scoped reads; this serves the admin's all-users view.
CREATE INDEX usage_hourly_hour ON usage_hourly (hour);
