//! The listener: TLS handshake (bounded in time), the caller taken from
//! the client certificate, then HTTP/1.1 or HTTP/2 with a header timeout,
//! for as long as the service runs. Shutdown stops taking connections,
//! lets every run finish its units in flight, and returns once they have.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::app::App;
use crate::caller::Caller;
use flashgate_core::station_ca::ClientIdentity;

/// Closes one connection from inside a request (an SSE client that stopped
/// reading).
#[derive(Debug, Clone, Default)]
pub struct ConnectionKill(Arc<Notify>);

impl ConnectionKill {
    /// Closes the connection.
    pub fn kill(&self) {
        self.0.notify_one();
    }
}

/// How many connections one listener serves and how long a client may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// How long a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
}

pub(crate) async fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = ConnectionLimits {
        max_connections: app.options.max_connections,
        handshake_timeout: app.options.handshake_timeout,
        header_timeout: app.options.header_timeout,
    };
    serve_tls(
        listener,
        tls,
        crate::api::router(app),
        limits,
        |der| {
            ClientIdentity::from_der(der)
                .ok()
                .map(|identity| Caller { identity })
        },
        shutdown,
    )
    .await;
}

/// Serves `router` on `listener` over TLS until `shutdown` completes. Each
/// connection's caller is what `identify` makes of its client certificate
/// (the verifier already checked the chain); a connection without one is
/// closed. Handlers find the caller and the connection's
/// [`ConnectionKill`] as `axum::Extension`s.
pub async fn serve_tls<C: Clone + Send + Sync + 'static>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    limits: ConnectionLimits,
    identify: fn(&[u8]) -> Option<C>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the limit a connection is closed at once, not queued.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let handshake = limits.handshake_timeout;
        let header = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%peer, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let caller = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| identify(c.as_ref()));
            // The verifier refuses a session without one; this is a second lock.
            let Some(caller) = caller else { return };
            let kill = ConnectionKill::default();
            let service = router
                .layer(axum::Extension(caller))
                .layer(axum::Extension(kill.clone()));
            let service = hyper_util::service::TowerToHyperService::new(service);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header);
            builder.http2().timer(TokioTimer::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%peer, "connection: {e}") },
                () = kill.0.notified() => tracing::info!(%peer, "connection dropped: the client fell behind"),
            }
        });
    }
}

/// Stops every live run and waits for each to end (units in flight
/// finish, `run-stopped` is recorded and a checkpoint signed).
pub(crate) async fn stop_runs(app: &App, by: &str) {
    app.begin_shutdown();
    for run in app.runs.live() {
        run.stop(by);
    }
    for run in app.runs.all() {
        let mut done = run.done.subscribe();
        while !*done.borrow_and_update() {
            if done.changed().await.is_err() {
                break;
            }
        }
    }
}
