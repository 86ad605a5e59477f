//! `job import`: verify a package and move its secrets into the token.
//! Any failure leaves nothing behind: keys created so far are destroyed and
//! no file is written. The commit point is the `fg-imported:<id>` marker,
//! created last; [`Appliance::recover`] undoes an import a crash interrupted.

use std::fs;
use std::path::{Path, PathBuf};

use cryptoki::object::ObjectHandle;
use flashgate_policy::{Policy, PolicyError};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{
    io_err, write_atomic, Appliance, ApplianceError, IMPORTED_PREFIX, JOB_KEY_PREFIX, SVN_PREFIX,
};
use crate::cose::{self, ALG_A256KWP_CONTENT};
use crate::hsm::{EcdhKdf, HsmError, KeyUse, OaepHash, Profile, Token, TransportRole};
use crate::package::encrypt::{
    recipient_alg, AnyRecipient, EncryptObject, KdfInput, RecipientContext, ALG_A256GCM,
    ALG_SECRET_IN_RECIPIENT,
};
use crate::package::{
    chunk_external_aad, chunk_nonce, Manifest, PackageError, SignedPackage, UnverifiedPackage,
};

/// Why an import was refused. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The package itself is bad.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The signed policy does not parse (an OEM tooling bug or version skew).
    #[error("the job's policy is invalid: {0}")]
    Policy(#[from] PolicyError),
    /// Built for another appliance.
    #[error("this job was built for appliance {job_for}, but this is appliance {this}; ask the OEM to build it for {this}")]
    WrongAppliance { job_for: String, this: String },
    /// Built from another enrollment record of this appliance.
    #[error("this job was built from a different enrollment record than the one this appliance holds; ask the OEM to build it from the current record")]
    WrongEnrollment,
    /// Not valid yet.
    #[error("this job is not valid until {not_before} (Unix time {0}); check the appliance clock or wait", not_before = crate::display::time(*.0))]
    NotYetValid(u64),
    /// Expired.
    #[error("this job expired at {not_after} (Unix time {0}); ask the OEM for a new job", not_after = crate::display::time(*.0))]
    Expired(u64),
    /// Security version lower than one already imported.
    #[error("this job has security version {svn} for product '{product}', but version {floor} was already imported; older firmware is refused (anti-rollback)")]
    Rollback {
        product: String,
        svn: u32,
        floor: u32,
    },
    /// The same job again.
    #[error("job {id} was already imported on this appliance (a job can be imported only once, even after removal)")]
    AlreadyImported { id: String },
    /// Unwrapping failed: wrong appliance key or altered wrapped key.
    #[error("this package was not made for this appliance, or was altered ({what} could not be unwrapped); ask the OEM for a fresh package built for this appliance")]
    NotForThisAppliance { what: String },
    /// Decryption failed.
    #[error(
        "this package was altered: {what} failed its integrity check; ask the OEM for a fresh copy"
    )]
    Altered { what: String },
    /// The decrypted firmware is not what the manifest says.
    #[error("the decrypted image {index} does not match its signed digest; the package was altered or built wrongly")]
    ImageDigest { index: usize },
    /// Token failure.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// Appliance state failure.
    #[error(transparent)]
    Appliance(#[from] ApplianceError),
    /// File could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A decrypted image: its target address and its bytes, in zeroizing memory.
pub type PlainImage = (u32, Zeroizing<Vec<u8>>);

/// A job that has been imported (its package re-verified from disk).
#[derive(Debug)]
///
/// Only made by verifying a package: at import, or by
/// [`ImportedJob::load`] from the job's directory.
pub struct ImportedJob {
    manifest: Manifest,
    policy: Policy,
    package_path: PathBuf,
    imported_at: u64,
}

impl ImportedJob {
    /// The verified manifest.
    #[must_use]
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The job's policy, parsed from the verified manifest.
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Where the package is kept.
    #[must_use]
    pub fn package_path(&self) -> &Path {
        &self.package_path
    }

    /// When it was imported (the package file's modification time, Unix
    /// seconds).
    #[must_use]
    pub fn imported_at(&self) -> u64 {
        self.imported_at
    }

    /// Loads and re-verifies a job directory.
    pub fn load(dir: &Path, trusted: &[[u8; 65]]) -> Result<Self, ImportError> {
        let package_path = dir.join("package.fgj");
        let bytes = fs::read(&package_path).map_err(|source| ImportError::Read {
            path: package_path.clone(),
            source,
        })?;
        let signed = UnverifiedPackage::parse(&bytes)?.verify(trusted)?;
        let policy = Policy::from_toml_str(&signed.manifest().policy_toml)?;
        let imported_at = fs::metadata(&package_path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            manifest: signed.into_manifest(),
            policy,
            package_path,
            imported_at,
        })
    }
}

