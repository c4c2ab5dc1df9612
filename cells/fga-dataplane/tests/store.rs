//! Store tests, run on both back ends: SQLite (a fresh file) and PostgreSQL
//! (`FGA_TEST_DATABASE_URL`, started by `tests/run`). The same assertions
//! hold on both, byte-wise key order included.

mod common;

use fga_dataplane::engine::{Evaluator, TupleKey, TupleReader};
use fga_dataplane::store::{Db, OnConflict, TupleFilter, WriteError};

fn t(o: &str, r: &str, u: &str) -> TupleKey {
    TupleKey::new(o, r, u)
}

const START: [String; 4] = [String::new(), String::new(), String::new(), String::new()];

fn keys(rows: &[fga_dataplane::store::TupleRow]) -> Vec<String> {
    rows.iter()
        .map(|r| format!("{}#{}@{}", r.key.object, r.key.relation, r.key.user))
        .collect()
}

async fn stores_and_models(db: &Db) {
    let a = db.create_store("a").await.expect("create");
    let b = db.create_store("b").await.expect("create");
    assert_eq!(
        db.get_store(&a.id).await.expect("get").expect("a").name,
        "a"
    );
    // Pagination by id: everything after `a` includes `b`, not `a`.
    let after_a = db.list_stores(&a.id, 100, None).await.expect("list");
    assert!(after_a.iter().any(|s| s.id == b.id));
    assert!(!after_a.iter().any(|s| s.id == a.id));
    assert!(db.delete_store(&a.id).await.expect("delete"));
    assert!(!db.delete_store(&a.id).await.expect("delete twice"));
    assert!(db.get_store(&a.id).await.expect("get").is_none());
    assert!(!db
        .list_stores("", 10_000, None)
        .await
        .expect("list")
        .iter()
        .any(|s| s.id == a.id));
    // By exact name (the database may hold other tests' stores).
    let name = format!("named-{}", fga_dataplane::store::ulid());
    let n1 = db.create_store(&name).await.expect("create");
    let n2 = db.create_store(&name).await.expect("create");
    db.create_store(&format!("{name}-other"))
        .await
        .expect("create");
    let named: Vec<String> = db
        .list_stores("", 100, Some(&name))
        .await
        .expect("list by name")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(named, vec![n1.id.clone(), n2.id.clone()]);
    let page: Vec<String> = db
        .list_stores(&n1.id, 100, Some(&name))
        .await
        .expect("list by name")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(page, vec![n2.id]);

    let model = fga_dataplane::dsl::parse("model\n  schema 1.1\ntype user\n").expect("dsl");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(db.write_model(&b.id, &model).await.expect("write model"));
        // ULIDs are ordered by millisecond; keep the three apart.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let listed: Vec<String> = db
        .list_models(&b.id, "", 10)
        .await
        .expect("list models")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]);
    let page2: Vec<String> = db
        .list_models(&b.id, &ids[1], 10)
        .await
        .expect("page")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(page2, vec![ids[0].clone()]);
    assert_eq!(
        db.latest_model(&b.id)
            .await
            .expect("latest")
            .expect("some")
            .id,
        ids[2]
    );
    assert!(db.get_model(&b.id, &ids[0]).await.expect("get").is_some());
    assert!(db.get_model(&b.id, "nope").await.expect("get").is_none());
    assert!(db.latest_model(&a.id).await.expect("latest").is_none());
}

