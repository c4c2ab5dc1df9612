//! Pipelines: validate, submit, list, show, plan.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/pipelines", get(list_pipelines).post(submit_pipeline))
        .route("/pipelines/validate", post(validate_pipeline))
        .route("/pipelines/{name}", get(get_pipeline))
        .route("/pipelines/{name}/plan", get(plan_pipeline))
}
// ---- pipelines --------------------------------------------------------------

#[derive(Deserialize)]
struct PipelineBody {
    yaml: String,
    #[serde(default)]
    file: Option<String>,
}

fn file_name(b: &PipelineBody) -> String {
    b.file.clone().unwrap_or_else(|| "pipeline.yaml".into())
}

/// Parse and plan against the current inventory.
pub(super) async fn check_pipeline(
    st: &AppState,
    file: &str,
    yaml: &str,
) -> ApiResult<(pipeline::Pipeline, plan::Plan)> {
    let (p, spans) = pipeline::parse(file, yaml).map_err(|d| ApiError::invalid(&d))?;
    let cells = st.store.cell_specs().await?;
    let pl = plan::plan(&p, &spans, &cells).map_err(|d| ApiError::invalid(&d))?;
    Ok((p, pl))
}

/// How many recent trains of a pipeline measure its step durations.
const MEASURED_TRAINS: i64 = 10;

/// The plan and its projection from now, with the step durations measured
/// by the pipeline's recent trains (assumed where there are none).
pub(super) async fn plan_json(
    st: &AppState,
    p: &pipeline::Pipeline,
    pl: &plan::Plan,
) -> ApiResult<Value> {
    let history = st.store.recent_trains(&p.name, MEASURED_TRAINS).await?;
    let r = plan::report(p, pl, &history, st.clock.now(), Estimates::default());
    Ok(json!(r))
}

async fn validate_pipeline(
    State(st): State<AppState>,
    _id: Identity,
    JsonBody(b): JsonBody<PipelineBody>,
) -> ApiResult<Json<Value>> {
    let (p, pl) = check_pipeline(&st, &file_name(&b), &b.yaml).await?;
    Ok(Json(
        json!({ "valid": true, "plan": plan_json(&st, &p, &pl).await? }),
    ))
}

async fn submit_pipeline(
    State(st): State<AppState>,
    id: Identity,
    JsonBody(b): JsonBody<PipelineBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::SubmitPipeline)?;
    let (p, pl) = check_pipeline(&st, &file_name(&b), &b.yaml).await?;
    // Reviewed against what is in effect; audited with the revision.
    let (status, mut v) = super::revisions::submit(&st, &id, &b.yaml, &p, &pl).await?;
    v["plan"] = plan_json(&st, &p, &pl).await?;
    Ok((status, Json(v)))
}

async fn list_pipelines(State(st): State<AppState>, _id: Identity) -> ApiResult<Json<Value>> {
    let rows = st.store.list_pipelines().await?;
    // Revisions waiting for an approval (not in effect yet).
    let pending: Vec<Value> = st
        .store
        .pending_revisions()
        .await?
        .into_iter()
        .map(|r| json!({"name": r.name, "revision": r.revision, "submitted_by": r.submitted_by, "submitted_at": r.submitted_at}))
        .collect();
    Ok(Json(json!({ "pipelines": rows, "pending": pending })))
}

async fn get_pipeline(
    State(st): State<AppState>,
    _id: Identity,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(pipeline_row(&st, &name).await?)))
}

/// The revision in effect of a submitted pipeline, or 404.
async fn pipeline_row(st: &AppState, name: &str) -> ApiResult<crate::store::PipelineRow> {
    st.store
        .get_pipeline(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no pipeline {name:?}")))
}

async fn plan_pipeline(
    State(st): State<AppState>,
    _id: Identity,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = pipeline_row(&st, &name).await?;
    let (p, pl) = check_pipeline(&st, &format!("{name}.yaml"), &row.yaml).await?;
    Ok(Json(plan_json(&st, &p, &pl).await?))
}
