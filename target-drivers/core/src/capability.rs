//! What a driver can do, so a job can be refused before any board is touched.

use std::fmt;
use std::str::FromStr;

use crate::TargetError;

/// One thing a driver may be able to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Chip erase, blank check and page programming of flash.
    ProgramFlash,
    /// Reading flash back over the programming interface (needed to verify).
    ReadFlash,
    /// Reading the unique ID and the device signature.
    ReadUid,
    /// Writing secret data into the key store (or another [`Space`](crate::Space)).
    StoreSecret,
    /// Having the device generate a key pair itself and return the public key.
    OnChipKeygen,
    /// Talking to the on-device provisioning agent (challenge-response).
    AnswerChallenge,
    /// Setting lock (readout protection) bits.
    SetLock,
    /// Reading lock bits back.
    ReadLock,
    /// Setting and reading back a permanent lock (one that no erase undoes),
    /// beside the readout lock that [`Capability::SetLock`] sets.
    LockPermanent,
}

impl Capability {
    /// Every capability, in declaration order.
    pub const ALL: [Capability; 9] = [
        Capability::ProgramFlash,
        Capability::ReadFlash,
        Capability::ReadUid,
        Capability::StoreSecret,
        Capability::OnChipKeygen,
        Capability::AnswerChallenge,
        Capability::SetLock,
        Capability::ReadLock,
        Capability::LockPermanent,
    ];

    /// The lowercase name used in messages and job files, e.g. `program-flash`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Capability::ProgramFlash => "program-flash",
            Capability::ReadFlash => "read-flash",
            Capability::ReadUid => "read-uid",
            Capability::StoreSecret => "store-secret",
            Capability::OnChipKeygen => "on-chip-keygen",
            Capability::AnswerChallenge => "answer-challenge",
            Capability::SetLock => "set-lock",
            Capability::ReadLock => "read-lock",
            Capability::LockPermanent => "lock-permanent",
        }
    }

    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| TargetError::Parse {
                what: "capability",
                input: s.to_owned(),
                expected: "one of program-flash, read-flash, read-uid, store-secret, \
                           on-chip-keygen, answer-challenge, set-lock, read-lock, lock-permanent",
            })
    }
}

/// A set of [`Capability`] values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(u16);

impl Capabilities {
    /// No capability at all.
    pub const fn empty() -> Self {
        Capabilities(0)
    }

    /// Every capability.
    pub const fn all() -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < Capability::ALL.len() {
            bits |= Capability::ALL[i].bit();
            i += 1;
        }
        Capabilities(bits)
    }

    /// This set plus `capability`.
    #[must_use]
    pub const fn with(self, capability: Capability) -> Self {
        Capabilities(self.0 | capability.bit())
    }

    /// Adds `capability` to the set.
    pub fn insert(&mut self, capability: Capability) {
        self.0 |= capability.bit();
    }

    /// Whether `capability` is in the set.
    pub const fn contains(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The capabilities in `required` that this set lacks, in declaration order.
    ///
    /// An empty result means a driver with this set can run the job.
    pub fn missing(&self, required: &Capabilities) -> Vec<Capability> {
        required.iter().filter(|c| !self.contains(*c)).collect()
    }

    /// The capabilities in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        let mut set = Capabilities::empty();
        for c in iter {
            set.insert(c);
        }
        set
    }
}

impl<const N: usize> From<[Capability; N]> for Capabilities {
    fn from(list: [Capability; N]) -> Self {
        list.into_iter().collect()
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Comma-separated names, e.g. `program-flash, read-flash`; `none` when empty.
impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, c) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(c.as_str())?;
        }
        Ok(())
    }
}
