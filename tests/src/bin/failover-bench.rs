//! `failover-bench`: how long a train stands still when its leader dies.
//!
//! Two `conductor up` replicas on one PostgreSQL database (a fresh one on
//! the server `FGA_TEST_DATABASE_URL` names, as `tests/pg start` prints) run
//! a train over local cells (a bake of 1.5 s per cell, one cell at a time, so that events keep coming). Then,
//! N times: kill -9 the leader, and measure the time until the other
//! replica commits the train's next event (read through its API); the
//! killed one is restarted as a follower before the next round. Prints
//! every time and the median.
//!
//! Usage (from the workspace root, after `cargo build --bins`):
//! `FGA_TEST_DATABASE_URL=postgres://… cargo run -p e2e --bin failover-bench -- [--rounds N (10)]`

use e2e::{cells_yaml, fresh_postgres, sample_pipeline, Conductor};
use std::time::{Duration, Instant};

fn last_seq(c: &Conductor, id: &str) -> Option<i64> {
    let v = c.get(&c.admin, &format!("/trains/{id}/events?limit=1000"));
    v["events"].as_array()?.last()?["seq"].as_i64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: failover-bench [--rounds N (10)]\n  needs FGA_TEST_DATABASE_URL (a PostgreSQL server; tests/pg start DIR prints one) and built binaries (cargo build --bins)");
        return;
    }
    let rounds: usize = match args.iter().position(|a| a == "--rounds") {
        Some(i) => match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(n) if n > 0 => n,
            _ => {
                eprintln!("--rounds takes a positive number");
                std::process::exit(2);
            }
        },
        None => 10,
    };
    let Some(db) = fresh_postgres("failover_bench") else {
        eprintln!("failover-bench needs PostgreSQL: set FGA_TEST_DATABASE_URL");
        std::process::exit(2);
    };
    let args = ["--database-url", db.as_str(), "--planner", "off"];
    let mut leader = Conductor::start_with(&cells_yaml(25300, 8), &args);
    let mut follower = leader.replica(&args);
    leader.push_sample("1.0.0");
    let waves = "  - { name: all, percent: 100, max_parallel: 1 }\n";
    let p = leader.file(
        "f.yaml",
        &sample_pipeline("failover", waves, "rollback_cell_and_halt", "1500ms"),
    );
    leader.cli_ok(&leader.admin, &["pipeline", "submit", &p], 0);
    let id = leader.start_train(&leader.admin, "failover", "1.0.0");
    let mut times = Vec::new();
    for round in 1..=rounds {
        // Let the current leader commit a few events first.
        std::thread::sleep(Duration::from_millis(700));
        let before = last_seq(&follower, &id).unwrap_or(0);
        let t0 = Instant::now();
        leader.kill9();
        let took = loop {
            if last_seq(&follower, &id).is_some_and(|s| s > before) {
                break t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(60) {
                eprintln!("round {round}: no event within 60 s of the kill");
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        println!(
            "round {round}: first event of the new leader {:.0} ms after kill -9",
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        if follower.train(&id)["status"] != "running" {
            eprintln!("the train finished after {round} rounds; use more cells for more rounds");
            break;
        }
        leader.boot();
        std::mem::swap(&mut leader, &mut follower);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "median fail-over over {} rounds: {:.0} ms (min {:.0}, max {:.0})",
        times.len(),
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
}
