//! Every endpoint the service offers and the roles that may call it: the
//! one table the router is checked against. A route with no row here is
//! refused to every role, and the role-matrix test fails on it.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::caller::Caller;
use crate::error::ApiError;
use flashgate_core::station_ca::Role;

/// One endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// HTTP method.
    pub method: &'static str,
    /// Path as the router and the OpenAPI document spell it.
    pub path: &'static str,
    /// The roles that may call it.
    pub roles: &'static [Role],
    /// What a refused caller was trying to do ("import jobs").
    pub action: &'static str,
}

use Role::{Auditor, Metrics, Operator, Supervisor};

const ALL: &[Role] = &[Operator, Supervisor, Auditor, Metrics];
const READERS: &[Role] = &[Operator, Supervisor, Auditor];
const RUNNERS: &[Role] = &[Operator, Supervisor];
const SUPERVISOR: &[Role] = &[Supervisor];
const AUDIT: &[Role] = &[Supervisor, Auditor];
const SCRAPERS: &[Role] = &[Metrics, Supervisor, Auditor];

const fn ep(
    method: &'static str,
    path: &'static str,
    roles: &'static [Role],
    action: &'static str,
) -> Endpoint {
    Endpoint {
        method,
        path,
        roles,
        action,
    }
}

/// The endpoints, with who may call each.
pub const ENDPOINTS: &[Endpoint] = &[
    ep("GET", "/", READERS, "open the console"),
    ep("GET", "/console.js", READERS, "open the console"),
    ep("GET", "/console.css", READERS, "open the console"),
    ep("GET", "/api/v1/openapi.json", ALL, "read the API document"),
    ep("GET", "/api/v1/whoami", ALL, "ask who it is"),
    ep(
        "GET",
        "/api/v1/station",
        READERS,
        "read the station's state",
    ),
    ep("GET", "/api/v1/jobs", READERS, "list jobs"),
    ep("POST", "/api/v1/jobs", SUPERVISOR, "import jobs"),
    ep("GET", "/api/v1/jobs/{id}", READERS, "inspect jobs"),
    ep("DELETE", "/api/v1/jobs/{id}", SUPERVISOR, "remove jobs"),
    ep("GET", "/api/v1/fixtures", READERS, "list fixture sets"),
    ep(
        "PUT",
        "/api/v1/fixtures/{name}",
        SUPERVISOR,
        "define fixture sets",
    ),
    ep(
        "DELETE",
        "/api/v1/fixtures/{name}",
        SUPERVISOR,
        "remove fixture sets",
    ),
    ep("GET", "/api/v1/runs", READERS, "list runs"),
    ep("POST", "/api/v1/runs", RUNNERS, "start runs"),
    ep("GET", "/api/v1/runs/{id}", READERS, "watch runs"),
    ep("POST", "/api/v1/runs/{id}/stop", RUNNERS, "stop runs"),
    ep(
        "GET",
        "/api/v1/runs/{id}/summary",
        READERS,
        "read run summaries",
    ),
    ep("GET", "/api/v1/runs/{id}/events", READERS, "watch runs"),
    ep("GET", "/api/v1/units", READERS, "look up units"),
    ep(
        "GET",
        "/api/v1/audit/checkpoints",
        READERS,
        "read checkpoints",
    ),
    ep(
        "GET",
        "/api/v1/audit/bundle/{job}",
        AUDIT,
        "download audit bundles",
    ),
    ep(
        "POST",
        "/api/v1/audit/reset",
        SUPERVISOR,
        "recover a damaged audit log",
    ),
    ep(
        "POST",
        "/api/v1/revocations",
        SUPERVISOR,
        "revoke client certificates",
    ),
    ep("GET", "/metrics", SCRAPERS, "read metrics"),
];

/// The row for a matched route.
pub fn find(method: &str, path: &str) -> Option<&'static Endpoint> {
    ENDPOINTS
        .iter()
        .find(|e| e.method == method && e.path == path)
}

/// Middleware: lets a request through only when the caller's role is in
/// its endpoint's row.
pub(crate) async fn authorize(request: Request, next: Next) -> Response {
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return ApiError::internal("the connection carries no client identity").into_response();
    };
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let row = matched.as_deref().and_then(|p| find(&method, p));
    let refusal = match row {
        Some(e) if e.roles.contains(&caller.role()) => return next.run(request).await,
        Some(e) => ApiError::forbidden(caller.role().as_str(), e.action).into_response(),
        // Not in the table: offered to no one.
        None => ApiError::not_found(format!(
            "there is no {method} {}; see /api/v1/openapi.json",
            request.uri().path()
        ))
        .into_response(),
    };
    // A refused upload is read to its end (bounded in size and time) before
    // the answer: closing on unread bytes resets the connection, and the
    // client would get a broken pipe instead of the sentence.
    let _ = tokio::time::timeout(
        DRAIN_TIME,
        axum::body::to_bytes(request.into_body(), DRAIN_LIMIT),
    )
    .await;
    refusal
}

/// How much of a refused request's body is read before the answer.
const DRAIN_LIMIT: usize = 16 << 20;
/// How long that read may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);
