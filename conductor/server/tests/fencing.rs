//! Leadership and fencing, on SQLite and on PostgreSQL: a Conductor that
//! lost the leadership cannot append, and an event numbered as one already
//! stored is refused; nothing is written either way.

use chrono::Utc;
use conductor::store::{AuditEntry, Store, StoreError};
use conductor_core::train::{Event, Train};

#[path = "common/db.rs"]
mod db;
#[path = "common/fixtures.rs"]
mod fixtures;
use fixtures::train;

fn wake(train: &str, n: i64) -> conductor::store::NewEvent {
    (train.to_string(), n, Event::Wake { cell: None }, Utc::now())
}

/// A train's snapshot and its first event (events need their train).
async fn with_train(s: &Store, t: &Train) {
    let created = Event::Created {
        spec: Box::new(t.spec.clone()),
        queued: false,
    };
    s.commit(&[(t.spec.id.clone(), 1, created, Utc::now())], &[t], &[])
        .await
        .expect("first commit");
}

#[tokio::test]
async fn a_conductor_that_lost_the_leadership_writes_nothing() {
    for db in db::both("fenced").await {
        let a = &db.store;
        let b = db.reopen().await;
        assert_eq!(a.leader().await.expect("leader"), None);
        let ea = a
            .claim_leadership("a", "http://a:7070", Utc::now())
            .await
            .expect("claim a");
        a.set_fence(ea);
        assert_eq!(a.fence(), Some(ea));
        let t = train("t1");
        with_train(a, &t).await;
        // Fast path (events only) and transaction (snapshot, audit) both work.
        a.commit(&[wake("t1", 2)], &[], &[]).await.expect("fast");
        a.commit(
            &[wake("t1", 3)],
            &[&t],
            &[(AuditEntry::new("alice", "x", "t1", ""), Utc::now())],
        )
        .await
        .expect("transaction");
        let eb = b
            .claim_leadership("b", "http://b:7070", Utc::now())
            .await
            .expect("claim b");
        assert_eq!(eb, ea + 1, "{}", db.backend);
        let leader = a.leader().await.expect("leader").expect("some");
        assert_eq!(
            (
                leader.epoch,
                leader.holder.as_str(),
                leader.address.as_str()
            ),
            (eb, "b", "http://b:7070")
        );
        let before = a.count_events().await.expect("count");
        let audit_before = a.audit_log(0, 100).await.expect("audit").len();
        // The old leader's appends, both paths, are refused.
        for (trains, audit) in [
            (vec![], vec![]),
            (
                vec![&t],
                vec![(AuditEntry::new("alice", "y", "t1", ""), Utc::now())],
            ),
        ] {
            match a.commit(&[wake("t1", 4)], &trains, &audit).await {
                Err(StoreError::Fenced { ours, current }) => {
                    assert_eq!((ours, current), (ea, eb), "{}", db.backend)
                }
                other => panic!("{}: not fenced: {other:?}", db.backend),
            }
        }
        assert_eq!(a.count_events().await.expect("count"), before);
        assert_eq!(
            a.audit_log(0, 100).await.expect("audit").len(),
            audit_before
        );
        // The new leader carries on from the stored count.
        b.set_fence(eb);
        assert_eq!(b.train_event_count("t1").await.expect("n"), 3);
        b.commit(&[wake("t1", 4)], &[], &[])
            .await
            .expect("new leader");
        assert_eq!(a.count_events().await.expect("count"), before + 1);
        // Unfenced (a single Conductor, tests): no check.
        a.set_fence(0);
        a.commit(&[wake("t1", 5)], &[], &[])
            .await
            .expect("unfenced");
    }
}

#[tokio::test]
async fn an_event_numbered_as_a_stored_one_is_refused() {
    for db in db::both("dupseq").await {
        let s = &db.store;
        let t = train("t2");
        with_train(s, &t).await;
        s.commit(&[wake("t2", 2)], &[], &[]).await.expect("second");
        let before = s.count_events().await.expect("count");
        for trains in [vec![], vec![&t]] {
            // Two new events, the second one's number taken: neither is stored.
            match s
                .commit(&[wake("t2", 3), wake("t2", 2)], &trains, &[])
                .await
            {
                Err(StoreError::SequenceTaken(m)) => {
                    assert!(m.contains("nothing was written"), "{m}")
                }
                other => panic!("{}: not refused: {other:?}", db.backend),
            }
            assert_eq!(s.count_events().await.expect("count"), before);
        }
        // Another train numbers its events on its own.
        let u = train("t3");
        with_train(s, &u).await;
        s.commit(&[wake("t3", 2), wake("t2", 3)], &[], &[])
            .await
            .expect("both trains");
        let events = s.train_events("t2", 0, 10).await.expect("events");
        assert_eq!(events.len(), 3, "{}", db.backend);
    }
}

