//! The OEM side: its job-signing key and device-root CA, kept either in key
//! files (development) or in the OEM's own PKCS#11 token (production).
//!
//! `oem init` writes a directory with `oem.toml` naming where each key is:
//! ```toml
//! name = "Acme Corp"
//! signing_key = "signing-key.pem"          # or a pkcs11: URI
//! root_key = "root-key.pem"                # or a pkcs11: URI
//! root_cert = "root-cert.pem"
//! ```

pub mod build;
pub mod certs;
pub mod job;
pub mod pkcs11_uri;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::cose::{self, Es256Signer, SignerError};
use crate::hsm::{HsmError, KeyUse, Token, TokenKey};
pub use pkcs11_uri::Pkcs11Uri;

/// Label of the OEM signing key in an OEM token.
pub const SIGNING_KEY_LABEL: &str = "flashgate-oem-signing";
/// Label of the OEM device-root key in an OEM token.
pub const ROOT_KEY_LABEL: &str = "flashgate-oem-root";

/// Errors on the OEM side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OemError {
    /// File I/O.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `oem.toml` is wrong.
    #[error("{path}: {detail}")]
    Config { path: PathBuf, detail: String },
    /// A key file is not a P-256 PKCS#8 key.
    #[error("{path} is not a P-256 private key in PKCS#8 PEM form")]
    BadKeyFile { path: PathBuf },
    /// The URI is wrong.
    #[error(transparent)]
    Uri(#[from] pkcs11_uri::UriError),
    /// The OEM token failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// No key with that label in the OEM token.
    #[error(
        "the OEM token has no key labelled '{label}'; run `flashgate oem init` with this URI first"
    )]
    KeyNotFound { label: String },
    /// Refusing to overwrite.
    #[error(
        "{path} already exists; refusing to overwrite OEM keys (choose another --out directory)"
    )]
    Exists { path: PathBuf },
    /// Certificate generation failed.
    #[error("cannot issue a certificate: {0}")]
    Certificate(String),
    /// The OEM root would expire before the job's device certificates.
    #[error("the OEM root certificate is valid only until {root_not_after}, but device certificates of this job may be valid until {device_not_after}; shorten the policy's certificate validity, or make a new OEM root with `flashgate oem init` (new roots never expire)")]
    RootExpiresFirst {
        root_not_after: String,
        device_not_after: String,
    },
    /// Signing failed.
    #[error(transparent)]
    Signer(#[from] SignerError),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OemError + 'a {
    move |source| OemError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// `oem.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OemConfig {
    /// Organisation name used in certificates.
    pub name: String,
    /// Key file path (relative to the directory) or `pkcs11:` URI.
    pub signing_key: String,
    /// Key file path or `pkcs11:` URI.
    pub root_key: String,
    /// Root certificate (PEM), relative to the directory.
    pub root_cert: String,
}

/// A loaded signing key.
pub enum OemSigner {
    /// A key file.
    File(p256::ecdsa::SigningKey),
    /// A key in a PKCS#11 token (shared by the keys that live in it).
    Token(TokenKey<std::rc::Rc<Token>>),
}

impl std::fmt::Debug for OemSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        let kind = match self {
            Self::File(_) => "File",
            Self::Token(_) => "Token",
        };
        write!(f, "OemSigner::{kind}(kid {})", hex::encode(self.key_id()))
    }
}

impl cose::Keypair for OemSigner {
    type VerifyingKey = cose::VerifyingKey;
    fn verifying_key(&self) -> cose::VerifyingKey {
        match self {
            Self::File(key) => *key.verifying_key(),
            Self::Token(key) => key.verifying_key(),
        }
    }
}

impl cose::PrehashSigner<cose::Signature> for OemSigner {
    fn sign_prehash(&self, prehash: &[u8]) -> Result<cose::Signature, cose::SignatureError> {
        match self {
            Self::File(key) => key.sign_prehash(prehash),
            Self::Token(key) => key.sign_prehash(prehash),
        }
    }
}

/// Loads a signer from a key file path or a `pkcs11:` URI.
pub fn load_signer(reference: &str, base: &Path) -> Result<OemSigner, OemError> {
    load_signer_with(reference, base, &mut Vec::new())
}

/// Open tokens, so that two keys in one token share one module load (a
/// PKCS#11 module is initialised once per process).
type TokenCache = Vec<(crate::hsm::TokenConfig, std::rc::Rc<Token>)>;

fn open_cached(
    cache: &mut TokenCache,
    config: crate::hsm::TokenConfig,
) -> Result<std::rc::Rc<Token>, OemError> {
    if let Some((_, t)) = cache.iter().find(|(c, _)| *c == config) {
        return Ok(t.clone());
    }
    let t = std::rc::Rc::new(Token::open(&config)?);
    cache.push((config, t.clone()));
    Ok(t)
}

fn load_signer_with(
    reference: &str,
    base: &Path,
    cache: &mut TokenCache,
) -> Result<OemSigner, OemError> {
    if reference.starts_with("pkcs11:") {
        let uri = Pkcs11Uri::parse(reference)?;
        let label = uri.object.clone().ok_or_else(|| OemError::Config {
            path: base.to_owned(),
            detail: format!("the URI '{reference}' names no object="),
        })?;
        let token = open_cached(cache, uri.token_config())?;
        let handles = token.find_by_label(&label)?;
        let mut private = None;
        let mut public = None;
        for h in handles {
            match token.object_class(h)? {
                c if c == cryptoki::object::ObjectClass::PRIVATE_KEY => private = Some(h),
                c if c == cryptoki::object::ObjectClass::PUBLIC_KEY => {
                    public = Some(token.ec_point(h)?)
                }
                _ => {}
            }
        }
        let (Some(key), Some(public)) = (private, public) else {
            return Err(OemError::KeyNotFound { label });
        };
        Ok(OemSigner::Token(TokenKey::new(token, key, &public)?))
    } else {
        let path = base.join(reference);
        let pem = Zeroizing::new(fs::read_to_string(&path).map_err(io("cannot read", &path))?);
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
            .map_err(|_| OemError::BadKeyFile { path: path.clone() })?;
        Ok(OemSigner::File(key))
    }
}

