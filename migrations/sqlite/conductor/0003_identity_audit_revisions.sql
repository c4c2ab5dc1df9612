-- Identity, audit and pipeline revisions (issue 9: items 3, 7, 8).

-- Tokens get a life cycle: an optional expiry, and who revoked them when.
-- Names stay unique forever (a revoked name is not reused), so that the
-- audit log's actors stay unambiguous.
ALTER TABLE tokens ADD COLUMN expires_at TEXT;
ALTER TABLE tokens ADD COLUMN revoked_at TEXT;
ALTER TABLE tokens ADD COLUMN revoked_by TEXT;

-- The audit log becomes a hash chain: each row holds the hash of the row
-- before it (`prev_hash`; the first row's is 64 zeros) and its own `hash`,
-- SHA-256 over `prev_hash` and its fields. Rows written by earlier releases
-- have no hashes yet; the Conductor chains them, in `seq` order, when it
-- opens the database, and this is the only UPDATE the log ever accepts:
-- setting the two hashes of an unchained row, nothing else.
ALTER TABLE audit ADD COLUMN prev_hash TEXT;
ALTER TABLE audit ADD COLUMN hash TEXT;
DROP TRIGGER audit_no_update;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
WHEN NOT (
    OLD.hash IS NULL AND OLD.prev_hash IS NULL
    AND NEW.hash IS NOT NULL AND NEW.prev_hash IS NOT NULL
    AND NEW.seq IS OLD.seq AND NEW.at IS OLD.at AND NEW.actor IS OLD.actor
    AND NEW.action IS OLD.action AND NEW.target IS OLD.target AND NEW.detail IS OLD.detail
)
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
-- A new row must extend the chain: it names the newest row's hash (zeros
-- for the first row) and brings its own.
CREATE TRIGGER audit_chained BEFORE INSERT ON audit
WHEN NEW.hash IS NULL OR length(NEW.hash) != 64
    OR NEW.prev_hash IS NOT COALESCE(
        (SELECT COALESCE(hash, 'unchained') FROM audit ORDER BY seq DESC LIMIT 1),
        '0000000000000000000000000000000000000000000000000000000000000000')
BEGIN SELECT RAISE(ABORT, 'an audit row must extend the hash chain'); END;

-- Every submitted revision of a pipeline. `pipelines` keeps the revision in
-- effect (what trains start from); a revision that weakens the pipeline's
-- safety waits here (`pending`) until an approver approves it.
-- status: accepted (took effect when submitted), pending, approved (took
-- effect when approved), rejected, superseded (a newer revision was
-- submitted while it was pending).
CREATE TABLE pipeline_revisions (
    name            TEXT NOT NULL,
    revision        INTEGER NOT NULL,
    yaml            TEXT NOT NULL,
    submitted_by    TEXT NOT NULL,
    submitted_at    TEXT NOT NULL,
    status          TEXT NOT NULL,
    -- What the revision weakens (JSON array of sentences), against which
    -- revision, and the groups an approver must belong to (JSON array).
    findings        TEXT NOT NULL DEFAULT '[]',
    base_revision   INTEGER,
    approver_groups TEXT NOT NULL DEFAULT '[]',
    decided_by      TEXT,
    decided_at      TEXT,
    reason          TEXT,
    PRIMARY KEY (name, revision)
);
CREATE INDEX pipeline_revisions_pending ON pipeline_revisions (status);
-- The revision in effect of every existing pipeline (earlier ones were not kept).
INSERT INTO pipeline_revisions (name, revision, yaml, submitted_by, submitted_at, status)
SELECT name, revision, yaml, submitted_by, submitted_at, 'accepted' FROM pipelines;
