//! The offline verifier: pure, streaming, bounded in memory.
//!
//! It reads the signed checkpoints (small) first, then streams the records
//! once: each record is hashed into the Merkle tree and checked, then
//! dropped. Per-unit facts needed to find duplicates (UIDs, serials,
//! certificate hashes, as SHA-256 keys with the record's position) go
//! through an external sort ([`spill`]) that keeps a few megabytes in memory
//! and the rest in temporary run files; counter values are kept as
//! intervals. Memory therefore stays flat however many units the job has.
//!
//! Problems with the log are [`Anomaly`]s in the [`Report`]; only a bundle
//! that cannot be read at all is an [`AuditError`].

mod engine;
mod report;
mod spill;

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::bundle::{self, IndexSummary};
use crate::error::AuditError;
use crate::frame::FrameReader;
use crate::record::{Digest, JobId};
use engine::Verifier;

pub use report::{
    Anomaly, AnomalyKind, LogResetSummary, QuotaUse, Report, ResultCounts, UnitCounts, Verdict,
    VerifyOutput, MAX_LISTED_ANOMALIES, VERIFY_OUTPUT_FORMAT,
};

/// How the job numbers its units: `prefix` followed by `start + counter`
/// in decimal, zero-padded to `width` digits, for counters up to
/// `end - start` (the policy's `[serial]` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialScheme {
    /// Text before the number.
    pub prefix: String,
    /// The number of counter value 0.
    pub start: u64,
    /// The last number (inclusive).
    pub end: u64,
    /// Decimal digits.
    pub width: u8,
}

impl SerialScheme {
    /// The serial of counter value `counter`, `None` past the range.
    #[must_use]
    pub fn serial_for(&self, counter: u64) -> Option<String> {
        let number = self.start.checked_add(counter)?;
        if number > self.end {
            return None;
        }
        Some(format!(
            "{}{:0width$}",
            self.prefix,
            number,
            width = usize::from(self.width)
        ))
    }
}

/// What the OEM's signed manifest says about the job (the caller extracts
/// it after verifying the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFacts {
    /// The job.
    #[serde(with = "hex_array")]
    pub job_id: JobId,
    /// Units the job allows.
    pub quota: u64,
    /// Device types the job may program.
    pub device_types: Vec<String>,
    /// The product.
    pub product: String,
    /// The job's security version.
    pub security_version: u64,
    /// SHA-256 of the signed manifest (`manifest.cose`) as the OEM issued it.
    #[serde(with = "hex_array")]
    pub manifest_digest: Digest,
    /// Start of the job window, Unix seconds (inclusive).
    pub not_before: u64,
    /// End of the job window, Unix seconds (exclusive).
    pub not_after: u64,
    /// The serial scheme.
    pub serials: SerialScheme,
    /// The policy's lock level: `none`, `readout` or `permanent`.
    pub lock_level: String,
    /// The firmware digest a passed unit must report: SHA-256 of the
    /// concatenated images as the pipeline measures them. Known from the
    /// manifest when the job has one image (its plaintext digest); `None`
    /// otherwise, and then every passed unit must report the same digest.
    #[serde(with = "hex_option")]
    pub firmware_sha256: Option<Digest>,
}

/// Everything the verifier trusts: the pinned log key and appliance, the
/// job facts and, optionally, a signed checkpoint the OEM kept from an
/// earlier bundle.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The appliance's log public key (uncompressed SEC1), taken from its
    /// verified enrollment record.
    pub log_key: [u8; 65],
    /// The appliance id from the same record: checkpoints must have the
    /// origin `flashgate/<appliance id>`.
    pub appliance_id: String,
    /// The job.
    pub facts: JobFacts,
    /// A checkpoint kept from an earlier export: one signed checkpoint as
    /// stored, or a whole `checkpoints.log`, whose last entry is used.
    pub previous_checkpoint: Option<Vec<u8>>,
}

/// What is known of a certificate file's validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStart {
    /// Only the hash was given; the content was not checked.
    Unknown,
    /// The file is not an X.509 certificate.
    Malformed,
    /// Its notBefore, Unix seconds.
    NotBefore(i64),
}

/// One certificate file of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateFile {
    /// SHA-256 of the DER content.
    pub sha256: Digest,
    /// What its content says.
    pub start: CertificateStart,
}

