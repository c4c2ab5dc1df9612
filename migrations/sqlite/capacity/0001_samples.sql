-- The capacity planner's usage history: one row per tenant (FGA store), cell
-- and moment. `at` is Unix seconds; `source` says where it came from
-- (`scrape` of a cell's /metrics, or `import` of a usage file).
CREATE TABLE samples (
    tenant      TEXT NOT NULL,
    cell        TEXT NOT NULL,
    at          REAL NOT NULL,
    check_rps   REAL NOT NULL,
    tuples      REAL NOT NULL,
    connections REAL NOT NULL,
    source      TEXT NOT NULL,
    PRIMARY KEY (tenant, cell, at)
);
CREATE INDEX samples_by_at ON samples (at);
