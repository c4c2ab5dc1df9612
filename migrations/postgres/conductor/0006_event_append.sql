-- Appending events faster (the engine's commit is on every train's
-- critical path).

-- The foreign key from events to trains is checked row by row (a query
-- per appended event), about a third of an append's time. Events are
-- appended only by the engine, with or after their train's row, and no
-- train is ever deleted, so the key never refused anything.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_train_id_fkey;

-- A train's snapshot (hundreds of KB for thousands of cells) and its
-- `created` event (its plan) compressed with lz4, several times faster
-- than the default pglz, where the server has it (PostgreSQL 14+ built
-- with lz4, as the common packages are).
DO $$
BEGIN
    ALTER TABLE trains ALTER COLUMN state SET COMPRESSION lz4;
    ALTER TABLE events ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 not available: train snapshots stay compressed with pglz';
END $$;
