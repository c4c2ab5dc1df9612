//! Trains: start, list, show, events, logs, approvals, cancel and rollback.

use super::pipelines::check_pipeline;
use super::*;
use wire::train_json;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/trains", get(list_trains).post(start_train))
        .route("/trains/{id}", get(get_train))
        .route("/trains/{id}/events", get(train_events))
        .route("/trains/{id}/logs", get(train_logs))
        .route("/trains/{id}/approve", post(approve))
        .route("/trains/{id}/reject", post(reject))
        .route("/trains/{id}/cancel", post(cancel))
        .route("/trains/{id}/rollback", post(rollback))
}
// ---- trains -------------------------------------------------------------------

#[derive(Deserialize)]
struct StartBody {
    pipeline: String,
    version: String,
}

fn train_id(pipeline: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut b = [0u8; 3];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    format!(
        "{pipeline}-{}-{}",
        now.format("%Y%m%d%H%M%S"),
        hex::encode(b)
    )
}

async fn start_train(
    State(st): State<AppState>,
    id: Identity,
    JsonBody(b): JsonBody<StartBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::StartTrain)?;
    if !valid_version(&b.version) {
        return Err(ApiError::bad_request(format!(
            "invalid version {:?}: use 1-128 letters, digits, '.', '-', '_' or '+'",
            b.version
        )));
    }
    let row = st.store.get_pipeline(&b.pipeline).await?.ok_or_else(|| {
        ApiError::not_found(format!("no pipeline {:?}; submit it first", b.pipeline))
    })?;
    let (p, pl) = check_pipeline(&st, &format!("{}.yaml", b.pipeline), &row.yaml).await?;
    // Cells whose target runs the artifact binary (local ones) need it pushed.
    if p.artifact.kind == ArtifactKind::Binary {
        let cells = st.store.cell_specs().await?;
        let runs_binary = cells.iter().any(|c| {
            pl.cell_tz.contains_key(&c.id)
                && st
                    .targets
                    .for_cell(c)
                    .is_ok_and(|t| t.runs_pushed_artifacts())
        });
        if runs_binary
            && st
                .store
                .get_artifact(&p.artifact.name, &b.version)
                .await?
                .is_none()
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "artifact_missing",
                format!(
                    "artifact {} version {} has not been pushed; run `conductor artifact push {} {} PATH` first",
                    p.artifact.name, b.version, p.artifact.name, b.version
                ),
            ));
        }
    }
    let tid = train_id(&p.name, st.clock.now());
    let audit = entry(
        &id,
        "train.start",
        &tid,
        &format!(
            "pipeline {} revision {} version {}",
            p.name, row.revision, b.version
        ),
    );
    let spec = TrainSpec {
        id: tid,
        pipeline: p.name.clone(),
        artifact: p.artifact.clone(),
        version: b.version.clone(),
        started_by: id.name.clone(),
        steps: p.steps.clone(),
        on_failure: p.on_failure,
        windows: p.parsed_windows(),
        plan: pl,
    };
    // The audit row is committed with the train's first events.
    let t = st.workflow.start_train(spec, Some(audit)).await?;
    Ok((StatusCode::CREATED, Json(train_json(&t))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    pipeline: Option<String>,
    limit: Option<i64>,
}

async fn list_trains(
    State(st): State<AppState>,
    _id: Identity,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let rows = st.store.list_trains(q.pipeline.as_deref(), limit).await?;
    let trains: Vec<wire::TrainSummary> = wire::views(&rows);
    Ok(Json(json!({ "trains": trains })))
}

async fn get_train(
    State(st): State<AppState>,
    _id: Identity,
    Path(tid): Path<String>,
) -> ApiResult<Json<Value>> {
    let t = st
        .workflow
        .train(&tid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no train {tid:?}")))?;
    Ok(Json(train_json(&t)))
}

async fn train_events(
    State(st): State<AppState>,
    _id: Identity,
    Path(tid): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Value>> {
    let rows = st
        .store
        .train_events(
            &tid,
            q.after.unwrap_or(0),
            q.limit.unwrap_or(500).clamp(1, 5000),
        )
        .await?;
    Ok(Json(json!({ "events": rows })))
}

async fn train_logs(
    State(st): State<AppState>,
    _id: Identity,
    Path(tid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "logs": st.store.step_logs(&tid).await? })))
}

