//! The collector as a witness: after a consistent ingest it cosigns the
//! appliance's stored checkpoint (c2sp.org/tlog-cosignature,
//! `cosignature/v1`, Ed25519), so that the CM holds proof of what the OEM
//! saw, and a later fork is provable by either side.
//!
//! The witness only ever cosigns the checkpoint in `logs`, which an ingest
//! stores only after a consistency proof from the one before: a witness
//! never signs two views of one log.

use std::path::{Path, PathBuf};

use flashgate_note::{Cosigner, CosignerKey, SignedNote};

use crate::ingest::IngestReport;
use crate::{Fleet, FleetError};

/// The witness's private key in its directory: PKCS#8 PEM (RFC 8410), mode 0600.
pub const KEY_FILE: &str = "witness.key.pem";
/// The verifier key in its directory, for CMs and `audit verify --witness`.
pub const VKEY_FILE: &str = "witness.vkey";
/// Instead of [`KEY_FILE`], for a key in a PKCS#11 token: one line, the
/// PKCS#11 URI of the key (its PIN comes from the URI's `pin-source`).
pub const TOKEN_KEY_FILE: &str = "witness.token";

/// Where a witness's private key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WitnessKey {
    /// [`KEY_FILE`] in the directory.
    File,
    /// In a token, at this PKCS#11 URI.
    Token(String),
}

