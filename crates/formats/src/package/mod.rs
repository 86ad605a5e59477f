//! Protected job packages (`.fgj`): the format, the OEM-side builder and the
//! parser. Parsing gives an [`UnverifiedPackage`]; only
//! [`UnverifiedPackage::verify`] with the appliance's trust anchors turns it
//! into a [`SignedPackage`] whose manifest can be believed.
//!
//! Layout (docs/FORMATS.md has it byte for byte):
//! `["flashgate-job", 1, manifest: bstr, [master: bstr, ca_key: bstr], [* [image: bstr, [+ chunk: bstr]]]]`

pub mod encrypt;
pub mod manifest;

use sha2::{Digest, Sha256};

pub use encrypt::{EncryptObject, Recipient};
pub use manifest::{ImageEntry, Manifest, CHUNK_SIZE};

use crate::cose::{CoseError, UnverifiedSign1};
use flashgate_dcbor::{self as cbor, Reader};

/// The magic string that opens every package.
pub const MAGIC: &str = "flashgate-job";
/// Outer format version.
pub const FORMAT_VERSION: u64 = 1;
/// Content type of the manifest `COSE_Sign1`.
pub const MANIFEST_CONTENT_TYPE: &str = "application/vnd.flashgate.manifest+cbor";
/// Largest package accepted (hostile-input bound).
pub const MAX_PACKAGE_SIZE: usize = 1024 * 1024 * 1024;

/// What is wrong with a package. All of these come from hostile input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// Not a flashgate job package at all.
    #[error("this file is not a flashgate job package")]
    NotAPackage,
    /// A version this build does not read.
    #[error("this package uses format version {found}, which this flashgate does not read; update flashgate")]
    UnsupportedVersion { found: u64 },
    /// Structurally broken.
    #[error("the package is damaged or was altered ({detail}); ask the OEM for a fresh copy")]
    Malformed { detail: String },
    /// Not in deterministic encoding.
    #[error("the package is damaged or was altered (the {what} is not in deterministic encoding); ask the OEM for a fresh copy")]
    NotCanonical { what: &'static str },
    /// A COSE structure failed.
    #[error("the package is damaged or was altered: {0}")]
    Cose(#[from] CoseError),
    /// Signed by a key the appliance does not trust.
    #[error("the package is signed by an OEM key this appliance does not trust (key id {kid}); add the OEM's public key to trust.oem_keys in the appliance config")]
    UntrustedSigner { kid: String },
    /// A part of the package does not match the digest in the signed manifest.
    #[error("the package was altered: {what} does not match the signed manifest; ask the OEM for a fresh copy")]
    DigestMismatch { what: String },
}

/// A package parsed from bytes; nothing in it is trusted yet. Borrows the
/// input, so firmware chunks are never copied.
#[derive(Debug)]
pub struct UnverifiedPackage<'a> {
    manifest_sign1: &'a [u8],
    device_master: &'a [u8],
    job_ca_key: &'a [u8],
    images: Vec<RawImage<'a>>,
}

/// One image element as stored.
#[derive(Debug, Clone)]
pub struct RawImage<'a> {
    /// The whole encoded element, for its digest.
    pub element: &'a [u8],
    /// The `COSE_Encrypt` header object (detached ciphertext).
    pub header: &'a [u8],
    /// The ciphertext chunks (ciphertext || 16-byte tag each).
    pub chunks: Vec<&'a [u8]>,
}

