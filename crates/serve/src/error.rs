//! The service's errors: what a request is told (a stable code, the HTTP
//! status and the same plain sentence the command line prints), and why the
//! service could not start.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flashgate_core::station::StationError;
use serde::Serialize;

/// A request refused or failed. Serialised as
/// `{"error": {"code": "...", "message": "..."}}` (docs/API.md).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code.
    pub code: &'static str,
    /// One plain sentence: what is wrong and what to do.
    pub message: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// The error object every failed request gets.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable code (`forbidden`, `not-found`, `job-running`, ...).
    code: &'static str,
    /// The sentence the command line would print.
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    pub(crate) fn forbidden(role: &str, what: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("a certificate with the role {role} may not {what}; ask the station's supervisor for a certificate with that role"),
        )
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<StationError> for ApiError {
    fn from(e: StationError) -> Self {
        use flashgate_core::appliance::ApplianceError;
        let message = e.to_string();
        let (status, code) = match &e {
            StationError::JobRunning { .. } => (StatusCode::CONFLICT, "job-running"),
            StationError::RunsLive { .. } => (StatusCode::CONFLICT, "runs-live"),
            StationError::ReadOnly { .. } => (StatusCode::CONFLICT, "read-only"),
            StationError::Import(_) => (StatusCode::UNPROCESSABLE_ENTITY, "package-refused"),
            StationError::Run(_) => (StatusCode::CONFLICT, "run-refused"),
            StationError::Spec(_)
            | StationError::Driver(_)
            | StationError::NoChannels
            | StationError::RepeatedTarget { .. }
            | StationError::MixedDrivers { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "fixtures-refused")
            }
            StationError::JobId(_) => (StatusCode::BAD_REQUEST, "bad-job-id"),
            StationError::NoSuchFixtures { .. } => (StatusCode::NOT_FOUND, "not-found"),
            StationError::BadFixtureName { .. }
            | StationError::FixtureSpec { .. }
            | StationError::FixtureChannels { .. }
            | StationError::FixturesInterleaved { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "fixtures-refused")
            }
            StationError::ShadowsConfigFixtures { .. }
            | StationError::ConfigFixtures { .. }
            | StationError::FixturesInUse { .. } => (StatusCode::CONFLICT, "fixtures-conflict"),
            StationError::NoJobForDriver { .. }
            | StationError::JobNotInFixtures { .. }
            | StationError::TwoJobsForDriver { .. }
            | StationError::RepeatedJob { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "jobs-do-not-match-fixtures",
            ),
            StationError::StationCa(e) if e.is_hostile_input() => {
                (StatusCode::BAD_REQUEST, "bad-certificate")
            }
            StationError::Appliance(ApplianceError::NoSuchJob { .. }) => {
                (StatusCode::NOT_FOUND, "not-found")
            }
            StationError::Bundle(_) => (StatusCode::INTERNAL_SERVER_ERROR, "export-failed"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "station"),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// Why `flashgate serve` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The station (token, state, CA).
    #[error(transparent)]
    Station(#[from] StationError),
    /// The listen address.
    #[error("cannot listen on {addr}: {source}; choose a free address and port")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// TLS material that rustls refuses.
    #[error("the TLS set-up is refused: {0}")]
    Tls(String),
    /// A file the service needs.
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
