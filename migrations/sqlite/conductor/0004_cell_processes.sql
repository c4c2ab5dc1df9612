-- Local cells: the ports of each artifact on a cell, and the worker processes
-- that run, so that a restarted Conductor adopts them instead of starting them
-- again (cells keep serving while the Conductor is down).

-- Each artifact on a local cell serves its own pair of loopback ports (`port`
-- and `port + 1`, blue/green). The first artifact a cell ran keeps the cell's
-- own ports; the others get a pair from `conductor up --artifact-ports`.
CREATE TABLE cell_ports (
    cell_id  TEXT NOT NULL,
    artifact TEXT NOT NULL,
    port     INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (cell_id, artifact)
);

-- Cells deployed by an earlier release: their first artifact keeps the cell's port.
INSERT INTO cell_ports (cell_id, artifact, port)
SELECT d.cell_id, d.artifact, json_extract(c.spec, '$.port')
FROM deploy_log d JOIN cells c ON c.id = d.cell_id
WHERE d.seq = (SELECT MIN(e.seq) FROM deploy_log e WHERE e.cell_id = d.cell_id)
  AND json_extract(c.spec, '$.port') IS NOT NULL;

-- One row per running worker process of a local cell. `started` (boot id and
-- start time from /proc) tells the process from a later one with the same pid.
CREATE TABLE cell_processes (
    pid         INTEGER PRIMARY KEY,
    started     TEXT NOT NULL,
    cell_id     TEXT NOT NULL,
    artifact    TEXT NOT NULL,
    version     TEXT NOT NULL,
    port        INTEGER NOT NULL,
    worker      INTEGER NOT NULL,
    worker_port INTEGER NOT NULL,
    -- 1: the worker was handed its bound worker socket (CELL_WORKER_FD);
    -- 0: an older artifact that binds CELL_WORKER_PORT itself.
    handover    INTEGER NOT NULL,
    at          TEXT NOT NULL
);
CREATE INDEX cell_processes_by_cell ON cell_processes (cell_id, artifact);
