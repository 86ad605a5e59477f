//! TLS 1.3 with a client certificate on every connection: the chain is
//! checked by rustls's WebPKI verifier against the client CA (the station
//! CA, or a configured enterprise CA); then the certificate's fingerprint
//! is checked against the deny-list, which is re-read whenever its file
//! changes, and its role must parse. A refused certificate never gets past
//! the handshake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::Digest;

use crate::error::ServeError;
use flashgate_core::station_ca::{ClientIdentity, DenyList};

/// The deny-list, re-read when its file's modification time or length
/// changes (checked at each handshake; a stat is cheap next to one).
#[derive(Debug)]
pub struct DenyWatch {
    path: PathBuf,
    state: Mutex<DenyState>,
}

#[derive(Debug, Default)]
struct DenyState {
    stamp: Option<(SystemTime, u64)>,
    list: Option<DenyList>,
    /// The last reload error; while set, every client is refused.
    broken: bool,
}

impl DenyWatch {
    /// Watches `path` (a missing file is an empty list).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            state: Mutex::default(),
        }
    }

    /// Whether `fingerprint` is refused. A deny-list that no longer parses
    /// refuses everyone (fail closed) until it is fixed.
    pub fn denies(&self, fingerprint: &[u8; 32]) -> bool {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp != s.stamp || s.broken {
            match DenyList::load(&self.path) {
                Ok(list) => {
                    s.list = Some(list);
                    s.broken = false;
                }
                Err(e) => {
                    tracing::error!("{e}; every client is refused until the deny-list is fixed");
                    s.broken = true;
                }
            }
            s.stamp = stamp;
        }
        s.broken || s.list.as_ref().is_some_and(|l| l.contains(fingerprint))
    }
}

/// Whether a client certificate (DER; its chain already checked) names a
/// caller of the service: for the station, a parseable role.
pub type AcceptsClient = fn(&[u8]) -> bool;

/// rustls's verifier, then the deny-list and the service's own check.
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    deny: Arc<DenyWatch>,
    accepts: AcceptsClient,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let fingerprint: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if self.deny.denies(&fingerprint) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        if !(self.accepts)(end_entity.as_ref()) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server's certificate chain and key.
pub struct ServerIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its key (PKCS#8).
    pub key: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The rustls server configuration: TLS 1.3 only, a client certificate
/// from `client_ca` required, ALPN h2 and http/1.1.
pub fn server_config(
    server: ServerIdentity,
    client_ca: &[CertificateDer<'static>],
    deny: Arc<DenyWatch>,
) -> Result<rustls::ServerConfig, ServeError> {
    server_config_for(server, client_ca, deny, |der| {
        ClientIdentity::from_der(der).is_ok()
    })
}

/// [`server_config`] for another service, whose clients `accepts` admits.
pub fn server_config_for(
    server: ServerIdentity,
    client_ca: &[CertificateDer<'static>],
    deny: Arc<DenyWatch>,
    accepts: AcceptsClient,
) -> Result<rustls::ServerConfig, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in client_ca {
        roots
            .add(c.clone())
            .map_err(|e| ServeError::Tls(format!("the client CA certificate: {e}")))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ServeError::Tls(format!("the client verifier: {e}")))?;
    let verifier = Arc::new(ClientVerifier {
        inner,
        deny,
        accepts,
    });
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key.to_vec()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain, key)
        .map_err(|e| ServeError::Tls(format!("the server certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Certificates from a PEM file (a configured client CA).
pub fn certificates_from_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let text = std::fs::read(path).map_err(|source| ServeError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for p in
        pem::parse_many(&text).map_err(|e| ServeError::Tls(format!("{}: {e}", path.display())))?
    {
        if p.tag() == "CERTIFICATE" {
            out.push(CertificateDer::from(p.contents().to_vec()));
        }
    }
    if out.is_empty() {
        return Err(ServeError::Tls(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(out)
}

/// A PKCS#8 private key from a PEM file (`PRIVATE KEY`).
pub fn private_key_from_pem(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, ServeError> {
    let text = zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| ServeError::Read {
        path: path.to_owned(),
        source,
    })?);
    let block =
        pem::parse(&*text).map_err(|e| ServeError::Tls(format!("{}: {e}", path.display())))?;
    if block.tag() != "PRIVATE KEY" {
        return Err(ServeError::Tls(format!(
            "{}: expected a PKCS#8 PRIVATE KEY in PEM",
            path.display()
        )));
    }
    Ok(zeroize::Zeroizing::new(block.into_contents()))
}
