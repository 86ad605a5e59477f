//! Jobs: list, upload (import), inspect, remove.

use std::io::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use flashgate_core::appliance::ImportedJob;
use flashgate_core::station::JobId;
use serde::Serialize;

use super::blocking;
use crate::app::App;
use crate::caller::Caller;
use crate::error::ApiError;

/// An imported job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct JobView {
    /// Job id (32 hex digits).
    id: String,
    /// The product it builds.
    product: String,
    /// Free text from the OEM.
    description: Option<String>,
    /// The driver its policy names.
    driver: String,
    /// Security version (anti-rollback).
    security_version: u32,
    /// The job window, Unix seconds.
    not_before: u64,
    /// End of the job window, Unix seconds.
    not_after: u64,
    /// Units the job allows.
    quota: u64,
    /// Counter values used so far.
    used: u64,
    /// Quota left.
    quota_left: u64,
    /// When it was imported (Unix seconds).
    imported_at: u64,
    /// Whether a run of it is live on this station.
    running: bool,
}

pub(crate) fn view(app: &App, job: &ImportedJob) -> Result<JobView, ApiError> {
    let id = job.manifest().job_id;
    let policy = job.policy();
    let j = policy.job();
    let used = app
        .station
        .appliance()
        .quota_used(&id)
        .map_err(|e| ApiError::from(flashgate_core::station::StationError::from(e)))?;
    let running = app.station.live_jobs().contains(&JobId::from_bytes(id));
    Ok(JobView {
        id: hex::encode(id),
        product: j.product.as_str().to_owned(),
        description: j.description.clone(),
        driver: policy.target().driver.as_str().to_owned(),
        security_version: j.security_version,
        not_before: j.not_before,
        not_after: j.not_after,
        quota: j.quota,
        used,
        quota_left: j.quota.saturating_sub(used),
        imported_at: job.imported_at(),
        running,
    })
}

pub(crate) fn parse_job(id: &str) -> Result<JobId, ApiError> {
    id.parse::<JobId>()
        .map_err(|e| ApiError::from(flashgate_core::station::StationError::from(e)))
}

/// Every imported job.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    responses((status = 200, body = [JobView])))]
pub(crate) async fn list(State(app): State<Arc<App>>) -> Result<Json<Vec<JobView>>, ApiError> {
    blocking(move || {
        let jobs = app.station.jobs()?;
        jobs.iter()
            .map(|j| view(&app, j))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map(Json)
}

/// Imports a job package (the body is the package file, as `job build` wrote it).
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The job package"),
    responses((status = 201, body = JobView), (status = 413, description = "Larger than the service's body limit"),
        (status = 422, body = crate::error::ErrorBody, description = "The package is refused")))]
pub(crate) async fn upload(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request has no body; send the job package file as the body",
        ));
    }
    let who = caller.audit_name();
    blocking(move || {
        // The station imports from a file: the upload goes to a private one
        // beside the state, removed whatever happens.
        let dir = app.upload_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
        let mut file = tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".fgjob")
            .tempfile_in(&dir)
            .map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))?;
        file.write_all(&body)
            .and_then(|()| file.flush())
            .map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))?;
        let result = app.station.import(file.path());
        let outcome = match &result {
            Ok(job) => format!("imported job {}", hex::encode(job.manifest().job_id)),
            Err(e) => format!("import refused: {e}"),
        };
        app.journal.record(&who, "job-import", &outcome);
        let job = result?;
        Ok((StatusCode::CREATED, Json(view(&app, &job)?)))
    })
    .await
}

/// One job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id, 32 hex digits")),
    responses((status = 200, body = JobView), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn inspect(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_job(&id)?;
    blocking(move || {
        let jobs = app.station.jobs()?;
        let job = jobs
            .iter()
            .find(|j| j.manifest().job_id == *id.as_bytes())
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "there is no job {id} on this station; GET /api/v1/jobs lists them"
                ))
            })?;
        view(&app, job).map(Json)
    })
    .await
}

/// Removes a job: its keys in the HSM are destroyed, its records stay.
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 204, description = "Removed"), (status = 409, body = crate::error::ErrorBody, description = "A run of it is live")))]
pub(crate) async fn remove(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_job(&id)?;
    let who = caller.audit_name();
    blocking(move || {
        let result = app.station.remove(&id);
        let outcome = match &result {
            Ok(()) => format!("removed job {id}"),
            Err(e) => format!("removal of job {id} refused: {e}"),
        };
        app.journal.record(&who, "job-remove", &outcome);
        result?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
