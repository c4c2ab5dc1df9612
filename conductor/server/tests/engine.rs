//! The engine and the store together, in process: a train over simulated
//! cells, then its persisted events replayed.

use cells_inventory::CellSpec;
use chrono::Utc;
use conductor::engine::{
    BoxFut, Clock, Engine, Executor, Outcome, RollbackRequest, StepRequest, SystemClock,
};
use conductor::leases::Leases;
use conductor::metrics::Metrics;
use conductor::store::Store;
use conductor::targets::SimExecutor;
use conductor_core::train::{CellPhase, Train, TrainStatus};
use std::sync::Arc;
use std::time::Duration;

#[path = "common/db.rs"]
mod db;
#[path = "common/fixtures.rs"]
mod fixtures;
use fixtures::{cell, spec};

fn cells(n: usize) -> Vec<CellSpec> {
    (0..n)
        .map(|i| CellSpec {
            region: ["us-east-1", "eu-west-1"][i % 2].into(),
            ..cell(&format!("c{i:03}"))
        })
        .collect()
}

async fn engine(store: &Store, sim: Arc<SimExecutor>) -> Engine {
    let metrics = Arc::new(Metrics::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Engine::start(
        store.clone(),
        clock,
        sim,
        Arc::new(Leases::new(metrics.clone())),
        metrics,
    )
    .await
    .expect("engine")
}

const YAML: &str = "name: p\nartifact: { kind: binary, name: a }\nsteps:\n  - deploy: {}\n  - bake: 50ms\nwaves:\n  - { name: one, cells: 1 }\n  - { name: rest, percent: 100, max_parallel: 4 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_stored_events_gives_the_final_state() {
    for db in db::both("replay").await {
        replaying(&db.store).await;
    }
}

async fn replaying(store: &Store) {
    let cs = cells(9);
    store.seed_cells(&cs, Utc::now()).await.expect("seed");
    let sim = Arc::new(SimExecutor::new(Duration::from_millis(5)));
    let e = engine(store, sim.clone()).await;
    let mut done = e.finished();
    e.start_train(spec("t1", YAML, &cs), None)
        .await
        .expect("start");
    let (id, status) = done.recv().await.expect("finished");
    assert_eq!((id.as_str(), status), ("t1", TrainStatus::Succeeded));
    let stored = store.get_train("t1").await.expect("get").expect("train");
    let events = store.train_events("t1", 0, 100_000).await.expect("events");
    let parsed: Vec<(conductor_core::train::Event, chrono::DateTime<Utc>)> = events
        .iter()
        .map(|r| {
            let at = chrono::DateTime::parse_from_rfc3339(&r.at)
                .expect("at")
                .with_timezone(&Utc);
            (serde_json::from_value(r.event.clone()).expect("event"), at)
        })
        .collect();
    let replayed = Train::replay(parsed.iter().map(|(e, at)| (e, *at))).expect("replay");
    assert_eq!(
        replayed, stored,
        "replay differs from the committed snapshot"
    );
    assert_eq!(sim.deploys.lock().expect("lock").len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_finishes_what_the_first_left() {
    for db in db::both("restart").await {
        restarted(&db.store).await;
    }
}

/// The second engine numbers its events after the first one's: a wrong
/// count would be refused by the store and stop it.
async fn restarted(store: &Store) {
    let cs = cells(6);
    store.seed_cells(&cs, Utc::now()).await.expect("seed");
    // The first engine's deploys never finish: it "dies" with steps in flight.
    let stuck = Arc::new(SimExecutor::new(Duration::from_secs(3600)));
    let first = engine(store, stuck).await;
    first
        .start_train(spec("t2", YAML, &cs), None)
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(first);
    // A second engine over the same store replays and resumes the step.
    let sim = Arc::new(SimExecutor::new(Duration::from_millis(5)));
    let second = engine(store, sim.clone()).await;
    let mut done = second.finished();
    let t = second.train("t2").await.expect("train").expect("active");
    assert_eq!(t.status, TrainStatus::Running);
    let (_, status) = tokio::time::timeout(Duration::from_secs(30), done.recv())
        .await
        .expect("in time")
        .expect("finished");
    assert_eq!(status, TrainStatus::Succeeded);
    assert_eq!(sim.deploys.lock().expect("lock").len(), 6);
}

/// A train log that is not the store itself (here: one that counts what
/// passes through to the store) drops in behind the engine.
struct Counting {
    store: Store,
    events: std::sync::atomic::AtomicUsize,
}

impl conductor::store::TrainLog for Counting {
    fn commit<'a>(
        &'a self,
        c: conductor::store::Commit<'a>,
    ) -> conductor::engine::BoxFut<'a, conductor::store::Result<()>> {
        self.events
            .fetch_add(c.events.len(), std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move { self.store.commit_batch(&c).await })
    }
    fn active_train_events(
        &self,
    ) -> conductor::engine::BoxFut<
        '_,
        conductor::store::Result<Vec<Vec<(conductor_core::train::Event, chrono::DateTime<Utc>)>>>,
    > {
        Box::pin(self.store.active_train_events())
    }
    fn get_train<'a>(
        &'a self,
        id: &'a str,
    ) -> conductor::engine::BoxFut<'a, conductor::store::Result<Option<Train>>> {
        Box::pin(self.store.get_train(id))
    }
    fn train_event_count<'a>(
        &'a self,
        id: &'a str,
    ) -> conductor::engine::BoxFut<'a, conductor::store::Result<i64>> {
        Box::pin(self.store.train_event_count(id))
    }
    fn cell_specs(&self) -> conductor::engine::BoxFut<'_, conductor::store::Result<Vec<CellSpec>>> {
        Box::pin(self.store.cell_specs())
    }
    fn cell_spec<'a>(
        &'a self,
        id: &'a str,
    ) -> conductor::engine::BoxFut<'a, conductor::store::Result<Option<CellSpec>>> {
        Box::pin(self.store.cell_spec(id))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_train_log_drops_in() {
    let db = db::sqlite().await;
    let store = db.store.clone();
    let cs = cells(4);
    store.seed_cells(&cs, Utc::now()).await.expect("seed");
    let log = Arc::new(Counting {
        store: store.clone(),
        events: Default::default(),
    });
    let metrics = Arc::new(Metrics::default());
    let sim = Arc::new(SimExecutor::new(Duration::from_millis(5)));
    let e = Engine::start_with_log(
        store.clone(),
        log.clone(),
        Arc::new(SystemClock),
        sim,
        Arc::new(Leases::new(metrics.clone())),
        metrics,
    )
    .await
    .expect("engine");
    let mut done = e.finished();
    e.start_train(spec("t9", YAML, &cs), None)
        .await
        .expect("start");
    let (_, status) = done.recv().await.expect("finished");
    assert_eq!(status, TrainStatus::Succeeded);
    let through = log.events.load(std::sync::atomic::Ordering::SeqCst);
    assert!(through > 0);
    assert_eq!(
        store.train_event_count("t9").await.expect("count"),
        through as i64
    );
}

