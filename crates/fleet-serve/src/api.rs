//! The routes. Every one needs a client certificate with a fleet role (the
//! handshake refuses any other); the two that change something need
//! `fleet-admin`.
//!
//! | method and path | role | what |
//! |---|---|---|
//! | `GET /` | viewer | the report as a page |
//! | `GET /api/v1/whoami` | viewer | the caller as the certificate names it |
//! | `GET /api/v1/report[?product=P]` | viewer | `flashgate fleet report --json` |
//! | `GET /api/v1/devices?uid=HEX` \| `serial=S` \| `cert_sha256=HEX` | viewer | `flashgate fleet device --json` |
//! | `GET /api/v1/inventory?job=HEX\|product=P[&format=csv\|json]` | viewer | `flashgate fleet inventory` |
//! | `POST /api/v1/oem-keys` (body: a P-256 public key PEM) | admin | trust another OEM key |
//! | `PUT /api/v1/settings/silent-after` (body: `{"seconds": N}`) | admin | when an appliance counts as silent |

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use flashgate_fleet::device::DeviceQuery;
use flashgate_fleet::inventory::{InventoryFormat, Selection};
use flashgate_fleet::{Fleet, FleetError};
use futures_util::StreamExt as _;
use serde::Deserialize;

use crate::{FleetCaller, FleetRole};

/// The router over one fleet database.
pub fn router(fleet: Arc<Fleet>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/report", get(report))
        .route("/api/v1/devices", get(device))
        .route("/api/v1/inventory", get(inventory))
        .route("/api/v1/oem-keys", post(add_oem_key))
        .route("/api/v1/settings/silent-after", put(silent_after))
        .fallback(|| async {
            refused(
                StatusCode::NOT_FOUND,
                "there is no such resource; GET / lists what there is".to_owned(),
            )
        })
        .with_state(fleet)
}

/// `{"error": "<sentence>"}` with a status.
fn refused(status: StatusCode, sentence: String) -> Response {
    (status, Json(serde_json::json!({ "error": sentence }))).into_response()
}

/// `None` when `caller` may do what `role` may; else the 403 to send.
fn refused_unless(caller: &FleetCaller, role: FleetRole) -> Option<Response> {
    (!caller.role.covers(role)).then(|| {
        refused(
            StatusCode::FORBIDDEN,
            format!(
                "this needs the {} role; the certificate of {} carries {}",
                role.as_str(),
                caller.common_name,
                caller.role.as_str()
            ),
        )
    })
}

fn failed(e: &FleetError) -> Response {
    let status = match e {
        FleetError::Usage(_) | FleetError::BadOemKey { .. } => StatusCode::BAD_REQUEST,
        FleetError::NotFound(_) => StatusCode::NOT_FOUND,
        FleetError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refused(status, e.to_string())
}

async fn whoami(Extension(caller): Extension<FleetCaller>) -> Json<FleetCaller> {
    Json(caller)
}

#[derive(Deserialize)]
struct ProductQuery {
    product: Option<String>,
}

async fn report(State(fleet): State<Arc<Fleet>>, Query(q): Query<ProductQuery>) -> Response {
    match fleet.report(q.product.as_deref()).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => failed(&e),
    }
}

async fn page(
    State(fleet): State<Arc<Fleet>>,
    Extension(caller): Extension<FleetCaller>,
    Query(q): Query<ProductQuery>,
) -> Response {
    match fleet.report(q.product.as_deref()).await {
        Ok(r) => Html(crate::page::render(&r, &caller)).into_response(),
        Err(e) => failed(&e),
    }
}

#[derive(Deserialize)]
struct DeviceParams {
    uid: Option<String>,
    serial: Option<String>,
    cert_sha256: Option<String>,
}

