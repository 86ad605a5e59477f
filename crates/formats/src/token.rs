//! What an appliance records about its PKCS#11 token: the token's own
//! description, and whether its PIN holder can get a job secret out of it,
//! path by path. Plain data; the probe that measures it needs the token
//! and lives in `flashgate-core` (`hsm::probe`).

use crate::profile::Profile;

/// What the token says about itself, as recorded in the enrollment record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDescription {
    /// `manufacturerID` from `C_GetTokenInfo`.
    pub manufacturer: String,
    /// `model`.
    pub model: String,
    /// `serialNumber`.
    pub serial: String,
    /// `label`.
    pub label: String,
}

/// Whether a PIN holder can extract a job secret under a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extraction {
    /// Every path tried was refused by the token.
    Refused,
    /// At least one path gave key material or widened a key's use.
    Possible,
}

impl Extraction {
    /// The text used in the enrollment record.
    pub fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Possible => "possible",
        }
    }

    /// Parses [`Extraction::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Refused, Self::Possible]
            .into_iter()
            .find(|e| e.name() == name)
    }
}

impl std::fmt::Display for Extraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What one path did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The token refused.
    Refused,
    /// The path worked: key material came out, or a key became extractable.
    Possible,
    /// The token widened a key's use (`CKA_DERIVE`, `CKA_DECRYPT`, its
    /// mechanism list); whether that leads anywhere is what the derive
    /// paths tried after it show.
    Widened,
    /// The path cannot be tried on this token (mechanism missing) or does not apply.
    Unavailable,
    /// A fact about the token's templates, not an extraction path.
    Noted,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Possible => "possible",
            Self::Widened => "widened",
            Self::Unavailable => "unavailable",
            Self::Noted => "noted",
        }
    }
}

/// One path tried and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `profile/key/path`, for example `p11v2-ecdh-aes-kdf/ka/ecdh-into-extractable`.
    pub path: String,
    /// What happened.
    pub outcome: Outcome,
    /// Why, in a few words (the token's return value where it refused).
    pub detail: String,
}

impl Finding {
    /// The outcome as recorded: `refused: CKR_...`, `possible: ...`.
    pub fn outcome_text(&self) -> String {
        format!("{}: {}", self.outcome.name(), self.detail)
    }
}

/// The measurement: every path tried, and the verdict per profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractionProbe {
    /// Every path tried, in order.
    pub findings: Vec<Finding>,
    /// Per profile, `Possible` if any of its paths was.
    pub by_profile: Vec<(Profile, Extraction)>,
}

impl ExtractionProbe {
    /// Adds a profile's findings (another profile's probe uses this too).
    pub fn add(&mut self, profile: Profile, findings: Vec<Finding>) {
        let verdict = if findings.iter().any(|f| f.outcome == Outcome::Possible) {
            Extraction::Possible
        } else {
            Extraction::Refused
        };
        self.findings.extend(findings);
        self.by_profile.retain(|(p, _)| *p != profile);
        self.by_profile.push((profile, verdict));
    }

    /// The verdict for `profile`, if it was measured.
    pub fn verdict(&self, profile: Profile) -> Option<Extraction> {
        self.by_profile
            .iter()
            .find_map(|(p, e)| (*p == profile).then_some(*e))
    }
}
