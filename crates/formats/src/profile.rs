//! The key-transport profiles a job package can be built for, and what
//! the RSA-OAEP profiles transport: names and parameters as the formats
//! carry them (docs/FORMATS.md). What a token needs to run each profile is
//! the HSM layer's business (`hsm::Mechanisms`).

/// A key-transport profile: how secrets in a job package are wrapped to the
/// appliance (its RSA transport keys or its key-agreement key). See docs/FORMATS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// COSE RSAES-OAEP with SHA-256 (alg -41) to per-role transport keys.
    CoseRsaesOaepSha256,
    /// COSE RSAES-OAEP with SHA-1 (alg -40): the OAEP SoftHSM 2.6 offers.
    CoseRsaesOaepSha1,
    /// COSE ECDH-ES + A256KW with HKDF in the token (PKCS#11 3.0 tokens).
    CoseEcdhEsA256kw,
    /// ECDH + `CKM_AES_CBC_ENCRYPT_DATA` KDF + AES-KW (PKCS#11 2.40 tokens).
    P11v2EcdhAesKdf,
}

impl Profile {
    /// Every profile, strongest first.
    pub const ALL: [Self; 4] = [
        Self::CoseRsaesOaepSha256,
        Self::CoseRsaesOaepSha1,
        Self::CoseEcdhEsA256kw,
        Self::P11v2EcdhAesKdf,
    ];

    /// The name used in enrollment records, manifests and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::CoseRsaesOaepSha256 => "cose-rsaes-oaep-sha256",
            Self::CoseRsaesOaepSha1 => "cose-rsaes-oaep-sha1",
            Self::CoseEcdhEsA256kw => "cose-ecdh-es-a256kw",
            Self::P11v2EcdhAesKdf => "p11v2-ecdh-aes-kdf",
        }
    }

    /// Parses a profile name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The OAEP hash of an RSA-OAEP profile; `None` for the ECDH profiles.
    pub fn oaep_hash(self) -> Option<OaepHash> {
        match self {
            Self::CoseRsaesOaepSha256 => Some(OaepHash::Sha256),
            Self::CoseRsaesOaepSha1 => Some(OaepHash::Sha1),
            Self::CoseEcdhEsA256kw | Self::P11v2EcdhAesKdf => None,
        }
    }

    /// The RSA-OAEP profile of an OAEP hash.
    pub fn rsa_oaep(hash: OaepHash) -> Self {
        match hash {
            OaepHash::Sha256 => Self::CoseRsaesOaepSha256,
            OaepHash::Sha1 => Self::CoseRsaesOaepSha1,
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Modulus size of transport keys.
pub const TRANSPORT_BITS: u64 = 3072;

/// What a transport key unwraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransportRole {
    /// Image content keys: AES-256, decrypt (AES-GCM) only.
    Image,
    /// The device master: generic secret, HMAC-SHA256 only.
    Master,
    /// The job CA key: P-256 private key, ECDSA only.
    Ca,
}

impl TransportRole {
    /// Every role.
    pub const ALL: [Self; 3] = [Self::Image, Self::Master, Self::Ca];

    /// The role name used in the enrollment record and in labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Master => "master",
            Self::Ca => "ca",
        }
    }

    /// Parses a role name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl std::fmt::Display for TransportRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The OAEP hash (and MGF1 hash); the label is always empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OaepHash {
    /// SHA-1 (COSE -40): the only OAEP SoftHSM 2.6 offers.
    Sha1,
    /// SHA-256 (COSE -41).
    Sha256,
}

impl OaepHash {
    /// Host-side OAEP encryption to `public` (what the OEM builder does).
    pub fn encrypt(
        self,
        public: &::rsa::PublicKey,
        message: &[u8],
    ) -> Result<Vec<u8>, ::rsa::Error> {
        let mut rng = getrandom::SysRng;
        match self {
            Self::Sha1 => public.encrypt(&mut rng, ::rsa::Oaep::<sha1::Sha1>::new(), message),
            Self::Sha256 => public.encrypt(&mut rng, ::rsa::Oaep::<sha2::Sha256>::new(), message),
        }
    }
}