impl CertificateFile {
    /// Reads a DER certificate.
    #[must_use]
    pub fn from_der(der: &[u8]) -> Self {
        use x509_cert::der::Decode;
        // Strict DER, and nothing after the certificate.
        let start = match x509_cert::Certificate::from_der(der) {
            Ok(cert) => {
                let secs = cert
                    .tbs_certificate()
                    .validity()
                    .not_before
                    .to_unix_duration()
                    .as_secs();
                i64::try_from(secs).map_or(CertificateStart::Malformed, CertificateStart::NotBefore)
            }
            Err(_) => CertificateStart::Malformed,
        };
        Self {
            sha256: Sha256::digest(der).into(),
            start,
        }
    }
}

impl From<[u8; 32]> for CertificateFile {
    fn from(sha256: [u8; 32]) -> Self {
        Self {
            sha256,
            start: CertificateStart::Unknown,
        }
    }
}

impl From<&[u8; 32]> for CertificateFile {
    fn from(sha256: &[u8; 32]) -> Self {
        (*sha256).into()
    }
}

/// The checkpoint to use from what the OEM or the CM kept: `bytes` is one
/// signed checkpoint (a tagged `COSE_Sign1`, first byte 0xD2), a cosigned
/// checkpoint (a C2SP signed note, see [`crate::cosigned`]; its appliance
/// line must be that of `log_public`), or a `checkpoints.log`
/// (`u32be length || checkpoint` entries), whose last complete entry is
/// taken. The signature is left to the caller. Fails with a sentence.
pub fn kept_checkpoint(bytes: &[u8], log_public: &[u8; 65]) -> Result<Vec<u8>, String> {
    if bytes.first() == Some(&0xD2) {
        return Ok(bytes.to_vec());
    }
    // A frame's length would need its first byte below 0x20 (under 512
    // MiB); a note opens with its origin's text.
    if bytes.first().is_some_and(|b| *b >= 0x20) {
        let note = flashgate_note::SignedNote::parse(bytes)
            .map_err(|e| format!("it is not a cosigned checkpoint: {e}"))?;
        return crate::cosigned::checkpoint_in_note(&note, log_public)
            .map_err(|e| format!("the cosigned checkpoint: {e}"));
    }
    let mut frames = FrameReader::new(bytes);
    let mut last = None;
    while let Ok(Some((_, b))) = frames.next_frame() {
        last = Some(b.to_vec());
    }
    last.ok_or_else(|| "the checkpoints.log given holds no checkpoint".to_owned())
}