#[tokio::test]
async fn claims_are_numbered_one_after_another() {
    for db in db::both("claims").await {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = db.store.clone();
            tasks.push(tokio::spawn(async move {
                s.claim_leadership(&format!("h{i}"), "addr", Utc::now())
                    .await
                    .expect("claim")
            }));
        }
        let mut epochs = Vec::new();
        for t in tasks {
            epochs.push(t.await.expect("task"));
        }
        epochs.sort_unstable();
        assert_eq!(epochs, (1..=8).collect::<Vec<i64>>(), "{}", db.backend);
        let leader = db.store.leader().await.expect("leader").expect("some");
        assert_eq!(leader.epoch, 8);
        // A later claim is always higher, also from another store.
        let other = db.reopen().await;
        assert_eq!(
            other
                .claim_leadership("z", "addr", Utc::now())
                .await
                .expect("claim"),
            9
        );
    }
}

/// PostgreSQL: when the server drops the store's connections, the next
/// append after a failed one goes through on a new connection.
#[tokio::test]
async fn the_event_writer_reconnects_after_postgres_drops_it() {
    let Some(db) = db::postgres("reconnect").await else {
        return;
    };
    let s = &db.store;
    let t = train("t4");
    with_train(s, &t).await;
    let mut raw = db.raw().await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut raw)
    .await
    .expect("terminate");
    let mut n = 2;
    let mut failures = 0;
    while n <= 3 {
        match s.commit(&[wake("t4", n)], &[], &[]).await {
            Ok(()) => n += 1,
            Err(e) => {
                failures += 1;
                assert!(failures < 3, "no reconnect: {e}");
                eprintln!("append failed: {e}");
            }
        }
    }
    // The append that found the connection gone failed; the next one
    // went through.
    assert_eq!(failures, 1);
    assert_eq!(s.train_event_count("t4").await.expect("count"), 3);
}

/// Batches of every shape the append takes (SQLite pads a batch to a few
/// statement sizes and splits one of more than 1,024 events; PostgreSQL
/// sends any number as one JSON parameter), fenced or not: every event is
/// stored once, in order, with its number and its body as written.
#[tokio::test]
async fn batches_of_any_size_are_stored_in_order() {
    for db in db::both("batches").await {
        let s = &db.store;
        let t = train("big");
        with_train(s, &t).await;
        let epoch = s
            .claim_leadership("a", "127.0.0.1:1", Utc::now())
            .await
            .expect("claim");
        let mut n = 1;
        for (size, fenced) in [
            (1, false),
            (15, true),
            (16, false),
            (17, true),
            (64, false),
            (65, true),
            (256, true),
            (1024, false),
            (1025, true),
            (2100, false),
        ] {
            s.set_fence(if fenced { epoch } else { 0 });
            let batch: Vec<_> = (0..size)
                .map(|i| {
                    n += 1;
                    // Bodies with quotes, backslashes, NUL and non-ASCII text.
                    let detail = format!("#{n} \"q\" \\ \0 é {}", i % 7);
                    let ev = Event::StepFinished {
                        cell: "c1".into(),
                        step: 0,
                        attempt: n as u32,
                        ok: true,
                        detail,
                        previous_version: None,
                    };
                    ("big".to_string(), n, ev, Utc::now())
                })
                .collect();
            let snapshot = if size % 2 == 1 { vec![&t] } else { vec![] };
            s.commit(&batch, &snapshot, &[])
                .await
                .unwrap_or_else(|e| panic!("{}: {size} events: {e}", db.backend));
        }
        s.set_fence(0);
        assert_eq!(s.train_event_count("big").await.expect("n"), n);
        let stored = s.train_events("big", 0, 10_000).await.expect("events");
        assert_eq!(stored.len() as i64, n, "{}", db.backend);
        for (i, e) in stored.iter().enumerate().skip(1) {
            let want = i as i64 + 1;
            let ev: Event = serde_json::from_value(e.event.clone()).expect("event");
            match &ev {
                Event::StepFinished {
                    attempt, detail, ..
                } => {
                    assert_eq!(i64::from(*attempt), want, "{}: order", db.backend);
                    assert!(
                        detail.starts_with(&format!("#{want} \"q\" \\ \0 é ")),
                        "{}: {detail:?}",
                        db.backend
                    );
                }
                other => panic!("{}: {other:?}", db.backend),
            }
            assert!(e.seq > stored[i - 1].seq, "{}: seq order", db.backend);
        }
    }
}