async fn writes_reads_changes(db: &Db) {
    let s = db.create_store("tuples").await.expect("store").id;
    let first = vec![
        t("doc:a", "viewer", "user:anne"),
        t("doc:B", "viewer", "user:bob"),
        t("doc:_x", "viewer", "user:anne"),
        t("doc:a", "editor", "group:eng#member"),
        t("folder:f", "viewer", "user:*"),
    ];
    db.write(&s, &first, &[], OnConflict::Error, OnConflict::Error)
        .await
        .map_err(|e| format!("{e:?}"))
        .expect("write");

    // A duplicate refuses the whole batch: the new tuple beside it is not written.
    let r = db
        .write(
            &s,
            &[t("doc:c", "viewer", "user:carl"), first[0].clone()],
            &[],
            OnConflict::Error,
            OnConflict::Error,
        )
        .await;
    assert!(matches!(r, Err(WriteError::Exists(k)) if k == first[0]));
    // A missing delete refuses the batch: the existing delete beside it is undone.
    let r = db
        .write(
            &s,
            &[],
            &[first[1].clone(), t("doc:zz", "viewer", "user:nobody")],
            OnConflict::Error,
            OnConflict::Error,
        )
        .await;
    assert!(matches!(r, Err(WriteError::Missing(_))));
    assert_eq!(db.tuple_count(&s).await.expect("count"), 5);
    // Ignoring both kinds goes through and applies the rest.
    db.write(
        &s,
        &[first[0].clone(), t("doc:c", "viewer", "user:carl")],
        &[t("doc:zz", "viewer", "user:nobody")],
        OnConflict::Ignore,
        OnConflict::Ignore,
    )
    .await
    .map_err(|e| format!("{e:?}"))
    .expect("write ignoring");
    assert_eq!(db.tuple_count(&s).await.expect("count"), 6);

    // Read: byte-wise key order (`B` < `_` < `a`), the same on both back ends.
    let all = db
        .read(&s, &TupleFilter::default(), &START, 100)
        .await
        .expect("read");
    assert_eq!(
        keys(&all),
        vec![
            "doc:B#viewer@user:bob",
            "doc:_x#viewer@user:anne",
            "doc:a#editor@group:eng#member",
            "doc:a#viewer@user:anne",
            "doc:c#viewer@user:carl",
            "folder:f#viewer@user:*",
        ]
    );
    // Continuation: page by two from the last key of each page.
    let mut paged = Vec::new();
    let mut after = START;
    loop {
        let page = db
            .read(&s, &TupleFilter::default(), &after, 2)
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        let (ot, oid) = last.key.object.split_once(':').expect("type:id");
        after = [
            ot.to_string(),
            oid.to_string(),
            last.key.relation.clone(),
            last.key.user.clone(),
        ];
        paged.extend(keys(&page));
    }
    assert_eq!(paged, keys(&all));
    let filter = |object: Option<&str>, relation: Option<&str>, user: Option<&str>| TupleFilter {
        object: object.map(String::from),
        relation: relation.map(String::from),
        user: user.map(String::from),
    };
    let by_type = db
        .read(&s, &filter(Some("folder:"), None, None), &START, 100)
        .await
        .expect("read");
    assert_eq!(keys(&by_type), vec!["folder:f#viewer@user:*"]);
    let by_object_relation = db
        .read(
            &s,
            &filter(Some("doc:a"), Some("viewer"), None),
            &START,
            100,
        )
        .await
        .expect("read");
    assert_eq!(keys(&by_object_relation), vec!["doc:a#viewer@user:anne"]);
    let by_user = db
        .read(
            &s,
            &filter(Some("doc:"), None, Some("user:anne")),
            &START,
            100,
        )
        .await
        .expect("read");
    assert_eq!(
        keys(&by_user),
        vec!["doc:_x#viewer@user:anne", "doc:a#viewer@user:anne"]
    );

    // Changes: in order, paged by sequence, filtered by object type.
    let changes = db.changes(&s, None, 0, None, 100).await.expect("changes");
    let ops: Vec<(String, String)> = changes
        .iter()
        .map(|c| (c.tuple_key.object.clone(), c.operation.clone()))
        .collect();
    assert_eq!(ops.len(), 6, "{ops:?}");
    assert_eq!(ops[5], ("doc:c".into(), "TUPLE_OPERATION_WRITE".into()));
    let rest = db
        .changes(&s, None, changes[3].seq, None, 100)
        .await
        .expect("changes");
    assert_eq!(rest.len(), 2);
    let folders = db
        .changes(&s, Some("folder"), 0, None, 100)
        .await
        .expect("changes");
    assert_eq!(folders.len(), 1);
    db.write(
        &s,
        &[],
        &[first[1].clone()],
        OnConflict::Error,
        OnConflict::Error,
    )
    .await
    .map_err(|e| format!("{e:?}"))
    .expect("delete");
    let last = db.changes(&s, None, 0, None, 100).await.expect("changes");
    assert_eq!(
        last.last().map(|c| c.operation.as_str()),
        Some("TUPLE_OPERATION_DELETE")
    );
    // Since a time: the changes stamped at or after it (the stamps are
    // the stored ones, so no clock is involved).
    let newest = last.last().expect("a change").timestamp.clone();
    let since = db
        .changes(&s, None, 0, Some(&newest), 100)
        .await
        .expect("changes since");
    assert_eq!(
        since.last().map(|c| c.seq),
        last.last().map(|c| c.seq),
        "{since:?}"
    );
    assert!(since.iter().all(|c| c.timestamp >= newest));
    let all = db
        .changes(&s, None, 0, Some("1970-01-01T00:00:00.000000Z"), 100)
        .await
        .expect("changes since 1970");
    assert_eq!(all.len(), last.len());
    let none = db
        .changes(&s, None, 0, Some("9999-01-01T00:00:00.000000Z"), 100)
        .await
        .expect("changes since 9999");
    assert!(none.is_empty());

    let counts = db.tuple_counts().await.expect("counts");
    assert!(counts.contains(&(s.clone(), 5)), "{counts:?}");
}

