//! A client's certificate and key as the files a person hands over: PEM for
//! tools, PKCS#12 for browsers and key stores, with a fresh password.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{check_name, io_err, pem_lf, ClientIdentity, StationCa, StationCaError};

/// PBKDF2 and MAC iterations. The password is 128 random bits, so the
/// count only has to be one every importer accepts.
const ITERATIONS: u32 = 10_000;

/// A client certificate and the key it was made for.
pub struct IssuedClient {
    /// The certificate, DER.
    pub certificate_der: Vec<u8>,
    /// The client's private key, PKCS#8 DER; it exists only here and in the
    /// files [`IssuedClient::write`] makes.
    pub key_pkcs8_der: Zeroizing<Vec<u8>>,
    /// SHA-256 of the certificate DER.
    pub fingerprint: [u8; 32],
    /// What the certificate names.
    pub identity: ClientIdentity,
    /// End of validity, Unix seconds.
    pub not_after: u64,
}

impl std::fmt::Debug for IssuedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedClient")
            .field("subject", &self.identity.subject)
            .field("role", &self.identity.role)
            .field("fingerprint", &hex::encode(self.fingerprint))
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The files [`IssuedClient::write`] made.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WrittenClient {
    /// NAME.pem: the certificate.
    pub certificate: PathBuf,
    /// NAME.key.pem: the private key, PKCS#8, mode 0600.
    pub key: PathBuf,
    /// NAME.p12: certificate, key and station CA certificate, mode 0600.
    pub pkcs12: PathBuf,
    /// NAME.p12-password: the PKCS#12 password, mode 0600.
    pub password: PathBuf,
    /// station-ca.pem: the station CA certificate, to trust the station.
    pub ca_certificate: PathBuf,
}

impl IssuedClient {
    /// Writes into `dir` (created if missing): NAME.pem (certificate),
    /// NAME.key.pem (PKCS#8, mode 0600), NAME.p12 (certificate + key + the
    /// station CA certificate, password-protected, mode 0600),
    /// NAME.p12-password (mode 0600, a fresh random password of 128 bits as
    /// text) and station-ca.pem. Refuses to overwrite an existing NAME.*
    /// file, and a station-ca.pem of another CA.
    pub fn write(
        &self,
        ca: &StationCa,
        dir: &Path,
        name: &str,
    ) -> Result<WrittenClient, StationCaError> {
        check_name(name)?;
        ca.check_issued(&self.certificate_der)?;
        let written = WrittenClient {
            certificate: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key.pem")),
            pkcs12: dir.join(format!("{name}.p12")),
            password: dir.join(format!("{name}.p12-password")),
            ca_certificate: dir.join("station-ca.pem"),
        };
        for path in [
            &written.certificate,
            &written.key,
            &written.pkcs12,
            &written.password,
        ] {
            if path.symlink_metadata().is_ok() {
                return Err(StationCaError::FileExists { path: path.clone() });
            }
        }
        let ca_pem = ca.certificate_pem();
        let write_ca = match fs::read(&written.ca_certificate) {
            Ok(old) if old == ca_pem.as_bytes() => false,
            Ok(_) => {
                return Err(StationCaError::FileExists {
                    path: written.ca_certificate.clone(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_err("cannot read", &written.ca_certificate)(e)),
        };

        let mut password_bytes = Zeroizing::new([0u8; 16]);
        super::random(&mut *password_bytes)?;
        let password = Zeroizing::new(hex::encode(*password_bytes));
        let key_pem = key_pem(&self.key_pkcs8_der)?;
        let p12 = pkcs12(
            &self.certificate_der,
            &self.key_pkcs8_der,
            ca.certificate_der(),
            name,
            &password,
        )?;
        let mut password_file = Zeroizing::new(password.as_bytes().to_vec());
        password_file.push(b'\n');

        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("cannot create", dir))?;
        }
        let certificate_pem = pem_lf(&self.certificate_der, "CERTIFICATE");
        let mut files: Vec<(&Path, &[u8], u32)> = vec![
            (&written.certificate, certificate_pem.as_bytes(), 0o644),
            (&written.key, key_pem.as_bytes(), 0o600),
            (&written.pkcs12, &p12, 0o600),
            (&written.password, &password_file, 0o600),
        ];
        if write_ca {
            files.push((&written.ca_certificate, ca_pem.as_bytes(), 0o644));
        }
        let mut made: Vec<&Path> = Vec::new();
        for (path, bytes, mode) in files {
            if let Err(e) = create_new(path, bytes, mode) {
                // All or nothing, so that the same command can run again.
                for p in made {
                    let _ = fs::remove_file(p);
                }
                return Err(e);
            }
            made.push(path);
        }
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("cannot sync", dir))?;
        Ok(written)
    }
}

/// Creates `path` (never replacing a file: `O_EXCL`) with `mode` from the
/// start, writes and syncs it.
fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StationCaError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => StationCaError::FileExists {
                path: path.to_owned(),
            },
            _ => io_err("cannot create", path)(e),
        })?;
    let done = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err("cannot write", path));
    if done.is_err() {
        let _ = fs::remove_file(path);
    }
    done
}

/// The PKCS#8 key as PEM ("PRIVATE KEY"), in a zeroizing string.
fn key_pem(key_der: &[u8]) -> Result<Zeroizing<String>, StationCaError> {
    use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
    let key = p256::SecretKey::from_pkcs8_der(key_der)
        .map_err(|_| StationCaError::Pkcs12("the client key is not a P-256 PKCS#8 key".into()))?;
    key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|_| StationCaError::Pkcs12("the client key cannot be written as PEM".into()))
}

/// A PKCS#12 file (RFC 7292) holding the certificate with its key and the
/// CA certificate after it, every bag encrypted with PBES2 (PBKDF2 with
/// HMAC-SHA-256, AES-256-CBC) under `password`, with an HMAC-SHA-256 MAC:
/// what OpenSSL 3 writes by default, read without `-legacy`, and what
/// Chromium (NSS) and Firefox import.
fn pkcs12(
    certificate_der: &[u8],
    key_der: &[u8],
    ca_der: &[u8],
    friendly_name: &str,
    password: &str,
) -> Result<Vec<u8>, StationCaError> {
    use p12_keystore::{
        Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
        PrivateKeyChain,
    };
    // The library's messages name what failed, never the password.
    let fail = |e: p12_keystore::error::Error| StationCaError::Pkcs12(e.to_string());
    let key = PrivateKey::from_der(key_der).map_err(fail)?;
    let leaf = Certificate::from_der(certificate_der).map_err(fail)?;
    let ca = Certificate::from_der(ca_der).map_err(fail)?;
    // localKeyId ties the key bag to its certificate bag.
    let local_key_id = super::fingerprint(certificate_der)[..20].to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, [leaf, ca])),
    );
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(ITERATIONS)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .mac_iterations(ITERATIONS)
        .write()
        .map_err(fail)
}
