//! The OEM side: building a job package for one enrolled appliance.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use aes_kw::KwpAes256;
use flashgate_firmware::Segment;
use flashgate_policy::Policy;
use p256::pkcs8::EncodePrivateKey;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{certs, Oem, OemError};
use crate::cose::{self, ALG_A256KWP_CONTENT};
use crate::enrollment::PinnedEnrollment;
use crate::enrollment::TransportKeys;
use crate::package::encrypt::{
    seal_oaep_recipient, seal_recipient, AnyRecipient, EncryptObject, RecipientContext,
    ALG_A256GCM, ALG_SECRET_IN_RECIPIENT,
};
use crate::package::manifest::{ImageEntry, Manifest, CHUNK_SIZE, MAX_IMAGES, MAX_IMAGE_SIZE};
use crate::package::{
    chunk_external_aad, chunk_nonce, encode_image_element, encode_package, MANIFEST_CONTENT_TYPE,
};
use crate::profile::{Profile, TransportRole};

/// Why a job could not be built. Policy and firmware errors carry their own
/// messages (with line numbers).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The enrollment record cannot be used.
    #[error("the appliance enrollment record cannot be used: {0}")]
    BadEnrollment(String),
    /// No profile in common.
    #[error("appliance {appliance} supports no key-transport profile this flashgate can build (its enrollment record offers {offered}); update flashgate or the appliance's HSM")]
    NoCommonProfile { appliance: String, offered: String },
    /// The policy asks for an appliance whose HSM keeps job secrets from its
    /// PIN holder, and this one's enrollment record does not say so.
    #[error("the policy sets require_pin_holder_safe, but the enrollment record of appliance {appliance} {claim} for the {profile} profile, so whoever holds its HSM PIN could extract the job secrets; build for an appliance whose record says \"refused\", or drop the setting for a development job")]
    PinHolderCanExtract {
        appliance: String,
        profile: Profile,
        claim: &'static str,
    },
    /// Firmware does not fit a job.
    #[error("firmware: {0}")]
    Firmware(String),
    /// The OS RNG failed.
    #[error("the random number generator failed: {0}")]
    Random(String),
    /// Sealing a secret to the appliance failed.
    #[error(transparent)]
    Seal(#[from] crate::package::encrypt::SealError),
    /// OEM key or certificate trouble.
    #[error(transparent)]
    Oem(#[from] OemError),
    /// The policy's driver cannot run the job.
    #[error("the policy cannot run on its driver: {0}")]
    Driver(#[from] crate::drivers::DriverMismatch),
}

/// What goes into a job.
#[derive(Debug)]
pub struct JobInput<'a> {
    /// The policy text exactly as written (it is signed as is).
    pub policy_toml: &'a str,
    /// The parsed policy.
    pub policy: &'a Policy,
    /// Firmware segments; each becomes one image.
    pub images: &'a [Segment],
    /// The appliance the job is for.
    pub enrollment: &'a PinnedEnrollment,
    /// The OEM's keys.
    pub oem: &'a Oem,
    /// Build time (Unix seconds).
    pub now: u64,
    /// Force a profile instead of the strongest the appliance offers.
    pub profile: Option<Profile>,
}

/// A built job.
pub struct BuiltJob {
    /// The package bytes.
    pub bytes: Vec<u8>,
    /// The manifest inside.
    pub manifest: Manifest,
    /// The device-master key, for the OEM's own escrow: with it and a UID the
    /// OEM re-derives any device's keys (`identity::derive_keys_from_master`).
    pub device_master: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for BuiltJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltJob")
            .field("job_id", &self.manifest.job_id_hex())
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, BuildError> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(b.as_mut_slice()).map_err(|e| BuildError::Random(e.to_string()))?;
    Ok(b)
}

/// Builds a package.
pub fn build(input: &JobInput<'_>) -> Result<BuiltJob, BuildError> {
    // Refused now, not after the first board at the CM got its secrets.
    crate::drivers::check_policy(input.policy)?;
    let ranges: Vec<(u32, u64)> = input
        .images
        .iter()
        .map(|s| (s.address, s.data.len() as u64))
        .collect();
    if let Some(o) = flashgate_firmware::find_overlap(&ranges) {
        return Err(BuildError::Firmware(format!(
            "{o}: give each --firmware its own address range"
        )));
    }
    let enrollment = input.enrollment.record();
    let profile = match input.profile {
        Some(p) if enrollment.profiles.contains(&p) => p,
        Some(p) => {
            return Err(BuildError::BadEnrollment(format!(
                "appliance {} cannot run the {} profile",
                enrollment.appliance_id, p
            )))
        }
        // The record lists profiles strongest first; Profile::ALL is ordered the same way.
        None => *Profile::ALL
            .iter()
            .find(|p| enrollment.profiles.contains(p))
            .ok_or_else(|| BuildError::NoCommonProfile {
                appliance: enrollment.appliance_id.clone(),
                offered: if enrollment.profiles.is_empty() {
                    "no profile this flashgate knows".to_owned()
                } else {
                    enrollment
                        .profiles
                        .iter()
                        .map(|p| p.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })?,
    };
    if input.policy.job().require_pin_holder_safe {
        let claim = match enrollment.extraction(profile) {
            Some(crate::hsm::probe::Extraction::Refused) => None,
            Some(crate::hsm::probe::Extraction::Possible) => Some("says extraction is possible"),
            None => Some("makes no claim about extraction"),
        };
        if let Some(claim) = claim {
            return Err(BuildError::PinHolderCanExtract {
                appliance: enrollment.appliance_id.clone(),
                profile,
                claim,
            });
        }
    }
    if input.images.is_empty() || input.images.len() > MAX_IMAGES {
        return Err(BuildError::Firmware(format!(
            "a job carries 1 to {MAX_IMAGES} images, the firmware gives {}",
            input.images.len()
        )));
    }
    let job_id: [u8; 16] = *random::<16>()?;
    let kid = enrollment.ka_kid();
    let ctx = RecipientContext {
        profile,
        job_id: &job_id,
        kid: &kid,
    };
    let transport = match (profile.oaep_hash(), &enrollment.transport) {
        (None, _) => None,
        (Some(_), Some(t)) => Some(t),
        (Some(_), None) => {
            return Err(BuildError::BadEnrollment(format!(
                "the record lists {profile} but holds no transport keys"
            )))
        }
    };
    let seal = Sealer {
        ctx,
        appliance: &enrollment.ka_public,
        transport,
    };

    let mut image_entries = Vec::new();
    let mut image_elements = Vec::new();
    for seg in input.images {
        let size = seg.data.len() as u64;
        if size == 0 || size > MAX_IMAGE_SIZE {
            return Err(BuildError::Firmware(format!(
                "the image at 0x{:08x} is {size} bytes; images must be 1 to {MAX_IMAGE_SIZE} bytes",
                seg.address
            )));
        }
        let cek = random::<32>()?;
        let base_iv: [u8; 12] = *random::<12>()?;
        let protected = cose::content_protected(ALG_A256GCM);
        let cipher = Aes256Gcm::new(&(*cek).into());
        let n = seg.data.chunks(CHUNK_SIZE as usize).count();
        let mut chunks = Vec::with_capacity(n);
        for (i, plain) in seg.data.chunks(CHUNK_SIZE as usize).enumerate() {
            let index =
                u32::try_from(i).map_err(|_| BuildError::Firmware("too many chunks".to_owned()))?;
            let aad = cose::enc_structure(&protected, &chunk_external_aad(index, i + 1 == n));
            let mut buf = plain.to_vec();
            let tag = cipher
                .encrypt_inout_detached(
                    &chunk_nonce(&base_iv, index).into(),
                    &aad,
                    buf.as_mut_slice().into(),
                )
                .map_err(|_| BuildError::Random("AES-GCM encryption failed".to_owned()))?;
            buf.extend_from_slice(&tag);
            chunks.push(buf);
        }
        let header = EncryptObject {
            protected,
            alg: ALG_A256GCM,
            iv: Some(base_iv),
            ciphertext: None,
            recipient: seal.recipient(TransportRole::Image, &cek[..])?,
        }
        .encode();
        let element = encode_image_element(&header, &chunks);
        image_entries.push(ImageEntry {
            address: seg.address,
            size,
            digest: Sha256::digest(&seg.data).into(),
            chunk_size: CHUNK_SIZE,
            chunks: n as u32,
            object_digest: Sha256::digest(&element).into(),
        });
        image_elements.push((header, chunks));
    }

    // Per-job secrets.
    let device_master = random::<32>()?;
    let job_ca = cose::random_secret_key().map_err(|e| BuildError::Random(e.to_string()))?;
    let job_ca_pkcs8 = Zeroizing::new(
        job_ca
            .to_pkcs8_der()
            .map_err(|e| BuildError::Random(e.to_string()))?
            .as_bytes()
            .to_vec(),
    );
    let device_master_obj = seal.secret(TransportRole::Master, &device_master[..])?;
    let job_ca_key_obj = seal.secret(TransportRole::Ca, &job_ca_pkcs8)?;

    let job = input.policy.job();
    let job_ca_public = cose::sec1_uncompressed(&job_ca.public_key());
    let job_ca_cert = certs::job_ca_certificate(
        &input.oem.root,
        &input.oem.root_cert_der,
        &input.oem.config.name,
        &certs::JobCa {
            public_key: &job_ca_public,
            job_id_hex: &hex::encode(job_id),
            product: job.product.as_str(),
            not_before: job.not_before,
            not_after: input.policy.latest_device_not_after(),
        },
    )?;

    let manifest = Manifest {
        job_id,
        created: input.now,
        appliance_id: enrollment.appliance_id.clone(),
        recipient_kid: kid,
        enrollment_digest: *input.enrollment.digest(),
        profile,
        policy_toml: input.policy_toml.to_owned(),
        images: image_entries,
        device_master_digest: Sha256::digest(&device_master_obj).into(),
        job_ca_key_digest: Sha256::digest(&job_ca_key_obj).into(),
        job_ca_cert,
        oem_root_cert: input.oem.root_cert_der.clone(),
    };
    let signed = cose::sign1(&input.oem.signing, MANIFEST_CONTENT_TYPE, manifest.encode())
        .map_err(OemError::from)?;
    let bytes = encode_package(
        &signed,
        &device_master_obj,
        &job_ca_key_obj,
        &image_elements,
    );
    Ok(BuiltJob {
        bytes,
        manifest,
        device_master,
    })
}

/// Seals keys and secrets to the appliance, by profile.
struct Sealer<'a> {
    ctx: RecipientContext<'a>,
    appliance: &'a [u8; 65],
    transport: Option<&'a TransportKeys>,
}

impl Sealer<'_> {
    /// The recipient that carries `key` (a CEK, or an RSA-OAEP profile's
    /// secret itself) to the appliance.
    fn recipient(&self, role: TransportRole, key: &[u8]) -> Result<AnyRecipient, BuildError> {
        match self.transport {
            Some(t) => Ok(seal_oaep_recipient(self.ctx.profile, t.get(role), key)?.into()),
            None => {
                let cek: &[u8; 32] = key
                    .try_into()
                    .map_err(|_| BuildError::Random("a content key is not 32 bytes".to_owned()))?;
                Ok(seal_recipient(self.ctx, self.appliance, cek)?.into())
            }
        }
    }

    /// Wraps a secret to the appliance: RSA-OAEP of the secret itself to the
    /// role's transport key (RSA-OAEP profiles), A256GCM content (standard
    /// profile) or RFC 5649 key wrap with padding under the CEK
    /// (compatibility profile).
    fn secret(&self, role: TransportRole, secret: &[u8]) -> Result<Vec<u8>, BuildError> {
        let ctx = self.ctx;
        if self.transport.is_some() {
            return Ok(EncryptObject {
                protected: cose::content_protected(ALG_SECRET_IN_RECIPIENT),
                alg: ALG_SECRET_IN_RECIPIENT,
                iv: None,
                ciphertext: Some(Vec::new()),
                recipient: self.recipient(role, secret)?,
            }
            .encode());
        }
        let cek = random::<32>()?;
        let recipient = self.recipient(role, &cek[..])?;
        let obj = match ctx.profile {
            Profile::CoseEcdhEsA256kw => {
                let iv: [u8; 12] = *random::<12>()?;
                let protected = cose::content_protected(ALG_A256GCM);
                let aad = cose::enc_structure(&protected, b"");
                let mut buf = Zeroizing::new(secret.to_vec());
                let tag = Aes256Gcm::new(&(*cek).into())
                    .encrypt_inout_detached(&iv.into(), &aad, buf.as_mut_slice().into())
                    .map_err(|_| BuildError::Random("AES-GCM encryption failed".to_owned()))?;
                let mut ct = buf.to_vec();
                ct.extend_from_slice(&tag);
                EncryptObject {
                    protected,
                    alg: ALG_A256GCM,
                    iv: Some(iv),
                    ciphertext: Some(ct),
                    recipient,
                }
            }
            Profile::P11v2EcdhAesKdf
            | Profile::CoseRsaesOaepSha256
            | Profile::CoseRsaesOaepSha1 => {
                let mut buf = vec![0u8; secret.len() + 16];
                let wrapped = KwpAes256::new(&(*cek).into())
                    .wrap_key(secret, &mut buf)
                    .map_err(|_| BuildError::Random("AES key wrap failed".to_owned()))?
                    .to_vec();
                EncryptObject {
                    protected: cose::content_protected(ALG_A256KWP_CONTENT),
                    alg: ALG_A256KWP_CONTENT,
                    iv: None,
                    ciphertext: Some(wrapped),
                    recipient,
                }
            }
        };
        Ok(obj.encode())
    }
}
