#![forbid(unsafe_code)]
//! `flashgate serve`: the station as a network service. One process owns
//! the appliance (the writer lock, the HSM PIN) and serves, over TLS 1.3
//! with a client certificate on every connection:
//!
//! - the `/api/v1` JSON API for line software and the MES, described by the
//!   OpenAPI 3.1 document at `/api/v1/openapi.json` (docs/API.md);
//! - each run's events as Server-Sent Events;
//! - Prometheus metrics at `/metrics`;
//! - the operator console at `/`, its assets inside the binary.
//!
//! What a caller may do follows from the role its certificate carries
//! ([`endpoints::ENDPOINTS`]); who it is goes into the audit log and the
//! station journal, taken from the TLS session, never from a request.

mod api;
mod app;
mod caller;
mod console;
pub mod endpoints;
mod error;
mod event_segment;
mod fixtures;
pub mod metrics;
mod openapi;
pub mod priority;
mod runs;
mod server;
pub mod tls;
mod unit_index;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flashgate_core::station::Station;

pub use error::{ApiError, ServeError};
pub use openapi::document as openapi_document;
pub use server::{serve_tls, ConnectionKill, ConnectionLimits};

/// How the service listens.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Address and port.
    pub listen: SocketAddr,
    /// The largest request body (a job package upload), in bytes; larger
    /// ones get 413.
    pub max_body: usize,
    /// How long a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// The server's certificate.
    pub server_cert: ServerCert,
    /// Whose client certificates are accepted.
    pub client_trust: ClientTrust,
    /// Where runs are started from, when the serving threads run at a lower
    /// priority ([`priority::runtime`]); `None` starts them on the thread
    /// that handles the request.
    pub launcher: Option<priority::Launcher>,
}

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerCert {
    /// A key made at start-up, in memory only, certified by the station CA
    /// for these names (IP addresses or DNS names) for `days`.
    StationCa {
        /// The names clients reach the station by.
        names: Vec<String>,
        /// Validity of the certificate (re-issued at every start).
        days: u32,
    },
    /// Files: a chain (PEM, leaf first) and its PKCS#8 key (PEM).
    Files {
        /// The chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
}

/// The CA client certificates must chain to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientTrust {
    /// The station CA (`flashgate appliance ca init`).
    StationCa,
    /// An enterprise CA (PEM, one or more certificates). The role is read
    /// from the certificate's subject OU just the same.
    File(PathBuf),
}

impl ServeOptions {
    /// Defaults: the station CA for both sides (the server certificate
    /// names the listen address and `localhost`, valid 30 days), 16 MiB
    /// bodies, 10 s to handshake and to send headers, 4096 connections.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_body: 16 << 20,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            server_cert: ServerCert::StationCa {
                names: vec![listen.ip().to_string(), "localhost".to_owned()],
                days: 30,
            },
            client_trust: ClientTrust::StationCa,
            launcher: None,
        }
    }
}

/// A bound service, ready to run.
pub struct Service {
    app: Arc<app::App>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// How the service ended.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Runs that were live and were stopped.
    pub runs_stopped: usize,
}

impl Service {
    /// Binds the listener and sets up TLS over an open station (opened
    /// with the writer lock: the service is the appliance's one writer).
    pub async fn bind(station: Station, options: ServeOptions) -> Result<Self, ServeError> {
        let station = Arc::new(station);
        let deny = Arc::new(tls::DenyWatch::new(
            app::station_dir(&station).join("revoked"),
        ));
        let tls = tls_config(&station, &options, deny)?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: options.listen,
                source,
            })?;
        Ok(Self {
            app: Arc::new(app::App::new(station, options)),
            listener,
            tls: Arc::new(tls),
        })
    }

    /// Where it listens (the port, when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` completes; then stops every live run, waits
    /// for its units in flight, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> ShutdownReport {
        let app = self.app.clone();
        server::accept_loop(app.clone(), self.listener, self.tls, shutdown).await;
        let live = app.runs.live().len();
        server::stop_runs(&app, "the station service shut down").await;
        ShutdownReport { runs_stopped: live }
    }
}

fn tls_config(
    station: &Station,
    options: &ServeOptions,
    deny: Arc<tls::DenyWatch>,
) -> Result<rustls::ServerConfig, ServeError> {
    use rustls::pki_types::CertificateDer;
    // Loaded only when one side needs it: an enterprise set-up may have none.
    let needs_ca = matches!(options.server_cert, ServerCert::StationCa { .. })
        || matches!(options.client_trust, ClientTrust::StationCa);
    let ca = if needs_ca {
        Some(station.station_ca()?)
    } else {
        None
    };
    let server = match (&options.server_cert, &ca) {
        (ServerCert::Files { cert, key }, _) => tls::ServerIdentity {
            chain: tls::certificates_from_pem(cert)?,
            key: tls::private_key_from_pem(key)?,
        },
        (ServerCert::StationCa { names, days }, Some(ca)) => {
            let (key, public) =
                flashgate_core::station_ca::new_key().map_err(|e| ServeError::Station(e.into()))?;
            let leaf = ca
                .issue_server(names, &public, *days)
                .map_err(|e| ServeError::Station(e.into()))?;
            tls::ServerIdentity {
                chain: vec![
                    CertificateDer::from(leaf),
                    CertificateDer::from(ca.certificate_der().to_vec()),
                ],
                key,
            }
        }
        (ServerCert::StationCa { .. }, None) => {
            return Err(ServeError::Tls("no station CA".to_owned()))
        }
    };
    let roots = match (&options.client_trust, &ca) {
        (ClientTrust::File(path), _) => tls::certificates_from_pem(path)?,
        (ClientTrust::StationCa, Some(ca)) => {
            vec![CertificateDer::from(ca.certificate_der().to_vec())]
        }
        (ClientTrust::StationCa, None) => return Err(ServeError::Tls("no station CA".to_owned())),
    };
    tls::server_config(server, &roots, deny)
}