/// Destroys the objects it holds unless disarmed.
struct Created<'t> {
    token: &'t Token,
    handles: Vec<ObjectHandle>,
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        for h in self.handles.drain(..) {
            let _ = self.token.destroy(h);
        }
    }
}

/// Label of a job key.
pub(crate) fn job_key_label(id: &str, name: &str) -> String {
    format!("{JOB_KEY_PREFIX}{id}:{name}")
}

impl Appliance {
    /// Imports a package file. Returns the imported job.
    pub fn import(&self, path: &Path) -> Result<ImportedJob, ImportError> {
        self.recover()?;
        let bytes = fs::read(path).map_err(|source| ImportError::Read {
            path: path.to_owned(),
            source,
        })?;
        let signed = UnverifiedPackage::parse(&bytes)?.verify(&self.config.trust.keys)?;
        let policy = Policy::from_toml_str(&signed.manifest().policy_toml)?;
        let m = &signed.manifest();
        let id = m.job_id_hex();

        // Binding, validity, anti-rollback, replay.
        let enrollment = self.enrollment()?;
        if m.appliance_id != enrollment.record().appliance_id
            || m.recipient_kid != enrollment.record().ka_kid()
        {
            return Err(ImportError::WrongAppliance {
                job_for: m.appliance_id.clone(),
                this: enrollment.record().appliance_id.clone(),
            });
        }
        if m.enrollment_digest != *enrollment.digest() {
            return Err(ImportError::WrongEnrollment);
        }
        let now = self.now();
        let job = policy.job();
        if now < job.not_before {
            return Err(ImportError::NotYetValid(job.not_before));
        }
        if now >= job.not_after {
            return Err(ImportError::Expired(job.not_after));
        }
        let floor = self.svn_floor(job.product.as_str())?;
        if job.security_version < floor {
            return Err(ImportError::Rollback {
                product: job.product.as_str().to_owned(),
                svn: job.security_version,
                floor,
            });
        }
        if !self
            .token
            .find_by_label(&format!("{IMPORTED_PREFIX}{id}"))?
            .is_empty()
        {
            return Err(ImportError::AlreadyImported { id });
        }
        self.token.require(m.profile)?;

        // Secrets into the token.
        let opener = match m.profile.oaep_hash() {
            None => Opener::Ecdh {
                ka: self.ka_private()?,
                ctx: RecipientContext {
                    profile: m.profile,
                    job_id: &m.job_id,
                    kid: &m.recipient_kid,
                },
            },
            Some(hash) => Opener::Oaep {
                hash,
                profile: m.profile,
                keys: self.transport_keys(enrollment.record())?,
            },
        };
        let mut created = Created {
            token: &self.token,
            handles: Vec::new(),
        };
        let master = opener.open_secret(
            &self.token,
            signed.device_master(),
            "device-master key",
            KeyUse::HmacSign,
            (&job_key_label(&id, "master"), &m.job_id),
        )?;
        created.handles.push(master);
        let ca = opener.open_secret(
            &self.token,
            signed.job_ca_key(),
            "job CA key",
            KeyUse::EcSign,
            (&job_key_label(&id, "ca"), &m.job_id),
        )?;
        created.handles.push(ca);
        check_ca_key_matches_certificate(&self.token, ca, &m.job_ca_cert)?;
        for i in 0..signed.images().len() {
            let cek = opener.open_image_key(
                &self.token,
                &signed,
                i,
                (&job_key_label(&id, &format!("image{i}")), &m.job_id),
            )?;
            created.handles.push(cek);
            // Decrypt only to check the digest; the plaintext is dropped (and zeroized) per chunk.
            let digest = decrypt_image(&self.token, cek, &signed, i, |_| {})?;
            if digest != m.images[i].digest {
                return Err(ImportError::ImageDigest { index: i + 1 });
            }
        }

        // Keep the package as received, then commit.
        let dir = self.job_dir(&id);
        fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        let result = (|| -> Result<(), ImportError> {
            write_atomic(&dir.join("package.fgj"), &bytes)?;
            // The new floor names the job that raised it, so a crash before
            // the commit marker can be undone by `recover`; older floors go
            // only after the commit.
            let svn_label = format!("{SVN_PREFIX}{}", job.product.as_str());
            let old = self.token.find_by_label(&svn_label)?;
            let mut value = job.security_version.to_be_bytes().to_vec();
            value.extend_from_slice(&m.job_id);
            let new_floor = self.token.create_data(&svn_label, &value)?;
            let record = cose::encode(&ciborium::value::Value::Integer(now.into()));
            if let Err(e) = self
                .token
                .create_data(&format!("{IMPORTED_PREFIX}{id}"), &record)
            {
                let _ = self.token.destroy(new_floor);
                return Err(e.into());
            }
            for h in old {
                let _ = self.token.destroy(h);
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        created.handles.clear();
        self.audit_import(m, &policy, signed.manifest_sign1())?;
        Ok(ImportedJob {
            manifest: signed.into_manifest(),
            policy,
            package_path: dir.join("package.fgj"),
            imported_at: now,
        })
    }
}

/// The unwrapped job CA key must be the key the job CA certificate names:
/// sign a fresh digest in the token and verify it with the certificate.
fn check_ca_key_matches_certificate(
    token: &Token,
    ca: ObjectHandle,
    cert_der: &[u8],
) -> Result<(), ImportError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let mismatch = || ImportError::Altered {
        what: "the job CA certificate (it does not match the job CA key)".to_owned(),
    };
    let public = crate::x509::certificate_public_key(cert_der).ok_or_else(mismatch)?;
    let mut digest = [0u8; 32];
    token.random(&mut digest)?;
    let sig = token.sign_prehash(ca, &digest)?;
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&public).map_err(|_| mismatch())?;
    let sig = p256::ecdsa::Signature::from_slice(&sig).map_err(|_| mismatch())?;
    vk.verify_prehash(&digest, &sig).map_err(|_| mismatch())
}

/// How this import opens recipients: ECDH with the key-agreement key, or
/// RSA-OAEP with the transport key of each role.
enum Opener<'m> {
    Ecdh {
        ka: ObjectHandle,
        ctx: RecipientContext<'m>,
    },
    Oaep {
        hash: OaepHash,
        profile: Profile,
        keys: Vec<(TransportRole, ObjectHandle, [u8; 16])>,
    },
}