impl<'a> UnverifiedPackage<'a> {
    /// Parses the outer structure. Strict: shortest-form CBOR, nothing trailing.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PackageError> {
        if bytes.len() > MAX_PACKAGE_SIZE {
            return Err(PackageError::Malformed {
                detail: format!("larger than {MAX_PACKAGE_SIZE} bytes"),
            });
        }
        let mut r = Reader::new(bytes);
        let bad = |e: cbor::CborError| PackageError::Malformed {
            detail: e.to_string(),
        };
        if r.array().map_err(|_| PackageError::NotAPackage)? != 5 {
            return Err(PackageError::NotAPackage);
        }
        if r.text().map_err(|_| PackageError::NotAPackage)? != MAGIC {
            return Err(PackageError::NotAPackage);
        }
        let version = r.uint().map_err(bad)?;
        if version != FORMAT_VERSION {
            return Err(PackageError::UnsupportedVersion { found: version });
        }
        let manifest_sign1 = r.bytes().map_err(bad)?;
        if r.array().map_err(bad)? != 2 {
            return Err(PackageError::Malformed {
                detail: "the secrets array does not have two entries".to_owned(),
            });
        }
        let device_master = r.bytes().map_err(bad)?;
        let job_ca_key = r.bytes().map_err(bad)?;
        let count = r.array().map_err(bad)?;
        if count == 0 || count > manifest::MAX_IMAGES as u64 {
            return Err(PackageError::Malformed {
                detail: format!("a job carries 1 to {} images", manifest::MAX_IMAGES),
            });
        }
        let mut images = Vec::new();
        for _ in 0..count {
            let start = r.position();
            if r.array().map_err(bad)? != 2 {
                return Err(PackageError::Malformed {
                    detail: "an image element does not have two entries".to_owned(),
                });
            }
            let header = r.bytes().map_err(bad)?;
            let n = r.array().map_err(bad)?;
            // Every chunk is at least a 16-byte tag plus one byte, so a count
            // larger than what is left is a lie: refuse before allocating.
            let left = (bytes.len() - r.position()) as u64;
            if n == 0 || n > left / 17 + 1 {
                return Err(PackageError::Malformed {
                    detail: "an image has an impossible chunk count".to_owned(),
                });
            }
            let mut chunks = Vec::with_capacity(n as usize);
            for _ in 0..n {
                chunks.push(r.bytes().map_err(bad)?);
            }
            images.push(RawImage {
                element: &bytes[start..r.position()],
                header,
                chunks,
            });
        }
        if !r.at_end() {
            return Err(PackageError::Malformed {
                detail: "data after the end of the package".to_owned(),
            });
        }
        Ok(Self {
            manifest_sign1,
            device_master,
            job_ca_key,
            images,
        })
    }

    /// The stored parts: manifest `COSE_Sign1`, device-master and job-CA-key
    /// `COSE_Encrypt`s, and the images. For tools and tests that take a
    /// package apart.
    pub fn parts(&self) -> (&'a [u8], &'a [u8], &'a [u8], &[RawImage<'a>]) {
        (
            self.manifest_sign1,
            self.device_master,
            self.job_ca_key,
            &self.images,
        )
    }

    /// The manifest without checking its signature, for `job inspect`.
    pub fn manifest_unverified(&self) -> Result<(Manifest, Vec<u8>), PackageError> {
        let sign1 = UnverifiedSign1::parse(self.manifest_sign1, "job manifest")?;
        let kid = sign1.key_id().to_vec();
        Ok((Manifest::decode(sign1.payload_unverified())?, kid))
    }

    /// Verifies the OEM signature with one of `trusted` (SEC1 public keys),
    /// then checks every part of the package against the signed digests.
    pub fn verify(self, trusted: &[[u8; 65]]) -> Result<SignedPackage<'a>, PackageError> {
        let sign1 = UnverifiedSign1::parse(self.manifest_sign1, "job manifest")?;
        if sign1.content_type() != Some(MANIFEST_CONTENT_TYPE) {
            return Err(PackageError::Malformed {
                detail: "the signed object is not a job manifest".to_owned(),
            });
        }
        let kid = sign1.key_id().to_vec();
        let key = trusted
            .iter()
            .find(|k| crate::cose::key_id(k).as_slice() == kid.as_slice())
            .ok_or_else(|| PackageError::UntrustedSigner {
                kid: hex::encode(&kid),
            })?;
        let payload = sign1.verify(key)?;
        let manifest = Manifest::decode(&payload)?;
        check_digest(
            self.device_master,
            &manifest.device_master_digest,
            "device-master key",
        )?;
        check_digest(
            self.job_ca_key,
            &manifest.job_ca_key_digest,
            "the job CA key",
        )?;
        if manifest.images.len() != self.images.len() {
            return Err(PackageError::DigestMismatch {
                what: "the number of images".to_owned(),
            });
        }
        for (i, (entry, raw)) in manifest.images.iter().zip(&self.images).enumerate() {
            check_digest(
                raw.element,
                &entry.object_digest,
                &format!("image {}", i + 1),
            )?;
            if raw.chunks.len() as u64 != u64::from(entry.chunks) {
                return Err(PackageError::DigestMismatch {
                    what: format!("the chunk count of image {}", i + 1),
                });
            }
        }
        Ok(SignedPackage {
            manifest,
            manifest_sign1: self.manifest_sign1,
            signer_kid: kid,
            device_master: self.device_master,
            job_ca_key: self.job_ca_key,
            images: self.images,
        })
    }
}

