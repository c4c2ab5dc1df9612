//! The artifact store.
//!
//! A push is authorized before its body is read (see `authorize`), then
//! streamed to a temporary file beside its final place, hashed on the way,
//! and refused past [`MAX_ARTIFACT`]. Only a complete, synced file is
//! renamed into place, and only together with its index row and audit row;
//! a failed or interrupted upload leaves nothing behind.

use super::*;
use crate::targets::Upload;
use axum::body::{Body, HttpBody};
use axum::http::HeaderMap;
use std::pin::Pin;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/artifacts", get(list_artifacts))
        .route(
            "/artifacts/{name}/{version}",
            // The handler streams the body and enforces MAX_ARTIFACT itself.
            put(push_artifact).layer(DefaultBodyLimit::disable()),
        )
}

/// One push at a time puts its file in place and indexes it, so that two
/// pushes of the same version cannot both rename their file.
static PUBLISH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn list_artifacts(State(st): State<AppState>, _id: Identity) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "artifacts": st.store.list_artifacts().await? }),
    ))
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("artifact over {MAX_ARTIFACT} bytes"),
    )
}

fn write_failed(e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "cannot write an artifact");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "could not store the artifact; see the server log",
    )
}

fn exists(name: &str, version: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("artifact {name} {version} already exists; versions are immutable"),
    )
}

async fn push_artifact(
    State(st): State<AppState>,
    id: Identity,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::PushArtifact)?;
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
    // A declared length over the limit is refused before reading anything.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_ARTIFACT as u64) {
        return Err(too_large());
    }
    if declared == Some(0) {
        return Err(ApiError::bad_request("empty artifact"));
    }
    let store = &st.store;
    if store.get_artifact(&name, &version).await?.is_some() {
        return Err(exists(&name, &version));
    }
    // Removed unless published: on every error below, nothing is left.
    let mut upload = st
        .artifacts
        .begin(&name, &version)
        .await
        .map_err(write_failed)?;
    let (sha, size) = receive(body, upload.as_mut(), MAX_ARTIFACT as u64).await?;
    if size == 0 {
        return Err(ApiError::bad_request("empty artifact"));
    }
    let row = ArtifactRow {
        name: name.clone(),
        version: version.clone(),
        sha256: sha.clone(),
        size: size as i64,
        pushed_by: id.name.clone(),
        pushed_at: st.clock.now().to_rfc3339(),
    };
    let audit = entry(
        &id,
        "artifact.push",
        &format!("{name}:{version}"),
        &format!("sha256 {sha} size {size}"),
    );
    let _publishing = PUBLISH.lock().await;
    // Checked again under the lock: a file in place without an index row
    // is the remains of a push that failed, and is replaced.
    if store.get_artifact(&name, &version).await?.is_some() {
        return Err(exists(&name, &version));
    }
    upload.publish().map_err(write_failed)?;
    if let Err(e) = store.put_artifact(&row, &audit, st.clock.now()).await {
        // Not indexed, so never used; do not leave it looking pushed.
        if let Err(rm) = st.artifacts.remove(&name, &version) {
            tracing::warn!(error = %rm, %name, %version, "could not remove an unindexed artifact");
        }
        return Err(e.into());
    }
    Ok((StatusCode::CREATED, Json(json!(row))))
}

/// Stream `body` into `upload`, which hashes it; refuse it past `limit`
/// bytes. Returns the SHA-256 and the size once the upload is synced.
async fn receive(mut body: Body, upload: &mut dyn Upload, limit: u64) -> ApiResult<(String, u64)> {
    let mut size: u64 = 0;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| {
            tracing::warn!(error = %e, "an artifact upload was interrupted");
            ApiError::bad_request("the upload was interrupted")
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large());
        }
        upload.write(&chunk).await.map_err(write_failed)?;
    }
    upload.finish().await.map_err(write_failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::LocalArtifactDir;
    use sha2::{Digest, Sha256};

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused_while_it_streams() {
        let dir = tempfile::tempdir().expect("dir");
        let store = LocalArtifactDir {
            root: dir.path().to_path_buf(),
        };
        // Many small frames, no declared length: counted as they come.
        let frames = (0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 1000])));
        let mut up = store.begin("svc", "1").await.expect("begin");
        let body = Body::from_stream(futures::stream::iter(frames));
        let e = receive(body, up.as_mut(), 4096)
            .await
            .expect_err("over the limit");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        drop(up);
        let left = std::fs::read_dir(dir.path().join("svc/1"))
            .expect("dir")
            .count();
        assert_eq!(left, 0, "the partial upload is removed");
        // At the limit: taken, hashed.
        let mut up = store.begin("svc", "1").await.expect("begin");
        let (sha, size) = receive(Body::from(vec![1u8; 4096]), up.as_mut(), 4096)
            .await
            .expect("at the limit");
        assert_eq!(size, 4096);
        assert_eq!(sha, hex::encode(Sha256::digest(vec![1u8; 4096])));
    }
}