/// A witness key loaded from its directory.
#[derive(Debug)]
pub struct Witness {
    cosigner: Cosigner,
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> FleetError {
    FleetError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> FleetError {
    FleetError::Write {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

impl Witness {
    fn refuse_existing(dir: &Path) -> Result<(), FleetError> {
        if dir.join(KEY_FILE).exists() || dir.join(TOKEN_KEY_FILE).exists() {
            return Err(FleetError::Usage(format!(
                "{} already holds a witness key; a witness keeps its key for life, so it is not replaced",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))
    }

    fn write_vkey(dir: &Path, key: &CosignerKey) -> Result<(), FleetError> {
        let vkey_path = dir.join(VKEY_FILE);
        std::fs::write(&vkey_path, format!("{}\n", key.to_vkey()))
            .map_err(|e| write_err(&vkey_path, e))
    }

    /// Records in `dir` a witness named `name` whose key was made in a
    /// token: its verifier key and the key's PKCS#11 URI.
    pub fn init_in_token(
        dir: &Path,
        name: &str,
        public: [u8; 32],
        uri: &str,
    ) -> Result<CosignerKey, FleetError> {
        Self::refuse_existing(dir)?;
        let key = CosignerKey::new(name, public)
            .map_err(|e| FleetError::Usage(format!("the witness name: {e}")))?;
        let path = dir.join(TOKEN_KEY_FILE);
        std::fs::write(&path, format!("{uri}\n")).map_err(|e| write_err(&path, e))?;
        Self::write_vkey(dir, &key)?;
        Ok(key)
    }

    /// Where the private key of the witness in `dir` is.
    pub fn key_location(dir: &Path) -> Result<WitnessKey, FleetError> {
        let token = dir.join(TOKEN_KEY_FILE);
        if token.exists() {
            let uri = std::fs::read_to_string(&token).map_err(|e| read_err(&token, e))?;
            return Ok(WitnessKey::Token(uri.trim().to_owned()));
        }
        Ok(WitnessKey::File)
    }

    /// The witness in `dir` whose private key is `signer` (a key in a
    /// token): its name from the verifier key, which must be the signer's.
    pub fn with_signer(
        dir: &Path,
        signer: Box<dyn flashgate_note::Ed25519Signer>,
    ) -> Result<Self, FleetError> {
        let (vkey_path, key) = Self::read_vkey(dir)?;
        let cosigner = Cosigner::new(key.name(), signer).map_err(|e| read_err(&vkey_path, e))?;
        if cosigner.key() != key {
            return Err(read_err(
                &vkey_path,
                "it is not the verifier key of the token's witness key",
            ));
        }
        Ok(Self { cosigner })
    }

    fn read_vkey(dir: &Path) -> Result<(PathBuf, CosignerKey), FleetError> {
        let vkey_path = dir.join(VKEY_FILE);
        let vkey = std::fs::read_to_string(&vkey_path).map_err(|e| read_err(&vkey_path, e))?;
        let key = CosignerKey::parse_vkey(&vkey).map_err(|e| read_err(&vkey_path, e))?;
        Ok((vkey_path, key))
    }

    /// Creates a witness key named `name` in `dir` (which must not hold one).
    pub fn init(dir: &Path, name: &str) -> Result<CosignerKey, FleetError> {
        Self::refuse_existing(dir)?;
        let key_path = dir.join(KEY_FILE);
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice())
            .map_err(|e| FleetError::Usage(format!("the system's random source failed: {e}")))?;
        let pem = Cosigner::new_key_pem(&seed).map_err(|e| FleetError::Usage(e.to_string()))?;
        let key = Cosigner::from_pkcs8_pem(name, &pem)
            .map_err(|e| FleetError::Usage(format!("the witness name: {e}")))?
            .key();
        write_private(&key_path, pem.as_bytes())?;
        Self::write_vkey(dir, &key)?;
        Ok(key)
    }

    /// Loads the witness in `dir` whose key is [`KEY_FILE`]: its name from
    /// the verifier key, which must be the private key's.
    pub fn load(dir: &Path) -> Result<Self, FleetError> {
        let (vkey_path, key) = Self::read_vkey(dir)?;
        let key_path = dir.join(KEY_FILE);
        let pem = zeroize::Zeroizing::new(
            std::fs::read_to_string(&key_path).map_err(|e| read_err(&key_path, e))?,
        );
        let cosigner =
            Cosigner::from_pkcs8_pem(key.name(), &pem).map_err(|e| read_err(&key_path, e))?;
        if cosigner.key() != key {
            return Err(read_err(
                &key_path,
                format!("it is not the private key of {}", vkey_path.display()),
            ));
        }
        Ok(Self { cosigner })
    }

    /// The verifier key.
    #[must_use]
    pub fn key(&self) -> CosignerKey {
        self.cosigner.key()
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| write_err(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| write_err(path, e))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    std::fs::write(path, bytes).map_err(|e| write_err(path, e))
}

/// A cosigned checkpoint, as written for the CM.
#[derive(Debug, Clone)]
pub struct Cosigned {
    /// The appliance.
    pub appliance_id: String,
    /// The checkpoint's tree size.
    pub size: u64,
    /// The note: the checkpoint text, the appliance's line, the witness's.
    pub note: String,
}

impl Cosigned {
    /// Where [`Cosigned::write_to`] puts it: `<dir>/<appliance>.checkpoint`.
    #[must_use]
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.checkpoint", self.appliance_id))
    }

    /// Writes the note to [`Cosigned::path_in`] `dir` (replaced whole).
    pub fn write_to(&self, dir: &Path) -> Result<PathBuf, FleetError> {
        std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
        let path = self.path_in(dir);
        let tmp = path.with_extension("checkpoint.tmp");
        std::fs::write(&tmp, &self.note)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| write_err(&path, e))?;
        Ok(path)
    }
}

impl Fleet {
    /// Cosigns the checkpoint stored for the log of `report` (an ingest that
    /// found the log consistent: merged, flagged or already ingested), at
    /// `now` (Unix seconds). The same checkpoint is cosigned once per
    /// witness: later calls return the stored note. `None` when the ingest
    /// stored nothing to cosign.
    pub async fn cosign(
        &self,
        report: &IngestReport,
        witness: &Witness,
        now: u64,
    ) -> Result<Option<Cosigned>, FleetError> {
        let Some(log_id) = report.log_id else {
            return Ok(None);
        };
        let row = self
            .client
            .query_one(
                "SELECT size, checkpoint FROM logs WHERE log_id = $1",
                &[&log_id],
            )
            .await?;
        let size: i64 = row.get(0);
        let Some(cose): Option<Vec<u8>> = row.get(1) else {
            return Ok(None);
        };
        let size = u64::try_from(size)
            .map_err(|_| FleetError::Inconsistent(format!("log {log_id} has size {size}")))?;
        let vkey = witness.key().to_vkey();
        let found = self
            .client
            .query_opt(
                "SELECT note FROM cosignatures WHERE log_id = $1 AND size = $2 AND witness = $3",
                &[&log_id, &crate::to_i64(size)?, &vkey],
            )
            .await?;
        let note: String = if let Some(r) = found {
            r.get(0)
        } else {
            let mut note = flashgate_audit::cosigned::checkpoint_note(&cose, &report.log_key)
                .map_err(|e| FleetError::Inconsistent(format!("the stored checkpoint: {e}")))?;
            witness
                .cosigner
                .cosign(&mut note, now)
                .map_err(|e| FleetError::Usage(format!("cosigning failed: {e}")))?;
            let text = note.to_text();
            let at_ms = crate::to_i64(now.saturating_mul(1000))?;
            self.client
                .execute(
                    "INSERT INTO cosignatures (log_id, size, witness, note, at_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[&log_id, &crate::to_i64(size)?, &vkey, &text, &at_ms],
                )
                .await?;
            // A concurrent ingest may have cosigned first: its note counts.
            self.client
                .query_one(
                    "SELECT note FROM cosignatures WHERE log_id = $1 AND size = $2 AND witness = $3",
                    &[&log_id, &crate::to_i64(size)?, &vkey],
                )
                .await?
                .get(0)
        };
        // What is stored must still be a note over this checkpoint.
        let parsed = SignedNote::parse(note.as_bytes())
            .map_err(|e| FleetError::Inconsistent(format!("a stored cosignature: {e}")))?;
        flashgate_audit::cosigned::checkpoint_in_note(&parsed, &report.log_key)
            .map_err(|e| FleetError::Inconsistent(format!("a stored cosignature: {e}")))?;
        Ok(Some(Cosigned {
            appliance_id: report.appliance_id.clone(),
            size,
            note,
        }))
    }
}
