-- The capacity planner's usage history (same shape as the SQLite schema).
CREATE TABLE samples (
    tenant      TEXT COLLATE "C" NOT NULL,
    cell        TEXT COLLATE "C" NOT NULL,
    at          DOUBLE PRECISION NOT NULL,
    check_rps   DOUBLE PRECISION NOT NULL,
    tuples      DOUBLE PRECISION NOT NULL,
    connections DOUBLE PRECISION NOT NULL,
    source      TEXT NOT NULL,
    PRIMARY KEY (tenant, cell, at)
);
CREATE INDEX samples_by_at ON samples (at);
