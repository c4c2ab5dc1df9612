//! What the planner reads from and writes to the cells themselves: their
//! workers (from the routing table), the rate limits in force and pushed,
//! the tenants a cell hosts, and the scrape loop.

use super::{now_secs, prepare, usage_for, ApiError, ApiResult, AppState, Config};
use crate::scrape::{reading, targets_from_routes, RateKeeper, Target};
use crate::TenantLimit;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use cells_inventory::valid_id;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The workers of each cell, from the routing table.
pub(super) fn workers(st: &AppState) -> BTreeMap<String, Vec<Target>> {
    let mut m: BTreeMap<String, Vec<Target>> = BTreeMap::new();
    if let Some(f) = &st.cfg.routes_file {
        if let Some(routes) = std::fs::read_to_string(f)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        {
            for t in targets_from_routes(&routes, &st.cfg.artifact) {
                m.entry(t.cell.clone()).or_default().push(t);
            }
        }
    }
    m
}

/// The limits the cells enforce now, by tenant: the sum over a cell's
/// workers (each enforces its share).
async fn limits_in_force(
    st: &AppState,
    cells: &BTreeMap<String, Vec<Target>>,
) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    let Some(key) = &st.cfg.fga_admin_key else {
        return out;
    };
    for ws in cells.values() {
        for w in ws {
            let url = format!("http://127.0.0.1:{}/admin/rate-limits", w.port);
            let Ok(r) = st.http.get(&url).bearer_auth(key).send().await else {
                continue;
            };
            let Ok(v) = r.json::<Value>().await else {
                continue;
            };
            for (store, l) in v["stores"].as_object().into_iter().flatten() {
                if let Some(rate) = l["rate"].as_f64() {
                    *out.entry(store.clone()).or_default() += rate;
                }
            }
        }
    }
    out
}

/// Push each limit to every worker of its cell (each gets its share).
async fn push_limits(
    st: &AppState,
    limits: &[TenantLimit],
    cells: &BTreeMap<String, Vec<Target>>,
) -> Vec<Value> {
    let Some(key) = &st.cfg.fga_admin_key else {
        return vec![
            json!({"ok": false, "detail": "no data plane admin key (--fga-admin-key / FGA_ADMIN_KEY); nothing pushed"}),
        ];
    };
    let mut out = Vec::new();
    for l in limits {
        if !is_store_id(&l.tenant) {
            // Usage imported for a tenant that is no FGA store (a name such
            // as `acme`): no data plane has it, and it refuses such an id.
            out.push(
                json!({"tenant": l.tenant, "cell": l.cell, "ok": false, "skipped": true,
                "detail": "not an FGA store id (usage from an import): nothing to push"}),
            );
            continue;
        }
        let Some(ws) = cells.get(&l.cell).filter(|w| !w.is_empty()) else {
            out.push(json!({"tenant": l.tenant, "cell": l.cell, "ok": false, "detail": "no running data plane workers found for the cell"}));
            continue;
        };
        let n = ws.len() as f64;
        let body = json!({"rate": (l.rate / n).max(0.001), "burst": (l.burst / n).ceil().max(1.0)});
        let mut failed = Vec::new();
        for w in ws {
            let url = format!(
                "http://127.0.0.1:{}/admin/rate-limits/{}",
                w.port,
                path_segment(&l.tenant)
            );
            match st.http.put(&url).bearer_auth(key).json(&body).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => failed.push(format!(
                    "worker port {}: HTTP {}",
                    w.port,
                    r.status().as_u16()
                )),
                Err(e) => failed.push(format!("worker port {}: {e}", w.port)),
            }
        }
        out.push(json!({
            "tenant": l.tenant, "cell": l.cell, "workers": ws.len(),
            "failed_workers": failed.len(),
            "ok": failed.is_empty(),
            "detail": if failed.is_empty() { format!("{} rps, burst {} over {} workers", l.rate, l.burst, ws.len()) } else { failed.join("; ") },
        }));
    }
    out
}

