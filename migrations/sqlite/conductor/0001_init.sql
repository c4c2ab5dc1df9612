-- The Conductor's embedded store (SQLite). Events are the source of truth for
-- trains; `trains.state` is a snapshot written in the same transaction.

CREATE TABLE pipelines (
    name         TEXT PRIMARY KEY,
    yaml         TEXT NOT NULL,
    revision     INTEGER NOT NULL,
    submitted_by TEXT NOT NULL,
    submitted_at TEXT NOT NULL
);

CREATE TABLE trains (
    id         TEXT PRIMARY KEY,
    pipeline   TEXT NOT NULL,
    version    TEXT NOT NULL,
    status     TEXT NOT NULL,
    started_by TEXT NOT NULL,
    state      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX trains_by_pipeline ON trains (pipeline, created_at);
CREATE INDEX trains_by_status ON trains (status);

CREATE TABLE events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    train_id TEXT NOT NULL REFERENCES trains (id),
    at       TEXT NOT NULL,
    body     TEXT NOT NULL
);
CREATE INDEX events_by_train ON events (train_id, seq);

CREATE TABLE cells (
    id         TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'active',
    updated_at TEXT NOT NULL
);

CREATE TABLE cell_versions (
    cell_id          TEXT NOT NULL REFERENCES cells (id),
    artifact         TEXT NOT NULL,
    version          TEXT,
    previous_version TEXT,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (cell_id, artifact)
);

-- Every change of a cell's version, with the effect key that made it.
CREATE TABLE deploy_log (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    cell_id  TEXT NOT NULL,
    artifact TEXT NOT NULL,
    version  TEXT,
    previous TEXT,
    key      TEXT NOT NULL,
    kind     TEXT NOT NULL,
    at       TEXT NOT NULL
);
CREATE INDEX deploy_log_by_cell ON deploy_log (cell_id, seq);

CREATE TABLE step_logs (
    key      TEXT PRIMARY KEY,
    train_id TEXT NOT NULL,
    cell_id  TEXT NOT NULL,
    output   TEXT NOT NULL,
    at       TEXT NOT NULL
);
CREATE INDEX step_logs_by_train ON step_logs (train_id);

CREATE TABLE artifacts (
    name      TEXT NOT NULL,
    version   TEXT NOT NULL,
    sha256    TEXT NOT NULL,
    size      INTEGER NOT NULL,
    pushed_by TEXT NOT NULL,
    pushed_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,
    groups     TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
);

-- Append-only: no UPDATE or DELETE is ever issued against it.
CREATE TABLE audit (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    at     TEXT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