fn role_of(usage: KeyUse) -> TransportRole {
    match usage {
        KeyUse::HmacSign => TransportRole::Master,
        KeyUse::EcSign => TransportRole::Ca,
        KeyUse::AesDecrypt | KeyUse::AesUnwrap => TransportRole::Image,
    }
}

impl Opener<'_> {
    /// The transport key of `role` for an RSA-OAEP recipient, after checking
    /// the recipient's header and kid against the profile and the record.
    fn oaep_key<'r>(
        &self,
        role: TransportRole,
        obj: &'r EncryptObject,
        what: &str,
    ) -> Result<(ObjectHandle, OaepHash, &'r [u8]), ImportError> {
        let not_for_us = || ImportError::NotForThisAppliance {
            what: what.to_owned(),
        };
        let Self::Oaep {
            hash,
            profile,
            keys,
        } = self
        else {
            return Err(not_for_us());
        };
        let AnyRecipient::Oaep(r) = &obj.recipient else {
            return Err(not_for_us());
        };
        let (_, handle, kid) = keys
            .iter()
            .find(|(k, _, _)| *k == role)
            .ok_or_else(not_for_us)?;
        if r.protected != cose::recipient_protected(recipient_alg(*profile)) || r.kid != *kid {
            return Err(not_for_us());
        }
        Ok((*handle, *hash, &r.encrypted_key))
    }

    /// Unwraps a secret `COSE_Encrypt` into a token object.
    fn open_secret(
        &self,
        token: &Token,
        bytes: &[u8],
        what: &'static str,
        usage: KeyUse,
        persist: (&str, &[u8]),
    ) -> Result<ObjectHandle, ImportError> {
        let obj = EncryptObject::parse(bytes, what)?;
        match self {
            Self::Ecdh { ka, ctx } => {
                open_secret_ecdh(token, *ka, *ctx, &obj, what, usage, persist)
            }
            Self::Oaep { profile, .. } => {
                if obj.alg != ALG_SECRET_IN_RECIPIENT
                    || obj.iv.is_some()
                    || obj.ciphertext.as_deref() != Some(&[][..])
                {
                    return Err(PackageError::Malformed {
                        detail: format!(
                            "the {what} uses a content algorithm the {profile} profile does not allow"
                        ),
                    }
                    .into());
                }
                let (key, hash, wrapped) = self.oaep_key(role_of(usage), &obj, what)?;
                // The transport key's unwrap template fixes what comes out.
                token
                    .unwrap_oaep(key, hash, role_of(usage), wrapped, Some(persist))
                    .map_err(|_| ImportError::NotForThisAppliance {
                        what: what.to_owned(),
                    })
            }
        }
    }

    /// Unwraps an image's content key into a token object.
    fn open_image_key(
        &self,
        token: &Token,
        signed: &SignedPackage<'_>,
        index: usize,
        persist: (&str, &[u8]),
    ) -> Result<ObjectHandle, ImportError> {
        let what = format!("image {}", index + 1);
        let obj = EncryptObject::parse(signed.images()[index].header, "image header")?;
        if obj.alg != ALG_A256GCM || obj.iv.is_none() || obj.ciphertext.is_some() {
            return Err(PackageError::Malformed {
                detail: format!("{what} is not detached A256GCM"),
            }
            .into());
        }
        match self {
            Self::Ecdh { ka, ctx } => {
                let (kek, wrapped) = recipient_kek(token, *ka, *ctx, &obj, &what)?;
                let cek = token.unwrap_aes_kw(kek, wrapped, KeyUse::AesDecrypt, Some(persist));
                let _ = token.destroy(kek);
                cek.map_err(|_| ImportError::NotForThisAppliance { what })
            }
            Self::Oaep { .. } => {
                let (key, hash, wrapped) = self.oaep_key(TransportRole::Image, &obj, &what)?;
                token
                    .unwrap_oaep(key, hash, TransportRole::Image, wrapped, Some(persist))
                    .map_err(|_| ImportError::NotForThisAppliance { what })
            }
        }
    }
}