async fn evaluation(db: &Db) {
    let s = db.create_store("eval").await.expect("store").id;
    let model = fga_dataplane::dsl::parse(
        "model\n  schema 1.1\ntype user\ntype group\n  relations\n    define member: [user, group#member]\n\
         type folder\n  relations\n    define viewer: [user, group#member]\n\
         type doc\n  relations\n    define parent: [folder]\n    define viewer: [user] or viewer from parent\n",
    )
    .expect("dsl");
    let tuples = vec![
        t("group:eng", "member", "user:anne"),
        t("group:all", "member", "group:eng#member"),
        t("folder:f", "viewer", "group:all#member"),
        t("doc:1", "parent", "folder:f"),
        t("doc:2", "viewer", "user:bob"),
    ];
    db.bulk_insert(&s, &tuples).await.expect("bulk");
    // Loading again skips what exists.
    db.bulk_insert(&s, &tuples).await.expect("bulk again");
    assert_eq!(db.tuple_count(&s).await.expect("count"), 5);
    let reader = db.reader(&s);
    let mut users = (*reader.users_of("group:all", "member").await.expect("users")).clone();
    users.sort();
    assert_eq!(users, vec!["group:eng#member"]);
    assert!(reader
        .exists("doc:2", "viewer", "user:bob")
        .await
        .expect("exists"));
    assert_eq!(
        reader.by_user("folder:f").await.expect("by user"),
        vec![("doc:1".to_string(), "parent".to_string())]
    );
    let mut docs = reader.objects_of_type("doc").await.expect("objects");
    docs.sort();
    assert_eq!(docs, vec!["doc:1", "doc:2"]);
    let mut people = reader.users_of_type("user").await.expect("users");
    people.sort();
    assert_eq!(people, vec!["user:anne", "user:bob"]);

    // Warming loads every tuple into the cache (SQLite; PostgreSQL has none).
    let warmed = db.warm_cache(&s).await.expect("warm");
    assert_eq!(warmed, if db.backend() == "sqlite" { 5 } else { 0 });
    assert!(reader
        .exists("group:eng", "member", "user:anne")
        .await
        .expect("exists"));
    let ev = Evaluator::new(&model, &reader);
    assert!(ev
        .check("doc:1", "viewer", "user:anne")
        .await
        .expect("check"));
    assert!(!ev
        .check("doc:1", "viewer", "user:bob")
        .await
        .expect("check"));
    let mut objs = ev
        .list_objects("doc", "viewer", "user:anne", 100)
        .await
        .expect("list objects");
    objs.sort();
    assert_eq!(objs, vec!["doc:1"]);
    // A delete is seen by the next check (no stale cache).
    db.write(
        &s,
        &[],
        &[t("group:eng", "member", "user:anne")],
        OnConflict::Error,
        OnConflict::Error,
    )
    .await
    .map_err(|e| format!("{e:?}"))
    .expect("delete");
    let reader = db.reader(&s);
    let ev = Evaluator::new(&model, &reader);
    assert!(!ev
        .check("doc:1", "viewer", "user:anne")
        .await
        .expect("check"));
}

