//! The engine's commit carries the cell version changes its events report,
//! on SQLite and PostgreSQL: the event, the cell's version (with the one
//! it replaced) and the deploy log row are written together, or, when the
//! commit is fenced or an event's number is taken, none of them.

use chrono::Utc;
use conductor::store::{CellChange, NewEvent, Store, StoreError};
use conductor_core::train::Event;

#[path = "common/db.rs"]
mod db;
#[path = "common/fixtures.rs"]
mod fixtures;
use fixtures::{cell, train};

fn finished(n: i64, previous: Option<&str>) -> NewEvent {
    let ev = Event::StepFinished {
        cell: "c1".into(),
        step: 0,
        attempt: 1,
        ok: true,
        detail: "c1 now runs 2".into(),
        previous_version: previous.map(Into::into),
    };
    ("t1".into(), n, ev, Utc::now())
}

fn change(version: &str, previous: Option<&str>, key: &str) -> CellChange {
    CellChange {
        cell: "c1".into(),
        artifact: "a".into(),
        version: Some(version.into()),
        previous: previous.map(Into::into),
        key: key.into(),
        kind: "deploy".into(),
        at: Utc::now(),
    }
}

/// Events, the cell's (version, previous), deploy log rows.
async fn state(s: &Store) -> (i64, Option<String>, Option<String>, usize) {
    let cells = s.list_cells().await.expect("cells");
    let v = cells
        .iter()
        .find(|c| c.spec.id == "c1")
        .and_then(|c| c.versions.iter().find(|v| v.artifact == "a"))
        .map(|v| (v.version.clone(), v.previous_version.clone()))
        .unwrap_or_default();
    (
        s.count_events().await.expect("events"),
        v.0,
        v.1,
        s.deploy_log(Some("c1")).await.expect("log").len(),
    )
}

#[tokio::test]
async fn a_commit_writes_its_version_changes_with_its_events_or_nothing() {
    for db in db::both("commitchanges").await {
        let (s, be) = (&db.store, db.backend);
        let now = Utc::now();
        s.seed_cells(&[cell("c1")], now).await.expect("seed");
        let t = train("t1");
        let created = Event::Created {
            spec: Box::new(t.spec.clone()),
            queued: false,
        };
        s.commit(&[("t1".into(), 1, created, now)], &[&t], &[])
            .await
            .expect("created");
        s.set_cell_version("c1", "a", Some("1"), "k1", "deploy", now)
            .await
            .expect("v1");
        let (events, ..) = state(s).await;

        // The event, the version and its previous, the log row: together.
        s.commit_all(
            &[finished(2, Some("1"))],
            &[],
            &[],
            &[change("2", Some("1"), "k2")],
        )
        .await
        .expect("commit");
        assert_eq!(
            state(s).await,
            (events + 1, Some("2".into()), Some("1".into()), 2),
            "{be}"
        );
        assert_eq!(
            s.deploy_done("k2").await.expect("done"),
            Some(Some("1".into())),
            "{be}"
        );
        let log = s.deploy_log(Some("c1")).await.expect("log");
        assert_eq!(
            (
                log[1].version.as_deref(),
                log[1].key.as_str(),
                log[1].kind.as_str()
            ),
            (Some("2"), "k2", "deploy"),
            "{be}"
        );
        let after = state(s).await;

        // An event numbered as a stored one: none of it.
        match s
            .commit_all(
                &[finished(2, Some("2"))],
                &[],
                &[],
                &[change("3", Some("2"), "k3")],
            )
            .await
        {
            Err(StoreError::SequenceTaken(_)) => {}
            other => panic!("{be}: not refused: {other:?}"),
        }
        assert_eq!(state(s).await, after, "{be}");
        assert_eq!(s.deploy_done("k3").await.expect("done"), None, "{be}");

        // A deposed leader: none of it either.
        let other = db.reopen().await;
        let ours = s.claim_leadership("a", "http://a", now).await.expect("a");
        s.set_fence(ours);
        other
            .claim_leadership("b", "http://b", now)
            .await
            .expect("b");
        match s
            .commit_all(
                &[finished(3, Some("2"))],
                &[],
                &[],
                &[change("3", Some("2"), "k3")],
            )
            .await
        {
            Err(StoreError::Fenced { .. }) => {}
            other => panic!("{be}: not fenced: {other:?}"),
        }
        // A change alone (no event) is fenced as well.
        match s
            .commit_all(&[], &[], &[], &[change("3", Some("2"), "k3")])
            .await
        {
            Err(StoreError::Fenced { .. }) => {}
            other => panic!("{be}: not fenced: {other:?}"),
        }
        assert_eq!(state(s).await, after, "{be}");
        assert_eq!(s.deploy_done("k3").await.expect("done"), None, "{be}");
    }
}

fn change_of(cell: &str, version: Option<&str>, previous: Option<&str>, key: &str) -> CellChange {
    CellChange {
        cell: cell.into(),
        version: version.map(Into::into),
        previous: previous.map(Into::into),
        key: key.into(),
        ..change("x", None, key)
    }
}

#[tokio::test]
async fn many_changes_in_one_commit_are_logged_in_order() {
    for db in db::both("manychanges").await {
        let (s, be) = (&db.store, db.backend);
        let now = Utc::now();
        let mut c2 = cell("c1");
        c2.id = "c2".into();
        s.seed_cells(&[cell("c1"), c2], now).await.expect("seed");
        s.set_cell_version("c2", "a", Some("1"), "k0", "deploy", now)
            .await
            .expect("v1");
        // Distinct cells (one statement on PostgreSQL), one a removal.
        s.commit_all(
            &[],
            &[],
            &[],
            &[
                change_of("c1", Some("5"), None, "k1"),
                change_of("c2", None, Some("1"), "k2"),
            ],
        )
        .await
        .expect("distinct");
        // The same cell twice (row by row).
        s.commit_all(
            &[],
            &[],
            &[],
            &[
                change_of("c1", Some("6"), Some("5"), "k3"),
                change_of("c1", Some("7"), Some("6"), "k4"),
            ],
        )
        .await
        .expect("twice");
        let log: Vec<(String, Option<String>, String)> = s
            .deploy_log(None)
            .await
            .expect("log")
            .into_iter()
            .map(|r| (r.cell_id, r.version, r.key))
            .collect();
        let want = [
            ("c2", Some("1"), "k0"),
            ("c1", Some("5"), "k1"),
            ("c2", None, "k2"),
            ("c1", Some("6"), "k3"),
            ("c1", Some("7"), "k4"),
        ]
        .map(|(c, v, k)| (c.to_string(), v.map(String::from), k.to_string()));
        assert_eq!(log, want, "{be}");
        assert_eq!(
            s.deploy_done("k2").await.expect("k2"),
            Some(Some("1".into()))
        );
        let cells = s.list_cells().await.expect("cells");
        let v = |id: &str| {
            cells
                .iter()
                .find(|c| c.spec.id == id)
                .and_then(|c| c.versions.first())
                .map(|v| (v.version.clone(), v.previous_version.clone()))
        };
        assert_eq!(v("c1"), Some((Some("7".into()), Some("6".into()))), "{be}");
        assert_eq!(v("c2"), Some((None, Some("1".into()))), "{be}");
    }
}