/// ECDH + KDF in the token for one recipient; the result can only unwrap.
/// Returns it with the wrapped CEK.
fn recipient_kek<'o>(
    token: &Token,
    ka: ObjectHandle,
    ctx: RecipientContext<'_>,
    obj: &'o EncryptObject,
    what: &str,
) -> Result<(ObjectHandle, &'o [u8]), ImportError> {
    let not_for_us = || ImportError::NotForThisAppliance {
        what: what.to_owned(),
    };
    let AnyRecipient::Ecdh(r) = &obj.recipient else {
        return Err(not_for_us());
    };
    if r.protected != cose::recipient_protected(recipient_alg(ctx.profile)) || r.kid != *ctx.kid {
        return Err(not_for_us());
    }
    let input = ctx.kdf_input(&r.protected, &r.ephemeral);
    let kdf = match &input {
        KdfInput::Hkdf(info) => EcdhKdf::Hkdf { info },
        KdfInput::AesCbc(c) => EcdhKdf::AesCbc { context: c },
    };
    let kek = token
        .ecdh_kek(ka, &r.ephemeral, kdf)
        .map_err(|_| not_for_us())?;
    Ok((kek, &r.wrapped_cek))
}

/// Unwraps a secret `COSE_Encrypt` of an ECDH profile into a token object.
fn open_secret_ecdh(
    token: &Token,
    ka: ObjectHandle,
    ctx: RecipientContext<'_>,
    obj: &EncryptObject,
    what: &'static str,
    usage: KeyUse,
    persist: (&str, &[u8]),
) -> Result<ObjectHandle, ImportError> {
    let (kek, wrapped) = recipient_kek(token, ka, ctx, obj, what)?;
    let cek = token.unwrap_aes_kw(kek, wrapped, KeyUse::AesUnwrap, None);
    let _ = token.destroy(kek);
    let cek = cek.map_err(|_| ImportError::NotForThisAppliance {
        what: what.to_owned(),
    })?;
    let ct = obj.ciphertext.as_deref().unwrap_or_default();
    let result = match (ctx.profile, obj.alg, obj.iv) {
        (Profile::CoseEcdhEsA256kw, ALG_A256GCM, Some(iv)) => {
            let aad = cose::enc_structure(&obj.protected, b"");
            token.unwrap_aes_gcm(cek, &iv, &aad, ct, usage, Some(persist))
        }
        (Profile::P11v2EcdhAesKdf, ALG_A256KWP_CONTENT, None) => {
            token.unwrap_aes_kwp(cek, ct, usage, Some(persist))
        }
        // Another content algorithm, or an RSA profile, which has no ECDH recipient.
        (
            Profile::CoseEcdhEsA256kw
            | Profile::P11v2EcdhAesKdf
            | Profile::CoseRsaesOaepSha256
            | Profile::CoseRsaesOaepSha1,
            _,
            _,
        ) => {
            let _ = token.destroy(cek);
            return Err(PackageError::Malformed {
                detail: format!(
                    "the {what} uses a content algorithm the {} profile does not allow",
                    ctx.profile
                ),
            }
            .into());
        }
    };
    let _ = token.destroy(cek);
    result.map_err(|_| ImportError::Altered {
        what: format!("the wrapped {what}"),
    })
}

