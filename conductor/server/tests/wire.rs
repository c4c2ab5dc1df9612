//! The API's JSON for a train, byte for byte: a sample train (cells in
//! every phase, step records, waves in every state, a failure) rendered
//! the way every train endpoint renders it, compared with a golden file
//! written before the API had its own nested types. A change to a core
//! type must not change this JSON.

use chrono::{DateTime, Duration, Utc};
use conductor::api::wire;
use conductor_core::duration::Dur;
use conductor_core::pipeline::{
    Artifact, ArtifactKind, CommandStep, DeployStep, Gate, HttpCheck, OnFailure, Step, TestStep,
};
use conductor_core::plan::{Plan, PlannedWave};
use conductor_core::train::{
    CellPhase, CellRun, Decision, StepRecord, Train, TrainSpec, TrainStatus, WaveState, WaveStatus,
};
use conductor_core::window::{self, WindowTz};
use std::collections::BTreeMap;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/train.json");

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("an instant")
}

fn spec() -> TrainSpec {
    let env = BTreeMap::from([("REGION_HINT".to_string(), "eu".to_string())]);
    let cells = |ids: &[&str]| ids.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    TrainSpec {
        id: "tr-20231114-abc123".into(),
        pipeline: "fga".into(),
        artifact: Artifact {
            kind: ArtifactKind::Binary,
            name: "fga-dataplane".into(),
            args: vec!["--port".into(), "{port}".into()],
            health: "/healthz".into(),
        },
        version: "1.4.2".into(),
        started_by: "alice".into(),
        steps: vec![
            Step::Deploy(DeployStep {
                health_timeout: Dur::secs(90),
                env: env.clone(),
            }),
            Step::Test(TestStep {
                http: Some(HttpCheck {
                    path: "/healthz".into(),
                    expect_status: 200,
                }),
                command: Some("./smoke.sh".into()),
                min_requests: 5,
                timeout: Dur::secs(120),
                env: BTreeMap::new(),
            }),
            Step::Bake(Dur::secs(600)),
            Step::Command(CommandStep {
                run: "echo done".into(),
                timeout: Dur::secs(30),
                env,
            }),
        ],
        on_failure: OnFailure::RollbackTrain,
        windows: vec![
            window::parse("mon-fri 09:00-17:00", WindowTz::Cell).expect("a window"),
            window::parse("sat 22:00-02:00", WindowTz::Utc).expect("a window"),
        ],
        plan: Plan {
            waves: vec![
                PlannedWave {
                    name: "canary".into(),
                    cells: cells(&["c01"]),
                    max_parallel: 1,
                    approval: None,
                    after: vec![],
                },
                PlannedWave {
                    name: "eu".into(),
                    cells: cells(&["c02", "c03", "c04", "c05", "c06", "c07"]),
                    max_parallel: 3,
                    approval: Some(Gate {
                        group: "sre".into(),
                        quorum: 2,
                    }),
                    after: vec![0],
                },
                PlannedWave {
                    name: "us".into(),
                    cells: cells(&["c08", "c09", "c10", "c11"]),
                    max_parallel: 2,
                    approval: Some(Gate {
                        group: "sre".into(),
                        quorum: 1,
                    }),
                    after: vec![1],
                },
                PlannedWave {
                    name: "rest".into(),
                    cells: cells(&["c12", "c13", "c14"]),
                    max_parallel: 1,
                    approval: None,
                    after: vec![2],
                },
            ],
            order: vec![0, 1, 2, 3],
            cell_tz: (1..=14)
                .map(|i| {
                    let tz = if i < 8 {
                        "Europe/Dublin"
                    } else {
                        "America/New_York"
                    };
                    (format!("c{i:02}"), tz.to_string())
                })
                .collect(),
        },
    }
}

fn record(
    step: usize,
    kind: &str,
    end: i64,
    started: Option<i64>,
    ok: bool,
    detail: &str,
) -> StepRecord {
    StepRecord {
        step,
        kind: kind.into(),
        at: at(end),
        started: started.map(at),
        ok,
        detail: detail.into(),
    }
}

fn run(wave: usize, phase: CellPhase, deployed: bool, log: Vec<StepRecord>) -> CellRun {
    CellRun {
        wave,
        phase,
        deployed,
        previous_version: deployed.then(|| "1.4.1".to_string()),
        rollbacks: 0,
        log,
    }
}

