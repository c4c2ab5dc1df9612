//! Pipeline revisions: submitting one (reviewed against what is in effect),
//! approving or rejecting one that weakens its pipeline's safety, showing
//! them.
//!
//! A submitted revision takes effect at once unless it weakens safety
//! (`conductor_core::safety`) compared with
//! - the revision in effect of the same pipeline, and
//! - for a new pipeline, or one that now ships another artifact: every
//!   other pipeline that ships that artifact to any of the same cells (so
//!   that a copy of a gated pipeline under a new name without the gate is
//!   no way around it).
//!
//! Such a revision waits (`pending`) until someone else approves it: an
//! approver in every approval group of the pipelines it weakens (any
//! approver when they have no gate), or an admin; never its author. Trains
//! started meanwhile use the revision in effect. A newer submission
//! supersedes a pending one.

use super::*;
use crate::store::{Decided, NewRevision, PipelineRow};
use conductor_core::safety::{self, Side};
use std::collections::BTreeSet;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/pipelines/{name}/revisions", get(list_revisions))
        .route("/pipelines/{name}/revisions/{rev}", get(get_revision))
        .route("/pipelines/{name}/revisions/{rev}/approve", post(approve))
        .route("/pipelines/{name}/revisions/{rev}/reject", post(reject))
}

/// What review made of a proposed revision.
struct Review {
    current: Option<PipelineRow>,
    findings: Vec<String>,
    approver_groups: BTreeSet<String>,
}

/// Compare a proposed pipeline (and its plan) with its baselines.
async fn review(st: &AppState, p: &pipeline::Pipeline, pl: &plan::Plan) -> ApiResult<Review> {
    let store = &st.store;
    let current = store.get_pipeline(&p.name).await?;
    let cells = store.cell_specs().await?;
    let parse_and_plan = |row: &PipelineRow| {
        pipeline::parse(&format!("{}.yaml", row.name), &row.yaml)
            .ok()
            .map(|(bp, spans)| {
                let bplan = plan::plan(&bp, &spans, &cells).ok();
                (bp, bplan)
            })
    };
    let mut findings = Vec::new();
    let mut groups = BTreeSet::new();
    let mut baselines = Vec::new();
    let mut others_too = true;
    if let Some(cur) = &current {
        match parse_and_plan(cur) {
            Some((cp, cplan)) => {
                others_too = cp.artifact.name != p.artifact.name;
                baselines.push((None, cp, cplan));
            }
            None => {
                // The revision in effect no longer reads: fail closed.
                findings.push(format!(
                    "revision {} in effect cannot be read by this version of the Conductor; an approver must confirm this one",
                    cur.revision
                ));
            }
        }
    }
    if others_too {
        for other in store.list_pipelines().await? {
            if other.name == p.name {
                continue;
            }
            let Some((op, oplan)) = parse_and_plan(&other) else {
                continue;
            };
            let shares = oplan
                .as_ref()
                .is_none_or(|o| o.cell_tz.keys().any(|c| pl.cell_tz.contains_key(c)));
            if op.artifact.name == p.artifact.name && shares {
                baselines.push((Some(other.name.clone()), op, oplan));
            }
        }
    }
    for (label, bp, bplan) in &baselines {
        let w = safety::weakenings(
            Side {
                pipeline: bp,
                plan: bplan.as_ref(),
            },
            Side {
                pipeline: p,
                plan: Some(pl),
            },
        );
        if w.is_empty() {
            continue;
        }
        groups.extend(safety::approver_groups(bp));
        for x in w {
            findings.push(match label {
                None => x.message,
                Some(other) => format!(
                    "compared with pipeline {other}, which also ships {} to these cells: {}",
                    p.artifact.name, x.message
                ),
            });
        }
    }
    Ok(Review {
        current,
        findings,
        approver_groups: groups,
    })
}

/// Submit a revision (the handler of `POST /pipelines`).
pub(super) async fn submit(
    st: &AppState,
    id: &Identity,
    yaml: &str,
    p: &pipeline::Pipeline,
    pl: &plan::Plan,
) -> ApiResult<(StatusCode, Value)> {
    let mut attempt = 0;
    loop {
        let r = review(st, p, pl).await?;
        let pending = !r.findings.is_empty();
        let nr = NewRevision {
            name: p.name.clone(),
            yaml: yaml.to_string(),
            by: id.name.clone(),
            pending,
            findings: r.findings.clone(),
            approver_groups: r.approver_groups.iter().cloned().collect(),
        };
        let detail = |rev: i64| {
            if pending {
                format!("revision {rev} awaits approval: {}", r.findings.join("; "))
            } else {
                format!("revision {rev} in effect")
            }
        };
        let res = st
            .store
            .submit_revision(
                &nr,
                r.current.as_ref().map(|c| c.revision),
                st.clock.now(),
                |rev| entry(id, "pipeline.submit", &p.name, &detail(rev)),
            )
            .await;
        match res {
            // Another revision took effect while this one was reviewed.
            Err(StoreError::Changed(_)) if attempt < 2 => attempt += 1,
            Err(e) => return Err(e.into()),
            Ok(row) => {
                let status = if pending {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::CREATED
                };
                return Ok((
                    status,
                    json!({
                        "name": row.name,
                        "revision": row.revision,
                        "status": row.status,
                        "in_effect": if pending { r.current.as_ref().map(|c| c.revision) } else { Some(row.revision) },
                        "findings": row.findings,
                        "approver_groups": row.approver_groups,
                    }),
                ));
            }
        }
    }
}

