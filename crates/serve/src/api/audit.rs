//! The audit log: its latest checkpoint, a job's bundle as a download,
//! and the supervisor's recovery of a damaged log.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::blocking;
use crate::app::App;
use crate::caller::Caller;
use crate::error::ApiError;

/// The audit log's latest signed checkpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Checkpoints {
    /// Records in the log.
    size: u64,
    /// Records after the last checkpoint (durable, not yet signed).
    unprotected: u64,
    /// The latest checkpoint, if one was signed.
    latest: Option<CheckpointView>,
}

/// One signed checkpoint (docs/AUDIT-FORMAT.md, "Checkpoints").
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CheckpointView {
    /// Tree size it covers.
    size: u64,
    /// Root hash, hex.
    root: String,
    /// The tagged COSE_Sign1, base64 (standard alphabet, padded).
    cose_sign1: String,
    /// Seconds since it was signed, as far as this station can tell.
    age_seconds: Option<f64>,
}

/// The log's latest checkpoint.
#[utoipa::path(get, path = "/api/v1/audit/checkpoints", tag = "audit",
    responses((status = 200, body = Checkpoints)))]
pub(crate) async fn checkpoints(
    State(app): State<Arc<App>>,
) -> Result<Json<Checkpoints>, ApiError> {
    blocking(move || {
        let audit = app
            .station
            .appliance()
            .audit()
            .map_err(|e| ApiError::from(flashgate_core::station::StationError::from(e)))?;
        let log = audit.ledger.log();
        let latest = log.latest_checkpoint().map(|c| CheckpointView {
            size: c.size,
            root: hex::encode(c.root),
            cose_sign1: base64_encode(&c.bytes),
            age_seconds: app.checkpoint_age(),
        });
        Ok(Json(Checkpoints {
            size: log.size(),
            unprotected: log.unprotected(),
            latest,
        }))
    })
    .await
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A job's audit bundle, as a tar archive of the directory `audit export`
/// writes (docs/AUDIT-FORMAT.md, "Bundle").
#[utoipa::path(get, path = "/api/v1/audit/bundle/{job}", tag = "audit",
    params(("job" = String, Path, description = "Job id")),
    responses((status = 200, description = "application/x-tar", content_type = "application/x-tar")))]
pub(crate) async fn bundle(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(job): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = super::jobs::parse_job(&job)?;
    let who = caller.audit_name();
    let file = blocking(move || {
        let work = tempfile::Builder::new()
            .prefix("bundle-")
            .tempdir_in(app.upload_dir_created()?)
            .map_err(|e| ApiError::internal(format!("cannot make room for the bundle: {e}")))?;
        let dir = work.path().join("bundle");
        app.station.export_bundle(&id, &dir)?;
        let tar_path = work.path().join("bundle.tar");
        let out = std::fs::File::create(&tar_path)
            .map_err(|e| ApiError::internal(format!("cannot write the bundle archive: {e}")))?;
        let mut tar = tar::Builder::new(out);
        tar.append_dir_all(format!("bundle-{id}"), &dir)
            .and_then(|()| tar.finish())
            .map_err(|e| ApiError::internal(format!("cannot write the bundle archive: {e}")))?;
        let file = std::fs::File::open(&tar_path)
            .map_err(|e| ApiError::internal(format!("cannot read the bundle archive: {e}")))?;
        app.journal.record(
            &who,
            "audit-export",
            &format!("downloaded the bundle of job {id}"),
        );
        // The open file outlives its directory entry.
        drop(work);
        Ok(file)
    })
    .await?;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"bundle-{job}.tar\""),
            ),
        ],
        Body::from_stream(stream),
    ))
}

/// Why the log is being reset.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetRequest {
    /// Recorded in the new segment's `log-reset` record.
    reason: String,
}

/// Seals a damaged audit log and starts a new segment (`audit reset`).
#[utoipa::path(post, path = "/api/v1/audit/reset", tag = "audit", request_body = ResetRequest,
    responses((status = 200, description = "What the reset did"), (status = 409, body = crate::error::ErrorBody, description = "Runs are live")))]
pub(crate) async fn reset(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<ResetRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = caller.audit_name();
    blocking(move || {
        let reason = format!("{} (by {who})", request.reason);
        let result = app.station.reset_log(&reason);
        let outcome = match &result {
            Ok(_) => "reset the audit log".to_owned(),
            Err(e) => format!("reset refused: {e}"),
        };
        app.journal.record(&who, "audit-reset", &outcome);
        let report = result?;
        Ok(Json(serde_json::json!({ "report": format!("{report:?}") })))
    })
    .await
}
