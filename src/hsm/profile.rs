use cryptoki::mechanism::MechanismType;

/// A key-transport profile: how secrets in a job package are wrapped to the
/// appliance's key-agreement key. See docs/FORMATS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// COSE ECDH-ES + A256KW with HKDF in the token (PKCS#11 3.0 tokens).
    CoseEcdhEsA256kw,
    /// ECDH + `CKM_AES_CBC_ENCRYPT_DATA` KDF + AES-KW (PKCS#11 2.40 tokens).
    P11v2EcdhAesKdf,
}

impl Profile {
    /// Every profile, strongest first.
    pub const ALL: [Self; 2] = [Self::CoseEcdhEsA256kw, Self::P11v2EcdhAesKdf];

    /// The name used in enrollment records, manifests and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::CoseEcdhEsA256kw => "cose-ecdh-es-a256kw",
            Self::P11v2EcdhAesKdf => "p11v2-ecdh-aes-kdf",
        }
    }

    /// Parses a profile name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
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
        match self {
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

    /// The profiles this token can run, strongest first.
    pub fn supported_profiles(&self) -> Vec<Profile> {
        Profile::ALL
            .into_iter()
            .filter(|p| self.missing_for(*p).is_empty())
            .collect()
    }
}
