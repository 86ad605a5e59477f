//! A job's id: 16 bytes, written as 32 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

/// A job's id, as the manifest carries it and users type it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId([u8; 16]);

/// A job id that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a job id (32 hex digits; see `flashgate job list`)")]
pub struct JobIdError {
    text: String,
}

impl JobId {
    /// The id of these bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl FromStr for JobId {
    type Err = JobIdError;
    fn from_str(s: &str) -> Result<Self, JobIdError> {
        crate::package::Manifest::job_id_from_hex(s)
            .map(Self)
            .ok_or_else(|| JobIdError { text: s.to_owned() })
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({self})")
    }
}

impl serde::Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn job_ids_round_trip_and_refuse_what_is_not_one() {
        let id: JobId = "00112233445566778899AABBCCDDEEFF".parse().unwrap();
        assert_eq!(id.to_string(), "00112233445566778899aabbccddeeff");
        assert_eq!(id.as_bytes()[15], 0xff);
        for bad in [
            "",
            "0011",
            "zz112233445566778899aabbccddeeff",
            "00112233445566778899aabbccddeeff00",
        ] {
            let e = bad.parse::<JobId>().unwrap_err().to_string();
            assert!(e.contains("is not a job id"), "{e}");
        }
    }
}
