//! The artifact store.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/artifacts", get(list_artifacts))
        .route(
            "/artifacts/{name}/{version}",
            put(push_artifact).layer(DefaultBodyLimit::max(MAX_ARTIFACT)),
        )
}
async fn list_artifacts(State(st): State<AppState>, _id: Identity) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "artifacts": st.engine.store().list_artifacts().await? }),
    ))
}

async fn push_artifact(
    State(st): State<AppState>,
    id: Identity,
    Path((name, version)): Path<(String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::PushArtifact)?;
    let body = body.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("artifact over {MAX_ARTIFACT} bytes"),
        )
    })?;
    if !valid_id(&name) {
        return Err(ApiError::bad_request(format!(
            "invalid artifact name {name:?}"
        )));
    }
    if !valid_version(&version) {
        return Err(ApiError::bad_request(format!(
            "invalid version {version:?}"
        )));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("empty artifact"));
    }
    if st
        .engine
        .store()
        .get_artifact(&name, &version)
        .await?
        .is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("artifact {name} {version} already exists; versions are immutable"),
        ));
    }
    let sha = hex::encode(Sha256::digest(&body));
    let path = st.artifacts.path(&name, &version);
    let write = |path: std::path::PathBuf, body: Bytes| -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other("no parent"))?;
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, &body)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    let size = body.len() as i64;
    tokio::task::spawn_blocking(move || write(path, body))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "artifact write failed",
            )
        })?
        .map_err(|e| {
            tracing::error!(error = %e, "cannot write an artifact");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "could not store the artifact; see the server log",
            )
        })?;
    let row = ArtifactRow {
        name: name.clone(),
        version: version.clone(),
        sha256: sha.clone(),
        size,
        pushed_by: id.name.clone(),
        pushed_at: st.engine.now().to_rfc3339(),
    };
    st.engine.store().put_artifact(&row).await?;
    audit(
        &st,
        &id,
        "artifact.push",
        &format!("{name}:{version}"),
        &format!("sha256 {sha} size {size}"),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!(row))))
}
