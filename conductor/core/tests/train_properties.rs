//! Property tests of the release-train state machine: random plans, random
//! orders of outcomes, approvals, cancels and rollbacks.

use chrono::{DateTime, Duration, Utc};
use conductor_core::duration::Dur;
use conductor_core::pipeline::{DeployStep, Gate, OnFailure, Step};
use conductor_core::plan::{Plan, PlannedWave};
use conductor_core::train::{
    CellPhase, Effect, Event, Refusal, Train, TrainSpec, TrainStatus, WaveStatus,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

const STARTER: &str = "dev";
const PEOPLE: [&str; 4] = [STARTER, "alice", "bob", "carol"];

#[derive(Debug, Clone)]
struct Shape {
    waves: Vec<(usize, u32, Option<u32>)>, // cells, max_parallel, quorum
    bake: bool,
    test: bool,
    rollback_train: bool,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop::collection::vec((1usize..5, 1u32..4, prop::option::of(1u32..3)), 1..4),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(waves, bake, test, rollback_train)| Shape {
            waves,
            bake,
            test,
            rollback_train,
        })
}

fn spec(s: &Shape) -> TrainSpec {
    let mut waves = Vec::new();
    let mut cell_tz = BTreeMap::new();
    let mut n = 0;
    for (i, (cells, max_parallel, quorum)) in s.waves.iter().enumerate() {
        let ids: Vec<String> = (0..*cells)
            .map(|_| {
                n += 1;
                format!("c{n:02}")
            })
            .collect();
        for id in &ids {
            cell_tz.insert(id.clone(), "UTC".to_string());
        }
        waves.push(PlannedWave {
            name: format!("w{i}"),
            cells: ids,
            max_parallel: *max_parallel,
            approval: quorum.map(|q| Gate {
                group: "rm".into(),
                quorum: q,
            }),
            after: if i == 0 { vec![] } else { vec![i - 1] },
        });
    }
    let mut steps = vec![Step::Deploy(DeployStep::default())];
    if s.test {
        steps.push(Step::Command(conductor_core::pipeline::CommandStep {
            run: "true".into(),
            timeout: Dur::secs(5),
            env: Default::default(),
        }));
    }
    if s.bake {
        steps.push(Step::Bake(Dur::secs(60)));
    }
    TrainSpec {
        id: "t1".into(),
        pipeline: "p".into(),
        artifact: conductor_core::pipeline::Artifact {
            kind: conductor_core::pipeline::ArtifactKind::Binary,
            name: "a".into(),
            args: vec![],
            health: "/healthz".into(),
        },
        version: "v2".into(),
        started_by: STARTER.into(),
        steps,
        on_failure: if s.rollback_train {
            OnFailure::RollbackTrain
        } else {
            OnFailure::RollbackCellAndHalt
        },
        windows: vec![],
        plan: Plan {
            order: (0..waves.len()).collect(),
            waves,
            cell_tz,
        },
    }
}

/// One random action of the outside world: an index into the in-flight
/// effects or gates, and an outcome.
#[derive(Debug, Clone)]
enum Action {
    Complete { pick: usize, ok: bool },
    Approve { pick: usize, person: usize },
    Reject { pick: usize },
    Cancel,
    Rollback,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        10 => (any::<usize>(), prop::bool::weighted(0.9)).prop_map(|(pick, ok)| Action::Complete { pick, ok }),
        4 => (any::<usize>(), 0usize..4).prop_map(|(pick, person)| Action::Approve { pick, person }),
        1 => any::<usize>().prop_map(|pick| Action::Reject { pick }),
        1 => Just(Action::Cancel),
        1 => Just(Action::Rollback),
    ]
}

struct World {
    train: Train,
    now: DateTime<Utc>,
    inflight: Vec<Effect>,
    /// Every event fed, with its time: what the engine would have persisted.
    log: Vec<(Event, DateTime<Utc>)>,
}

