-- The Conductor's store on PostgreSQL. A PostgreSQL database has no
-- history to upgrade: this one file gives the schema that SQLite's
-- 0001_init..0004_cell_processes build step by step (same tables, columns
-- and indexes); later files (0005_fencing, …) are the same changes as
-- SQLite's files of the same number. Integers are BIGINT (sqlx's Any driver
-- reads i64 from INT8 only); text is compared byte-wise (COLLATE "C"), as
-- in SQLite.

CREATE TABLE pipelines (
    name         TEXT COLLATE "C" PRIMARY KEY,
    yaml         TEXT NOT NULL,
    revision     BIGINT NOT NULL,
    submitted_by TEXT COLLATE "C" NOT NULL,
    submitted_at TEXT COLLATE "C" NOT NULL
);

CREATE TABLE trains (
    id         TEXT COLLATE "C" PRIMARY KEY,
    pipeline   TEXT COLLATE "C" NOT NULL,
    version    TEXT COLLATE "C" NOT NULL,
    status     TEXT COLLATE "C" NOT NULL,
    started_by TEXT COLLATE "C" NOT NULL,
    state      TEXT NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    updated_at TEXT COLLATE "C" NOT NULL
);
CREATE INDEX trains_by_pipeline ON trains (pipeline, created_at);
CREATE INDEX trains_by_status ON trains (status);

CREATE TABLE events (
    seq      BIGSERIAL PRIMARY KEY,
    train_id TEXT COLLATE "C" NOT NULL REFERENCES trains (id),
    at       TEXT COLLATE "C" NOT NULL,
    body     TEXT NOT NULL
);
CREATE INDEX events_by_train ON events (train_id, seq);

CREATE TABLE cells (
    id         TEXT COLLATE "C" PRIMARY KEY,
    spec       TEXT NOT NULL,
    status     TEXT COLLATE "C" NOT NULL DEFAULT 'active',
    updated_at TEXT COLLATE "C" NOT NULL
);

CREATE TABLE cell_versions (
    cell_id          TEXT COLLATE "C" NOT NULL REFERENCES cells (id),
    artifact         TEXT COLLATE "C" NOT NULL,
    version          TEXT COLLATE "C",
    previous_version TEXT COLLATE "C",
    updated_at       TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (cell_id, artifact)
);

CREATE TABLE deploy_log (
    seq      BIGSERIAL PRIMARY KEY,
    cell_id  TEXT COLLATE "C" NOT NULL,
    artifact TEXT COLLATE "C" NOT NULL,
    version  TEXT COLLATE "C",
    previous TEXT COLLATE "C",
    key      TEXT COLLATE "C" NOT NULL,
    kind     TEXT COLLATE "C" NOT NULL,
    at       TEXT COLLATE "C" NOT NULL
);
CREATE INDEX deploy_log_by_cell ON deploy_log (cell_id, seq);

CREATE TABLE step_logs (
    key      TEXT COLLATE "C" PRIMARY KEY,
    train_id TEXT COLLATE "C" NOT NULL,
    cell_id  TEXT COLLATE "C" NOT NULL,
    output   TEXT NOT NULL,
    at       TEXT COLLATE "C" NOT NULL
);
CREATE INDEX step_logs_by_train ON step_logs (train_id);

