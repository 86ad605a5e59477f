//! Live events as Server-Sent Events: the event types of `run --json`
//! (docs/EVENTS.md), each with an id; a client that reconnects with
//! `Last-Event-ID` (or `?after=N`) gets every event after it that is still
//! kept. A client that falls further behind than that is told so with a
//! `lagged` event and dropped; the run never waits for a reader.

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
use crate::runs::ServiceRun;
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
    seen: Arc<AtomicU64>,
    latest: tokio::sync::watch::Receiver<u64>,
    done: tokio::sync::watch::Receiver<bool>,
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
    let reader = Reader {
        latest: run.latest.subscribe(),
        done: run.done.subscribe(),
        run,
        seen,
        ended: false,
    };
    let stream = futures_util::stream::unfold(reader, next_chunk);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// How long a reader that is up to date waits after an event for more, so
/// that a busy run goes out in a few large writes, not one per event per
/// client.
const COALESCE: Duration = Duration::from_millis(20);

/// The most events in one write.
const CHUNK_EVENTS: usize = 512;

/// A comment line when nothing happened for this long, so that proxies and
/// clients see the connection is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `id`, `event` and `data` lines of one event. The data is compact JSON:
/// never a newline in it, so one `data:` line.
fn frame(out: &mut Vec<u8>, id: u64, name: &str, data: &str) {
    use std::io::Write as _;
    let _ = write!(out, "id: {id}\nevent: {name}\ndata: {data}\n\n");
}

async fn next_chunk(mut r: Reader) -> Option<(Result<Bytes, Infallible>, Reader)> {
    let mut waited = false;
    loop {
        if r.ended {
            return None;
        }
        let seen = r.seen.load(Ordering::Relaxed);
        match r.run.events_after(seen, CHUNK_EVENTS) {
            Ok(events) if !events.is_empty() => {
                if !waited && events.len() < CHUNK_EVENTS && !r.run.finished() {
                    // More are likely on their way: take them in this write.
                    waited = true;
                    tokio::time::sleep(COALESCE).await;
                    continue;
                }
                let mut out = Vec::with_capacity(events.iter().map(|e| e.data.len() + 48).sum());
                for e in &events {
                    frame(&mut out, e.id, &e.name, &e.data);
                }
                if let Some(last) = events.last() {
                    r.seen.store(last.id, Ordering::Relaxed);
                }
                return Some((Ok(Bytes::from(out)), r));
            }
            Ok(_) if r.run.finished() && *r.latest.borrow() <= seen => return None,
            Ok(_) => {
                // The run's next event and its end are two signals: wait
                // for either (or the keep-alive), then look again.
                let woke = tokio::time::timeout(KEEP_ALIVE, async {
                    tokio::select! {
                        c = r.latest.changed() => c.is_err(),
                        c = r.done.changed() => c.is_err(),
                    }
                })
                .await;
                match woke {
                    Ok(true) => r.ended = true,
                    Ok(false) => {}
                    Err(_) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), r)),
                }
            }
            Err(first) => {
                r.ended = true;
                let data = serde_json::json!({
                    "event": "lagged",
                    "last_seen": seen,
                    "first_kept": first,
                    "message": "this client fell behind the events the station keeps; read the run's status, then reconnect",
                });
                let mut out = Vec::new();
                let _ = std::io::Write::write_all(
                    &mut out,
                    format!("event: lagged\ndata: {data}\n\n").as_bytes(),
                );
                return Some((Ok(Bytes::from(out)), r));
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
