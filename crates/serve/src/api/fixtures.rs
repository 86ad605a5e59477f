//! Fixture sets: the station's config ones and those a supervisor defines.
// Interim until the station's named fixture sets land.

use axum::http::StatusCode;
use axum::Json;

use crate::error::ApiError;

/// Every fixture set.
#[utoipa::path(get, path = "/api/v1/fixtures", tag = "fixtures",
    responses((status = 200, description = "The fixture sets")))]
pub(crate) async fn list() -> Json<Vec<String>> {
    Json(Vec::new())
}

/// Defines (or replaces) a station-defined fixture set.
#[utoipa::path(put, path = "/api/v1/fixtures/{name}", tag = "fixtures",
    params(("name" = String, Path, description = "Fixture set name")),
    responses((status = 200, description = "Defined")))]
pub(crate) async fn define() -> Result<StatusCode, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not-implemented",
        "not yet",
    ))
}

/// Removes a station-defined fixture set.
#[utoipa::path(delete, path = "/api/v1/fixtures/{name}", tag = "fixtures",
    params(("name" = String, Path, description = "Fixture set name")),
    responses((status = 204, description = "Removed")))]
pub(crate) async fn remove() -> Result<StatusCode, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not-implemented",
        "not yet",
    ))
}