async fn all(db: Db) {
    stores_and_models(&db).await;
    writes_reads_changes(&db).await;
    evaluation(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_on_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = Db::open(&dir.path().join("fga.db")).await.expect("open");
    assert_eq!(db.backend(), "sqlite");
    all(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_on_postgres() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let db = Db::connect(&url).await.expect("connect");
    assert_eq!(db.backend(), "postgres");
    all(db).await;
}

#[tokio::test]
async fn unreachable_postgres_is_a_clear_error() {
    let r = Db::connect("postgres://nobody@127.0.0.1:1/none").await;
    let e = r.err().expect("no server on port 1");
    assert!(e.to_string().contains("database error"), "{e}");
}

#[test]
fn ulids_sort_in_creation_order() {
    let ids: Vec<String> = (0..10_000).map(|_| fga_dataplane::store::ulid()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert!(ids.iter().all(|i| fga_dataplane::store::is_ulid(i)));
}

/// A database written by the store before it ran on sqlx's `Any` driver
/// (commit 1b68f40: `fga-bench --tuples 100`) opens and carries on: its
/// store, model and tuples read back, pages join up, a check answers from
/// them, and new writes land in the change log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_written_by_an_earlier_release_opens() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("fga.db");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/fga-1b68f40.db"
    );
    std::fs::copy(fixture, &file).expect("copy the fixture");
    let db = Db::open(&file).await.expect("open");
    let stores = db.list_stores("", 10, None).await.expect("list");
    assert_eq!(stores.len(), 1);
    assert_eq!(
        (stores[0].id.as_str(), stores[0].name.as_str()),
        ("01M8MDGKWRXEKVAHRNMMK0H2XE", "bench")
    );
    let s = stores[0].id.clone();
    let model = db.latest_model(&s).await.expect("model").expect("a model");
    assert_eq!(db.tuple_count(&s).await.expect("count"), 94);
    // Page through every tuple, 10 at a time, with continuation keys.
    let mut all = Vec::new();
    let mut after = START;
    loop {
        let page = db
            .read(&s, &TupleFilter::default(), &after, 10)
            .await
            .expect("read");
        let Some(last) = page.last() else { break };
        let (ot, oid) = last.key.object.split_once(':').expect("type:id");
        after = [
            ot.to_string(),
            oid.to_string(),
            last.key.relation.clone(),
            last.key.user.clone(),
        ];
        all.extend(keys(&page));
    }
    assert_eq!(all.len(), 94);
    let viewer = db
        .read(
            &s,
            &TupleFilter {
                object: Some("document:".into()),
                relation: Some("viewer".into()),
                user: None,
            },
            &START,
            1,
        )
        .await
        .expect("read")
        .pop()
        .expect("a document viewer");
    let reader = db.reader(&s);
    let ev = Evaluator::new(&model, &reader);
    assert!(ev
        .check(&viewer.key.object, "viewer", &viewer.key.user)
        .await
        .expect("check"));
    db.write(
        &s,
        &[t("document:new", "viewer", "user:u1")],
        &[],
        OnConflict::Error,
        OnConflict::Error,
    )
    .await
    .map_err(|e| format!("{e:?}"))
    .expect("write");
    let changes = db.changes(&s, None, 0, None, 10).await.expect("changes");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].tuple_key.object, "document:new");
    assert_eq!(db.tuple_count(&s).await.expect("count"), 95);
}