/// Is `s` shaped like an FGA store id (a ULID: 26 characters of Crockford's
/// base 32, upper case), the only tenants a data plane can hold?
pub fn is_store_id(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)))
}

/// A tenant name as one URL path segment (imported names may hold any
/// character; none may change the path).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(super) async fn limits(State(st): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let (b, policy) = prepare(&st, &body)?;
    let usage = usage_for(&st).await?;
    let cells = workers(&st);
    let in_force = limits_in_force(&st, &cells).await;
    let mut l = crate::rate_limits(&st.cfg.shapes, &b.cells, &usage, &in_force, &policy);
    crate::report::sort_limits(&mut l);
    let pushed = if b.push {
        push_limits(&st, &l, &cells).await
    } else {
        Vec::new()
    };
    Ok(Json(json!({ "limits": l, "pushed": pushed })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsBody {
    cell: String,
}

/// The tenants a cell still hosts: those its data plane reports holding
/// tuples now (a live scrape of its workers), and those the history last saw
/// on it (within the window) with traffic or data in their newest sample. A
/// tenant that moved counts on its new cell; a deleted one (its newest
/// sample empty and idle) counts nowhere.
pub(super) async fn tenants(State(st): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let b: TenantsBody = super::json_body(&body)?;
    if !valid_id(&b.cell) {
        return Err(ApiError::bad(format!("invalid cell {:?}", b.cell)));
    }
    let mut found: BTreeMap<String, Value> = BTreeMap::new();
    for t in usage_for(&st).await? {
        let Some(last) = t.samples.last() else {
            continue;
        };
        if t.cell == b.cell && (last.check_rps > 0.0 || last.tuples > 0.0 || last.connections > 0.0)
        {
            found.insert(
                t.tenant.clone(),
                json!({"tenant": t.tenant, "last_seen": last.at, "check_rps": last.check_rps, "tuples": last.tuples}),
            );
        }
    }
    let ws = workers(&st).remove(&b.cell).unwrap_or_default();
    let mut unreachable = 0;
    for w in &ws {
        let url = format!("http://127.0.0.1:{}/metrics", w.port);
        let text = match st.http.get(&url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.ok(),
            _ => None,
        };
        let Some(text) = text else {
            unreachable += 1;
            continue;
        };
        for (store, n) in reading(&text).tuples {
            if n > 0.0 {
                found.entry(store.clone()).or_insert_with(
                    || json!({"tenant": store, "last_seen": now_secs(), "tuples": n}),
                );
            }
        }
    }
    Ok(Json(json!({
        "cell": b.cell,
        "tenants": found.into_values().collect::<Vec<_>>(),
        "workers_scraped": ws.len() - unreachable,
        "workers_unreachable": unreachable,
    })))
}

/// Scrape every worker once per interval, forever.
pub async fn scrape_loop(cfg: Arc<Config>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap_or_default();
    let st = AppState {
        cfg: cfg.clone(),
        http,
    };
    let mut keeper = RateKeeper::default();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let targets: Vec<Target> = workers(&st).into_values().flatten().collect();
        let mut round = Vec::new();
        for t in targets {
            let url = format!("http://127.0.0.1:{}/metrics", t.port);
            match st.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => {
                    if let Ok(text) = r.text().await {
                        round.push((t, reading(&text)));
                    }
                }
                Ok(r) => {
                    tracing::debug!(cell = %t.cell, port = t.port, status = r.status().as_u16(), "scrape refused")
                }
                Err(e) => {
                    tracing::debug!(cell = %t.cell, port = t.port, error = %e, "scrape failed")
                }
            }
        }
        let now = now_secs();
        let rows = keeper.observe(now, &round);
        if !rows.is_empty() {
            match cfg.history.record(&rows, "scrape").await {
                Ok(n) => tracing::debug!(samples = n, "usage recorded"),
                Err(e) => tracing::warn!(error = %e, "could not record usage"),
            }
        }
        if let Err(e) = cfg.history.prune(now - cfg.retention_secs).await {
            tracing::warn!(error = %e, "could not prune old usage");
        }
    }
}
