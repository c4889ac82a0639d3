-- Deployments: the model catalog, instances, their replicas and timeline, and usage
-- rolled up per hour. Same conventions as 0001 (TEXT uuids, INTEGER microseconds,
-- INTEGER 0/1 booleans, enums as TEXT with a CHECK).
--
-- Ownership: an instance's owner is `ON DELETE RESTRICT`, not CASCADE. Deleting a
-- user must not silently drop rows that stand for running compute: the instances are
-- stopped and deleted first (by the reconciler), then the user can go. Replicas and
-- events belong to their instance and go with it. Usage has no foreign keys at all,
-- like the audit log: billing history outlives users, instances and models.

-- The catalog. `source` is the JSON of corral_core::ModelSource, e.g.
-- {"kind":"ollama","name":"library/llama2:7b"}.
CREATE TABLE models (
    id                      TEXT    NOT NULL PRIMARY KEY,
    family                  TEXT    NOT NULL,
    size                    TEXT    NOT NULL,
    cpu_supported           INTEGER NOT NULL,
    gpu_supported           INTEGER NOT NULL,
    memory_required         INTEGER NOT NULL CHECK (memory_required >= 0),
    expected_deploy_seconds INTEGER NOT NULL CHECK (expected_deploy_seconds >= 0),
    source                  TEXT    NOT NULL,
    weights_bytes           INTEGER CHECK (weights_bytes >= 0),
    builtin                 INTEGER NOT NULL
) STRICT;

-- The launch spec (corral_core::ComputeSpec) and settings (InstanceSettings) are
-- columns, not JSON, so they can be queried and checked.
-- `running_since` is set while the instance is ready or scaling; `running_seconds`
-- accumulates finished runs (cost = seconds x price).
CREATE TABLE instances (
    id                   TEXT    NOT NULL PRIMARY KEY,
    owner_id             TEXT    NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    model_id             TEXT    NOT NULL REFERENCES models (id) ON DELETE RESTRICT,
    driver               TEXT    NOT NULL,
    compute_type         TEXT    NOT NULL CHECK (compute_type IN ('local', 'fargate', 'gpu')),
    cpu                  REAL    NOT NULL CHECK (cpu >= 0),
    memory               INTEGER NOT NULL CHECK (memory >= 0),
    gpu_count            INTEGER NOT NULL CHECK (gpu_count >= 0),
    instance_type        TEXT,
    spot                 INTEGER NOT NULL,
    idle_timeout_seconds INTEGER NOT NULL CHECK (idle_timeout_seconds >= 0),
    min_replicas         INTEGER NOT NULL CHECK (min_replicas >= 0),
    max_replicas         INTEGER NOT NULL CHECK (max_replicas >= min_replicas),
    wake_on_request      INTEGER NOT NULL,
    desired              TEXT    NOT NULL
        CHECK (desired IN ('running', 'sleeping', 'stopped', 'deleted')),
    state                TEXT    NOT NULL
        CHECK (state IN ('pending', 'provisioning', 'starting', 'ready', 'scaling',
                         'stopping', 'stopped', 'sleeping', 'failed')),
    state_reason         TEXT,
    target_replicas      INTEGER NOT NULL CHECK (target_replicas >= 0),
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    last_activity_at     INTEGER NOT NULL,
    running_since        INTEGER,
    running_seconds      INTEGER NOT NULL CHECK (running_seconds >= 0)
) STRICT;

CREATE INDEX instances_owner ON instances (owner_id, created_at);
CREATE INDEX instances_created_at ON instances (created_at);
-- Also makes the RESTRICT check on deleting a model an index lookup.
CREATE INDEX instances_model ON instances (model_id);
-- The reconciler's scan: instances whose state differs from what is desired.
CREATE INDEX instances_desired_state ON instances (desired, state);

-- The timeline. A transition has both states; a note (a restarted replica) neither.
CREATE TABLE instance_events (
    id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT    NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    from_state  TEXT
        CHECK (from_state IN ('pending', 'provisioning', 'starting', 'ready', 'scaling',
                              'stopping', 'stopped', 'sleeping', 'failed')),
    to_state    TEXT
        CHECK (to_state IN ('pending', 'provisioning', 'starting', 'ready', 'scaling',
                            'stopping', 'stopped', 'sleeping', 'failed')),
    message     TEXT    NOT NULL,
    at          INTEGER NOT NULL
) STRICT;

CREATE INDEX instance_events_instance ON instance_events (instance_id, id);

CREATE TABLE replicas (
    id          TEXT    NOT NULL PRIMARY KEY,
    instance_id TEXT    NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    driver_ref  TEXT    NOT NULL,
    endpoint    TEXT,
    state       TEXT    NOT NULL
        CHECK (state IN ('starting', 'ready', 'unhealthy', 'stopping', 'exited', 'lost')),
    restarts    INTEGER NOT NULL CHECK (restarts >= 0),
    started_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX replicas_instance ON replicas (instance_id, started_at);

-- One row per owner, instance, model and hour (`hour` is the start of the hour).
-- Requests add to it with an upsert, so concurrent requests never lose a count.
CREATE TABLE usage_hourly (
    owner_id          TEXT    NOT NULL,
    instance_id       TEXT    NOT NULL,
    model_id          TEXT    NOT NULL,
    hour              INTEGER NOT NULL,
    requests          INTEGER NOT NULL CHECK (requests >= 0),
    prompt_tokens     INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),
    PRIMARY KEY (owner_id, instance_id, model_id, hour)
) STRICT;

-- The primary key serves owner-scoped reads; this serves the admin's all-users view.
CREATE INDEX usage_hourly_hour ON usage_hourly (hour);
