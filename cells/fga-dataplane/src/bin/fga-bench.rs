//! `fga-bench`: Check and ListObjects speed on a social-network-style model.
//!
//! Builds a store of N tuples (default 1,000,000) in SQLite — users, groups
//! with nested membership, a folder tree, documents with owner/editor/viewer
//! and `viewer from parent` — then measures in process: Check throughput and
//! p50/p99 latency at saturation, and ListObjects latency. It also writes a
//! smaller `.fga.yaml` check workload (`--model-test FILE`) to time
//! `fga model test` against `fga-dataplane test`.
//!
//! Usage: `cargo run --release -p fga-dataplane --bin fga-bench -- [--tuples N] [--checks N] [--concurrency N] [--data-dir DIR] [--model-test FILE]`
//! With `--data-dir`, an existing database is reused (and served by
//! `fga-dataplane serve --data-dir DIR` for the HTTP numbers; see docs/benchmarks.md).

use fga_dataplane::engine::{Evaluator, TupleKey};
use fga_dataplane::store::Db;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::time::Instant;

const MODEL: &str = "model
  schema 1.1
type user
type group
  relations
    define member: [user, group#member]
type folder
  relations
    define parent: [folder]
    define owner: [user]
    define viewer: [user, group#member] or owner or viewer from parent
type document
  relations
    define parent: [folder]
    define owner: [user]
    define editor: [user, group#member] or owner
    define viewer: [user, group#member] or editor or viewer from parent
";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: usize) -> anyhow::Result<usize> {
    arg(args, name).map_or(Ok(default), |v| {
        v.parse()
            .map_err(|_| anyhow::anyhow!("{name} takes a number"))
    })
}

/// Sizes scaled so that the store holds about `n` tuples.
struct Sizes {
    users: usize,
    groups: usize,
    folders: usize,
    docs: usize,
}

impl Sizes {
    fn for_tuples(n: usize) -> Sizes {
        // Per unit: groups 12 tuples, folders 2, documents 3.5 (see `generate`).
        let docs = (n / 5).max(10);
        Sizes {
            users: (n / 10).max(10),
            groups: (n / 100).max(2),
            folders: (n / 20).max(2),
            docs,
        }
    }
}

/// The tuples of the fleet, deterministically from `seed`.
fn generate(s: &Sizes, seed: u64, mut emit: impl FnMut(TupleKey)) {
    let mut rng = StdRng::seed_from_u64(seed);
    let user = |i: usize| format!("user:u{i}");
    for g in 0..s.groups {
        for _ in 0..10 {
            emit(TupleKey::new(
                &format!("group:g{g}"),
                "member",
                &user(rng.gen_range(0..s.users)),
            ));
        }
        if g > 0 {
            // 10-ary nesting: shallow, as real hierarchies are.
            emit(TupleKey::new(
                &format!("group:g{g}"),
                "member",
                &format!("group:g{}#member", (g - 1) / 10),
            ));
        }
        emit(TupleKey::new(
            &format!("group:g{g}"),
            "member",
            &user(rng.gen_range(0..s.users)),
        ));
    }
    for f in 0..s.folders {
        if f > 0 {
            emit(TupleKey::new(
                &format!("folder:f{f}"),
                "parent",
                &format!("folder:f{}", (f - 1) / 10),
            ));
        }
        if rng.gen_bool(0.5) {
            emit(TupleKey::new(
                &format!("folder:f{f}"),
                "viewer",
                &format!("group:g{}#member", rng.gen_range(0..s.groups)),
            ));
        } else {
            emit(TupleKey::new(
                &format!("folder:f{f}"),
                "owner",
                &user(rng.gen_range(0..s.users)),
            ));
        }
    }
    for d in 0..s.docs {
        let doc = format!("document:d{d}");
        emit(TupleKey::new(
            &doc,
            "parent",
            &format!("folder:f{}", rng.gen_range(0..s.folders)),
        ));
        emit(TupleKey::new(
            &doc,
            "owner",
            &user(rng.gen_range(0..s.users)),
        ));
        if rng.gen_bool(0.5) {
            emit(TupleKey::new(
                &doc,
                "editor",
                &format!("group:g{}#member", rng.gen_range(0..s.groups)),
            ));
        }
        emit(TupleKey::new(
            &doc,
            "viewer",
            &user(rng.gen_range(0..s.users)),
        ));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: fga-bench [--tuples N (1000000)] [--checks N (20000)] [--concurrency N (32)] [--data-dir DIR] [--model-test FILE] [--http-bodies FILE]");
        return Ok(());
    }
    let n = num(&args, "--tuples", 1_000_000)?;
    let checks = num(&args, "--checks", 20_000)?;
    let conc = num(&args, "--concurrency", 32)?.max(1);
    let tmp = tempfile::tempdir()?;
    let dir = arg(&args, "--data-dir")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let db = Db::open(&dir.join("fga.db")).await?;
    let sizes = Sizes::for_tuples(n);
    let model = fga_dataplane::dsl::parse(MODEL).map_err(|e| anyhow::anyhow!("{e}"))?;
    model.validate().map_err(|e| anyhow::anyhow!("{e}"))?;

    // Reuse a store built earlier in the same data dir.
    let store = match db
        .list_stores("", 1, None)
        .await?
        .into_iter()
        .find(|s| s.name == "bench")
    {
        Some(s) => s.id,
        None => {
            let s = db.create_store("bench").await?;
            db.write_model(&s.id, &model).await?;
            let t0 = Instant::now();
            let mut batch = Vec::with_capacity(10_000);
            let mut total = 0usize;
            let mut pending = Vec::new();
            generate(&sizes, 1, |t| pending.push(t));
            for t in pending {
                batch.push(t);
                if batch.len() == 10_000 {
                    db.bulk_insert(&s.id, &batch).await?;
                    total += batch.len();
                    batch.clear();
                    eprint!("\rloading tuples: {total}");
                }
            }
            db.bulk_insert(&s.id, &batch).await?;
            total += batch.len();
            eprintln!(
                "\rloaded {total} tuples in {:.1}s",
                t0.elapsed().as_secs_f64()
            );
            s.id
        }
    };
    let count = db.tuple_count(&store).await?;
    println!(
        "store {store}: {count} tuples (users {}, groups {}, folders {}, documents {})",
        sizes.users, sizes.groups, sizes.folders, sizes.docs
    );

    // Random check bodies for an HTTP load generator (`oha -Z FILE`).
    let mut rng = StdRng::seed_from_u64(7);
    let random_check = |rng: &mut StdRng| {
        (
            format!("document:d{}", rng.gen_range(0..sizes.docs)),
            format!("user:u{}", rng.gen_range(0..sizes.users)),
        )
    };
    if let Some(path) = arg(&args, "--http-bodies") {
        let mut body = String::new();
        let mut brng = StdRng::seed_from_u64(11);
        for _ in 0..100_000 {
            let (d, u) = random_check(&mut brng);
            let _ = writeln!(
                body,
                r#"{{"tuple_key":{{"user":"{u}","relation":"viewer","object":"{d}"}}}}"#
            );
        }
        std::fs::write(&path, body)?;
        println!("wrote {path}: 100,000 random check bodies (oha -Z {path} -m POST ...)");
    }

    let reader = db.reader(&store);
    let ev = Evaluator::new(&model, &reader);
    // Check at saturation, in process: first on a cold cache (most reads go
    // to SQLite), then after warming the cache (what `serve` does at start).
    let queries: Vec<_> = (0..checks).map(|_| random_check(&mut rng)).collect();
    check_pass(&ev, &queries, conc, "cold cache").await;
    let t0 = Instant::now();
    let n = db.warm_cache(&store).await?;
    println!(
        "cache warm-up: {n} tuples in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let queries: Vec<_> = (0..checks).map(|_| random_check(&mut rng)).collect();
    check_pass(&ev, &queries, conc, "warm cache").await;

    // ListObjects latency.
    let mut lo = Vec::new();
    for _ in 0..50 {
        let u = format!("user:u{}", rng.gen_range(0..sizes.users));
        let s = Instant::now();
        let objs = ev.list_objects("document", "viewer", &u, 1000).await?;
        lo.push((s.elapsed().as_secs_f64() * 1e3, objs.len()));
    }
    let mut ms: Vec<f64> = lo.iter().map(|x| x.0).collect();
    ms.sort_by(f64::total_cmp);
    let avg_n = lo.iter().map(|x| x.1).sum::<usize>() as f64 / lo.len() as f64;
    println!("in-process ListObjects (document#viewer, 50 users): p50 {:.2} ms, p99 {:.2} ms, {avg_n:.1} objects on average", percentile(&ms, 0.5), percentile(&ms, 0.99));
    if let Some(path) = arg(&args, "--model-test") {
        model_test_file(&path, &model, &mut rng).await?;
    }
    Ok(())
}

/// Run `queries` (document, user) as `viewer` checks, `conc` at a time; print
/// throughput and latency.
async fn check_pass(ev: &Evaluator<'_>, queries: &[(String, String)], conc: usize, what: &str) {
    let checks = queries.len();
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(checks);
    let (mut allowed, mut errors) = (0usize, 0usize);
    let mut futs = FuturesUnordered::new();
    let mut it = queries.iter();
    loop {
        while futs.len() < conc {
            let Some((d, u)) = it.next() else { break };
            let ev = ev.clone();
            futs.push(async move {
                let s = Instant::now();
                let r = ev.check(d, "viewer", u).await;
                (r, s.elapsed().as_secs_f64() * 1e3)
            });
        }
        let Some((r, ms)) = futs.next().await else {
            break;
        };
        match r {
            Ok(a) => allowed += usize::from(a),
            Err(_) => errors += 1,
        }
        lat.push(ms);
    }
    let secs = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    println!(
        "in-process Check ({what}): {checks} checks, concurrency {conc}: {:.0} checks/s, p50 {:.3} ms, p99 {:.3} ms ({allowed} allowed, {errors} errors)",
        checks as f64 / secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
}

/// A `.fga.yaml` with a smaller store and the same kind of checks.
async fn model_test_file(
    path: &str,
    model: &fga_dataplane::model::AuthorizationModel,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    {
        let small = Sizes::for_tuples(20_000);
        let mut y = String::from("model: |\n");
        for l in MODEL.lines() {
            let _ = writeln!(y, "  {l}");
        }
        y.push_str("tuples:\n");
        let mut mem = fga_dataplane::memstore::MemStore::default();
        generate(&small, 1, |t| {
            let line = format!(
                "  - {{ user: \"{}\", relation: {}, object: \"{}\" }}\n",
                t.user, t.relation, t.object
            );
            if mem.write(t) {
                y.push_str(&line);
            }
        });
        let sev = Evaluator::new(model, &mem);
        y.push_str("tests:\n  - name: checks\n    check:\n");
        for _ in 0..2000 {
            let d = format!("document:d{}", rng.gen_range(0..small.docs));
            let u = format!("user:u{}", rng.gen_range(0..small.users));
            let v = sev.check(&d, "viewer", &u).await?;
            let _ = writeln!(
                y,
                "      - {{ user: \"{u}\", object: \"{d}\", assertions: {{ viewer: {v} }} }}"
            );
        }
        std::fs::write(path, y)?;
        println!("wrote {path}: 20,000 tuples, 2,000 checks (time it with `fga model test --tests` and `fga-dataplane test --tests`)");
    }
    Ok(())
}