fn sample() -> Train {
    let deployed = || {
        record(
            0,
            "deploy",
            60,
            Some(10),
            true,
            "running 1.4.2 on port 4101",
        )
    };
    let tested = || record(1, "test", 90, Some(61), true, "5/5 requests passed");
    let cells: BTreeMap<String, CellRun> = [
        (
            "c01",
            run(
                0,
                CellPhase::Succeeded,
                true,
                vec![
                    deployed(),
                    tested(),
                    record(2, "bake", 700, None, true, "baked 10m"),
                    record(3, "command", 705, Some(700), true, "exit 0"),
                ],
            ),
        ),
        (
            "c02",
            run(
                1,
                CellPhase::Running {
                    step: 1,
                    since: Some(at(900)),
                },
                true,
                vec![deployed()],
            ),
        ),
        (
            "c03",
            run(
                1,
                CellPhase::Running {
                    step: 0,
                    since: None,
                },
                false,
                vec![],
            ),
        ),
        (
            "c04",
            run(
                1,
                CellPhase::Baking {
                    step: 2,
                    until: at(1500),
                },
                true,
                vec![deployed(), tested()],
            ),
        ),
        (
            "c05",
            run(
                1,
                CellPhase::WaitingWindow { until: at(3600) },
                false,
                vec![],
            ),
        ),
        ("c06", run(1, CellPhase::WaitingLease, false, vec![])),
        (
            "c07",
            CellRun {
                rollbacks: 1,
                ..run(
                    1,
                    CellPhase::RolledBack,
                    false,
                    vec![
                        deployed(),
                        record(
                            1,
                            "test",
                            95,
                            Some(61),
                            false,
                            "3/5 requests failed: status 503",
                        ),
                    ],
                )
            },
        ),
        (
            "c08",
            run(2, CellPhase::RollbackWaitingLease, true, vec![deployed()]),
        ),
        (
            "c09",
            run(2, CellPhase::RollingBack, true, vec![deployed()]),
        ),
        (
            "c10",
            CellRun {
                rollbacks: 2,
                ..run(
                    2,
                    CellPhase::RollbackFailed,
                    true,
                    vec![
                        deployed(),
                        record(0, "rollback", 130, None, false, "health check timed out"),
                    ],
                )
            },
        ),
        (
            "c11",
            run(2, CellPhase::RollbackSkipped, false, vec![deployed()]),
        ),
        (
            "c12",
            run(
                3,
                CellPhase::Stopped { next_step: 2 },
                true,
                vec![deployed(), tested()],
            ),
        ),
        ("c13", run(3, CellPhase::Pending, false, vec![])),
        ("c14", run(3, CellPhase::Pending, false, vec![])),
    ]
    .into_iter()
    .map(|(c, r)| (c.to_string(), r))
    .collect();
    let decision = |by: &str, secs: i64, reason: Option<&str>| Decision {
        by: by.into(),
        at: at(secs),
        reason: reason.map(String::from),
    };
    let waves = vec![
        WaveState {
            status: WaveStatus::Done,
            approvals: vec![],
            rejection: None,
            active: 0,
            succeeded: 1,
            cursor: 1,
        },
        WaveState {
            status: WaveStatus::Running,
            approvals: vec![
                decision("bob", 800, Some("canary looks fine")),
                decision("carol", 810, None),
            ],
            rejection: None,
            active: 4,
            succeeded: 0,
            cursor: 5,
        },
        WaveState {
            status: WaveStatus::AwaitingApproval,
            approvals: vec![decision("bob", 820, None)],
            rejection: None,
            active: 0,
            succeeded: 0,
            cursor: 0,
        },
        WaveState {
            status: WaveStatus::Pending,
            approvals: vec![],
            rejection: Some(decision("dave", 830, Some("not on a friday"))),
            active: 0,
            succeeded: 0,
            cursor: 0,
        },
    ];
    Train {
        spec: spec(),
        status: TrainStatus::RollingBack,
        waves,
        cells,
        halted: false,
        cancel_requested: false,
        rollback_all: true,
        rejected: true,
        failure: Some("cell c07 step 1 (test) failed: 3/5 requests failed: status 503".into()),
        created_at: at(0),
        updated_at: at(900) + Duration::milliseconds(250),
        finished_at: None,
    }
}

#[test]
fn a_train_renders_as_the_golden_json() {
    let t = sample();
    let json = serde_json::to_string_pretty(&wire::train_json(&t)).expect("json") + "\n";
    if std::env::var_os("WRITE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &json).expect("write the golden file");
        return;
    }
    assert_eq!(
        json,
        std::fs::read_to_string(GOLDEN).expect("the golden file"),
        "the train's JSON changed (WRITE_GOLDEN=1 rewrites the file)"
    );
}

#[test]
fn a_finished_train_renders_its_finish_time() {
    let mut t = sample();
    t.status = TrainStatus::Failed;
    t.finished_at = Some(at(2000));
    let v = wire::train_json(&t);
    assert_eq!(v["status"], "failed");
    assert_eq!(
        v["finished_at"],
        serde_json::to_value(at(2000)).expect("json")
    );
    assert_eq!(v["gates_waiting"], serde_json::json!([]));
    assert_eq!(
        wire::train_json(&sample())["gates_waiting"],
        serde_json::json!(["us"])
    );
}
