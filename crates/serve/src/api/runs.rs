//! Runs: start on a fixture set, stop, status, summary.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use flashgate_core::station::{JobId, StartOptions};
use serde::Deserialize;

use super::blocking;
use crate::app::App;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::runs::{JobSummary, RunStatus, ServiceRun};

/// What to run.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRequest {
    /// The jobs: one per driver of the fixture set.
    jobs: Vec<String>,
    /// The fixture set's name (GET /api/v1/fixtures).
    fixtures: String,
    /// Boards to take in all (default: until the fixtures or the quota run out).
    units: Option<u64>,
    /// Counter values a channel reserves at a time (default 16).
    block: Option<u64>,
}

/// Every run of this service's lifetime still kept.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs",
    responses((status = 200, body = [RunStatus])))]
pub(crate) async fn list(State(app): State<Arc<App>>) -> Json<Vec<RunStatus>> {
    Json(app.runs.all().iter().map(|r| r.status()).collect())
}

/// Starts a run. Every check of every job comes first; nothing is
/// recorded unless all pass. The caller's certificate is the operator.
#[utoipa::path(post, path = "/api/v1/runs", tag = "runs",
    request_body = StartRequest,
    responses((status = 201, body = RunStatus), (status = 409, body = crate::error::ErrorBody, description = "Refused: window, quota, a job already running"),
        (status = 422, body = crate::error::ErrorBody, description = "The fixtures cannot run these jobs")))]
pub(crate) async fn start(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<StartRequest>,
) -> Result<(StatusCode, Json<RunStatus>), ApiError> {
    if app.shutting_down() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "the station is shutting down; start the run once it is back",
        ));
    }
    let jobs = request
        .jobs
        .iter()
        .map(|j| super::jobs::parse_job(j))
        .collect::<Result<Vec<JobId>, _>>()?;
    if jobs.is_empty() {
        return Err(ApiError::bad_request("name at least one job in \"jobs\""));
    }
    let who = caller.audit_name();
    // Started from the launcher, if there is one: the run's threads take
    // its priority, above the serving threads'.
    let launcher = app.options.launcher.clone();
    blocking(move || match launcher {
        Some(l) => l.run(move || start_run(&app, who, &jobs, &request)),
        None => start_run(&app, who, &jobs, &request),
    })
    .await
}

fn start_run(
    app: &App,
    who: String,
    jobs: &[JobId],
    request: &StartRequest,
) -> Result<(StatusCode, Json<RunStatus>), ApiError> {
    let mut options = StartOptions::new(who.clone()).units(request.units);
    if let Some(b) = request.block {
        options = options.block(b);
    }
    let started = crate::fixtures::start(&app.station, jobs, &request.fixtures, options);
    let outcome = match &started {
        Ok(_) => format!("started jobs {} on {}", list_jobs(jobs), request.fixtures),
        Err(e) => format!("start refused: {e}"),
    };
    app.journal.record(&who, "run-start", &outcome);
    let parts = started?;
    let (key, id) = app.runs.next_id();
    let run = ServiceRun::spawn(
        id,
        request.fixtures.clone(),
        who,
        parts,
        app.metrics.clone(),
    );
    app.runs.insert(key, run.clone());
    Ok((StatusCode::CREATED, Json(run.status())))
}

fn list_jobs(jobs: &[JobId]) -> String {
    jobs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn find(app: &App, id: &str) -> Result<Arc<ServiceRun>, ApiError> {
    app.runs.get(id).ok_or_else(|| {
        ApiError::not_found(format!(
            "there is no run {id} on this station; GET /api/v1/runs lists them"
        ))
    })
}

/// A run as of now.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunStatus), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn status(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RunStatus>, ApiError> {
    Ok(Json(find(&app, &id)?.status()))
}

/// Asks every channel to finish its unit in flight and stop.
#[utoipa::path(post, path = "/api/v1/runs/{id}/stop", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 202, body = RunStatus, description = "Stopping; the run ends once its units in flight have")))]
pub(crate) async fn stop(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunStatus>), ApiError> {
    let run = find(&app, &id)?;
    let who = caller.audit_name();
    run.stop(&who);
    app.journal
        .record(&who, "run-stop", &format!("asked run {id} to stop"));
    Ok((StatusCode::ACCEPTED, Json(run.status())))
}

/// The summaries of an ended run, one per job.
#[utoipa::path(get, path = "/api/v1/runs/{id}/summary", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = [JobSummary]), (status = 409, body = crate::error::ErrorBody, description = "The run has not ended")))]
pub(crate) async fn summary(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<JobSummary>>, ApiError> {
    find(&app, &id)?.summaries().map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "run-live",
            format!("run {id} has not ended; stop it, or wait for its run-finished event"),
        )
    })
}
