-- Resize operations (conductor cells resize, plan capacity --apply). The
-- body is the whole operation as JSON; id, cell and status are columns for
-- lookups. A cell's shape lives in its spec (cells.spec) and changes in the
-- same transaction as the resize that succeeds.
CREATE TABLE resizes (
    id         TEXT PRIMARY KEY,
    cell_id    TEXT NOT NULL REFERENCES cells (id),
    status     TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX resizes_by_status ON resizes (status);
CREATE INDEX resizes_by_cell ON resizes (cell_id, created_at);