impl World {
    fn new(s: &Shape) -> World {
        let now = DateTime::UNIX_EPOCH + Duration::days(20_000);
        let sp = spec(s);
        let ev = Event::Created {
            spec: Box::new(sp.clone()),
            queued: false,
        };
        let mut train = Train::new(sp, false, now);
        let fx = train.apply(&ev, now);
        let mut w = World {
            train,
            now,
            inflight: vec![],
            log: vec![(ev, now)],
        };
        // Created is not re-applied by the engine; kick the machine with a wake.
        w.feed(Event::Wake { cell: None });
        w.absorb(fx);
        w
    }

    fn absorb(&mut self, fx: Vec<Effect>) {
        for e in fx {
            match &e {
                Effect::ReleaseLease { cell } => self
                    .inflight
                    .retain(|x| !matches!(x, Effect::AcquireLease { cell: c } if c == cell)),
                Effect::Finished { .. } => {}
                _ => self.inflight.push(e),
            }
        }
    }

    /// Apply an event, checking the invariants that concern one step.
    fn feed(&mut self, ev: Event) {
        self.log.push((ev.clone(), self.now));
        let before = self.train.clone();
        let (after, fx) = conductor_core::train::apply(before.clone(), &ev, self.now);
        for (id, c) in &after.cells {
            let was = &before.cells[id].phase;
            let started = *was == CellPhase::Pending && c.phase != CellPhase::Pending;
            if started {
                // No cell is touched before its wave starts.
                let w = c.wave;
                assert_eq!(
                    after.waves[w].status,
                    WaveStatus::Running,
                    "cell {id} started in a wave that is not running"
                );
                for d in &after.spec.plan.waves[w].after {
                    assert_eq!(
                        after.waves[*d].status,
                        WaveStatus::Done,
                        "cell {id} started before wave {d} was done"
                    );
                }
                // A halted or cancelled train starts no new cell.
                assert!(
                    !before.halted && !before.cancel_requested,
                    "halted/cancelled train started {id}"
                );
                assert!(
                    !after.halted && !after.cancel_requested,
                    "halted/cancelled train started {id}"
                );
            }
        }
        // Parallelism stays within max_parallel per wave.
        for (w, pw) in after.spec.plan.waves.iter().enumerate() {
            let active = pw
                .cells
                .iter()
                .filter(|c| {
                    !matches!(
                        after.cells[*c].phase,
                        CellPhase::Pending
                            | CellPhase::Succeeded
                            | CellPhase::RolledBack
                            | CellPhase::RollbackSkipped
                            | CellPhase::RollbackFailed
                            | CellPhase::Stopped { .. }
                    )
                })
                .count();
            assert!(
                active <= pw.max_parallel as usize,
                "wave {w} has {active} active cells"
            );
            // The incremental counters agree with a recount.
            let succeeded = pw
                .cells
                .iter()
                .filter(|c| after.cells[*c].phase == CellPhase::Succeeded)
                .count();
            assert_eq!(after.waves[w].active, active, "active counter of wave {w}");
            assert_eq!(
                after.waves[w].succeeded, succeeded,
                "succeeded counter of wave {w}"
            );
        }
        self.train = after;
        self.absorb(fx);
    }