impl Appliance {
    /// The private transport keys, with the key ids the record gives them.
    fn transport_keys(
        &self,
        record: &crate::enrollment::Enrollment,
    ) -> Result<Vec<(TransportRole, ObjectHandle, [u8; 16])>, ImportError> {
        let not_enrolled = || ImportError::NotForThisAppliance {
            what: "the job (this appliance has no RSA transport keys)".to_owned(),
        };
        let t = record.transport.as_ref().ok_or_else(not_enrolled)?;
        let mut out = Vec::new();
        for role in TransportRole::ALL {
            let key = self.transport_private(role)?.ok_or_else(not_enrolled)?;
            out.push((role, key, t.kid(role)));
        }
        Ok(out)
    }
}

/// Decrypts image `index` chunk by chunk in the token, handing each
/// plaintext chunk to `sink`; returns the SHA-256 of the plaintext.
pub fn decrypt_image(
    token: &Token,
    cek: ObjectHandle,
    signed: &SignedPackage<'_>,
    index: usize,
    mut sink: impl FnMut(&[u8]),
) -> Result<[u8; 32], ImportError> {
    let obj = EncryptObject::parse(signed.images()[index].header, "image header")?;
    let Some(base_iv) = obj.iv else {
        return Err(PackageError::Malformed {
            detail: "image header has no IV".to_owned(),
        }
        .into());
    };
    let entry = &signed.manifest().images[index];
    let chunks = &signed.images()[index].chunks;
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    for (i, ct) in chunks.iter().enumerate() {
        let idx = u32::try_from(i).map_err(|_| PackageError::Malformed {
            detail: "too many chunks".to_owned(),
        })?;
        let last = i + 1 == chunks.len();
        let aad = cose::enc_structure(&obj.protected, &chunk_external_aad(idx, last));
        let plain: Zeroizing<Vec<u8>> = token
            .aes_gcm_decrypt(cek, &chunk_nonce(&base_iv, idx), &aad, ct)
            .map_err(|_| ImportError::Altered {
                what: format!("chunk {i} (counted from 0) of image {}", index + 1),
            })?;
        if (!last && plain.len() != entry.chunk_size as usize) || plain.is_empty() {
            return Err(ImportError::Altered {
                what: format!("chunk {i} (counted from 0) of image {}", index + 1),
            });
        }
        total += plain.len() as u64;
        hasher.update(plain.as_slice());
        sink(&plain);
    }
    if total != entry.size {
        return Err(ImportError::ImageDigest { index: index + 1 });
    }
    Ok(hasher.finalize().into())
}

impl Appliance {
    /// Loads an imported job and decrypts its images in the token into
    /// zeroizing memory (never to disk), checking each digest again.
    pub fn open_job_firmware(
        &self,
        id: &str,
    ) -> Result<(ImportedJob, Vec<PlainImage>), ImportError> {
        if self
            .token
            .find_by_label(&format!("{IMPORTED_PREFIX}{id}"))?
            .is_empty()
        {
            return Err(ApplianceError::NoSuchJob { id: id.to_owned() }.into());
        }
        let dir = self.job_dir(id);
        let job = ImportedJob::load(&dir, &self.config.trust.keys)?;
        let bytes = fs::read(&job.package_path).map_err(|source| ImportError::Read {
            path: job.package_path.clone(),
            source,
        })?;
        let signed = UnverifiedPackage::parse(&bytes)?.verify(&self.config.trust.keys)?;
        let mut images = Vec::new();
        for (i, entry) in signed.manifest().images.iter().enumerate() {
            let label = job_key_label(id, &format!("image{i}"));
            let key = self
                .token
                .find_by_label(&label)?
                .into_iter()
                .next()
                .ok_or_else(|| ApplianceError::NoSuchJob { id: id.to_owned() })?;
            let mut plain =
                Zeroizing::new(Vec::with_capacity(usize::try_from(entry.size).unwrap_or(0)));
            let digest = decrypt_image(&self.token, key, &signed, i, |chunk| {
                plain.extend_from_slice(chunk)
            })?;
            if digest != entry.digest {
                return Err(ImportError::ImageDigest { index: i + 1 });
            }
            images.push((entry.address, plain));
        }
        Ok((job, images))
    }
}
