-- Fencing, for more than one Conductor on one database (leader election).

-- The leadership: one row. A Conductor that becomes the leader raises the
-- epoch by one and appends events only while the epoch is still its own, so
-- that a Conductor that lost the leadership cannot write after its
-- successor took over. Epoch 0: nobody ever claimed it.
CREATE TABLE leadership (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    epoch   INTEGER NOT NULL,
    holder  TEXT,
    address TEXT,
    since   TEXT
);
INSERT INTO leadership (id, epoch) VALUES (1, 0);

-- Every event gets its number within its train (1, 2, …); the unique index
-- refuses an event numbered as one already stored (two writers appending
-- to the same train). Events of earlier releases are numbered in `seq` order.
ALTER TABLE events ADD COLUMN train_seq INTEGER;
UPDATE events SET train_seq = n.rn
FROM (SELECT seq, row_number() OVER (PARTITION BY train_id ORDER BY seq) AS rn FROM events) AS n
WHERE n.seq = events.seq;
CREATE UNIQUE INDEX events_by_train_seq ON events (train_id, train_seq);
-- It replaces the index by (train_id, seq): the same order within a train,
-- and one index to maintain per appended event, not two.
DROP INDEX events_by_train;