    fn step(&mut self, a: &Action) {
        match a {
            Action::Complete { pick, ok } => {
                if self.inflight.is_empty() {
                    return;
                }
                let e = self.inflight.remove(pick % self.inflight.len());
                let ev = match e {
                    Effect::AcquireLease { cell } => Event::LeaseGranted { cell },
                    Effect::RunStep {
                        cell,
                        step,
                        attempt,
                        ..
                    } => Event::StepFinished {
                        cell,
                        step,
                        attempt,
                        ok: *ok,
                        detail: if *ok { "ok".into() } else { "boom".into() },
                        previous_version: Some("v1".into()),
                    },
                    // A cell that a newer train changed meanwhile is skipped.
                    Effect::Rollback { cell, .. } => Event::RollbackFinished {
                        cell,
                        ok: true,
                        detail: if *ok { "restored" } else { "skipped" }.into(),
                        skipped: !*ok,
                    },
                    Effect::WakeAt { at, cell } => {
                        self.now = self.now.max(at);
                        Event::Wake { cell }
                    }
                    Effect::ReleaseLease { .. } | Effect::Finished { .. } => return,
                };
                self.feed(ev);
            }
            Action::Approve { pick, person } => {
                let gates = self.train.gates_waiting();
                if gates.is_empty() {
                    return;
                }
                let wave = gates[pick % gates.len()].to_string();
                let by = PEOPLE[*person].to_string();
                let ev = Event::Approved {
                    wave: wave.clone(),
                    by: by.clone(),
                    groups: vec!["rm".into()],
                    admin: false,
                    reason: None,
                };
                let w = self
                    .train
                    .spec
                    .plan
                    .waves
                    .iter()
                    .position(|x| x.name == wave)
                    .expect("wave");
                let had = self.train.waves[w].approvals.iter().any(|d| d.by == by);
                match self.train.validate(&ev) {
                    Err(Refusal::SelfApproval(_)) => assert_eq!(by, STARTER),
                    Err(Refusal::AlreadyApproved(_)) => assert!(had),
                    Err(other) => panic!("unexpected refusal {other}"),
                    Ok(()) => {
                        assert_ne!(by, STARTER, "self-approval accepted");
                        assert!(!had, "same approver counted twice");
                        self.feed(ev);
                        let distinct: std::collections::BTreeSet<_> = self.train.waves[w]
                            .approvals
                            .iter()
                            .map(|d| d.by.clone())
                            .collect();
                        let quorum = self.train.spec.plan.waves[w]
                            .approval
                            .as_ref()
                            .map_or(1, |g| g.quorum) as usize;
                        assert_eq!(distinct.len(), self.train.waves[w].approvals.len());
                        assert_eq!(
                            self.train.waves[w].status != WaveStatus::AwaitingApproval,
                            distinct.len() >= quorum,
                            "quorum counts distinct people"
                        );
                    }
                }
            }
            Action::Reject { pick } => {
                let gates = self.train.gates_waiting();
                if let Some(wave) = gates.get(pick % gates.len().max(1)) {
                    let ev = Event::Rejected {
                        wave: wave.to_string(),
                        by: "bob".into(),
                        groups: vec!["rm".into()],
                        admin: false,
                        reason: Some("no".into()),
                    };
                    self.feed(ev);
                }
            }
            Action::Cancel => {
                let ev = Event::CancelRequested { by: "ops".into() };
                if self.train.validate(&ev).is_ok() {
                    self.feed(ev);
                }
            }
            Action::Rollback => {
                let ev = Event::RollbackRequested { by: "ops".into() };
                if self.train.validate(&ev).is_ok() {
                    self.feed(ev);
                }
            }
        }
    }