/// The OEM's loaded material.
#[derive(Debug)]
pub struct Oem {
    /// `oem.toml`.
    pub config: OemConfig,
    /// Job-signing key.
    pub signing: OemSigner,
    /// Device-root CA key.
    pub root: OemSigner,
    /// Device-root certificate (DER).
    pub root_cert_der: Vec<u8>,
}

impl Oem {
    /// Loads `dir/oem.toml` and the keys it names.
    pub fn load(dir: &Path) -> Result<Self, OemError> {
        let path = dir.join("oem.toml");
        let text = fs::read_to_string(&path).map_err(io("cannot read", &path))?;
        let config: OemConfig = toml::from_str(&text).map_err(|e| OemError::Config {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let mut cache = TokenCache::new();
        let signing = load_signer_with(&config.signing_key, dir, &mut cache)?;
        let root = load_signer_with(&config.root_key, dir, &mut cache)?;
        let cert_path = dir.join(&config.root_cert);
        let pem_text = fs::read_to_string(&cert_path).map_err(io("cannot read", &cert_path))?;
        let root_cert_der =
            crate::x509::pem_to_der(&pem_text, "CERTIFICATE").ok_or_else(|| OemError::Config {
                path: cert_path.clone(),
                detail: "not a PEM certificate".to_owned(),
            })?;
        Ok(Self {
            config,
            signing,
            root,
            root_cert_der,
        })
    }
}

/// Where `oem init` puts the keys.
#[derive(Debug, Clone)]
pub enum KeyStore {
    /// Key files in the output directory (development).
    Files,
    /// The OEM's PKCS#11 token.
    Token(Pkcs11Uri),
}

/// Creates the OEM signing key and device-root CA in `dir`.
pub fn init(dir: &Path, name: &str, store: &KeyStore, now: u64) -> Result<OemConfig, OemError> {
    let config_path = dir.join("oem.toml");
    if config_path.exists() {
        return Err(OemError::Exists { path: config_path });
    }
    fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let mut cache = TokenCache::new();
    let (signing_ref, root_ref) = match store {
        KeyStore::Files => {
            write_new_key(&dir.join("signing-key.pem"))?;
            write_new_key(&dir.join("root-key.pem"))?;
            ("signing-key.pem".to_owned(), "root-key.pem".to_owned())
        }
        KeyStore::Token(uri) => {
            let token = open_cached(&mut cache, uri.token_config())?;
            for label in [SIGNING_KEY_LABEL, ROOT_KEY_LABEL] {
                if !token.find_by_label(label)?.is_empty() {
                    return Err(OemError::Exists {
                        path: PathBuf::from(format!("{}", uri.with_object(label))),
                    });
                }
                token.generate_p256(label, label.as_bytes(), KeyUse::EcSign)?;
            }
            (
                uri.with_object(SIGNING_KEY_LABEL).to_string(),
                uri.with_object(ROOT_KEY_LABEL).to_string(),
            )
        }
    };
    let root = load_signer_with(&root_ref, dir, &mut cache)?;
    let cert = certs::oem_root_certificate(&root, name, now)?;
    write_file(
        &dir.join("root-cert.pem"),
        crate::x509::der_to_pem(&cert, "CERTIFICATE").as_bytes(),
        0o644,
    )?;
    let signing = load_signer_with(&signing_ref, dir, &mut cache)?;
    let spki = p256::PublicKey::from_sec1_bytes(&signing.public_key())
        .ok()
        .and_then(|k| k.to_public_key_pem(p256::pkcs8::LineEnding::LF).ok())
        .ok_or_else(|| OemError::Certificate("cannot encode the signing public key".to_owned()))?;
    write_file(&dir.join("signing-key.pub.pem"), spki.as_bytes(), 0o644)?;
    let config = OemConfig {
        name: name.to_owned(),
        signing_key: signing_ref,
        root_key: root_ref,
        root_cert: "root-cert.pem".to_owned(),
    };
    let text = toml::to_string(&config).map_err(|e| OemError::Certificate(e.to_string()))?;
    write_file(&config_path, text.as_bytes(), 0o644)?;
    Ok(config)
}

fn write_new_key(path: &Path) -> Result<(), OemError> {
    let sk = cose::random_secret_key().map_err(|e| OemError::Certificate(e.to_string()))?;
    let pem = sk
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| OemError::Certificate(e.to_string()))?;
    write_file(path, pem.as_bytes(), 0o600)
}

/// Writes a new file with the given mode, refusing to overwrite.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), OemError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                OemError::Exists {
                    path: path.to_owned(),
                }
            } else {
                OemError::Io {
                    action: "cannot create",
                    path: path.to_owned(),
                    source: e,
                }
            }
        })?;
    f.write_all(bytes).map_err(io("cannot write", path))?;
    f.sync_all().map_err(io("cannot sync", path))
}

/// Reads an OEM signing public key (SPKI PEM) as a SEC1 point.
pub fn read_public_key_pem(path: &Path) -> Result<[u8; 65], OemError> {
    let text = fs::read_to_string(path).map_err(io("cannot read", path))?;
    crate::x509::public_key_from_pem(&text).ok_or_else(|| OemError::Config {
        path: path.to_owned(),
        detail: "not a P-256 public key in PEM (SubjectPublicKeyInfo) form".to_owned(),
    })
}
