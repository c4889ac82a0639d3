-- Quotas and admission counters (see corral_core::quota).
--
-- `quotas` holds what an admin set for a subject ("user:<id>", "team:<id>"): the JSON
-- of corral_core::Quota, whose unset fields take the configured defaults.
-- `allocations` holds what each subject holds now: the sum of Allocation::of over its
-- instances (one slot per instance not deleted; target replicas x size for instances
-- asked to run), and for "host:<name>" the same over the local driver's instances.
-- Every write that changes an instance's allocation adjusts these counters in the
-- same transaction, refusing growth beyond the subject's limits, so they are exact
-- across concurrent requests and server processes. Numbered 0005 so that a teams
-- migration (0004) can land in either order.
CREATE TABLE quotas (
    subject    TEXT    NOT NULL PRIMARY KEY,
    quota      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE allocations (
    subject    TEXT    NOT NULL PRIMARY KEY,
    instances  INTEGER NOT NULL DEFAULT 0 CHECK (instances >= 0),
    replicas   INTEGER NOT NULL DEFAULT 0 CHECK (replicas >= 0),
    milli_vcpu INTEGER NOT NULL DEFAULT 0 CHECK (milli_vcpu >= 0),
    memory_mib INTEGER NOT NULL DEFAULT 0 CHECK (memory_mib >= 0),
    gpus       INTEGER NOT NULL DEFAULT 0 CHECK (gpus >= 0)
) STRICT;

-- Instances that exist when this runs are counted once, for their owner and (local
-- driver) the default host name "local".
INSERT INTO allocations (subject, instances, replicas, milli_vcpu, memory_mib, gpus)
SELECT 'user:' || owner_id,
       SUM(desired <> 'deleted'),
       SUM(CASE WHEN desired = 'running' THEN target_replicas ELSE 0 END),
       SUM(CASE WHEN desired = 'running' THEN target_replicas * (CAST(cpu * 1000 AS INTEGER) + (cpu * 1000 > CAST(cpu * 1000 AS INTEGER))) ELSE 0 END),
       SUM(CASE WHEN desired = 'running' THEN target_replicas * memory ELSE 0 END),
       SUM(CASE WHEN desired = 'running' THEN target_replicas * gpu_count ELSE 0 END)
FROM instances GROUP BY owner_id;

INSERT INTO allocations (subject, instances, replicas, milli_vcpu, memory_mib, gpus)
SELECT 'host:local',
       SUM(desired <> 'deleted'),
       SUM(CASE WHEN desired = 'running' THEN target_replicas ELSE 0 END),
       SUM(CASE WHEN desired = 'running' THEN target_replicas * (CAST(cpu * 1000 AS INTEGER) + (cpu * 1000 > CAST(cpu * 1000 AS INTEGER))) ELSE 0 END),
       SUM(CASE WHEN desired = 'running' THEN target_replicas * memory ELSE 0 END),
       SUM(CASE WHEN desired = 'running' THEN target_replicas * gpu_count ELSE 0 END)
FROM instances WHERE driver = 'local' HAVING COUNT(*) > 0;
