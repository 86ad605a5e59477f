//! The signed job manifest: deterministic CBOR, integer keys (docs/FORMATS.md).

use ciborium::value::{Integer, Value};

use crate::profile::Profile;

use super::PackageError;

/// Manifest format version.
pub const MANIFEST_VERSION: u64 = 1;
/// Plaintext bytes per firmware chunk.
pub const CHUNK_SIZE: u32 = 64 * 1024;
/// Largest image a job may carry.
pub const MAX_IMAGE_SIZE: u64 = 256 * 1024 * 1024;
/// Most images a job may carry.
pub const MAX_IMAGES: usize = 16;

/// One firmware image as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// Target address of the first byte.
    pub address: u32,
    /// Plaintext size in bytes.
    pub size: u64,
    /// SHA-256 of the plaintext.
    pub digest: [u8; 32],
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunks: u32,
    /// SHA-256 of the image element exactly as stored in the package.
    pub object_digest: [u8; 32],
}

/// The manifest: what the OEM signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Random job identifier.
    pub job_id: [u8; 16],
    /// When the package was built (Unix seconds).
    pub created: u64,
    /// The appliance the job is bound to.
    pub appliance_id: String,
    /// Key id of the appliance's key-agreement key.
    pub recipient_kid: [u8; 16],
    /// SHA-256 of the enrollment record the job was built from.
    pub enrollment_digest: [u8; 32],
    /// Key-transport profile.
    pub profile: Profile,
    /// The policy, as the OEM wrote it (TOML).
    pub policy_toml: String,
    /// The images.
    pub images: Vec<ImageEntry>,
    /// SHA-256 of the device-master `COSE_Encrypt`.
    pub device_master_digest: [u8; 32],
    /// SHA-256 of the job-CA-key `COSE_Encrypt`.
    pub job_ca_key_digest: [u8; 32],
    /// DER of the job CA certificate.
    pub job_ca_cert: Vec<u8>,
    /// DER of the OEM device-root certificate.
    pub oem_root_cert: Vec<u8>,
}

fn int(i: u64) -> Value {
    Value::Integer(i.into())
}

impl Manifest {
    /// Deterministic CBOR encoding (keys ascending, shortest forms).
    pub fn encode(&self) -> Vec<u8> {
        let images = self
            .images
            .iter()
            .map(|im| {
                Value::Map(vec![
                    (int(1), int(im.address.into())),
                    (int(2), int(im.size)),
                    (int(3), Value::Bytes(im.digest.to_vec())),
                    (int(4), int(im.chunk_size.into())),
                    (int(5), int(im.chunks.into())),
                    (int(6), Value::Bytes(im.object_digest.to_vec())),
                ])
            })
            .collect();
        let map = Value::Map(vec![
            (int(1), int(MANIFEST_VERSION)),
            (int(2), Value::Bytes(self.job_id.to_vec())),
            (int(3), int(self.created)),
            (int(4), Value::Text(self.appliance_id.clone())),
            (int(5), Value::Bytes(self.recipient_kid.to_vec())),
            (int(6), Value::Bytes(self.enrollment_digest.to_vec())),
            (int(7), Value::Text(self.profile.name().to_owned())),
            (int(8), Value::Text(self.policy_toml.clone())),
            (int(9), Value::Array(images)),
            (int(10), Value::Bytes(self.device_master_digest.to_vec())),
            (int(11), Value::Bytes(self.job_ca_key_digest.to_vec())),
            (int(12), Value::Bytes(self.job_ca_cert.clone())),
            (int(13), Value::Bytes(self.oem_root_cert.clone())),
        ]);
        crate::cose::encode(&map)
    }

