//! `flashgate fleet serve`: the fleet collector's read API and report page
//! for the OEM's own staff, over TLS 1.3 with a client certificate on every
//! connection, the station service's pattern (`flashgate-serve`): the chain
//! is checked against the OEM's CA, then a deny-list of fingerprints
//! (re-read when its file changes), then the role in the subject's one OU:
//!
//! - `fleet-viewer`: the report, device lookups, the certificate inventory,
//!   the page;
//! - `fleet-admin`: that, and trusting another OEM key or changing when an
//!   appliance counts as silent.
//!
//! A certificate with any other OU (a station role, say) is refused in the
//! handshake. The routes are in [`api`]; docs/FLEET.md lists them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
mod page;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flashgate_fleet::Fleet;
use flashgate_serve::tls;

/// What a client certificate may do here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FleetRole {
    /// Reads everything, trusts OEM keys, changes settings.
    #[serde(rename = "fleet-admin")]
    Admin,
    /// Reads everything.
    #[serde(rename = "fleet-viewer")]
    Viewer,
}

impl FleetRole {
    /// The OU word.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "fleet-admin",
            Self::Viewer => "fleet-viewer",
        }
    }

    fn from_unit(unit: &str) -> Option<Self> {
        [Self::Admin, Self::Viewer]
            .into_iter()
            .find(|r| r.as_str() == unit)
    }

    /// Whether this role may do what `needed` may.
    #[must_use]
    pub fn covers(self, needed: FleetRole) -> bool {
        match needed {
            Self::Viewer => true,
            Self::Admin => self == Self::Admin,
        }
    }
}

/// The caller of one connection, from its client certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetCaller {
    /// The subject in RFC 4514 form.
    pub subject: String,
    /// Its CN.
    pub common_name: String,
    /// Its role.
    pub role: FleetRole,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
}

impl FleetCaller {
    /// Reads the caller from a DER client certificate (chain already
    /// checked): one CN, one OU that is a fleet role.
    #[must_use]
    pub fn from_der(der: &[u8]) -> Option<Self> {
        use flashgate_core::station_ca::{fingerprint, SubjectNames};
        let names = SubjectNames::from_der(der).ok()?;
        Some(Self {
            role: FleetRole::from_unit(&names.unit)?,
            subject: names.subject,
            common_name: names.common_name,
            fingerprint: hex::encode(fingerprint(der)),
        })
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetServeError {
    /// The TLS set-up (certificate, key, CA files).
    #[error(transparent)]
    Tls(#[from] flashgate_serve::ServeError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}; pick a free address and port")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// How the service listens and whom it trusts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetServeOptions {
    /// Address and port.
    pub listen: SocketAddr,
    /// The server's chain (PEM, leaf first).
    pub server_cert: PathBuf,
    /// Its PKCS#8 key (PEM).
    pub server_key: PathBuf,
    /// The CA (PEM) client certificates must chain to.
    pub client_ca: PathBuf,
    /// The deny-list of client certificate fingerprints, one per line
    /// (re-read when it changes; a missing file denies no one).
    pub deny_list: PathBuf,
    /// Connections and time limits.
    pub limits: flashgate_serve::ConnectionLimits,
}

impl FleetServeOptions {
    /// Defaults: 256 connections, 10 s to handshake and to send headers.
    #[must_use]
    pub fn new(
        listen: SocketAddr,
        server_cert: PathBuf,
        server_key: PathBuf,
        client_ca: PathBuf,
        deny_list: PathBuf,
    ) -> Self {
        Self {
            listen,
            server_cert,
            server_key,
            client_ca,
            deny_list,
            limits: flashgate_serve::ConnectionLimits {
                max_connections: 256,
                handshake_timeout: Duration::from_secs(10),
                header_timeout: Duration::from_secs(10),
            },
        }
    }
}

/// A bound service.
pub struct FleetService {
    fleet: Arc<Fleet>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: flashgate_serve::ConnectionLimits,
}

impl std::fmt::Debug for FleetService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetService")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl FleetService {
    /// Sets up TLS and binds the listener.
    pub async fn bind(fleet: Fleet, options: FleetServeOptions) -> Result<Self, FleetServeError> {
        let server = tls::ServerIdentity {
            chain: tls::certificates_from_pem(&options.server_cert)?,
            key: tls::private_key_from_pem(&options.server_key)?,
        };
        let roots = tls::certificates_from_pem(&options.client_ca)?;
        let deny = Arc::new(tls::DenyWatch::new(options.deny_list.clone()));
        let config = tls::server_config_for(server, &roots, deny, |der| {
            FleetCaller::from_der(der).is_some()
        })?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| FleetServeError::Listen {
                addr: options.listen,
                source,
            })?;
        Ok(Self {
            fleet: Arc::new(fleet),
            listener,
            tls: Arc::new(config),
            limits: options.limits,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        flashgate_serve::serve_tls(
            self.listener,
            self.tls,
            api::router(self.fleet),
            self.limits,
            FleetCaller::from_der,
            shutdown,
        )
        .await;
    }
}
