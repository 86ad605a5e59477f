//! The `/api/v1` JSON API, the metrics and the console, on one router.

pub(crate) mod audit;
pub(crate) mod events;
pub(crate) mod fixtures;
pub(crate) mod jobs;
pub(crate) mod runs;
pub(crate) mod station;
pub(crate) mod units;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};

use crate::app::App;
use crate::caller::Caller;
use crate::error::ApiError;

/// Runs blocking station work (token, files) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a station task failed: {e}")))?
}

/// The whole router. Every route must have a row in
/// [`crate::endpoints::ENDPOINTS`]; the role check runs on every request.
pub(crate) fn router(app: Arc<App>) -> Router {
    let limit = app.options.max_body;
    Router::new()
        .route("/", get(crate::console::index))
        .route("/console.js", get(crate::console::script))
        .route("/console.css", get(crate::console::style))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/whoami", get(station::whoami))
        .route("/api/v1/station", get(station::status))
        .route("/api/v1/jobs", get(jobs::list).post(jobs::upload))
        .route("/api/v1/jobs/{id}", get(jobs::inspect).delete(jobs::remove))
        .route("/api/v1/fixtures", get(fixtures::list))
        .route(
            "/api/v1/fixtures/{name}",
            put(fixtures::define).delete(fixtures::remove),
        )
        .route("/api/v1/runs", get(runs::list).post(runs::start))
        .route("/api/v1/runs/{id}", get(runs::status))
        .route("/api/v1/runs/{id}/stop", post(runs::stop))
        .route("/api/v1/runs/{id}/summary", get(runs::summary))
        .route("/api/v1/runs/{id}/events", get(events::stream))
        .route("/api/v1/units", get(units::lookup))
        .route("/api/v1/audit/checkpoints", get(audit::checkpoints))
        .route("/api/v1/audit/bundle/{job}", get(audit::bundle))
        .route("/api/v1/audit/reset", post(audit::reset))
        .route("/api/v1/revocations", post(station::revoke))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::endpoints::authorize))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "there is no {}; see /api/v1/openapi.json",
        uri.path()
    ))
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "station",
    responses((status = 200, description = "The OpenAPI 3.1 document")))]
pub(crate) async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::document())
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "station",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub(crate) async fn metrics(
    State(app): State<Arc<App>>,
    Extension(_caller): Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    let a = app.clone();
    let figures = blocking(move || Ok(a.station_figures())).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(&figures),
    ))
}
