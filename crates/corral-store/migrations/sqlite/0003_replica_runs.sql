-- Replica runs: one row per launch of a replica, from the driver's launch until it was
-- stopped, replaced, or found dead or lost (`ended_at` NULL while it runs). Cost is
-- priced from these rows and the logs of stopped instances are read through their
-- `driver_ref`, so, like usage and the audit log, the table has no foreign keys: it
-- outlives replicas, instances, users and models. Same conventions as 0001/0002.
--
-- `compute` is the JSON of corral_core::ComputeSpec as it was at launch, e.g.
-- {"compute_type":"fargate","cpu":1.0,"memory":2048,"gpu_count":0,"spot":false}:
-- a snapshot only ever read back whole.
CREATE TABLE replica_runs (
    id          TEXT    NOT NULL PRIMARY KEY,
    replica_id  TEXT    NOT NULL,
    instance_id TEXT    NOT NULL,
    owner_id    TEXT    NOT NULL,
    model_id    TEXT    NOT NULL,
    driver      TEXT    NOT NULL,
    driver_ref  TEXT    NOT NULL,
    compute     TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER CHECK (ended_at IS NULL OR ended_at >= started_at)
) STRICT;

-- An instance's history (logs, instance cost), and closing a replica's open run.
CREATE INDEX replica_runs_instance ON replica_runs (instance_id, replica_id, started_at);
-- Cost windows: a user's runs, and everyone's (admin) by start time.
CREATE INDEX replica_runs_owner ON replica_runs (owner_id, started_at);
CREATE INDEX replica_runs_started ON replica_runs (started_at);
