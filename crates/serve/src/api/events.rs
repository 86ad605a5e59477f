//! Live events as Server-Sent Events: the event types of `run --json`
//! (docs/EVENTS.md), each with an id; a client that reconnects with
//! `Last-Event-ID` (or `?after=N`) gets every event after it that is still
//! kept. A client that falls further behind than that is told so with a
//! `lagged` event and dropped; the run never waits for a reader. Readers
//! at the live edge are sent the run's shared segments (`event_segment`),
//! gzip-compressed when they accept it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::http::HeaderMap;
use axum::response::IntoResponse as _;
use axum::Extension;
use serde::Deserialize;

use crate::app::App;
use crate::error::ApiError;
use crate::event_segment::{accepts_gzip, Encoder, Segment};
use crate::runs::{ReaderGuard, ServiceRun};
use crate::server::ConnectionKill;

/// Where to resume.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct After {
    /// The last event id seen (as `Last-Event-ID`, for clients that cannot
    /// set headers). The header wins when both are given.
    after: Option<u64>,
}

struct Reader {
    run: Arc<ServiceRun>,
    _counted: ReaderGuard,
    seen: Arc<AtomicU64>,
    sealed: tokio::sync::watch::Receiver<u64>,
    done: tokio::sync::watch::Receiver<bool>,
    encoder: Encoder,
    ended: bool,
}

/// The run's events, live.
#[utoipa::path(get, path = "/api/v1/runs/{id}/events", tag = "runs",
    params(("id" = String, Path, description = "Run id"), After,
        ("Last-Event-ID" = Option<u64>, Header, description = "The last event id this client saw")),
    responses((status = 200, description = "text/event-stream: id, event (type), data (the JSON event)", content_type = "text/event-stream"),
        (status = 204, description = "The run has ended and no event follows the one given")))]
pub(crate) async fn stream(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(after): Query<After>,
    headers: HeaderMap,
    kill: Option<Extension<ConnectionKill>>,
) -> Result<axum::response::Response, ApiError> {
    let run = super::runs::find(&app, &id)?;
    let header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                ApiError::bad_request("Last-Event-ID must be the id of an event this run sent")
            })
        })
        .transpose()?;
    let start = header.or(after.after).unwrap_or(0);
    // Nothing will follow: 204 tells an EventSource to stop reconnecting.
    if run.finished() && *run.latest.borrow() <= start {
        return Ok(axum::http::StatusCode::NO_CONTENT.into_response());
    }
    let seen = Arc::new(AtomicU64::new(start));
    if let Some(Extension(kill)) = kill {
        tokio::spawn(watch_lag(Arc::downgrade(&seen), run.clone(), kill));
    }
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(accepts_gzip);
    let reader = Reader {
        sealed: run.sealed.subscribe(),
        done: run.done.subscribe(),
        _counted: run.reader(),
        run,
        seen,
        encoder: Encoder::new(gzip),
        ended: false,
    };
    let stream = futures_util::stream::unfold(reader, next_chunk);
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::VARY, "accept-encoding"),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    if gzip {
        response.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    Ok(response)
}

/// A comment line when nothing happened for this long, so that proxies and
/// clients see the connection is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

async fn next_chunk(mut r: Reader) -> Option<(Result<Bytes, Infallible>, Reader)> {
    loop {
        if r.ended {
            return None;
        }
        let seen = r.seen.load(Ordering::Relaxed);
        if seen < *r.sealed.borrow_and_update() {
            match r.run.segment_after(seen) {
                Ok(segment) => {
                    r.seen.store(segment.last, Ordering::Relaxed);
                    let bytes = r.encoder.segment(&segment);
                    return Some((Ok(bytes), r));
                }
                Err(first) => {
                    r.ended = true;
                    let data = serde_json::json!({
                        "event": "lagged",
                        "last_seen": seen,
                        "first_kept": first,
                        "message": "this client fell behind the events the station keeps; read the run's status, then reconnect",
                    });
                    let notice = Segment::of_text(
                        0,
                        0,
                        format!("event: lagged\ndata: {data}\n\n").into_bytes(),
                    );
                    let mut out = r.encoder.segment(&notice).to_vec();
                    if let Some(end) = r.encoder.finish() {
                        out.extend_from_slice(&end);
                    }
                    return Some((Ok(Bytes::from(out)), r));
                }
            }
        }
        if r.run.finished() && *r.run.latest.borrow() <= seen {
            r.ended = true;
            match r.encoder.finish() {
                Some(end) => return Some((Ok(end), r)),
                None => return None,
            }
        }
        // The next segment and the run's end are two signals: wait for
        // either (or the keep-alive), then look again.
        let woke = tokio::time::timeout(KEEP_ALIVE, async {
            tokio::select! {
                c = r.sealed.changed() => c.is_err(),
                c = r.done.changed() => c.is_err(),
            }
        })
        .await;
        match woke {
            Ok(true) => {
                r.ended = true;
                if let Some(end) = r.encoder.finish() {
                    return Some((Ok(end), r));
                }
            }
            Ok(false) => {}
            Err(_) => {
                let comment = Segment::of_text(0, 0, b": keep-alive\n\n".to_vec());
                let bytes = r.encoder.segment(&comment);
                return Some((Ok(bytes), r));
            }
        }
    }
}

/// Drops the connection of a client that stopped reading: once the events
/// it has not taken are no longer kept, nothing it could read would be
/// whole.
async fn watch_lag(seen: Weak<AtomicU64>, run: Arc<ServiceRun>, kill: ConnectionKill) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(seen) = seen.upgrade() else { return };
        if seen.load(Ordering::Relaxed) + 1 < run.first_kept() {
            kill.kill();
            return;
        }
        if run.finished() && *run.latest.borrow() <= seen.load(Ordering::Relaxed) {
            return;
        }
    }
}