    /// Parses a manifest, refusing anything but the exact deterministic encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, PackageError> {
        let value: Value = ciborium::de::from_reader(bytes)
            .map_err(|e| malformed(crate::cose::cbor_problem(&e)))?;
        let mut fields = Fields::new(value, "manifest")?;
        let version = fields.uint(1)?;
        if version != MANIFEST_VERSION {
            return Err(PackageError::UnsupportedVersion { found: version });
        }
        let job_id = fields.fixed::<16>(2)?;
        let created = fields.uint(3)?;
        let appliance_id = fields.text(4)?;
        let recipient_kid = fields.fixed::<16>(5)?;
        let enrollment_digest = fields.fixed::<32>(6)?;
        let profile_name = fields.text(7)?;
        let profile = Profile::from_name(&profile_name)
            .ok_or_else(|| malformed(format!("unknown key-transport profile '{profile_name}'")))?;
        let policy_toml = fields.text(8)?;
        let Value::Array(raw_images) = fields.take(9)? else {
            return Err(malformed("images is not an array".to_owned()));
        };
        if raw_images.is_empty() || raw_images.len() > MAX_IMAGES {
            return Err(malformed(format!("a job carries 1 to {MAX_IMAGES} images")));
        }
        let mut images = Vec::with_capacity(raw_images.len());
        for raw in raw_images {
            let mut f = Fields::new(raw, "image entry")?;
            let address = u32::try_from(f.uint(1)?)
                .map_err(|_| malformed("image address exceeds 32 bits".to_owned()))?;
            let size = f.uint(2)?;
            let digest = f.fixed::<32>(3)?;
            let chunk_size = u32::try_from(f.uint(4)?)
                .map_err(|_| malformed("chunk size exceeds 32 bits".to_owned()))?;
            let chunks = u32::try_from(f.uint(5)?)
                .map_err(|_| malformed("chunk count exceeds 32 bits".to_owned()))?;
            let object_digest = f.fixed::<32>(6)?;
            f.finish()?;
            if size == 0 || size > MAX_IMAGE_SIZE {
                return Err(malformed(format!(
                    "image size {size} is outside 1..={MAX_IMAGE_SIZE}"
                )));
            }
            if chunk_size != CHUNK_SIZE {
                return Err(malformed(format!(
                    "chunk size {chunk_size} is not {CHUNK_SIZE}"
                )));
            }
            if u64::from(chunks) != size.div_ceil(u64::from(chunk_size)) {
                return Err(malformed(
                    "chunk count does not match the image size".to_owned(),
                ));
            }
            images.push(ImageEntry {
                address,
                size,
                digest,
                chunk_size,
                chunks,
                object_digest,
            });
        }
        let ranges: Vec<(u32, u64)> = images.iter().map(|i| (i.address, i.size)).collect();
        if let Some(o) = flashgate_firmware::find_overlap(&ranges) {
            return Err(malformed(o.to_string()));
        }
        let device_master_digest = fields.fixed::<32>(10)?;
        let job_ca_key_digest = fields.fixed::<32>(11)?;
        let job_ca_cert = fields.bytes(12)?;
        let oem_root_cert = fields.bytes(13)?;
        fields.finish()?;
        let manifest = Self {
            job_id,
            created,
            appliance_id,
            recipient_kid,
            enrollment_digest,
            profile,
            policy_toml,
            images,
            device_master_digest,
            job_ca_key_digest,
            job_ca_cert,
            oem_root_cert,
        };
        if manifest.encode() != bytes {
            return Err(PackageError::NotCanonical { what: "manifest" });
        }
        Ok(manifest)
    }

    /// Parses a job id written as users see it (32 hex digits).
    pub fn job_id_from_hex(id: &str) -> Option<[u8; 16]> {
        hex::decode(id).ok().and_then(|v| v.try_into().ok())
    }

    /// The job id as lowercase hex, the way users see it.
    pub fn job_id_hex(&self) -> String {
        hex::encode(self.job_id)
    }
}

fn malformed(detail: String) -> PackageError {
    PackageError::Malformed { detail }
}

/// Pulls integer-keyed fields out of a CBOR map in ascending key order.
pub(crate) struct Fields {
    entries: std::iter::Peekable<std::vec::IntoIter<(Value, Value)>>,
    what: &'static str,
}

impl Fields {
    pub(crate) fn new(value: Value, what: &'static str) -> Result<Self, PackageError> {
        match value {
            Value::Map(entries) => Ok(Self {
                entries: entries.into_iter().peekable(),
                what,
            }),
            _ => Err(malformed(format!("{what} is not a map"))),
        }
    }

    pub(crate) fn take(&mut self, key: u64) -> Result<Value, PackageError> {
        match self.entries.next() {
            Some((Value::Integer(k), v)) if k == Integer::from(key) => Ok(v),
            _ => Err(malformed(format!(
                "{} field {key} is missing or out of order",
                self.what
            ))),
        }
    }

    /// The next field if it has `key`, else `None` (for optional fields).
    pub(crate) fn optional(&mut self, key: u64) -> Option<Value> {
        match self.entries.peek() {
            Some((Value::Integer(k), _)) if *k == Integer::from(key) => {
                self.entries.next().map(|(_, v)| v)
            }
            _ => None,
        }
    }

    pub(crate) fn uint(&mut self, key: u64) -> Result<u64, PackageError> {
        match self.take(key)? {
            Value::Integer(i) => u64::try_from(i).map_err(|_| {
                malformed(format!(
                    "{} field {key} is not an unsigned integer",
                    self.what
                ))
            }),
            _ => Err(malformed(format!(
                "{} field {key} is not an integer",
                self.what
            ))),
        }
    }

    pub(crate) fn text(&mut self, key: u64) -> Result<String, PackageError> {
        match self.take(key)? {
            Value::Text(t) => Ok(t),
            _ => Err(malformed(format!("{} field {key} is not text", self.what))),
        }
    }

    pub(crate) fn bytes(&mut self, key: u64) -> Result<Vec<u8>, PackageError> {
        match self.take(key)? {
            Value::Bytes(b) => Ok(b),
            _ => Err(malformed(format!(
                "{} field {key} is not a byte string",
                self.what
            ))),
        }
    }

    pub(crate) fn fixed<const N: usize>(&mut self, key: u64) -> Result<[u8; N], PackageError> {
        let b = self.bytes(key)?;
        b.as_slice()
            .try_into()
            .map_err(|_| malformed(format!("{} field {key} is not {N} bytes", self.what)))
    }

    pub(crate) fn finish(mut self) -> Result<(), PackageError> {
        match self.entries.next() {
            None => Ok(()),
            Some(_) => Err(malformed(format!("{} has unknown fields", self.what))),
        }
    }
}