async fn device(State(fleet): State<Arc<Fleet>>, Query(q): Query<DeviceParams>) -> Response {
    let bad = |s: &str| refused(StatusCode::BAD_REQUEST, s.to_owned());
    let query = match (q.uid, q.serial, q.cert_sha256) {
        (Some(u), None, None) => match hex::decode(u.trim()) {
            Ok(u) if !u.is_empty() => DeviceQuery::Uid(u),
            _ => return bad("uid must be the device's UID in hex"),
        },
        (None, Some(s), None) => DeviceQuery::Serial(s),
        (None, None, Some(h)) => match hex::decode(h.trim())
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
        {
            Some(h) => DeviceQuery::CertificateHash(h),
            None => return bad("cert_sha256 must be 64 hex digits"),
        },
        _ => return bad("give exactly one of uid, serial or cert_sha256"),
    };
    match fleet.device(&query).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => failed(&e),
    }
}

#[derive(Deserialize)]
struct InventoryParams {
    job: Option<String>,
    product: Option<String>,
    format: Option<String>,
}

async fn inventory(State(fleet): State<Arc<Fleet>>, Query(q): Query<InventoryParams>) -> Response {
    let bad = |s: &str| refused(StatusCode::BAD_REQUEST, s.to_owned());
    let selection = match (q.job, q.product) {
        (Some(j), None) => match hex::decode(j.trim())
            .ok()
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
        {
            Some(j) => Selection::Job(j),
            None => return bad("job must be a job id: 32 hex digits"),
        },
        (None, Some(p)) => Selection::Product(p),
        _ => return bad("give exactly one of job or product"),
    };
    let (format, kind) = match q.format.as_deref() {
        None | Some("csv") => (InventoryFormat::Csv, "text/csv; charset=utf-8"),
        Some("json") => (InventoryFormat::Json, "application/json"),
        Some(_) => return bad("format is csv or json"),
    };
    // Streamed: rows go out as the database yields them, through a small
    // pipe, so memory does not grow with the inventory. A failure before
    // the first rows is an error answer; one after them ends the body with
    // an error, so the client sees a cut transfer, never a short file that
    // looks whole.
    let (mut pipe_in, pipe_out) = tokio::io::duplex(64 * 1024);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let result = fleet.inventory(&selection, format, &mut pipe_in).await;
        drop(pipe_in);
        let _ = done_tx.send(result);
    });
    let mut rows = Box::pin(tokio_util::io::ReaderStream::new(pipe_out).peekable());
    if rows.as_mut().peek().await.is_none() {
        return match done_rx.await {
            Ok(Err(e)) => failed(&e),
            _ => failed(&FleetError::Inconsistent(
                "the inventory ended without its header".to_owned(),
            )),
        };
    }
    let end = futures_util::stream::once(async move {
        match done_rx.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(Err(std::io::Error::other(e.to_string()))),
            Err(_) => Some(Err(std::io::Error::other("the inventory stopped"))),
        }
    })
    .filter_map(std::future::ready);
    (
        [(header::CONTENT_TYPE, kind)],
        axum::body::Body::from_stream(rows.chain(end)),
    )
        .into_response()
}

async fn add_oem_key(
    State(fleet): State<Arc<Fleet>>,
    Extension(caller): Extension<FleetCaller>,
    body: String,
) -> Response {
    if let Some(r) = refused_unless(&caller, FleetRole::Admin) {
        return r;
    }
    let Some(point) = flashgate_core::x509::public_key_from_pem(&body) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "the body is not a P-256 public key in PEM (SubjectPublicKeyInfo)".to_owned(),
        );
    };
    match fleet.add_oem_key(&point).await {
        Ok(added) => Json(serde_json::json!({ "added": added })).into_response(),
        Err(e) => failed(&e),
    }
}

#[derive(Deserialize)]
struct SilentAfter {
    seconds: u64,
}

async fn silent_after(
    State(fleet): State<Arc<Fleet>>,
    Extension(caller): Extension<FleetCaller>,
    body: Result<Json<SilentAfter>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(r) = refused_unless(&caller, FleetRole::Admin) {
        return r;
    }
    let Ok(Json(body)) = body else {
        return refused(
            StatusCode::BAD_REQUEST,
            "the body must be {\"seconds\": N}".to_owned(),
        );
    };
    match fleet.set_silent_after(body.seconds).await {
        Ok(()) => Json(serde_json::json!({ "silent_after_seconds": body.seconds })).into_response(),
        Err(e) => failed(&e),
    }
}