/// Steps that finish at once, without touching time.
struct Instant_;
impl Executor for Instant_ {
    fn run_step(&self, _req: StepRequest) -> BoxFut<'_, Outcome> {
        Box::pin(async { Outcome::ok("done") })
    }
    fn rollback(&self, _req: RollbackRequest) -> BoxFut<'_, Outcome> {
        Box::pin(async { Outcome::ok("rolled back") })
    }
}

/// A bake of an hour completes when paused time moves on by an hour, and
/// not before: the engine's wake timer sleeps on tokio's clock, and the
/// test clock moves with it. No real hour passes, nor any real sleep.
#[tokio::test(start_paused = true)]
async fn a_bake_completes_when_paused_time_moves_on() {
    // Keep the runtime busy so that time moves only when the test moves it
    // (an idle paused runtime jumps to its next timer, database timeouts
    // included).
    let spinner = tokio::spawn(async {
        loop {
            tokio::task::yield_now().await;
        }
    });
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(&dir.path().join("c.db")).await.expect("store");
    let cs = cells(2);
    let start = chrono::DateTime::from_timestamp(1_750_000_000, 0).expect("an instant");
    let clock = Arc::new(conductor::clock::TestClock::new(start));
    store.seed_cells(&cs, clock.now()).await.expect("seed");
    let metrics = Arc::new(Metrics::default());
    let e = Engine::start(
        store.clone(),
        clock.clone() as Arc<dyn Clock>,
        Arc::new(Instant_),
        Arc::new(Leases::new(metrics.clone())),
        metrics,
    )
    .await
    .expect("engine");
    let mut done = e.finished();
    let yaml = "name: p\nartifact: { kind: binary, name: a }\nsteps:\n  - deploy: {}\n  - bake: 1h\nwaves:\n  - { name: all, percent: 100, max_parallel: 2 }\n";
    e.start_train(spec("t3", yaml, &cs), None)
        .await
        .expect("start");
    // Both cells deployed and baking (as committed).
    let baking = |t: &Train| {
        t.cells
            .values()
            .filter(|c| matches!(c.phase, CellPhase::Baking { .. }))
            .count()
    };
    let mut polls = 0;
    while baking(&e.train("t3").await.expect("train").expect("active")) < 2 {
        polls += 1;
        assert!(polls < 100_000, "the cells never started baking");
        tokio::task::yield_now().await;
    }
    assert_eq!(clock.now(), start, "no time passed yet");

    // Half the bake: nothing finishes.
    tokio::time::advance(Duration::from_secs(30 * 60)).await;
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    assert!(
        done.try_recv().is_err(),
        "finished before the bake was over"
    );
    let t = e.train("t3").await.expect("train").expect("active");
    assert_eq!((t.status, baking(&t)), (TrainStatus::Running, 2));

    // The rest of it: the wake timers fire and the train succeeds.
    tokio::time::advance(Duration::from_secs(31 * 60)).await;
    let mut polls = 0;
    let (id, status) = loop {
        polls += 1;
        assert!(polls < 100_000, "the train did not finish after its bake");
        match done.try_recv() {
            Ok(r) => break r,
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("no finished train: {e}"),
        }
    };
    assert_eq!((id.as_str(), status), ("t3", TrainStatus::Succeeded));
    let t = store.get_train("t3").await.expect("get").expect("train");
    let took = t.updated_at - start;
    assert!(
        took >= chrono::Duration::hours(1) && took < chrono::Duration::minutes(62),
        "the train finished {took} after it started, by the clock"
    );
    spinner.abort();
}