CREATE TABLE artifacts (
    name      TEXT COLLATE "C" NOT NULL,
    version   TEXT COLLATE "C" NOT NULL,
    sha256    TEXT NOT NULL,
    size      BIGINT NOT NULL,
    pushed_by TEXT COLLATE "C" NOT NULL,
    pushed_at TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE tokens (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT COLLATE "C" NOT NULL UNIQUE,
    role       TEXT COLLATE "C" NOT NULL,
    groups     TEXT NOT NULL,
    hash       TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at TEXT COLLATE "C" NOT NULL,
    revoked    BIGINT NOT NULL DEFAULT 0,
    expires_at TEXT COLLATE "C",
    revoked_at TEXT COLLATE "C",
    revoked_by TEXT COLLATE "C"
);

-- The audit log: append-only, a hash chain (see SQLite's 0003). `seq` has
-- no sequence: the Conductor writes the head's seq + 1 (a sequence would
-- skip the numbers of rolled-back rows), and the chain trigger checks it.
CREATE TABLE audit (
    seq       BIGINT PRIMARY KEY,
    at        TEXT COLLATE "C" NOT NULL,
    actor     TEXT COLLATE "C" NOT NULL,
    action    TEXT COLLATE "C" NOT NULL,
    target    TEXT COLLATE "C" NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT COLLATE "C",
    hash      TEXT COLLATE "C"
);

-- The only UPDATE accepted: setting the two hashes of an unchained row
-- (rows of an earlier release), nothing else.
CREATE FUNCTION audit_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.hash IS NULL AND OLD.prev_hash IS NULL
       AND NEW.hash IS NOT NULL AND NEW.prev_hash IS NOT NULL
       AND NEW.seq IS NOT DISTINCT FROM OLD.seq AND NEW.at IS NOT DISTINCT FROM OLD.at
       AND NEW.actor IS NOT DISTINCT FROM OLD.actor AND NEW.action IS NOT DISTINCT FROM OLD.action
       AND NEW.target IS NOT DISTINCT FROM OLD.target AND NEW.detail IS NOT DISTINCT FROM OLD.detail
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit log is append-only';
END
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_update();

CREATE FUNCTION audit_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only';
END
$$;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_delete();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_delete();

-- A new row must extend the chain: the next seq, the newest row's hash
-- (zeros for the first row), and a hash of its own.
CREATE FUNCTION audit_extends_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_seq  BIGINT;
    head_hash TEXT;
BEGIN
    SELECT seq, COALESCE(hash, 'unchained') INTO head_seq, head_hash
        FROM audit ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND THEN
        head_seq := 0;
        head_hash := '0000000000000000000000000000000000000000000000000000000000000000';
    END IF;
    IF NEW.hash IS NULL OR length(NEW.hash) <> 64
       OR NEW.prev_hash IS DISTINCT FROM head_hash
       OR NEW.seq IS DISTINCT FROM head_seq + 1
    THEN
        RAISE EXCEPTION 'an audit row must extend the hash chain';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_chained BEFORE INSERT ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_extends_chain();

CREATE TABLE resizes (
    id         TEXT COLLATE "C" PRIMARY KEY,
    cell_id    TEXT COLLATE "C" NOT NULL REFERENCES cells (id),
    status     TEXT COLLATE "C" NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL
);
CREATE INDEX resizes_by_status ON resizes (status);
CREATE INDEX resizes_by_cell ON resizes (cell_id, created_at);

CREATE TABLE pipeline_revisions (
    name            TEXT COLLATE "C" NOT NULL,
    revision        BIGINT NOT NULL,
    yaml            TEXT NOT NULL,
    submitted_by    TEXT COLLATE "C" NOT NULL,
    submitted_at    TEXT COLLATE "C" NOT NULL,
    status          TEXT COLLATE "C" NOT NULL,
    findings        TEXT NOT NULL DEFAULT '[]',
    base_revision   BIGINT,
    approver_groups TEXT NOT NULL DEFAULT '[]',
    decided_by      TEXT COLLATE "C",
    decided_at      TEXT COLLATE "C",
    reason          TEXT,
    PRIMARY KEY (name, revision)
);
CREATE INDEX pipeline_revisions_pending ON pipeline_revisions (status);

CREATE TABLE cell_ports (
    cell_id  TEXT COLLATE "C" NOT NULL,
    artifact TEXT COLLATE "C" NOT NULL,
    port     BIGINT NOT NULL UNIQUE,
    PRIMARY KEY (cell_id, artifact)
);

CREATE TABLE cell_processes (
    pid         BIGINT PRIMARY KEY,
    started     TEXT COLLATE "C" NOT NULL,
    cell_id     TEXT COLLATE "C" NOT NULL,
    artifact    TEXT COLLATE "C" NOT NULL,
    version     TEXT COLLATE "C" NOT NULL,
    port        BIGINT NOT NULL,
    worker      BIGINT NOT NULL,
    worker_port BIGINT NOT NULL,
    -- 1: the worker was handed its bound worker socket; 0: it binds its port.
    handover    BIGINT NOT NULL,
    at          TEXT COLLATE "C" NOT NULL
);
CREATE INDEX cell_processes_by_cell ON cell_processes (cell_id, artifact);