    /// Let everything in flight finish successfully, approving every gate.
    fn drain(&mut self) {
        for _ in 0..10_000 {
            if !self.inflight.is_empty() {
                self.step(&Action::Complete { pick: 0, ok: true });
            } else if !self.train.gates_waiting().is_empty() {
                self.step(&Action::Approve { pick: 0, person: 1 });
                self.step(&Action::Approve { pick: 0, person: 2 });
            } else {
                return;
            }
        }
        panic!("train never settled");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn trains_end_in_a_clean_state(s in shape(), actions in prop::collection::vec(action(), 0..80)) {
        let mut w = World::new(&s);
        for a in &actions {
            w.step(a);
        }
        w.drain();
        let t = &w.train;
        prop_assert!(t.status.is_terminal(), "status {:?}", t.status);
        for (id, c) in &t.cells {
            match &c.phase {
                CellPhase::Pending => prop_assert!(c.log.is_empty(), "{id} pending but touched"),
                CellPhase::Succeeded => prop_assert!(c.deployed, "{id} succeeded without deploy"),
                CellPhase::RolledBack => prop_assert!(!c.deployed),
                CellPhase::RollbackSkipped => {
                    // Only a rollback that ran skips, and the skip is in the log.
                    prop_assert!(!c.deployed);
                    prop_assert!(c.log.last().is_some_and(|r| r.kind == "rollback_skipped"), "{id}");
                }
                CellPhase::Stopped { .. } => prop_assert!(t.cancel_requested, "{id} stopped without a cancel"),
                other => prop_assert!(false, "{id} left in {other:?}"),
            }
        }
        match t.status {
            TrainStatus::Succeeded => prop_assert!(t.cells.values().all(|c| c.phase == CellPhase::Succeeded)),
            TrainStatus::RolledBack => prop_assert!(t.cells.values().all(|c| !c.deployed)),
            TrainStatus::Failed => prop_assert!(t.failure.is_some()),
            _ => {}
        }
        // Replaying the persisted events gives the same state (a crash at any
        // point loses nothing, rollback skips included), and resuming a
        // finished train issues nothing.
        let replayed = Train::replay(w.log.iter().map(|(e, at)| (e, *at)));
        prop_assert_eq!(replayed.as_ref(), Some(t));
        prop_assert!(t.resume().is_empty());
        // Every step the shell ran knows how long it took.
        for c in t.cells.values() {
            for r in c.log.iter().filter(|r| r.step != usize::MAX) {
                prop_assert!(r.took().is_some(), "{r:?}");
            }
        }
    }
}

#[test]
fn self_approval_is_refused() {
    let s = Shape {
        waves: vec![(1, 1, None), (2, 1, Some(2))],
        bake: false,
        test: false,
        rollback_train: false,
    };
    let mut w = World::new(&s);
    w.drain_until_gate();
    let ev = Event::Approved {
        wave: "w1".into(),
        by: STARTER.into(),
        groups: vec!["rm".into()],
        admin: true,
        reason: None,
    };
    assert_eq!(
        w.train.validate(&ev),
        Err(Refusal::SelfApproval(STARTER.into()))
    );
    let outsider = Event::Approved {
        wave: "w1".into(),
        by: "eve".into(),
        groups: vec![],
        admin: false,
        reason: None,
    };
    assert!(matches!(
        w.train.validate(&outsider),
        Err(Refusal::NotInGroup { .. })
    ));
}

impl World {
    fn drain_until_gate(&mut self) {
        while self.train.gates_waiting().is_empty() && !self.inflight.is_empty() {
            self.step(&Action::Complete { pick: 0, ok: true });
        }
    }
}

#[test]
fn rollback_train_goes_newest_wave_first() {
    let s = Shape {
        waves: vec![(1, 1, None), (2, 2, None), (2, 2, None)],
        bake: false,
        test: false,
        rollback_train: true,
    };
    let mut w = World::new(&s);
    // Deploy waves 0 and 1, and fail the first cell of wave 2.
    let mut order = Vec::new();
    for _ in 0..1000 {
        let Some(pos) = w
            .inflight
            .iter()
            .position(|e| !matches!(e, Effect::RunStep { cell, .. } if cell == "c04"))
        else {
            break;
        };
        if let Effect::Rollback { cell, .. } = &w.inflight[pos] {
            order.push(w.train.cells[cell].wave);
        }
        w.step(&Action::Complete {
            pick: pos,
            ok: true,
        });
        if w.inflight
            .iter()
            .any(|e| matches!(e, Effect::RunStep { cell, .. } if cell == "c04"))
            && order.is_empty()
        {
            let pos = w
                .inflight
                .iter()
                .position(|e| matches!(e, Effect::RunStep { cell, .. } if cell == "c04"))
                .expect("c04");
            w.step(&Action::Complete {
                pick: pos,
                ok: false,
            });
        }
    }
    w.drain();
    assert_eq!(w.train.status, TrainStatus::RolledBack);
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, sorted, "rollbacks by wave: {order:?}");
    assert!(order.contains(&0) && order.contains(&1));
}

#[test]
fn happy_path_deploys_every_cell() {
    let s = Shape {
        waves: vec![(1, 1, None), (3, 2, Some(2)), (4, 3, None)],
        bake: true,
        test: true,
        rollback_train: false,
    };
    let mut w = World::new(&s);
    w.drain();
    assert_eq!(w.train.status, TrainStatus::Succeeded);
    assert_eq!(w.train.cells.len(), 8);
    assert!(w
        .train
        .cells
        .values()
        .all(|c| c.deployed && c.log.len() == 2));
    assert_eq!(w.train.waves[1].approvals.len(), 2);
}

