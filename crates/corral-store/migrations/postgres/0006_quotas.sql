-- Quotas and admission counters: see sqlite/0005_quotas.sql for what they mean.
CREATE TABLE quotas (
    subject    TEXT        NOT NULL PRIMARY KEY,
    quota      TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE allocations (
    subject    TEXT   NOT NULL PRIMARY KEY,
    instances  BIGINT NOT NULL DEFAULT 0 CHECK (instances >= 0),
    replicas   BIGINT NOT NULL DEFAULT 0 CHECK (replicas >= 0),
    milli_vcpu BIGINT NOT NULL DEFAULT 0 CHECK (milli_vcpu >= 0),
    memory_mib BIGINT NOT NULL DEFAULT 0 CHECK (memory_mib >= 0),
    gpus       BIGINT NOT NULL DEFAULT 0 CHECK (gpus >= 0)
);

INSERT INTO allocations (subject, instances, replicas, milli_vcpu, memory_mib, gpus)
SELECT 'user:' || owner_id::text,
       COUNT(*) FILTER (WHERE desired <> 'deleted'),
       COALESCE(SUM(target_replicas) FILTER (WHERE desired = 'running'), 0),
       COALESCE(SUM(target_replicas * CEIL(cpu * 1000)::BIGINT) FILTER (WHERE desired = 'running'), 0),
       COALESCE(SUM(target_replicas * memory) FILTER (WHERE desired = 'running'), 0),
       COALESCE(SUM(target_replicas * gpu_count) FILTER (WHERE desired = 'running'), 0)
FROM instances GROUP BY owner_id;

INSERT INTO allocations (subject, instances, replicas, milli_vcpu, memory_mib, gpus)
SELECT 'host:local',
       COUNT(*) FILTER (WHERE desired <> 'deleted'),
       COALESCE(SUM(target_replicas) FILTER (WHERE desired = 'running'), 0),
       COALESCE(SUM(target_replicas * CEIL(cpu * 1000)::BIGINT) FILTER (WHERE desired = 'running'), 0),
       COALESCE(SUM(target_replicas * memory) FILTER (WHERE desired = 'running'), 0),
       COALESCE(SUM(target_replicas * gpu_count) FILTER (WHERE desired = 'running'), 0)
FROM instances WHERE driver = 'local' HAVING COUNT(*) > 0;
