use cryptoki::mechanism::MechanismType;

use super::Profile;

/// What a token must offer to run a key-transport profile (the profile
/// itself is a format type, `flashgate_formats::profile`).
pub trait ProfileMechanisms {
    /// The mechanisms a token must offer to import and run jobs of this profile.
    fn mechanisms(self) -> &'static [MechanismType];
}

impl ProfileMechanisms for Profile {
    fn mechanisms(self) -> &'static [MechanismType] {
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
