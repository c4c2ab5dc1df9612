-- Fencing (the same change as SQLite's 0005_fencing; see there).

CREATE TABLE leadership (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    epoch   BIGINT NOT NULL,
    holder  TEXT COLLATE "C",
    address TEXT COLLATE "C",
    since   TEXT COLLATE "C"
);
INSERT INTO leadership (id, epoch) VALUES (1, 0);

ALTER TABLE events ADD COLUMN train_seq BIGINT;
UPDATE events SET train_seq = n.rn
FROM (SELECT seq, row_number() OVER (PARTITION BY train_id ORDER BY seq) AS rn FROM events) AS n
WHERE n.seq = events.seq;
CREATE UNIQUE INDEX events_by_train_seq ON events (train_id, train_seq);
-- It replaces the index by (train_id, seq): the same order within a train,
-- and one index to maintain per appended event, not two.
DROP INDEX events_by_train;
