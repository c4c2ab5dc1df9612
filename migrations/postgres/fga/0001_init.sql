-- The FGA data plane's store (PostgreSQL), the same tables and indexes as
-- migrations/sqlite/fga, so both back ends answer alike. Text columns use
-- the "C" collation: keys order byte-wise, as in SQLite, so continuation
-- tokens mean the same on both.
--
-- The indexes serve the access patterns of a single-table design: a tuple by
-- (store, object, relation, user); tuples by (store, object[, relation]); by
-- (store, user, object type) for reverse queries; by (store, object type,
-- relation, user); all tuples of a store; models by (store, id).

CREATE TABLE stores (
    id         TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);

CREATE TABLE models (
    store      TEXT COLLATE "C" NOT NULL,
    id         TEXT COLLATE "C" NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (store, id)
);

CREATE TABLE tuples (
    store       TEXT COLLATE "C" NOT NULL,
    object_type TEXT COLLATE "C" NOT NULL,
    object_id   TEXT COLLATE "C" NOT NULL,
    relation    TEXT COLLATE "C" NOT NULL,
    "user"      TEXT COLLATE "C" NOT NULL,
    user_type   TEXT COLLATE "C" NOT NULL,
    ulid        TEXT COLLATE "C" NOT NULL,
    inserted_at TEXT NOT NULL,
    PRIMARY KEY (store, object_type, object_id, relation, "user")
);
CREATE INDEX tuples_by_user ON tuples (store, "user", object_type);
CREATE INDEX tuples_by_type_relation_user ON tuples (store, object_type, relation, "user");
CREATE INDEX tuples_by_user_type ON tuples (store, user_type, "user");
CREATE INDEX tuples_by_ulid ON tuples (store, ulid);

CREATE TABLE changes (
    seq         BIGSERIAL PRIMARY KEY,
    store       TEXT COLLATE "C" NOT NULL,
    object_type TEXT COLLATE "C" NOT NULL,
    object      TEXT NOT NULL,
    relation    TEXT NOT NULL,
    "user"      TEXT NOT NULL,
    operation   TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE INDEX changes_by_store ON changes (store, seq);