fn check_digest(bytes: &[u8], expected: &[u8; 32], what: &str) -> Result<(), PackageError> {
    if Sha256::digest(bytes).as_slice() == expected {
        Ok(())
    } else {
        Err(PackageError::DigestMismatch {
            what: what.to_owned(),
        })
    }
}

/// A package whose OEM signature verified and whose parts match the signed
/// manifest. Whether it is meant for *this* appliance, and still valid, is
/// checked at import.
#[derive(Debug)]
pub struct SignedPackage<'a> {
    manifest: Manifest,
    manifest_sign1: &'a [u8],
    signer_kid: Vec<u8>,
    device_master: &'a [u8],
    job_ca_key: &'a [u8],
    images: Vec<RawImage<'a>>,
}

impl<'a> SignedPackage<'a> {
    /// The signed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest, for keeping.
    pub fn into_manifest(self) -> Manifest {
        self.manifest
    }

    /// The manifest `COSE_Sign1` exactly as stored (for the audit bundle).
    pub fn manifest_sign1(&self) -> &'a [u8] {
        self.manifest_sign1
    }

    /// Key id of the OEM key that signed it.
    pub fn signer_kid(&self) -> &[u8] {
        &self.signer_kid
    }

    /// The device-master `COSE_Encrypt`.
    pub fn device_master(&self) -> &'a [u8] {
        self.device_master
    }

    /// The job-CA-key `COSE_Encrypt`.
    pub fn job_ca_key(&self) -> &'a [u8] {
        self.job_ca_key
    }

    /// The images.
    pub fn images(&self) -> &[RawImage<'a>] {
        &self.images
    }
}

/// Encodes a package from its parts (the inverse of [`UnverifiedPackage::parse`]).
pub fn encode_package(
    manifest_sign1: &[u8],
    device_master: &[u8],
    job_ca_key: &[u8],
    images: &[(Vec<u8>, Vec<Vec<u8>>)],
) -> Vec<u8> {
    let mut out = Vec::new();
    cbor::put_array(&mut out, 5);
    cbor::put_text(&mut out, MAGIC);
    cbor::put_uint(&mut out, FORMAT_VERSION);
    cbor::put_bytes(&mut out, manifest_sign1);
    cbor::put_array(&mut out, 2);
    cbor::put_bytes(&mut out, device_master);
    cbor::put_bytes(&mut out, job_ca_key);
    cbor::put_array(&mut out, images.len());
    for (header, chunks) in images {
        out.extend_from_slice(&encode_image_element(header, chunks));
    }
    out
}

/// Encodes one image element `[header, [+ chunk]]`.
pub fn encode_image_element(header: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    cbor::put_array(&mut out, 2);
    cbor::put_bytes(&mut out, header);
    cbor::put_array(&mut out, chunks.len());
    for c in chunks {
        cbor::put_bytes(&mut out, c);
    }
    out
}

impl UnverifiedPackage<'_> {
    /// Re-encodes the parsed structure; equal to the input for every accepted package.
    pub fn encode(&self) -> Vec<u8> {
        let images: Vec<(Vec<u8>, Vec<Vec<u8>>)> = self
            .images
            .iter()
            .map(|im| {
                (
                    im.header.to_vec(),
                    im.chunks.iter().map(|c| c.to_vec()).collect(),
                )
            })
            .collect();
        encode_package(
            self.manifest_sign1,
            self.device_master,
            self.job_ca_key,
            &images,
        )
    }
}

/// The nonce of chunk `index`: the image's 12-byte base IV with the chunk
/// index XORed into its last four bytes (big-endian).
pub fn chunk_nonce(base_iv: &[u8; 12], index: u32) -> [u8; 12] {
    let mut n = *base_iv;
    for (b, i) in n[8..].iter_mut().zip(index.to_be_bytes()) {
        *b ^= i;
    }
    n
}

/// The external AAD of chunk `index`: `u32be(index) || u8(last)`.
pub fn chunk_external_aad(index: u32, last: bool) -> [u8; 5] {
    let mut a = [0u8; 5];
    a[..4].copy_from_slice(&index.to_be_bytes());
    a[4] = u8::from(last);
    a
}
