//! `conductor-bench --trains N`: N trains of N different pipelines
//! (bench-0..bench-N-1, the same waves) started at once over the same cells.
//! A cell's lease lets one train at a time act on it, so the trains are
//! serialized per cell and the store sees all their events interleaved.
//!
//! Lower bound: a cell of wave j is deployed by every train, one after
//! another (N x deploy time), none before its train finished waves < j, and
//! the last of them must still run waves > j afterwards. So the wall time is
//! at least max over j of (paths of waves < j) + N x deploy + (paths of waves
//! > j), and at least the critical path of one train.

use crate::{median, ms, Opts, Rig, Setup};
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

/// The lease-bound lower bound described in the module docs.
pub fn lower_bound(s: &Setup, trains: usize, deploy: Duration) -> Duration {
    let critical = s.critical();
    let serial = deploy * trains as u32;
    s.wave_paths
        .iter()
        .map(|own| critical - *own + serial)
        .fold(critical, Duration::max)
}

struct RunResult {
    wall: Duration,
    events: i64,
    commits: u64,
    /// Finish times since the start: first, median, last.
    finish: [Duration; 3],
}

async fn one_run(o: &Opts, s: &Setup, run: u64, bound: Duration) -> Result<RunResult> {
    let n = o.trains;
    let dir = tempfile::tempdir()?;
    let rig = Rig::new(o, s, dir.path()).await?;
    let mut finished = rig.engine.finished();
    // Unique: a database given by URL keeps earlier runs' trains.
    let stamp = chrono::Utc::now().timestamp_micros();
    let ids: Vec<String> = (0..n).map(|k| format!("bench-{stamp}-{run}-{k}")).collect();
    let t0 = Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    for (k, id) in ids.iter().enumerate() {
        let engine = rig.engine.clone();
        let spec = s.spec(id.clone(), format!("bench-{k}"));
        starts.spawn(async move { engine.start_train(spec, None).await });
    }
    while let Some(r) = starts.join_next().await {
        r.context("start task")??;
    }
    let started = t0.elapsed();

    // Generous: a run far slower than its bound has hung.
    let deadline = tokio::time::Instant::now() + (bound * 50).max(Duration::from_secs(60));
    let mine: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    let mut times = Vec::with_capacity(n);
    while seen.len() < n {
        let (id, status) = match tokio::time::timeout_at(deadline, finished.recv()).await {
            Err(_) => anyhow::bail!("{} of {n} trains finished before the timeout", seen.len()),
            Ok(Err(RecvError::Lagged(k))) => anyhow::bail!("missed {k} finish notices"),
            Ok(Err(RecvError::Closed)) => anyhow::bail!("the engine stopped"),
            Ok(Ok(v)) => v,
        };
        if !mine.contains(id.as_str()) {
            continue;
        }
        anyhow::ensure!(
            status.as_str() == "succeeded",
            "train {id} ended {}",
            status.as_str()
        );
        anyhow::ensure!(seen.insert(id), "a train finished twice");
        times.push(t0.elapsed());
    }
    let wall = t0.elapsed();
    let commits = rig.commits()?;
    let mut events = 0;
    for id in &ids {
        events += rig.store.train_event_count(id).await?;
    }
    rig.check_deploys(&ids, &s.cells)?;
    times.sort();
    let finish = [times[0], median(&times), times[n - 1]];
    let eps = events as f64 / wall.as_secs_f64();
    let cps = commits as f64 / wall.as_secs_f64();
    println!(
        "run {run}: wall {:>8.1} ms  ratio {:.3}  events {events} ({eps:.0}/s)  commits {commits} ({cps:.0}/s)  finished first/median/last {:.0}/{:.0}/{:.0} ms  (all started after {:.1} ms)",
        ms(wall),
        wall.as_secs_f64() / bound.as_secs_f64(),
        ms(finish[0]),
        ms(finish[1]),
        ms(finish[2]),
        ms(started)
    );
    Ok(RunResult {
        wall,
        events,
        commits,
        finish,
    })
}

pub async fn run(o: &Opts, s: &Setup) -> Result<()> {
    let bound = lower_bound(s, o.trains, o.deploy);
    println!(
        "{} trains over the same {} cells; lease-bound lower bound {:.1} ms (one train's critical path {:.1} ms)",
        o.trains,
        o.cells,
        ms(bound),
        ms(s.critical())
    );
    let mut results = Vec::new();
    for run in 1..=o.runs {
        results.push(one_run(o, s, run, bound).await?);
    }
    results.sort_by_key(|r| r.wall);
    let r = median(&results.iter().collect::<Vec<_>>());
    let secs = r.wall.as_secs_f64();
    println!(
        "median: wall {:.1} ms vs lower bound {:.1} ms = {:.3}x; {} events, {:.0} events/s persisted; {} commits, {:.0} commits/s; finished first/median/last {:.0}/{:.0}/{:.0} ms",
        ms(r.wall),
        ms(bound),
        secs / bound.as_secs_f64(),
        r.events,
        r.events as f64 / secs,
        r.commits,
        r.commits as f64 / secs,
        ms(r.finish[0]),
        ms(r.finish[1]),
        ms(r.finish[2])
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(cells: usize, mp: u64) -> Setup {
        let o = Opts {
            cells,
            runs: 1,
            deploy: Duration::from_millis(20),
            max_parallel: mp,
            trains: 1,
            database_url: None,
        };
        Setup::new(&o).expect("setup")
    }

    #[test]
    fn bound_is_the_critical_path_for_one_train() {
        let s = setup(1000, 100);
        // Waves 1, 10, 100, 889 cells: 1 + 1 + 1 + 9 rounds of 20 ms.
        assert_eq!(s.critical(), Duration::from_millis(240));
        assert_eq!(lower_bound(&s, 1, Duration::from_millis(20)), s.critical());
    }

    #[test]
    fn bound_serializes_a_cell_of_the_shortest_wave() {
        let s = setup(1000, 100);
        // 100 trains through the one-cell wave: 100 x 20 ms, plus the other
        // waves' 220 ms.
        assert_eq!(
            lower_bound(&s, 100, Duration::from_millis(20)),
            Duration::from_millis(2220)
        );
    }
}