fn revision_json(r: &crate::store::RevisionRow, with_yaml: bool) -> Value {
    let mut v = json!(r);
    if !with_yaml {
        if let Some(o) = v.as_object_mut() {
            o.remove("yaml");
        }
    }
    v
}

async fn list_revisions(
    State(st): State<AppState>,
    _id: Identity,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let revs = st.store.list_revisions(&name).await?;
    if revs.is_empty() {
        return Err(ApiError::not_found(format!("no pipeline {name:?}")));
    }
    let current = st.store.get_pipeline(&name).await?;
    Ok(Json(json!({
        "name": name,
        "in_effect": current.map(|c| c.revision),
        "revisions": revs.iter().map(|r| revision_json(r, false)).collect::<Vec<_>>(),
    })))
}

/// A revision with its YAML, and the one it was reviewed against (`base`).
async fn get_revision(
    State(st): State<AppState>,
    _id: Identity,
    Path((name, rev)): Path<(String, i64)>,
) -> ApiResult<Json<Value>> {
    let store = &st.store;
    let r = store
        .get_revision(&name, rev)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no revision {rev} of pipeline {name:?}")))?;
    let base = match r.base_revision {
        Some(b) => store.get_revision(&name, b).await?,
        None => None,
    };
    let current = store.get_pipeline(&name).await?;
    Ok(Json(json!({
        "revision": revision_json(&r, true),
        "base": base.map(|b| revision_json(&b, true)),
        "in_effect": current.map(|c| c.revision),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    reason: String,
}

async fn decide(
    st: &AppState,
    id: &Identity,
    name: &str,
    rev: i64,
    b: DecisionBody,
    approve: bool,
) -> ApiResult<Json<Value>> {
    require(id, Action::Approve)?;
    check_reason(&Some(b.reason.clone()))?;
    if !approve && b.reason.trim().is_empty() {
        return Err(ApiError::bad_request("a rejection needs a reason"));
    }
    let store = &st.store;
    let r = store
        .get_revision(name, rev)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no revision {rev} of pipeline {name:?}")))?;
    let not_pending = |status: &str| {
        ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("revision {rev} of {name} is {status}; only a pending revision can be approved or rejected"),
        )
    };
    if r.status != "pending" {
        return Err(not_pending(&r.status));
    }
    let required: BTreeSet<String> = r.approver_groups.iter().cloned().collect();
    if let Some(why) = safety::approval_refusal(
        &required,
        &r.submitted_by,
        &id.name,
        &id.groups,
        id.role == Role::Admin,
    ) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", why));
    }
    let (action, verb) = if approve {
        ("pipeline.approve", "approved")
    } else {
        ("pipeline.reject", "rejected")
    };
    let audit = entry(
        id,
        action,
        name,
        &format!("revision {rev} {verb}; reason {:?}", b.reason),
    );
    match store
        .decide_revision(
            name,
            rev,
            approve,
            &id.name,
            &b.reason,
            st.clock.now(),
            &audit,
        )
        .await?
    {
        Decided::Done(row) => Ok(Json(json!({ "revision": revision_json(&row, false) }))),
        Decided::NotFound => Err(ApiError::not_found(format!(
            "no revision {rev} of pipeline {name:?}"
        ))),
        Decided::NotPending(s) => Err(not_pending(&s)),
    }
}

async fn approve(
    State(st): State<AppState>,
    id: Identity,
    Path((name, rev)): Path<(String, i64)>,
    JsonBody(b): JsonBody<DecisionBody>,
) -> ApiResult<Json<Value>> {
    decide(&st, &id, &name, rev, b, true).await
}

async fn reject(
    State(st): State<AppState>,
    id: Identity,
    Path((name, rev)): Path<(String, i64)>,
    JsonBody(b): JsonBody<DecisionBody>,
) -> ApiResult<Json<Value>> {
    decide(&st, &id, &name, rev, b, false).await
}
