use cryptoki::mechanism::MechanismType;

use super::OaepHash;

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

    /// The mechanisms a token must offer to import and run jobs of this profile.
    pub fn mechanisms(self) -> &'static [MechanismType] {
        const COMMON: [MechanismType; 6] = [
            MechanismType::ECC_KEY_PAIR_GEN,
            MechanismType::ECDSA,
            MechanismType::ECDH1_DERIVE,
            MechanismType::AES_KEY_WRAP,
            MechanismType::AES_GCM,
            MechanismType::SHA256_HMAC,
        ];
        const STANDARD: [MechanismType; 7] = [
            COMMON[0],
            COMMON[1],
            COMMON[2],
            COMMON[3],
            COMMON[4],
            COMMON[5],
            MechanismType::HKDF_DERIVE,
        ];
        const COMPAT: [MechanismType; 8] = [
            COMMON[0],
            COMMON[1],
            COMMON[2],
            COMMON[3],
            COMMON[4],
            COMMON[5],
            MechanismType::AES_CBC_ENCRYPT_DATA,
            MechanismType::AES_KEY_WRAP_PAD,
        ];
        const RSA_OAEP: [MechanismType; 6] = [
            MechanismType::ECC_KEY_PAIR_GEN,
            MechanismType::ECDSA,
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::RSA_PKCS_OAEP,
            MechanismType::AES_GCM,
            MechanismType::SHA256_HMAC,
        ];
        match self {
            Self::CoseRsaesOaepSha256 | Self::CoseRsaesOaepSha1 => &RSA_OAEP,
            Self::CoseEcdhEsA256kw => &STANDARD,
            Self::P11v2EcdhAesKdf => &COMPAT,
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The mechanism list a token reported.
#[derive(Debug, Clone)]
pub struct Mechanisms(Vec<MechanismType>);

impl Mechanisms {
    pub(crate) fn new(list: Vec<MechanismType>) -> Self {
        Self(list)
    }

    /// Mechanisms `profile` needs that are not in the list.
    pub fn missing_for(&self, profile: Profile) -> Vec<MechanismType> {
        profile
            .mechanisms()
            .iter()
            .filter(|m| !self.0.contains(m))
            .copied()
            .collect()
    }

    /// Whether the token offers `mechanism`.
    pub fn contains(&self, mechanism: MechanismType) -> bool {
        self.0.contains(&mechanism)
    }

    /// The ECDH profiles this token can run, strongest first. The RSA-OAEP
    /// profiles are not decided by the mechanism list (which OAEP hashes a
    /// token takes does not show there): see [`Token::transport_support`].
    ///
    /// [`Token::transport_support`]: super::Token::transport_support
    pub fn supported_profiles(&self) -> Vec<Profile> {
        Profile::ALL
            .into_iter()
            .filter(|p| p.oaep_hash().is_none() && self.missing_for(*p).is_empty())
            .collect()
    }
}
