//! Who is asking, and the station's own state.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::blocking;
use crate::app::App;
use crate::caller::Caller;
use crate::error::ApiError;

/// The caller, and what its role may do.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct WhoAmI {
    /// The certificate's subject.
    subject: String,
    /// Its common name.
    name: String,
    /// The role it carries.
    role: String,
    /// SHA-256 of the certificate, hex.
    fingerprint: String,
    /// What the audit log records as the operator for this caller.
    audit_name: String,
    /// The endpoints this role may call, as `METHOD PATH`.
    allowed: Vec<String>,
}

/// Who the client certificate says the caller is.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "station",
    responses((status = 200, body = WhoAmI)))]
pub(crate) async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoAmI> {
    let role = caller.role();
    Json(WhoAmI {
        subject: caller.identity.subject.clone(),
        name: caller.identity.common_name.clone(),
        role: role.as_str().to_owned(),
        fingerprint: hex::encode(caller.identity.fingerprint),
        audit_name: caller.audit_name(),
        allowed: crate::endpoints::ENDPOINTS
            .iter()
            .filter(|e| e.roles.contains(&role))
            .map(|e| format!("{} {}", e.method, e.path))
            .collect(),
    })
}

/// The station's state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StationStatus {
    /// The appliance id from the enrollment record.
    appliance_id: String,
    /// Runs in progress.
    runs_live: usize,
    /// What recovery did when the service started.
    recovered: Vec<String>,
    /// Whether the service is shutting down (no new runs).
    shutting_down: bool,
}

/// The station: its appliance id, live runs, what start-up recovered.
#[utoipa::path(get, path = "/api/v1/station", tag = "station",
    responses((status = 200, body = StationStatus)))]
pub(crate) async fn status(State(app): State<Arc<App>>) -> Result<Json<StationStatus>, ApiError> {
    let a = app.clone();
    let appliance_id = blocking(move || {
        Ok(a.station
            .enrollment()
            .map_err(ApiError::from)?
            .record()
            .appliance_id
            .clone())
    })
    .await?;
    Ok(Json(StationStatus {
        appliance_id,
        runs_live: app.runs.live().len(),
        recovered: app.station.recovered().to_vec(),
        shutting_down: app.shutting_down(),
    }))
}

/// A client certificate to refuse from now on.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    /// SHA-256 of the certificate (hex; colons and a `sha256:` prefix allowed).
    fingerprint: String,
    /// Why, kept as a comment in the deny-list.
    note: Option<String>,
}

/// Whether the revocation changed the list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Revoked {
    /// The fingerprint, hex.
    fingerprint: String,
    /// False when it was on the deny-list already.
    added: bool,
}

/// Puts a client certificate on the deny-list: its next handshake is
/// refused (connections already open keep their session until they close).
#[utoipa::path(post, path = "/api/v1/revocations", tag = "station", request_body = RevokeRequest,
    responses((status = 200, body = Revoked), (status = 400, body = crate::error::ErrorBody)))]
pub(crate) async fn revoke(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<RevokeRequest>,
) -> Result<Json<Revoked>, ApiError> {
    let fingerprint = flashgate_core::station_ca::parse_fingerprint(&request.fingerprint)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let who = caller.audit_name();
    blocking(move || {
        let note = format!("{} (by {who})", request.note.as_deref().unwrap_or(""));
        let result = app.station.revoke_client(fingerprint, note.trim());
        let outcome = match &result {
            Ok(true) => format!("revoked sha256:{}", hex::encode(fingerprint)),
            Ok(false) => format!("sha256:{} was already revoked", hex::encode(fingerprint)),
            Err(e) => format!("revocation refused: {e}"),
        };
        app.journal.record(&who, "certificate-revoke", &outcome);
        Ok(Json(Revoked {
            fingerprint: hex::encode(fingerprint),
            added: result?,
        }))
    })
    .await
}
