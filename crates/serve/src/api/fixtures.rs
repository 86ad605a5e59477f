//! Fixture sets: the station config's own, and those a supervisor defines
//! (kept in the state directory).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use flashgate_core::station::{FixtureDef, FixtureOrigin};
use serde::{Deserialize, Serialize};

use super::blocking;
use crate::app::App;
use crate::caller::Caller;
use crate::error::ApiError;

/// A named set of programmer channels.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct FixtureView {
    /// Its name.
    name: String,
    /// `config` (appliance.toml; read-only here) or `station` (defined through the API).
    origin: &'static str,
    /// One target spec per channel (docs/EVENTS.md, "Targets").
    channels: Vec<String>,
    /// The drivers, in the order of their channels: a run takes one job per driver.
    drivers: Vec<String>,
}

fn view(d: &FixtureDef) -> FixtureView {
    FixtureView {
        name: d.name.clone(),
        origin: match d.origin {
            FixtureOrigin::Config => "config",
            FixtureOrigin::Station => "station",
        },
        channels: d.channels.clone(),
        drivers: d.drivers(),
    }
}

/// Every fixture set: the config's, then the station-defined ones.
#[utoipa::path(get, path = "/api/v1/fixtures", tag = "fixtures",
    responses((status = 200, body = [FixtureView])))]
pub(crate) async fn list(State(app): State<Arc<App>>) -> Result<Json<Vec<FixtureView>>, ApiError> {
    blocking(move || Ok(Json(app.station.fixture_sets()?.iter().map(view).collect()))).await
}

/// A fixture set's channels.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefineRequest {
    /// One target spec per channel; each driver's channels together.
    channels: Vec<String>,
}

/// Defines (or replaces) a station-defined fixture set; refused while a
/// run uses it, and for a name the config already has.
#[utoipa::path(put, path = "/api/v1/fixtures/{name}", tag = "fixtures",
    params(("name" = String, Path, description = "1 to 32 of a-z, 0-9 and -")),
    request_body = DefineRequest,
    responses((status = 200, body = FixtureView), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn define(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(request): Json<DefineRequest>,
) -> Result<Json<FixtureView>, ApiError> {
    let who = caller.audit_name();
    blocking(move || {
        let result = app.station.define_fixtures(&name, &request.channels);
        let outcome = match &result {
            Ok(d) => format!("defined fixture set {name}: {}", d.channels.join(" ")),
            Err(e) => format!("definition of fixture set {name} refused: {e}"),
        };
        app.journal.record(&who, "fixtures-define", &outcome);
        Ok(Json(view(&result?)))
    })
    .await
}

/// Removes a station-defined fixture set.
#[utoipa::path(delete, path = "/api/v1/fixtures/{name}", tag = "fixtures",
    params(("name" = String, Path, description = "Fixture set name")),
    responses((status = 204, description = "Removed"), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn remove(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = caller.audit_name();
    blocking(move || {
        let result = app.station.remove_fixtures(&name);
        let outcome = match &result {
            Ok(()) => format!("removed fixture set {name}"),
            Err(e) => format!("removal of fixture set {name} refused: {e}"),
        };
        app.journal.record(&who, "fixtures-remove", &outcome);
        result?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