/// A finished resize and a cell's new status are committed by the engine
/// (only the engine changes cell state): the resize row, the cell's new
/// shape or status and the audit row land together. Once another
/// Conductor claimed the leadership, the engine refuses to record either,
/// writes nothing and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_outcomes_are_committed_by_the_engine() {
    use conductor::store::{AuditEntry, CellStatusChange, ResizeDone};
    use conductor_core::resize::{Resize, ResizeStatus};
    use conductor_core::CellStatus;
    for db in db::both("resize_engine").await {
        let store = &db.store;
        let now = Utc::now();
        store.seed_cells(&cells(2), now).await.expect("seed");
        let epoch = store
            .claim_leadership("a", "http://a", now)
            .await
            .expect("claim");
        store.set_fence(epoch);
        let e = engine(store, Arc::new(SimExecutor::new(Duration::from_millis(5)))).await;
        let resize = |id: &str, cell: &str| {
            let (mut r, _) = Resize::new(
                id.into(),
                cell.into(),
                "small".into(),
                "large".into(),
                "alice".into(),
                "grow".into(),
                false,
                now,
            );
            r.status = ResizeStatus::Succeeded;
            r
        };
        let grown = |id: &str| {
            let mut c = cells(2).into_iter().find(|c| c.id == id).expect("cell");
            c.shape = "large".into();
            c
        };
        let audit_rows = store.audit_log(0, 100).await.expect("audit").len();
        e.finish_resize(
            ResizeDone {
                resize: resize("r1", "c000"),
                cell: Some(grown("c000")),
            },
            AuditEntry::new("conductor", "resize.succeeded", "c000", "r1"),
        )
        .await
        .expect("recorded");
        let stored = store.get_resize("r1").await.expect("get").expect("r1");
        assert_eq!(stored.status, ResizeStatus::Succeeded, "{}", db.backend);
        let c = store.cell_spec("c000").await.expect("cell").expect("c000");
        assert_eq!(c.shape, "large", "{}", db.backend);
        let log = store.audit_log(0, 100).await.expect("audit");
        assert_eq!(log.len(), audit_rows + 1, "{}", db.backend);
        assert_eq!(log.last().expect("row").action, "resize.succeeded");
        let status = |cell: &str, status| CellStatusChange {
            cell: cell.into(),
            status,
            at: now,
        };
        e.set_cell_status(
            status("c001", CellStatus::Draining),
            AuditEntry::new("sre", "cell.drain", "c001", ""),
        )
        .await
        .expect("drained");
        assert_eq!(
            store.cell_status("c001").await.expect("status"),
            Some(CellStatus::Draining),
            "{}",
            db.backend
        );
        let audit_rows = audit_rows + 1;

        // Deposed: nothing of the next outcome is written, and the engine stops.
        let other = db.reopen().await;
        other
            .claim_leadership("b", "http://b", now)
            .await
            .expect("b claims");
        let r = e
            .finish_resize(
                ResizeDone {
                    resize: resize("r2", "c001"),
                    cell: Some(grown("c001")),
                },
                AuditEntry::new("conductor", "resize.succeeded", "c001", "r2"),
            )
            .await;
        assert!(
            r.is_err(),
            "{}: a deposed engine recorded a resize",
            db.backend
        );
        let r = e
            .set_cell_status(
                status("c001", CellStatus::Retired),
                AuditEntry::new("sre", "cell.retire", "c001", ""),
            )
            .await;
        assert!(
            r.is_err(),
            "{}: a deposed engine retired a cell",
            db.backend
        );
        assert_eq!(
            store.cell_status("c001").await.expect("status"),
            Some(CellStatus::Draining),
            "{}",
            db.backend
        );
        assert!(store.get_resize("r2").await.expect("get").is_none());
        let c = store.cell_spec("c001").await.expect("cell").expect("c001");
        assert_eq!(c.shape, "small", "{}", db.backend);
        assert_eq!(
            store.audit_log(0, 100).await.expect("audit").len(),
            audit_rows + 1,
            "{}",
            db.backend
        );
    }
}