#[test]
fn rollback_skips_cells_changed_since_and_replays() {
    let s = Shape {
        waves: vec![(1, 1, None), (3, 3, None)],
        bake: false,
        test: false,
        rollback_train: false,
    };
    let mut w = World::new(&s);
    w.drain();
    assert_eq!(w.train.status, TrainStatus::Succeeded);
    w.feed(Event::RollbackRequested { by: "ops".into() });
    // Newest wave first: c02..c04 roll back; c03 was changed by a newer train.
    let mut finished = Vec::new();
    for _ in 0..100 {
        let Some(pos) = w
            .inflight
            .iter()
            .position(|e| matches!(e, Effect::AcquireLease { .. } | Effect::Rollback { .. }))
        else {
            break;
        };
        match w.inflight.remove(pos) {
            Effect::AcquireLease { cell } => w.feed(Event::LeaseGranted { cell }),
            Effect::Rollback { cell, key, .. } => {
                // The engine re-issues an in-flight rollback with the same key.
                let resumed = w.train.resume();
                assert!(resumed
                    .iter()
                    .any(|e| matches!(e, Effect::Rollback { key: k, .. } if *k == key)));
                let skipped = cell == "c03";
                finished.push(cell.clone());
                w.feed(Event::RollbackFinished {
                    cell,
                    ok: true,
                    detail: if skipped {
                        "c03 runs v3 now; left as it is".into()
                    } else {
                        "restored v1".into()
                    },
                    skipped,
                });
            }
            _ => unreachable!(),
        }
    }
    w.drain();
    let t = &w.train;
    assert_eq!(t.status, TrainStatus::RolledBack);
    assert_eq!(finished.len(), 4, "{finished:?}");
    assert_eq!(t.cells["c03"].phase, CellPhase::RollbackSkipped);
    assert!(!t.cells["c03"].deployed);
    assert_eq!(t.cell_summary().get("rollback_skipped"), Some(&1));
    assert_eq!(t.cell_summary().get("rolled_back"), Some(&3));
    // A rollback that already ran is reported the same after a replay.
    let replayed = Train::replay(w.log.iter().map(|(e, at)| (e, *at))).expect("replay");
    assert_eq!(&replayed, t);
    // The skip is in the persisted event, and old events (no `skipped`) still read.
    let skip = w
        .log
        .iter()
        .find(|(e, _)| matches!(e, Event::RollbackFinished { skipped: true, .. }))
        .expect("skip event");
    let json = serde_json::to_value(&skip.0).expect("json");
    assert_eq!(json["skipped"], true);
    let old: Event = serde_json::from_str(
        r#"{"type":"rollback_finished","cell":"c01","ok":true,"detail":"restored"}"#,
    )
    .expect("old event");
    assert!(matches!(
        old,
        Event::RollbackFinished { skipped: false, .. }
    ));
}

#[test]
fn states_written_by_the_previous_release_still_read() {
    // A cell mid-step and a step record as written before steps kept their start.
    let run: conductor_core::train::CellRun = serde_json::from_str(
        r#"{"wave":0,"phase":"running","step":1,"deployed":true,"previous_version":"v1","rollbacks":0,
            "log":[{"step":0,"kind":"deploy","at":"2026-11-23T10:00:00Z","ok":true,"detail":"ok"}]}"#,
    )
    .expect("old cell run");
    assert_eq!(
        run.phase,
        CellPhase::Running {
            step: 1,
            since: None
        }
    );
    assert_eq!(run.log[0].started, None);
    assert_eq!(run.log[0].took(), None);
    // And what is written now reads back.
    let again: conductor_core::train::CellRun =
        serde_json::from_value(serde_json::to_value(&run).expect("json")).expect("new");
    assert_eq!(again, run);
}
