-- The FGA data plane's store (SQLite). The indexes serve the access
-- patterns of a single-table design: a tuple by (store, object, relation,
-- user); tuples by (store, object[, relation]); by (store, user, object type)
-- for reverse queries; by (store, object type, relation, user); all tuples of
-- a store; models by (store, id).

CREATE TABLE stores (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);

CREATE TABLE models (
    store      TEXT NOT NULL,
    id         TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (store, id)
);

CREATE TABLE tuples (
    store       TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    relation    TEXT NOT NULL,
    user        TEXT NOT NULL,
    user_type   TEXT NOT NULL,
    ulid        TEXT NOT NULL,
    inserted_at TEXT NOT NULL,
    PRIMARY KEY (store, object_type, object_id, relation, user)
) WITHOUT ROWID;
CREATE INDEX tuples_by_user ON tuples (store, user, object_type);
CREATE INDEX tuples_by_type_relation_user ON tuples (store, object_type, relation, user);
CREATE INDEX tuples_by_user_type ON tuples (store, user_type, user);
CREATE INDEX tuples_by_ulid ON tuples (store, ulid);

CREATE TABLE changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    store       TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object      TEXT NOT NULL,
    relation    TEXT NOT NULL,
    user        TEXT NOT NULL,
    operation   TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE INDEX changes_by_store ON changes (store, seq);