/// Verifies the bundle in `dir` (see [`crate::bundle`]).
///
/// Reads `checkpoints.log`, then streams `records.log`; checks every file in
/// `certs/` and `bundle.json` against the files. Returns `Err` only when a
/// file cannot be read at all.
pub fn verify_bundle(dir: &Path, options: &VerifyOptions) -> Result<Report, AuditError> {
    let io = |name: &str| {
        let p = dir.join(name);
        move |e| AuditError::io("cannot read", &p, e)
    };
    let mut v = Verifier::new(options);
    let index = match IndexSummary::read(&dir.join(bundle::INDEX_FILE)) {
        Ok(i) => Some(i),
        Err(AuditError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e @ AuditError::Io { .. }) => return Err(e),
        Err(e) => {
            v.report.add(
                None,
                AnomalyKind::BundleIndexMismatch,
                format!("bundle.json is not a valid index: {e}"),
            );
            None
        }
    };

    // Certificates: name = SHA-256 of content; read one at a time.
    let certs_dir = dir.join(bundle::CERTS_DIR);
    if certs_dir.exists() {
        for entry in std::fs::read_dir(&certs_dir)
            .map_err(|e| AuditError::io("cannot list", &certs_dir, e))?
        {
            let path = entry
                .map_err(|e| AuditError::io("cannot list", &certs_dir, e))?
                .path();
            let der = std::fs::read(&path).map_err(|e| AuditError::io("cannot read", &path, e))?;
            let file = CertificateFile::from_der(&der);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name != format!("{}.der", hex::encode(file.sha256)) {
                v.report.add(
                    None,
                    AnomalyKind::CertificateMisnamed,
                    format!(
                        "certs/{name} holds a certificate whose SHA-256 is {}",
                        hex::encode(file.sha256)
                    ),
                );
            }
            v.certificate_file(file)
                .map_err(|e| AuditError::io("cannot sort in", &std::env::temp_dir(), e))?;
        }
    }

    let open = |name: &str| {
        let p = dir.join(name);
        std::fs::File::open(&p).map_err(|e| AuditError::io("cannot open", &p, e))
    };
    let mut cps = HashingReader::new(open(bundle::CHECKPOINTS_FILE)?);
    let checkpoint_frames = v
        .read_checkpoints(&mut cps)
        .map_err(io(bundle::CHECKPOINTS_FILE))?;
    let mut recs = HashingReader::new(open(bundle::RECORDS_FILE)?);
    v.read_records(&mut recs)
        .map_err(io(bundle::RECORDS_FILE))?;

    if let Some(index) = index {
        let mut check = |name: &str, digest: [u8; 32], len: u64| match index.files.get(name) {
            Some(f) if f.sha256 == hex::encode(digest) && f.bytes == len => {}
            Some(_) => v.report.add(
                None,
                AnomalyKind::BundleIndexMismatch,
                format!("{name} does not match the hash or size listed in bundle.json"),
            ),
            None => v.report.add(
                None,
                AnomalyKind::BundleIndexMismatch,
                format!("bundle.json does not list {name}"),
            ),
        };
        let (d, n) = cps.finish();
        check(bundle::CHECKPOINTS_FILE, d, n);
        let (d, n) = recs.finish();
        check(bundle::RECORDS_FILE, d, n);
        for name in [bundle::ENROLLMENT_FILE, bundle::MANIFEST_FILE] {
            if let Ok(b) = std::fs::read(dir.join(name)) {
                check(name, Sha256::digest(&b).into(), b.len() as u64);
            }
        }
        if hex::encode(options.facts.job_id) != index.job_id {
            v.report.add(
                None,
                AnomalyKind::BundleIndexMismatch,
                format!(
                    "bundle.json is for job {}, not {}",
                    index.job_id,
                    hex::encode(options.facts.job_id)
                ),
            );
        }
        if index.records != v.report.records {
            v.report.add(
                None,
                AnomalyKind::BundleIndexMismatch,
                format!(
                    "bundle.json counts {} records, records.log holds {}",
                    index.records, v.report.records
                ),
            );
        }
        if index.checkpoints != checkpoint_frames {
            v.report.add(
                None,
                AnomalyKind::BundleIndexMismatch,
                format!(
                    "bundle.json counts {} checkpoints, checkpoints.log holds {checkpoint_frames}",
                    index.checkpoints
                ),
            );
        }
        v.expect_certificate_list(index.certificates);
    }
    v.finish(true)
        .map_err(|e| AuditError::io("cannot sort in", &std::env::temp_dir(), e))
}

/// Verifies a bundle given as streams: `records` (the `records.log` bytes),
/// `checkpoints` (the `checkpoints.log` bytes) and, if certificates are to
/// be checked, every certificate file of the bundle (a bare SHA-256 converts
/// into a [`CertificateFile`] whose content is not checked).
///
/// Returns `Err` only when a reader, or the temporary files of the
/// duplicate search, fail.
pub fn verify_parts<R1, R2, I>(
    records: R1,
    checkpoints: R2,
    certificates: Option<I>,
    options: &VerifyOptions,
) -> Result<Report, AuditError>
where
    R1: Read,
    R2: Read,
    I: IntoIterator,
    I::Item: Into<CertificateFile>,
{
    let io = |e| AuditError::Io {
        context: "cannot read the bundle".to_owned(),
        source: e,
    };
    let mut v = Verifier::new(options);
    let with_certs = certificates.is_some();
    for c in certificates.into_iter().flatten() {
        v.certificate_file(c.into()).map_err(io)?;
    }
    v.read_checkpoints(checkpoints).map_err(io)?;
    v.read_records(records).map_err(io)?;
    v.finish(with_certs).map_err(io)
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    /// Drains the rest and returns (SHA-256, length).
    fn finish(&mut self) -> ([u8; 32], u64) {
        let mut sink = [0u8; 8192];
        while let Ok(n) = self.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        (std::mem::take(&mut self.hash).finalize().into(), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Serde helpers: fixed-size byte arrays as hex strings.
pub(crate) mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom(format!("expected {N} bytes of hex")))
    }
}

/// Serde helpers: an optional 32-byte array as a hex string or null.
pub(crate) mod hex_option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&hex::encode(v)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<[u8; 32]>, D::Error> {
        let Some(s) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("expected 32 bytes of hex"))
    }
}