#[derive(Deserialize)]
struct GateBody {
    gate: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn decide(
    st: &AppState,
    id: &Identity,
    tid: &str,
    b: GateBody,
    approve: bool,
) -> ApiResult<Json<Value>> {
    require(id, Action::Approve)?;
    check_reason(&b.reason)?;
    let (wave, by, groups, admin, reason) = (
        b.gate.clone(),
        id.name.clone(),
        id.groups.clone(),
        id.role == Role::Admin,
        b.reason.clone(),
    );
    let ev = if approve {
        Event::Approved {
            wave,
            by,
            groups,
            admin,
            reason,
        }
    } else {
        Event::Rejected {
            wave,
            by,
            groups,
            admin,
            reason,
        }
    };
    let action = if approve {
        "train.approve"
    } else {
        "train.reject"
    };
    let audit = entry(
        id,
        action,
        tid,
        &format!("gate {} reason {:?}", b.gate, b.reason.unwrap_or_default()),
    );
    // Committed with the event, and only if the engine accepts it.
    let t = st.workflow.command(tid, ev, Some(audit)).await?;
    Ok(Json(train_json(&t)))
}

async fn approve(
    State(st): State<AppState>,
    id: Identity,
    Path(tid): Path<String>,
    JsonBody(b): JsonBody<GateBody>,
) -> ApiResult<Json<Value>> {
    decide(&st, &id, &tid, b, true).await
}

async fn reject(
    State(st): State<AppState>,
    id: Identity,
    Path(tid): Path<String>,
    JsonBody(b): JsonBody<GateBody>,
) -> ApiResult<Json<Value>> {
    decide(&st, &id, &tid, b, false).await
}

/// Cancel or roll back a train on behalf of `id`; the audit row is
/// committed with the event.
async fn stop_train(
    st: &AppState,
    id: &Identity,
    tid: &str,
    event: Event,
    action: &str,
) -> ApiResult<Json<Value>> {
    require(id, Action::CancelOrRollback)?;
    let t = st
        .workflow
        .command(tid, event, Some(entry(id, action, tid, "")))
        .await?;
    Ok(Json(train_json(&t)))
}

async fn cancel(
    State(st): State<AppState>,
    id: Identity,
    Path(tid): Path<String>,
) -> ApiResult<Json<Value>> {
    let ev = Event::CancelRequested {
        by: id.name.clone(),
    };
    stop_train(&st, &id, &tid, ev, "train.cancel").await
}

async fn rollback(
    State(st): State<AppState>,
    id: Identity,
    Path(tid): Path<String>,
) -> ApiResult<Json<Value>> {
    let ev = Event::RollbackRequested {
        by: id.name.clone(),
    };
    stop_train(&st, &id, &tid, ev, "train.rollback").await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each workflow error answers the status and code the API always
    /// answered for it (the HTTP tests drive the common ones end to end).
    #[test]
    fn workflow_errors_map_to_their_status_and_code() {
        let cases = [
            (
                WorkflowError::NotFound("t1".into()),
                404,
                "not_found",
                "no train \"t1\"",
            ),
            (
                WorkflowError::Refused(Refusal::SelfApproval("alice".into())),
                403,
                "forbidden",
                "alice started this train and cannot approve or reject it",
            ),
            (
                WorkflowError::Refused(Refusal::UnknownWave("w9".into())),
                404,
                "not_found",
                "train has no wave named \"w9\"",
            ),
            (
                WorkflowError::Refused(Refusal::NotAwaitingApproval("w1".into())),
                409,
                "conflict",
                "wave \"w1\" is not waiting for an approval",
            ),
            (
                WorkflowError::Conflict("moved".into()),
                409,
                "conflict",
                "moved",
            ),
            (
                WorkflowError::Unavailable("the engine has stopped".into()),
                503,
                "unavailable",
                "the engine has stopped",
            ),
            (
                WorkflowError::Store(StoreError::Corrupt("secret detail".into())),
                500,
                "internal",
                "internal error; see the server log",
            ),
        ];
        for (e, status, code, message) in cases {
            let a = ApiError::from(e);
            assert_eq!(
                (a.status.as_u16(), a.code, a.message.as_str()),
                (status, code, message)
            );
        }
    }
}
